"""The decision table: every path plan.decide can take, and the renewal-time rules."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID

from mtls_operator import ca as ca_mod
from mtls_operator import pki, plan, spec, tlssecret
from mtls_operator.config import Settings
from mtls_operator.plan import Action, Reason

from .conftest import NOW, UID, issue_body, issue_view, swapped_key


def test_missing_secret_is_issued(identity, root) -> None:
    d = plan.decide(identity, tlssecret.ABSENT, root, NOW)
    assert (d.action, d.reason) == (Action.ISSUE, Reason.MISSING)


def test_foreign_secret_is_a_conflict_never_an_issue(identity, root) -> None:
    foreign = tlssecret.read({"metadata": {"name": identity.secret_name}, "data": {}}, UID)
    d = plan.decide(identity, foreign, root, NOW)
    assert (d.action, d.reason) == (Action.CONFLICT, Reason.SECRET_CONFLICT)


def test_secret_owned_by_another_identity_uid_is_a_conflict(identity, root) -> None:
    view = issue_view(identity, root)
    body = {"metadata": {"ownerReferences": [{"apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity",
                                              "name": "api", "uid": "other", "controller": True}]}}
    assert not tlssecret.read(body, UID).owned
    assert view.owned


def test_fresh_certificate_needs_nothing_and_schedules_renewal(identity, root) -> None:
    view = issue_view(identity, root)
    d = plan.decide(identity, view, root, NOW + dt.timedelta(minutes=1))
    assert d.action is Action.NONE
    assert d.renewal_time is not None
    assert NOW + identity.duration - identity.renew_before - dt.timedelta(minutes=5) <= d.renewal_time
    assert d.renewal_time <= NOW + identity.duration - identity.renew_before


@pytest.mark.parametrize("tamper, detail", [
    (lambda i, r: swapped_key(i, r), "tls.key does not belong"),
    (lambda i, r: issue_view(i, r, cert=None, problem="tls.crt: garbage"), "unreadable"),
    (lambda i, r: issue_view(i, r, key_pem=b"", key_label="", key_fits=False, problem="tls.key: garbage"),
     "unreadable"),
])
def test_tampered_content_is_reissued_with_a_new_key(identity, root, tamper, detail) -> None:
    d = plan.decide(identity, tamper(identity, root), root, NOW)
    assert (d.action, d.reason) == (Action.ISSUE, Reason.TAMPERED)
    assert detail in d.message
    assert not d.reuse_key


def test_a_pasted_certificate_whose_extensions_do_not_parse_is_healed(identity, root) -> None:
    """A tenant may paste into its own Secret a leaf (even one our CA signed long ago, or self-made) whose SAN does not
    parse: reading the Secret must not raise — every reconcile would fail and the Secret never be healed."""
    key = pki.generate_key("ECDSA", 256)
    broken_san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x87\x01\x00")
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(root.cert.subject)
            .public_key(key.public_key()).serial_number(7).not_valid_before(NOW - dt.timedelta(minutes=1))
            .not_valid_after(NOW + dt.timedelta(hours=1)).add_extension(broken_san, critical=True)
            .sign(root.key, hashes.SHA256()))
    view = tlssecret.read(tlssecret.build(identity, UID, leaf, key, b"", root.bundle_pem, {}), UID)
    assert view.cert is None and view.problem.startswith("tls.crt:")
    d = plan.decide(identity, view, root, NOW)
    assert (d.action, d.reason, d.reuse_key) == (Action.ISSUE, Reason.TAMPERED, False)


def test_certificate_from_a_foreign_ca_is_tampered(identity, root) -> None:
    other = ca_mod.load(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1)), NOW)
    view = issue_view(identity, other, annotations={tlssecret.ANN_ISSUER: root.fingerprint,
                                                    tlssecret.ANN_SPEC_HASH: identity.shape_hash})
    d = plan.decide(identity, view, root, NOW)
    assert (d.action, d.reason) == (Action.ISSUE, Reason.TAMPERED)


def test_new_ca_reissues_as_ca_changed_with_a_new_key(root, settings) -> None:
    keep = spec.parse("payments", "api", {"privateKey": {"rotationPolicy": "Never"}}, settings)
    old = ca_mod.load(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1)), NOW)
    d = plan.decide(keep, issue_view(keep, old), root, NOW)
    assert (d.action, d.reason) == (Action.ISSUE, Reason.CA_CHANGED)
    assert not d.reuse_key  # a pair we cannot prove is ours is never signed again


def test_certificate_of_another_identity_is_tampered(identity, root, settings) -> None:
    other = spec.parse("payments", "db", {}, settings)
    stolen = issue_view(other, root, annotations=issue_view(identity, root).annotations)
    d = plan.decide(identity, stolen, root, NOW)
    assert (d.action, d.reason) == (Action.ISSUE, Reason.TAMPERED)
    assert "another identity" in d.message


@pytest.mark.parametrize("change", [
    {"dnsNames": ["api.payments.svc"]},
    {"usages": ["client"]},
    {"duration": "12h"},
    {"privateKey": {"algorithm": "RSA"}},
    {"serviceAccountName": "other"},
    {"ipAddresses": ["10.0.0.1"]},
])
def test_spec_change_that_shapes_the_certificate_reissues(identity, root, settings, change) -> None:
    changed = spec.parse("payments", "api", change, settings)
    d = plan.decide(changed, issue_view(identity, root), root, NOW)
    assert d.action is Action.ISSUE
    assert d.reason in (Reason.SPEC_CHANGED, Reason.TAMPERED)  # a new service account is a new SPIFFE ID


@pytest.mark.parametrize("change", [{"renewBefore": "1h"}, {"privateKey": {"rotationPolicy": "Never"}}])
def test_spec_change_that_does_not_shape_the_certificate_does_not_reissue(identity, root, settings, change) -> None:
    changed = spec.parse("payments", "api", change, settings)
    assert plan.decide(changed, issue_view(identity, root), root, NOW).action is Action.NONE


def test_template_change_refreshes_metadata_without_reissuing(identity, root, settings) -> None:
    changed = spec.parse("payments", "api", {"secretTemplate": {"labels": {"team": "pay"}}}, settings)
    d = plan.decide(changed, issue_view(identity, root), root, NOW)
    assert (d.action, d.reason) == (Action.REFRESH, Reason.METADATA_CHANGED)


def test_stale_bundle_is_refreshed_without_reissuing(identity, root) -> None:
    view = issue_view(identity, root, ca_pem=b"old bundle")
    d = plan.decide(identity, view, root, NOW)
    assert (d.action, d.reason) == (Action.REFRESH, Reason.BUNDLE_CHANGED)


def test_due_and_expired(identity, root) -> None:
    view = issue_view(identity, root)
    due = plan.renewal_time(view.cert.not_valid_after_utc, identity, view.cert.serial_number)
    assert plan.decide(identity, view, root, due - dt.timedelta(seconds=1)).action is Action.NONE
    d = plan.decide(identity, view, root, due)
    assert (d.action, d.reason, d.reuse_key) == (Action.ISSUE, Reason.DUE, False)
    d = plan.decide(identity, view, root, view.cert.not_valid_after_utc)
    assert (d.action, d.reason) == (Action.ISSUE, Reason.EXPIRED)


def test_rotation_policy_never_keeps_a_trusted_key_only(root, settings) -> None:
    keep = spec.parse("payments", "api", {"privateKey": {"rotationPolicy": "Never"}}, settings)
    view = issue_view(keep, root)
    due = plan.renewal_time(view.cert.not_valid_after_utc, keep, view.cert.serial_number)
    assert plan.decide(keep, view, root, due).reuse_key
    tampered = swapped_key(keep, root)
    assert not tampered.key_fits and tampered.key_label == view.key_label
    assert not plan.decide(keep, tampered, root, due).reuse_key
    # A key of the wrong type is never kept, whatever the policy.
    rsa = spec.parse("payments", "api", {"privateKey": {"rotationPolicy": "Never", "algorithm": "RSA"}}, settings)
    assert not plan.decide(rsa, view, root, NOW).reuse_key


def test_renew_request_reissues_once(identity, root) -> None:
    view = issue_view(identity, root)
    d = plan.decide(identity, view, root, NOW, renew_request="2026-11-26T12:00")
    assert (d.action, d.reason) == (Action.ISSUE, Reason.REQUESTED)
    handled = dataclasses.replace(view, annotations={**view.annotations,
                                                     tlssecret.ANN_RENEW_HANDLED: "2026-11-26T12:00"})
    assert plan.decide(identity, handled, root, NOW, renew_request="2026-11-26T12:00").action is Action.NONE


def test_certificate_cut_short_by_its_ca_does_not_loop(identity, settings) -> None:
    """A CA that ends before the identity's duration caps every leaf; reissuing would give the same leaf forever."""
    short = ca_mod.load(ca_mod.new_root(dataclasses.replace(settings, ca_lifetime=dt.timedelta(hours=2)), NOW), NOW)
    view = issue_view(identity, short)
    assert view.cert.not_valid_after_utc == short.not_after
    d = plan.decide(identity, view, short, NOW + dt.timedelta(hours=1))
    assert d.action is Action.NONE
    assert d.renewal_time == view.cert.not_valid_after_utc  # looked at again when it expires, not in a loop


