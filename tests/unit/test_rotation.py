"""Root rotation: the phase decisions, and the CA Secret each step writes (which must load as a valid CA every time)."""

from __future__ import annotations

import base64
import datetime as dt

from mtls_operator import ca as ca_mod
from mtls_operator import pki, rotation
from mtls_operator.config import Settings
from mtls_operator.rotation import Phase, Progress, State, Step, Timing

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TIMING = Timing(rotate_before=dt.timedelta(days=30), propagation=dt.timedelta(minutes=3),
                grace=dt.timedelta(minutes=10), stall=dt.timedelta(hours=1))
DONE = Progress(0, 0)
FAR = NOW + dt.timedelta(days=3650)


def test_stable_waits_until_near_expiry_or_asked() -> None:
    assert rotation.next_step(State(Phase.STABLE, None, "", ""), FAR, NOW, TIMING, DONE) == \
        (None, FAR - TIMING.rotate_before)
    near = NOW + dt.timedelta(days=29)
    assert rotation.next_step(State(Phase.STABLE, None, "", ""), near, NOW, TIMING, DONE)[0] is Step.START
    assert rotation.next_step(State(Phase.STABLE, None, "go", ""), FAR, NOW, TIMING, DONE)[0] is Step.START
    assert rotation.next_step(State(Phase.STABLE, None, "go", "go"), FAR, NOW, TIMING, DONE)[0] is None


def test_propagation_waits_its_full_time_after_the_last_bundle_was_written() -> None:
    state = State(Phase.PROPAGATING, NOW, "", "")
    current = Progress(0, 0, bundles_current_since=NOW)
    assert rotation.next_step(state, FAR, NOW + dt.timedelta(minutes=2), TIMING, current) == \
        (None, NOW + TIMING.propagation)
    late = NOW + dt.timedelta(minutes=4)
    # While bundles are still being written the next look is soon: the propagation time must start when the last one
    # is current, not a whole propagation time after a look that found some stale.
    assert rotation.next_step(state, FAR, late, TIMING, Progress(stale_bundle=3, old_issuer=0)) == \
        (None, late + dt.timedelta(seconds=1))
    assert rotation.next_step(state, FAR, late, TIMING, current)[0] is Step.PROMOTE
    # The last bundle was written late: the kubelet still gets the whole propagation time after it.
    slow = Progress(0, 0, bundles_current_since=late)
    assert rotation.next_step(state, FAR, late + dt.timedelta(minutes=1), TIMING, slow)[0] is None
    assert rotation.next_step(state, FAR, late + TIMING.propagation, TIMING, slow)[0] is Step.PROMOTE
    # Secrets that never catch up (denied identities) do not hold the rotation forever: once the counts stop falling
    # the propagation time runs from the last bundle that was brought up to date.
    stuck = Progress(3, 3, bundles_current_since=late, stalled=True)
    assert rotation.next_step(state, FAR, late + TIMING.propagation, TIMING, stuck)[0] is Step.PROMOTE


def test_reissuing_waits_for_every_leaf_then_grace_then_finish() -> None:
    state = State(Phase.REISSUING, NOW, "", "")
    assert rotation.next_step(state, FAR, NOW, TIMING, Progress(0, 5))[0] is None
    assert rotation.next_step(state, FAR, NOW, TIMING, DONE)[0] is Step.RETIRE
    assert rotation.next_step(state, FAR, NOW, TIMING, Progress(0, 5, stalled=True))[0] is Step.RETIRE
    retiring = State(Phase.RETIRING, NOW, "", "")
    assert rotation.next_step(retiring, FAR, NOW, TIMING, DONE) == (None, NOW + TIMING.grace)
    assert rotation.next_step(retiring, FAR, NOW + TIMING.grace, TIMING, DONE)[0] is Step.FINISH


def test_state_survives_as_annotations() -> None:
    state = rotation.parse_state({rotation.ANN_PHASE: "Reissuing", rotation.ANN_SINCE: "2026-11-26T12:00:00Z",
                                  rotation.ANN_REQUEST: "r1", rotation.ANN_HANDLED: "r1"})
    assert state == State(Phase.REISSUING, NOW, "r1", "r1")
    assert rotation.parse_state({rotation.ANN_PHASE: "Nonsense"}).phase is Phase.STABLE


def _secret(data: dict[str, bytes], annotations=None) -> dict:
    return {"metadata": {"name": "ca", "namespace": "ops", "resourceVersion": "5", "annotations": annotations or {},
                         "labels": {rotation.MANAGED_LABEL: "root"}},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def _data(body: dict) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in body["data"].items()}


def test_every_step_writes_a_ca_secret_that_loads_and_ends_with_only_the_new_root() -> None:
    from mtls_operator.rotator import RootRotator

    class Stub:
        settings = Settings()

    rotator = RootRotator(Stub(), TIMING)  # type: ignore[arg-type]
    old = ca_mod.new_root(Settings(), NOW)
    body = _secret(old, {rotation.ANN_REQUEST: "now"})
    old_root = pki.load_chain(old["tls.crt"])[0]

    body = rotator._apply(Step.START, body, rotation.parse_state(body["metadata"]["annotations"]), NOW)
    authority = ca_mod.load(_data(body), NOW)
    assert authority.cert == old_root  # still issuing from the old root
    anchors = pki.load_chain(authority.bundle_pem)
    assert len(anchors) == 2 and anchors[0] == old_root  # both roots trusted
    assert body["metadata"]["annotations"][rotation.ANN_PHASE] == "Propagating"
    assert body["metadata"]["annotations"][rotation.ANN_HANDLED] == "now"
    new_root = pki.load_chain(_data(body)["next.crt"])[0]

    body = rotator._apply(Step.PROMOTE, body, rotation.parse_state(body["metadata"]["annotations"]), NOW)
    authority = ca_mod.load(_data(body), NOW)
    assert authority.cert == new_root and "next.crt" not in body["data"]
    # The new root is recorded as the operator's own: only such a CA is ever rotated again.
    assert body["metadata"]["annotations"][rotation.ANN_MADE] == pki.fingerprint(new_root)
    assert pki.load_chain(authority.bundle_pem) == anchors

    body = rotator._apply(Step.RETIRE, body, rotation.parse_state(body["metadata"]["annotations"]), NOW)
    assert body["metadata"]["annotations"][rotation.ANN_PHASE] == "Retiring"

    body = rotator._apply(Step.FINISH, body, rotation.parse_state(body["metadata"]["annotations"]), NOW)
    authority = ca_mod.load(_data(body), NOW)
    assert pki.load_chain(authority.bundle_pem) == [new_root]
    assert rotation.ANN_PHASE not in body["metadata"]["annotations"]
    assert body["metadata"]["resourceVersion"] == "5"  # a replace with optimistic concurrency
