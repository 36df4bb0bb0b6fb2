"""Identity Secrets the operator cannot write — `immutable: true`, or a write refused by a ValidatingAdmissionPolicy —
report SecretUnwritable with how to recover, are retried with backoff (not hot), hold no root rotation, and heal once
the Secret is deleted or the policy lifted."""

from __future__ import annotations

import datetime as dt

import pytest

from mtls_operator import rotation
from tests.kit import (
    OPERATOR_NAMESPACE,
    Api,
    OperatorProcess,
    ready_condition,
    secret_files,
    swapped_operator,
    wait_for,
)

SHORT = {"duration": "30s", "renewBefore": "20s"}  # renewal due about 10 s after issuance


def _refused_updates(control_plane, ns: str, name: str) -> list[dict]:
    return [e for e in control_plane.writes()
            if e.get("objectRef", {}).get("namespace") == ns and e["objectRef"].get("name") == name
            and e["objectRef"].get("resource") == "secrets" and e["verb"] == "update"]


def test_immutable_secret_is_reported_not_retried_hot_and_heals_when_deleted(api: Api, operator: OperatorProcess,
                                                                          ns: str, control_plane) -> None:
    api.create_identity(ns, "frozen", SHORT)
    api.wait_ready(ns, "frozen")
    api.core.patch_namespaced_secret("frozen-mtls", ns, {"immutable": True})
    version = api.secret(ns, "frozen-mtls").metadata.resource_version

    obj = api.wait_reason(ns, "frozen", "SecretUnwritable", timeout=40)
    message = ready_condition(obj)["message"]
    assert "immutable" in message and "delete the Secret" in message, message
    api.wait_event(ns, "frozen", lambda e: e.type == "Warning" and e.reason == "SecretUnwritable")
    # The operator knows from the Secret itself that a write must fail: it sends none (and signs nothing).
    assert api.secret(ns, "frozen-mtls").metadata.resource_version == version
    if control_plane is not None:
        assert _refused_updates(control_plane, ns, "frozen-mtls") == []
    warnings = [e for e in api.events(ns, "frozen") if e.reason == "SecretUnwritable"]
    assert len(warnings) == 1, "reported once, not at every retry"

    api.core.delete_namespaced_secret("frozen-mtls", ns)
    healed = wait_for("the Secret recreated and the identity Ready", lambda: (o := api.ready(ns, "frozen"))
                      and api.secret(ns, "frozen-mtls") and o, timeout=40)
    assert healed["status"]["revision"] >= 1
    assert not api.secret(ns, "frozen-mtls").immutable


def _refuse_updates(api: Api, ns: str, secret: str) -> str:
    """Every update of one Secret refused by admission."""
    return api.deny(f"freeze-{ns}", ns, "UPDATE", "secrets", f"!(object.metadata.name in ['{secret}', 'probe'])",
                    "this Secret is frozen by policy")


def _update_refused(api: Api, ns: str, name: str) -> bool:
    import kubernetes

    try:
        api.core.patch_namespaced_secret(name, ns, {"metadata": {"labels": {"probe": dt.datetime.now(dt.UTC)
                                                                            .strftime("%H%M%S%f")}}})
    except kubernetes.client.exceptions.ApiException as e:
        return e.status == 422 and "frozen by policy" in (e.body or "")
    return False


@pytest.mark.local_operator
@pytest.mark.timeout(180)
def test_write_refused_by_admission_backs_off_and_does_not_hold_a_root_rotation(api: Api, operator: OperatorProcess,
                                                                                 ns: str, control_plane) -> None:
    ca = "unwritable-ca"
    with swapped_operator(operator, "--namespace", ns, "--ca-secret-name", ca, "--ca-propagation", "2s",
                          "--ca-grace", "2s", "--lease-name", f"lease-{ca}"):
        wait_for("the managed root", lambda: api.secret(OPERATOR_NAMESPACE, ca))
        for name in ("guarded", "free"):
            api.create_identity(ns, name)
        for name in ("guarded", "free"):
            api.wait_ready(ns, name)
        policy = _refuse_updates(api, ns, "guarded-mtls")
        try:
            # A policy is enforced a moment after it is created: probe with a Secret of our own until it bites.
            api.core.create_namespaced_secret(ns, {"metadata": {"name": "probe"}})
            wait_for("the admission policy to be enforced", lambda: _update_refused(api, ns, "probe"), timeout=30,
                     interval=0.5)
            api.patch_identity(ns, "guarded", {"metadata": {"annotations": {
                "mtls-operator.io/renew": dt.datetime.now(dt.UTC).isoformat()}}})
            obj = api.wait_reason(ns, "guarded", "SecretUnwritable")
            message = ready_condition(obj)["message"]
            assert "frozen by policy" in message and "admission" in message, message

            # A root rotation completes without waiting for the Secret it cannot write (the stall is an hour).
            old_root = secret_files(api.secret(OPERATOR_NAMESPACE, ca))["tls.crt"]
            api.core.patch_namespaced_secret(ca, OPERATOR_NAMESPACE, {"metadata": {"annotations": {
                rotation.ANN_REQUEST: dt.datetime.now(dt.UTC).isoformat()}}})

            def finished() -> bool:
                secret = api.secret(OPERATOR_NAMESPACE, ca)
                return (not (secret.metadata.annotations or {}).get(rotation.ANN_PHASE)
                        and secret_files(secret)["ca.crt"] == secret_files(secret)["tls.crt"] != old_root)
            wait_for("the rotation to finish without the unwritable Secret", finished, timeout=60)
            new_root = secret_files(api.secret(OPERATOR_NAMESPACE, ca))["ca.crt"]
            wait_for("the free identity on the new root", lambda: secret_files(api.secret(ns, "free-mtls"))["ca.crt"]
                     == new_root and api.ready(ns, "free"), timeout=30)
            if control_plane is not None:
                # Backoff, not hot retries: over this whole test, a handful of refused writes.
                attempts = _refused_updates(control_plane, ns, "guarded-mtls")
                assert 1 <= len(attempts) <= 10, len(attempts)
        finally:
            api.lift(policy)
        # The policy is not watched: the next backoff retry (at most 5 minutes) heals it, or, at once, a renew request.
        wait_for("the policy to be lifted", lambda: not _update_refused(api, ns, "probe"), timeout=30, interval=0.5)
        api.patch_identity(ns, "guarded", {"metadata": {"annotations": {
            "mtls-operator.io/renew": dt.datetime.now(dt.UTC).isoformat()}}})
        wait_for("the guarded identity to heal once the policy is lifted", lambda: (
            secret_files(api.secret(ns, "guarded-mtls"))["ca.crt"] == new_root and api.ready(ns, "guarded")),
            timeout=120)
