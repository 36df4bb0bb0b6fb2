"""The one signing core behind both fronts — the MtlsIdentity reconciler (a key made here, written into a Secret) and
the PodCertificateRequest signer (a key made on the node, only its public half sent): the CA in force, the policy
grants, and the signing slots shared fairly by namespace. Neither front has a copy of any of them, so a root rotation,
a policy change or a namespace's burst reaches both the same way (the pattern of Kubernetes' certificate controllers:
several signers over one signing core).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import ca as ca_mod
from . import pki, policy
from .config import Settings
from .fairness import FairSlots

Shaped = tuple[pki.LeafRequest, dt.timedelta]  # the leaf to sign, and how far its notBefore is backdated


@dataclasses.dataclass(frozen=True)
class Signed:
    cert: x509.Certificate
    key: pki.PrivateKey | None  # made here (an identity's), or None (a pod's: it never leaves the node)
    ca: ca_mod.CA
    now: dt.datetime  # the signing time the validity was counted from


class NoCA(RuntimeError):
    """No usable CA is loaded (not yet, or broken): nothing can be signed until one is."""


class Issuer:
    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime]) -> None:
        self.settings, self.clock = settings, clock
        self.ca: ca_mod.CA | None = None  # set by the reconciler, which owns the CA Secret's watch and rotation
        self.policies: dict[str, policy.Rule] = {}  # MtlsIdentityPolicy name -> its grants
        # Key generation (RSA-4096 takes a second) and signing stay off the event loop, in slots shared round-robin by
        # namespace: one namespace's burst cannot starve another's issuance (fairness.py).
        self.slots = FairSlots(settings.max_concurrent_issuance)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called (on the event loop) whenever the CA in force or its trust bundle changes, or a CA appears."""
        self._listeners.append(listener)

    def changed(self) -> None:
        for listener in self._listeners:
            listener()

    def check_names(self, namespace: str, dns_names: tuple[str, ...] | list[str],
                    ip_addresses: tuple[str, ...] | list[str] = ()) -> str | None:
        return policy.check_names(namespace, dns_names, ip_addresses, self.policies.values(),
                                  self.settings.cluster_domain)

    async def sign(self, namespace: str, leaf: pki.LeafRequest | Callable[[dt.datetime, ca_mod.CA], Shaped],
                   key: Callable[[], pki.PrivateKey] | pki.PublicKey, *, ca: ca_mod.CA | None = None,
                   new_key: str = "") -> Signed:
        """Signs a leaf for `key`: a public key (the pod's), or a function making the private key (in the slot).
        `new_key` labels the key that function generates ("" when it hands back a kept one). `leaf` is the request, or
        a function shaping it from the time and CA at the moment of signing (taken in the slot: a long queue must not
        age a notBefore). With `ca`, that CA signs; otherwise the one in force when the slot is granted.

        Work with RSA in it (a new RSA key: up to a second; an RSA CA's signature: milliseconds) runs on a thread, off
        the event loop. Elliptic-curve work (a P-256 key and signature, about 0.2 ms) runs inline: handing it to a
        thread cost the loop more than the work itself (a thread woken, the GIL passed back and forth)."""
        async with self.slots.slot(namespace):
            authority = ca or self.ca
            if authority is None:
                raise NoCA("no usable CA is loaded")
            now = self.clock()
            request, backdate = leaf(now, authority) if callable(leaf) else (leaf, self.settings.backdate)

            def work() -> tuple[x509.Certificate, pki.PrivateKey | None]:
                private = key() if callable(key) else None
                public = private.public_key() if private is not None else key
                return pki.issue_leaf(request, public, authority.cert, authority.key, now, backdate), private

            inline = not new_key.startswith("RSA") and not isinstance(authority.key, rsa.RSAPrivateKey)
            cert, private = work() if inline else await asyncio.to_thread(work)
        return Signed(cert, private, authority, now)
