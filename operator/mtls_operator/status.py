"""The MtlsIdentity status the operator wants to see, computed from facts (the certificate in the Secret, the outcome of
the last decision), so that an unchanged world yields an identical status and costs no write — after a restart too."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from . import pki, timestamps


class Ready:
    """Reasons of the Ready condition (the CRD's printer column shows them)."""

    ISSUED = "Issued"
    RENEWED = "Renewed"
    INVALID_SPEC = "InvalidSpec"
    SECRET_CONFLICT = "SecretConflict"
    CA_UNAVAILABLE = "CAUnavailable"
    ISSUANCE_FAILED = "IssuanceFailed"
    POLICY_DENIED = "PolicyDenied"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    SECRET_UNWRITABLE = "SecretUnwritable"  # immutable, or a write refused by admission: renewal impossible
    CA_LOST = "CALost"  # the CA Secret is gone while the cluster shows its root in use: nothing new is minted


def _condition(previous: Mapping[str, Any], ready: bool, reason: str, message: str, generation: int,
               now: dt.datetime) -> list[dict[str, Any]]:
    status = "True" if ready else "False"
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), {})
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    return [{
        "type": "Ready", "status": status, "reason": reason, "message": message[:1024],
        "observedGeneration": generation, "lastTransitionTime": since or timestamps.text(now),
    }]


def ready_message(serial_hex: str, not_after: str) -> str:
    return f"certificate {serial_hex[:16]}… valid until {not_after}"


def healthy(previous: Mapping[str, Any], secret_name: str, spiffe_id: str, cert: x509.Certificate,
            renewal: dt.datetime | None, revision: int, issuer_fingerprint: str, generation: int,
            now: dt.datetime, secret_version: str = "") -> dict[str, Any]:
    """The status of a served identity. `secret_version` is the Secret's resourceVersion when this reconcile wrote
    it; empty, the status keeps the version it had (plan.standing: a version recorded is one the operator wrote)."""
    not_after = cert.not_valid_after_utc
    revision_reason = Ready.RENEWED if revision > 1 else Ready.ISSUED
    out = {
        "observedGeneration": generation,
        "secretName": secret_name,
        "spiffeID": spiffe_id,
        "serialNumber": pki.serial_hex(cert),
        "notBefore": timestamps.text(cert.not_valid_before_utc),
        "notAfter": timestamps.text(not_after),
        "renewalTime": timestamps.text(renewal) if renewal else None,
        "revision": revision,
        "issuerFingerprint": issuer_fingerprint,
        "conditions": _condition(previous, True, revision_reason,
                                 ready_message(pki.serial_hex(cert), timestamps.text(not_after)), generation, now),
    }
    if secret_version:
        out["secretResourceVersion"] = secret_version
    return out


def failed(previous: Mapping[str, Any], reason: str, message: str, generation: int,
           now: dt.datetime) -> dict[str, Any]:
    """Keeps what the status said about the last good certificate (it may still be in use) and flips Ready."""
    return {**previous, "observedGeneration": generation,
            "conditions": _condition(previous, False, reason, message, generation, now)}


def differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return any(current.get(k) != v for k, v in desired.items())


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Only the fields that change (None removes one), for a JSON merge patch of the status subresource."""
    return {k: v for k, v in desired.items() if current.get(k) != v}
