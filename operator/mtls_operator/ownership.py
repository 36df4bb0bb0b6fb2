"""Which Secrets the operator may treat as its own: proof, not a label. Pure.

Anyone who may create Secrets in a namespace can copy the managed-by label and an ownerReference to their own
MtlsIdentity. Such a look-alike must never be trusted, cached or counted (it would let a tenant grow the operator's
memory and hold a root rotation). A Secret is the operator's only when an identity that exists now *names* it:

- its controller ownerReference is an MtlsIdentity of the same namespace, by uid (the identity living now, not a
  deleted namesake);
- that identity's spec gives exactly this name as its Secret (`spec.secretName`, or `<name>-mtls`).

A tenant can copy its identity's uid into any number of Secrets; only the name test bounds them to one per identity.

So at most one Secret per identity is ever held, and its content is judged like any other input whenever it was
changed by anyone but the operator: the key must match the certificate, the certificate must verify against the
current CA and carry the identity's SPIFFE ID (plan.decide), or it is reissued. (A restart takes a Secret its identity's
status records at the version listed as the operator wrote it: plan.standing.) A tenant who edits the one Secret an
identity names gets it healed, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .compact import compact
from .tlssecret import controller_ref

# The only fields of an identity Secret the operator reads; anything else in a Secret's data is never kept.
DATA_KEYS = ("tls.crt", "tls.key", "ca.crt")


def claimed_owner(secret: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(namespace, identity name, identity uid) the Secret claims as its controller, or None: a claim, not a proof."""
    ref = controller_ref(secret)
    meta = secret.get("metadata") or {}
    if not ref.get("name") or not ref.get("uid") or not meta.get("namespace"):
        return None
    return meta["namespace"], ref["name"], ref["uid"]


def proves(secret: Mapping[str, Any], identity: Mapping[str, Any] | None, secret_name: str | None) -> bool:
    """Whether `identity` (the object the Secret's controller reference names, as cached; None if there is none) owns
    this Secret: same uid, and its spec names this Secret. `secret_name` is what the identity's parsed spec names
    (None when its spec is invalid: an identity that cannot be served owns nothing)."""
    claim = claimed_owner(secret)
    if claim is None or identity is None or secret_name is None:
        return False
    meta = identity.get("metadata") or {}
    return (meta.get("uid") == claim[2] and meta.get("namespace") == claim[0]
            and secret.get("metadata", {}).get("name") == secret_name)


def trimmed(secret: Mapping[str, Any]) -> dict[str, Any]:
    """The Secret as worth keeping in memory: the data fields the operator reads, compacted (no managedFields,
    repeated strings shared: compact.py)."""
    data = secret.get("data") or {}
    return compact({**secret, "data": {k: data[k] for k in DATA_KEYS if k in data}})
