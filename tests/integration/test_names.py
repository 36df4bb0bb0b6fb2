"""Names, against the real control plane (issue 10, items 6 and 9): every name the operator derives from an accepted
identity's name works, names whose defaults cannot work are refused at admission with a message that says what to set,
and a single-label DNS name (which every client resolves in its own namespace) needs a cluster MtlsIdentityPolicy."""

from __future__ import annotations

import kubernetes
import pytest
import yaml

from tests.kit import REPO, Api, Kubectl, OperatorProcess, ready_condition, unique, wait_for


def _refused(api: Api, ns: str, name: str, spec: dict) -> str:
    """The API server's 422 body for creating that identity (the test fails if it is accepted)."""
    try:
        api.create_identity(ns, name, spec, with_service_account=False)
    except kubernetes.client.exceptions.ApiException as e:
        assert e.status == 422, e.body
        return e.body
    raise AssertionError(f"{name} was accepted with {spec}")


def _long(prefix: str, length: int) -> str:
    """A unique name of exactly that length (no dot, so it is still one label however long)."""
    base = unique(prefix)
    return base + "x" * (length - len(base))


def test_names_whose_defaults_cannot_work_are_refused_at_admission(api: Api, crd: None, ns: str) -> None:
    body = _refused(api, ns, "web.v2", {})
    assert "metadata.name 'web.v2' has a dot or more than 63 characters" in body, body
    assert "spec.dnsNames" in body and "spec.usages to [client]" in body
    long64 = _long("l", 64)
    assert f"metadata.name '{long64}'" in _refused(api, ns, long64, {"usages": ["server"]})
    body = _refused(api, ns, _long("s", 249), {"usages": ["client"]})
    assert "metadata.name is longer than 248 characters" in body and "set spec.secretName" in body, body


def test_every_name_the_operator_derives_is_valid(api: Api, operator: OperatorProcess, ns: str) -> None:
    """Before: `web.v2` got PolicyDenied on its own default DNS names, 59+ characters InvalidSpec on `<name>-mtls`."""
    names = {
        "web.v2": {"usages": ["client"]},
        "api.v2": {"dnsNames": [f"api-v2.{ns}.svc"]},
        _long("n", 59): {},
        _long("m", 63): {},
        _long("c", 200): {"usages": ["client"]},
        _long("d", 248): {"usages": ["client"]},
        _long("e", 253): {"usages": ["client"], "secretName": "e-explicit"},
    }
    for name, spec in names.items():
        api.create_identity(ns, name, spec)
    for name, spec in names.items():
        obj = api.wait_ready(ns, name)
        secret_name = spec.get("secretName") or f"{name}-mtls"
        assert obj["status"]["secretName"] == secret_name
        assert obj["status"]["spiffeID"].endswith(f"/ns/{ns}/sa/{name}")
        assert api.secret(ns, secret_name) is not None


def test_single_label_names_need_a_policy(api: Api, operator: OperatorProcess, ns: str) -> None:
    """`vault` means "the vault Service of MY namespace" to every client: issued by default, a client in another
    namespace dialling `vault` accepted this namespace's certificate."""
    api.create_identity(ns, "squat", {"dnsNames": ["vault"]})
    api.create_identity(ns, "vault", {"dnsNames": [f"vault.{ns}", f"vault.{ns}.svc"]})
    obj = api.wait_reason(ns, "squat", "PolicyDenied")
    message = ready_condition(obj)["message"]
    assert "'vault' is a single-label name" in message, message
    assert f"MtlsIdentityPolicy with namespaces: [{ns}] and dnsNames: [vault]" in message
    assert api.secret(ns, "squat-mtls") is None
    api.wait_event(ns, "squat", lambda e: e.reason == "PolicyDenied" and e.type == "Warning")
    api.wait_ready(ns, "vault")  # the namespace's own Service names need nothing

    api.grant(ns, dns_names=["vault"])  # what a cluster admin writes to allow it
    api.wait_ready(ns, "squat")


def test_objects_stored_before_the_name_rules_stay_writable_and_are_reported(
        api: Api, operator: OperatorProcess, ns: str, kubectl: Kubectl) -> None:
    """The rules ratchet on the spec: an identity stored before them is not locked (its status can say InvalidSpec),
    and the first change of its spec must fix it."""
    strict = REPO / "crds" / "mtlsidentities.yaml"
    loose = yaml.safe_load(strict.read_text())
    del loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    name = unique("old") + ".v1"
    kubectl("apply", "-f", "-", input=yaml.safe_dump(loose))
    try:
        wait_for("the loose schema", lambda: _created(api, ns, name))
    finally:
        kubectl("apply", "-f", str(strict))
    wait_for("the strict schema", lambda: "metadata.name" in _refused_or_empty(api, ns))
    obj = api.wait_reason(ns, name, "InvalidSpec")
    assert f"metadata.name '{name}'" in ready_condition(obj)["message"]
    api.patch_identity(ns, name, {"metadata": {"labels": {"touched": "yes"}}})  # not locked
    with pytest.raises(kubernetes.client.exceptions.ApiException) as err:
        api.patch_identity(ns, name, {"spec": {"duration": "12h"}})
    assert err.value.status == 422 and "spec.dnsNames" in err.value.body
    api.patch_identity(ns, name, {"spec": {"dnsNames": [f"old.{ns}.svc"]}})
    api.wait_ready(ns, name)


def _created(api: Api, ns: str, name: str) -> bool:
    try:
        api.create_identity(ns, name, {})
    except kubernetes.client.exceptions.ApiException as e:
        if e.status == 422:  # the loosened schema is not served yet
            return False
        raise
    return True


def _refused_or_empty(api: Api, ns: str) -> str:
    """The 422 body for a probe that only the strict schema refuses; "" while the loose one is still served."""
    probe = unique("probe") + ".v1"
    try:
        api.create_identity(ns, probe, {"usages": ["server"]}, with_service_account=False)
    except kubernetes.client.exceptions.ApiException as e:
        return e.body if e.status == 422 else ""
    api.delete_identity(ns, probe)
    return ""
