"""The decision: given what an identity asks for, what its Secret holds, and the CA, what (if anything) to do, and when
to look again. Pure: no API calls, no clock reads. Every path the operator can take is chosen here, so every path is
unit-testable.

Order matters: ownership first (never touch a Secret that is not ours), then integrity (a broken or foreign certificate
is replaced whatever else holds), then intent (spec changed, renewal requested), then time (due, expired), and only then
cosmetic drift (a stale ca.crt or missing labels, fixed by rewriting the Secret around the same key and certificate).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import itertools
import typing
from collections.abc import Mapping
from typing import Any

from . import pki, status, timestamps, tlssecret
from .ca import CA
from .spec import IdentitySpec

# Never leave less than this fraction of the lifetime between renewal and expiry, however small renewBefore is: the
# kubelet needs time to swap the files and the workload time to reload them.
MARGIN_FRACTION = 0.1
MAX_MARGIN = dt.timedelta(minutes=10)
# Renewals are spread over up to this fraction of renewBefore, so identities created together do not renew together.
JITTER_FRACTION = 0.1
MAX_JITTER = dt.timedelta(minutes=5)


class Action(enum.Enum):
    NONE = "none"
    ISSUE = "issue"  # new certificate (and key, unless rotationPolicy Never keeps it)
    REFRESH = "refresh"  # rewrite the Secret around the same key and certificate (ca.crt, labels, annotations)
    CONFLICT = "conflict"  # the Secret exists and belongs to someone else: leave it alone
    UNWRITABLE = "unwritable"  # a write is needed but the Secret is immutable: report, back off, never sign


class Reason(enum.StrEnum):
    MISSING = "Missing"
    TAMPERED = "Tampered"
    CA_CHANGED = "CAChanged"
    SPEC_CHANGED = "SpecChanged"
    REQUESTED = "Requested"
    EXPIRED = "Expired"
    DUE = "Due"
    BUNDLE_CHANGED = "BundleChanged"
    METADATA_CHANGED = "MetadataChanged"
    UP_TO_DATE = "UpToDate"
    SECRET_CONFLICT = "SecretConflict"
    SECRET_UNWRITABLE = "SecretUnwritable"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    message: str = ""
    # When to look again: the renewal time, or expiry for a certificate that ends with its CA.
    renewal_time: dt.datetime | None = None
    reuse_key: bool = False


def renewal_time(cert_not_after: dt.datetime, spec: IdentitySpec, serial: int) -> dt.datetime:
    """notAfter - renewBefore, held at least a margin before expiry, minus a jitter that is fixed per certificate
    (derived from its serial, so a restarted operator computes the same time)."""
    duration = spec.duration
    margin = min(duration * MARGIN_FRACTION, MAX_MARGIN)
    lead = max(spec.renew_before, margin)
    # Bounded by half the time between issuance and the target, so jitter never pulls renewal before issuance.
    spread = min(lead * JITTER_FRACTION, (duration - lead) / 2, MAX_JITTER)
    return cert_not_after - lead - spread * ((serial % 1009) / 1009)


def _issue(reason: Reason, message: str, view: tlssecret.SecretView, spec: IdentitySpec,
           trusted_key: bool) -> Decision:
    keep = not spec.key.rotate and trusted_key and view.key_fits and view.key_label == spec.key.label
    return Decision(Action.ISSUE, reason, message, reuse_key=keep)


def decide(spec: IdentitySpec, view: tlssecret.SecretView, ca: CA, now: dt.datetime,
           renew_request: str = "") -> Decision:
    decision = _decide(spec, view, ca, now, renew_request)
    if view.owned and view.immutable and decision.action in (Action.ISSUE, Action.REFRESH):
        # Signing (and making a key) for a write the API server must refuse would only burn CPU and keys: say why.
        return Decision(Action.UNWRITABLE, Reason.SECRET_UNWRITABLE,
                        f"Secret {spec.secret_name} is immutable (immutable: true), so it cannot be written "
                        f"({decision.reason.value}: {decision.message})", renewal_time=decision.renewal_time)
    return decision


def _legacy_leaf(cert, view: tlssecret.SecretView, ca: CA) -> bool:
    """A leaf from a lost root that a recovery keeps while the new root propagates: issued by one of ca.legacy_roots,
    directly or through the intermediates its own Secret carries."""
    if not ca.legacy_roots:
        return False
    try:
        chain = [cert, *pki.load_chain(view.chain_pem)] if view.chain_pem else [cert]
    except pki.PKIError:
        return False
    if any(not pki.issued_by(lower, upper) for lower, upper in itertools.pairwise(chain)):
        return False
    return any(pki.issued_by(chain[-1], root) for root in ca.legacy_roots)


def _decide(spec: IdentitySpec, view: tlssecret.SecretView, ca: CA, now: dt.datetime,
            renew_request: str) -> Decision:
    if not view.exists:
        return Decision(Action.ISSUE, Reason.MISSING, f"Secret {spec.secret_name} does not exist")
    if not view.owned:
        return Decision(Action.CONFLICT, Reason.SECRET_CONFLICT,
                        f"Secret {spec.secret_name} exists and is not owned by this MtlsIdentity; it is left untouched")
    if view.cert is None or not view.key_pem:
        return _issue(Reason.TAMPERED, f"Secret content is unreadable ({view.problem})", view, spec, False)
    cert = view.cert
    if not view.key_fits:
        return _issue(Reason.TAMPERED, "tls.key does not belong to tls.crt", view, spec, False)
    legacy = False
    if not view.issued_by(ca.cert) and _legacy_leaf(cert, view, ca):
        legacy = True  # kept, chain and all, until the recovered root has reached every bundle
    elif not view.issued_by(ca.cert):
        if view.annotations.get(tlssecret.ANN_ISSUER) != ca.fingerprint:
            # The key is not kept even under rotationPolicy Never: nothing proves this pair came from us (the
            # annotation is editable), and signing a pasted-in key would hand its owner this identity.
            return _issue(Reason.CA_CHANGED, "the certificate was issued by a previous CA", view, spec, False)
        return _issue(Reason.TAMPERED, "tls.crt was not issued by the operator's CA", view, spec, False)
    if view.spiffe_ids != (spec.spiffe_id,):
        return _issue(Reason.TAMPERED, "tls.crt names another identity", view, spec, False)
    if view.annotations.get(tlssecret.ANN_SPEC_HASH) != spec.shape_hash or view.key_label != spec.key.label:
        return _issue(Reason.SPEC_CHANGED, "the spec asks for a different certificate", view, spec, True)
    if renew_request and view.annotations.get(tlssecret.ANN_RENEW_HANDLED) != renew_request:
        return _issue(Reason.REQUESTED, f"renewal requested ({tlssecret.ANN_RENEW_REQUEST}={renew_request})",
                      view, spec, True)

    not_after = cert.not_valid_after_utc
    due = renewal_time(not_after, spec, cert.serial_number)
    if now >= not_after:
        return _issue(Reason.EXPIRED, f"the certificate expired at {not_after.isoformat()}", view, spec, True)
    ends_with_ca = not_after >= ca.not_after - dt.timedelta(seconds=1)
    if now >= due and not ends_with_ca:
        return _issue(Reason.DUE, f"renewal was due at {due.isoformat()}", view, spec, True)
    # A certificate cut short by its CA's own expiry cannot be improved by reissuing from the same CA: wait for a new CA
    # (its event re-triggers us) instead of reissuing in a loop, and look again at expiry at the latest.
    next_look = not_after if ends_with_ca and now >= due else due

    if view.ca_pem != ca.bundle_pem or (view.chain_pem != ca.chain_pem() and not legacy):
        return Decision(Action.REFRESH, Reason.BUNDLE_CHANGED, "ca.crt or the chain is not the current one",
                        renewal_time=next_look)
    wanted_labels = tlssecret.desired_labels(spec)
    wanted_annotations = dict(spec.secret_annotations)
    if any(view.labels.get(k) != v for k, v in wanted_labels.items()) or any(
            view.annotations.get(k) != v for k, v in wanted_annotations.items()):
        return Decision(Action.REFRESH, Reason.METADATA_CHANGED, "labels or annotations differ from the template",
                        renewal_time=next_look)
    return Decision(Action.NONE, Reason.UP_TO_DATE, renewal_time=next_look)


class Standing(typing.NamedTuple):
    not_after: dt.datetime
    renewal_time: dt.datetime


def standing(spec: IdentitySpec, secret_meta: Mapping[str, Any], identity: Mapping[str, Any], ca: CA,
             now: dt.datetime) -> Standing | None:
    """A restart's shortcut past reading a Secret's data: decide() would find nothing to do, judged from the Secret's
    metadata and the identity's status alone. None when that cannot be shown: the data is read and decide() has its say.

    The proof is the resourceVersion: the status records the Secret's version as this operator last wrote it
    (status.secretResourceVersion), and any change to the Secret since gives it another. Unchanged, the annotations
    written with the data (tlssecret.build: the record of issuance, the digests of ca.crt and of the chain) describe
    that data, cross-checked with the status written from the certificate itself, and the checks below are
    decide()'s, in its order, on them. A tenant able to write its identity's status can make the
    operator trust its own Secret, which it can write anyway: nothing of another namespace is at stake."""
    state = identity.get("status") or {}
    meta = identity.get("metadata") or {}
    version = secret_meta.get("resourceVersion")
    if not version or state.get("secretResourceVersion") != version:
        return None
    ready = next((c for c in state.get("conditions") or () if c.get("type") == "Ready"), {})
    revision = state.get("revision")
    reason = status.Ready.RENEWED if isinstance(revision, int) and revision > 1 else status.Ready.ISSUED
    message = status.ready_message(str(state.get("serialNumber")), str(state.get("notAfter")))
    if (ready.get("status") != "True" or state.get("observedGeneration") != meta.get("generation", 0)
            or ready.get("reason") != reason or ready.get("message") != message):
        return None  # the status is not what _act would write: it writes it, after a full look
    if ca.legacy_roots or spec.restart_targets:
        return None  # a recovery's leaves and a workload roll are judged on the certificate itself
    annotations = secret_meta.get("annotations") or {}
    written = {**spec.secret_annotations, tlssecret.ANN_ISSUER: ca.fingerprint, tlssecret.ANN_SPIFFE_ID: spec.spiffe_id,
               tlssecret.ANN_SPEC_HASH: spec.shape_hash, tlssecret.ANN_BUNDLE: ca.bundle_digest,
               tlssecret.ANN_CHAIN: ca.chain_digest, tlssecret.ANN_SERIAL: state.get("serialNumber"),
               tlssecret.ANN_NOT_AFTER: state.get("notAfter"), tlssecret.ANN_REVISION: str(revision)}
    if (any(annotations.get(k) != v for k, v in written.items()) or state.get("issuerFingerprint") != ca.fingerprint
            or state.get("secretName") != spec.secret_name or state.get("spiffeID") != spec.spiffe_id):
        return None
    renew_request = (meta.get("annotations") or {}).get(tlssecret.ANN_RENEW_REQUEST, "")
    if renew_request and annotations.get(tlssecret.ANN_RENEW_HANDLED) != renew_request:
        return None
    labels = secret_meta.get("labels") or {}
    if any(labels.get(k) != v for k, v in tlssecret.desired_labels(spec).items()):
        return None
    try:
        not_after = timestamps.parse(annotations[tlssecret.ANN_NOT_AFTER])
        serial = int(annotations[tlssecret.ANN_SERIAL], 16)
    except (KeyError, TypeError, ValueError):
        return None
    due = renewal_time(not_after, spec, serial)
    if now >= due or state.get("renewalTime") != timestamps.text(due):
        return None
    return Standing(not_after, due)