@pytest.mark.parametrize("duration, renew_before", [
    ("24h", None), ("10s", "9s"), ("10h", "9h59m"), ("90m", "1s"), ("8760h", "1h"), ("30s", "20s"),
])
def test_renewal_time_is_between_issuance_and_expiry_with_a_margin(settings, duration, renew_before) -> None:
    raw = {"duration": duration, **({"renewBefore": renew_before} if renew_before else {})}
    ident = spec.parse("ns", "x", raw, dataclasses.replace(settings, max_duration=dt.timedelta(days=400)))
    not_after = NOW + ident.duration
    margin = min(ident.duration * plan.MARGIN_FRACTION, plan.MAX_MARGIN)
    for serial in (0, 1, 500, 1008, 2**159):
        when = plan.renewal_time(not_after, ident, serial)
        assert NOW < when <= not_after - margin
        assert when <= not_after - ident.renew_before


def test_renewal_jitter_spreads_identities_and_is_stable(identity) -> None:
    not_after = NOW + identity.duration
    times = {plan.renewal_time(not_after, identity, serial) for serial in range(0, 1009 * 3, 7)}
    assert len(times) > 100  # spread out
    assert plan.renewal_time(not_after, identity, 42) == plan.renewal_time(not_after, identity, 42)


def test_a_padded_key_is_kept_as_the_key_alone(identity, root) -> None:
    """Text around tls.key's PEM block is accepted by the parser; the view (held for as long as the Secret is
    unchanged) keeps the key re-encoded, not a tenant's padding."""
    key = pki.generate_key("ECDSA", 256)
    body = issue_body(identity, root, key=key)
    body["data"]["tls.key"] = tlssecret.b64(b"x" * 100_000 + b"\n" + pki.key_to_pem(key) + b"y" * 100_000)
    view = tlssecret.read(body, UID)
    assert view.key_fits and view.key_pem == pki.key_to_pem(key) and len(view.key_pem) < 1000
