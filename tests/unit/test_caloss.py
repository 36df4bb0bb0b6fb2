"""CA loss: the evidence that a root is in use, the approval that must name it, and the recovery that keeps the lost
root in every bundle (and its leaves in place) until the new root has propagated."""

from __future__ import annotations

import dataclasses
import datetime as dt

from mtls_operator import ca as ca_mod
from mtls_operator import caloss, pki, plan, rotation, tlssecret
from mtls_operator.config import Settings
from mtls_operator.plan import Action, Reason

from .conftest import NOW, UID, issue_view

WHERE = "mtls-operator/mtls-operator-ca"


def _secret_body(ident, authority: ca_mod.CA, ca_secret: str = WHERE) -> dict:
    view = issue_view(ident, authority)
    body = tlssecret.build(ident, UID, view.cert, view.private_key(), authority.chain_pem(), authority.bundle_pem,
                           tlssecret.record(ident, view.cert, authority.fingerprint, 1, "", ca_secret), "7")
    return body


def _authority(authority: ca_mod.CA) -> dict:
    return {"status": {"issuerFingerprint": authority.fingerprint, "trustAnchors": [
        {"fingerprint": pki.fingerprint(c)} for c in pki.load_chain(authority.bundle_pem)]}}


def test_nothing_in_use_means_a_fresh_install() -> None:
    assert not caloss.gather([], None, WHERE, None, NOW).in_use


def test_issued_secrets_and_the_authority_show_the_root_in_use(identity, root) -> None:
    from_secrets = caloss.gather([_secret_body(identity, root)], None, WHERE, None, NOW)
    assert from_secrets.in_use and from_secrets.issuers == {root.fingerprint} and from_secrets.secrets == 1
    assert from_secrets.anchors == ()  # a Secret alone does not vouch for a root to keep in every bundle
    from_authority = caloss.gather([], _authority(root), WHERE, None, NOW)
    assert from_authority.in_use and from_authority.issuers == {root.fingerprint}
    both = caloss.gather([_secret_body(identity, root)], _authority(root), WHERE, None, NOW)
    assert both.anchors == (root.cert,)


def test_another_ca_secrets_certificates_are_not_evidence(identity, root) -> None:
    other = caloss.gather([_secret_body(identity, root, "mtls-operator/other-ca")], None, WHERE, None, NOW)
    assert not other.in_use


def test_a_tenants_look_alike_root_is_never_kept(identity, root) -> None:
    evil = ca_mod.load(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1)), NOW)
    evidence = caloss.gather([_secret_body(identity, evil), _secret_body(identity, root)], _authority(root), WHERE,
                             None, NOW)
    assert evidence.anchors == (root.cert,)  # the look-alike can only make the operator wait for an approval


def test_the_approval_must_name_the_lost_root(root) -> None:
    evidence = caloss.gather([], _authority(root), WHERE, None, NOW)
    assert not caloss.approved(evidence, {})
    assert not caloss.approved(evidence, {caloss.ANN_APPROVE: "yes"})
    assert not caloss.approved(evidence, {caloss.ANN_APPROVE: root.fingerprint[:8]})  # too short to be deliberate
    assert not caloss.approved(evidence, {caloss.ANN_APPROVE: "0" * 16})  # an earlier loss's approval
    assert caloss.approved(evidence, {caloss.ANN_APPROVE: caloss.approval_hint(evidence)})
    text = caloss.message(evidence, WHERE, "mtls-operator.mtls-operator-ca")
    assert caloss.approval_hint(evidence) in text and "restore the CA Secret" in text


def test_recovery_keeps_the_old_root_and_its_leaves_until_the_new_one_propagated(identity, root) -> None:
    evidence = caloss.gather([_secret_body(identity, root)], _authority(root), WHERE, None, NOW)
    data, annotations = caloss.recovery_data(evidence, Settings(), NOW)
    assert annotations[rotation.ANN_PHASE] == rotation.Phase.PROPAGATING.value
    new = ca_mod.load(data, NOW)
    assert pki.load_chain(new.bundle_pem) == [root.cert, new.cert]  # old and new side by side
    propagating = dataclasses.replace(new, legacy_roots=caloss.legacy_roots(new, annotations))
    assert propagating.legacy_roots == (root.cert,)

    old_leaf = issue_view(identity, root)
    d = plan.decide(identity, old_leaf, propagating, NOW + dt.timedelta(minutes=1))
    assert (d.action, d.reason) == (Action.REFRESH, Reason.BUNDLE_CHANGED)  # kept: only the bundle grows
    # Once Propagating is over (the marker goes at PROMOTE), the lost root's leaves are reissued.
    promoted = {k: v for k, v in annotations.items() if k != caloss.ANN_RECOVERY}
    assert caloss.legacy_roots(new, {**promoted, rotation.ANN_PHASE: "Reissuing"}) == ()
    d = plan.decide(identity, old_leaf, new, NOW + dt.timedelta(minutes=1))
    assert (d.action, d.reason) == (Action.ISSUE, Reason.CA_CHANGED)


def test_without_a_known_old_root_the_approval_makes_a_plain_root(identity, root) -> None:
    evidence = caloss.gather([_secret_body(identity, root)], None, WHERE, None, NOW)
    data, annotations = caloss.recovery_data(evidence, Settings(), NOW)
    assert annotations == {} and data["ca.crt"] == data["tls.crt"]
