"""The hint table of `kubectl mtls`: every failure reason the operator reports has its own advice, filled in with the
object's names, and the documented recovery is the one pointed to."""

from __future__ import annotations

from mtls_operator.kubectl_mtls import hints
from mtls_operator.status import Ready

SUCCESS = {Ready.ISSUED, Ready.RENEWED}


def _failure_reasons() -> set[str]:
    return {v for k, v in vars(Ready).items() if k.isupper() and isinstance(v, str)} - SUCCESS


def test_every_failure_reason_of_the_operator_has_a_hint_of_its_own() -> None:
    reasons = _failure_reasons()
    assert len(reasons) >= 8  # InvalidSpec ... CALost; a reason added to status.Ready must get a hint too
    assert reasons <= hints.known_reasons(), reasons - hints.known_reasons()
    for reason in reasons:
        hint = hints.for_reason(reason, {"name": "api", "namespace": "payments"})
        assert hint.reason == reason and hint.actions and hint.docs and hint.meaning


def test_hints_name_the_documented_recoveries() -> None:
    values = {"name": "api", "namespace": "payments", "secret": "api-mtls", "service_account": "api-sa",
              "authority": "mtls-operator.mtls-operator-ca"}
    lost = hints.for_reason(Ready.CA_LOST, values)
    assert "Recovering a lost CA Secret" in lost.docs
    assert any("kubectl annotate mtlsauthority mtls-operator.mtls-operator-ca mtls-operator.io/replace-lost-root="
               in a for a in lost.actions)
    assert any("backup" in a for a in lost.actions)
    denied = hints.for_reason(Ready.POLICY_DENIED, values)
    assert "single-label" in denied.docs and any("vault.payments.svc" in a for a in denied.actions)
    assert any("MtlsIdentityPolicy" in a for a in denied.actions)
    assert "kubectl create serviceaccount api-sa -n payments" in hints.for_reason(
        Ready.SERVICE_ACCOUNT_NOT_FOUND, values).actions[0]
    unwritable = hints.for_reason(Ready.SECRET_UNWRITABLE, values)
    assert "kubectl delete secret api-mtls -n payments" in unwritable.actions[0]
    assert "Secrets that cannot be written" in unwritable.docs
    assert hints.for_reason(hints.CA_INVALID).actions == hints.for_reason(Ready.CA_UNAVAILABLE).actions


def test_unknown_placeholders_stay_visible_and_unknown_reasons_get_generic_advice() -> None:
    hint = hints.for_reason(Ready.CA_LOST, {"authority": ""})
    assert any("<authority>" in a for a in hint.actions)
    generic = hints.for_reason("SomethingNew", {"name": "api", "namespace": "payments"})
    assert generic.reason == "SomethingNew"
    assert "kubectl describe mtlsidentity api -n payments" in generic.actions[0]
    assert set(generic.to_dict()) == {"reason", "meaning", "actions", "docs"}
