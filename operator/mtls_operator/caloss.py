"""CA loss: the CA Secret is gone, but the cluster shows that a root was in use. Pure: what the evidence is, what to
tell the on-call engineer, whether they approved a new root, and the data of a new root that rebuilds trust with the
old one kept beside it.

Minting a fresh root silently would swap every leaf at once, with no overlap: peers that have not synced the new bundle
reject the new leaves. So the operator mints nothing while evidence of the old root exists:

- issued Secrets carry its fingerprint (tlssecret.ANN_ISSUER, tied to this CA Secret by tlssecret.ANN_CA_SECRET;
  Secrets from before that annotation count too);
- the MtlsAuthority names the issuer and its trust anchors (its status survives the CA Secret);
- the CA this process had loaded, when the Secret is deleted under a running operator.

Recovery is either restoring the Secret (from a backup: picked up live), or an explicit approval on the MtlsAuthority:
`mtls-operator.io/replace-lost-root=<the lost issuer fingerprint, or its first 16 hex characters>`. The value must
name the lost root, so an approval left over from an earlier loss never approves the next one. On approval a new root is
made with the old trust anchors still in every bundle (when their certificates are known: from issued Secrets' ca.crt,
and named by the MtlsAuthority or the CA this process had loaded), and the ordinary overlap phases run from
Propagating: leaves of the old root stay until the new root has reached every bundle, then are reissued; the old root is
dropped after the grace period.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509

from . import ca as ca_mod
from . import pki, rotation, timestamps, tlssecret
from .config import Settings
from .spec import GROUP

ANN_APPROVE = f"{GROUP}/replace-lost-root"  # on the MtlsAuthority: a user's approval of a new root
ANN_RECOVERY = f"{GROUP}/recovered-from"  # on a recovered CA Secret: the lost anchors' fingerprints, comma-separated
MIN_APPROVAL = 16  # hex characters of the fingerprint an approval must quote


@dataclasses.dataclass(frozen=True)
class Evidence:
    issuers: frozenset[str]  # fingerprints of the lost issuing CA(s)
    anchors: tuple[x509.Certificate, ...]  # the lost trust anchors whose certificates are known and vouched for
    secrets: int  # issued Secrets that show the lost root in use

    @property
    def in_use(self) -> bool:
        return bool(self.issuers)


NONE = Evidence(frozenset(), (), 0)


def gather(secrets: Iterable[Mapping[str, Any]], authority: Mapping[str, Any] | None, ca_secret: str,
           loaded: ca_mod.CA | None, now: dt.datetime) -> Evidence:
    """What the cluster shows of the CA that was in use. `secrets` are the managed Secrets (bodies), `ca_secret`
    "<namespace>/<name>" of the missing CA Secret, `loaded` the CA this process had before it vanished.

    Anchors are kept only when vouched for by the MtlsAuthority (written by the operator, cluster-scoped) or the CA
    loaded here: a tenant can write a look-alike Secret with any ca.crt, and must not get its own root into every
    bundle. A tenant's look-alike can at worst make the operator wait for an approval."""
    status_ = (authority or {}).get("status") or {}
    vouched = {a.get("fingerprint", "") for a in status_.get("trustAnchors") or []} - {""}
    issuers = {status_["issuerFingerprint"]} if status_.get("issuerFingerprint") else set()
    if loaded is not None:
        issuers.add(loaded.fingerprint)
        vouched |= {pki.fingerprint(c) for c in pki.load_chain(loaded.bundle_pem)}
    candidates: dict[str, x509.Certificate] = {}
    if loaded is not None:
        candidates.update({pki.fingerprint(c): c for c in pki.load_chain(loaded.bundle_pem)})
    count = 0
    seen_bundles: set[bytes] = set()  # most Secrets carry the same ca.crt: parse each distinct one once
    for body in secrets:
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        issuer = annotations.get(tlssecret.ANN_ISSUER)
        if not issuer or not tlssecret.controller_ref(body):
            continue
        if annotations.get(tlssecret.ANN_CA_SECRET, ca_secret) != ca_secret:
            continue  # issued from another CA Secret (another operator instance): not ours to grieve
        count += 1
        issuers.add(issuer)
        bundle = tlssecret.decode_field(body.get("data") or {}, "ca.crt")
        if not bundle or bundle in seen_bundles:
            continue
        seen_bundles.add(bundle)
        try:
            for cert in pki.load_chain(bundle):
                candidates.setdefault(pki.fingerprint(cert), cert)
        except pki.PKIError:
            continue
    anchors = tuple(c for fp, c in sorted(candidates.items()) if fp in vouched and pki.is_ca(c)
                    and c.not_valid_after_utc > now)
    return Evidence(frozenset(issuers), anchors, count)


def approval_hint(evidence: Evidence) -> str:
    """The value an approval must carry: the lost issuer's fingerprint, first 16 hex characters (any one of them)."""
    return sorted(evidence.issuers)[0][:MIN_APPROVAL] if evidence.issuers else ""


def approved(evidence: Evidence, annotations: Mapping[str, str]) -> bool:
    value = (annotations.get(ANN_APPROVE) or "").strip().lower()
    return len(value) >= MIN_APPROVAL and any(fp.startswith(value) for fp in evidence.issuers)


def message(evidence: Evidence, where: str, authority_name: str) -> str:
    """For the log, the Warning Event, the MtlsAuthority and every identity that needs a certificate: what happened,
    what is safe, and the two ways out."""
    fps = ", ".join(fp[:16] + "…" for fp in sorted(evidence.issuers))
    kept = (f"{len(evidence.anchors)} old trust anchor(s) are known and will stay in every bundle until the new root "
            "has reached every workload" if evidence.anchors else
            "no old trust anchor is known by certificate, so a new root would replace it with no overlap")
    return (f"CA Secret {where} is missing, but root {fps} is in use ({evidence.secrets} issued Secrets carry it); "
            f"no new root is minted without an explicit approval. Certificates still valid stay in use; nothing new "
            f"is issued. Recover: restore the CA Secret from a backup (picked up live), or approve a new root with "
            f"`kubectl annotate mtlsauthority {authority_name} {ANN_APPROVE}={approval_hint(evidence)} --overwrite` "
            f"({kept}).")


def recovery_data(evidence: Evidence, settings: Settings, now: dt.datetime) -> tuple[dict[str, bytes], dict[str, str]]:
    """A new root's Secret data and annotations. With old anchors known: the bundle holds them and the new root, and the
    rotation starts in Propagating (rotation.py), so the overlap phases carry the fleet over; otherwise a plain root."""
    data = ca_mod.new_root(settings, now)
    if not evidence.anchors:
        return data, {}
    data["ca.crt"] = pki.to_pem(*evidence.anchors) + data["tls.crt"]
    annotations = {rotation.ANN_PHASE: rotation.Phase.PROPAGATING.value, rotation.ANN_SINCE: timestamps.text(now),
                   ANN_RECOVERY: ",".join(pki.fingerprint(a) for a in evidence.anchors)}
    return data, annotations


def legacy_roots(authority: ca_mod.CA, annotations: Mapping[str, str]) -> tuple[x509.Certificate, ...]:
    """While a recovered root propagates, the old anchors whose leaves are kept (plan.decide)."""
    wanted = set(filter(None, (annotations.get(ANN_RECOVERY) or "").split(",")))
    if not wanted or rotation.parse_state(annotations).phase is not rotation.Phase.PROPAGATING:
        return ()
    return tuple(c for c in pki.load_chain(authority.bundle_pem) if pki.fingerprint(c) in wanted)
