"""Shared material for the unit tests: settings, a root CA, and a way to make the Secret view of an issued identity."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from mtls_operator import ca as ca_mod
from mtls_operator import pki, spec, tlssecret
from mtls_operator.config import Settings

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
UID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def settings() -> Settings:
    return Settings(min_duration=dt.timedelta(seconds=10))


@pytest.fixture(scope="session")
def root() -> ca_mod.CA:
    return ca_mod.load(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1)), NOW)


@pytest.fixture
def identity(settings: Settings) -> spec.IdentitySpec:
    return spec.parse("payments", "api", {}, settings)


def issue_body(ident: spec.IdentitySpec, authority: ca_mod.CA, now: dt.datetime = NOW, revision: int = 1,
               key: pki.PrivateKey | None = None) -> dict:
    """A Secret exactly as the operator would have written it for `ident` at `now`."""
    key = key or pki.generate_key(ident.key.algorithm, ident.key.size)
    request = pki.LeafRequest(ident.spiffe_id, ident.dns_names, ident.ip_addresses, ident.server, ident.client,
                              ident.duration)
    cert = pki.issue_leaf(request, key.public_key(), authority.cert, authority.key, now, dt.timedelta(minutes=5))
    body = tlssecret.build(ident, UID, cert, key, authority.chain_pem(), authority.bundle_pem,
                           tlssecret.record(ident, cert, authority.fingerprint, revision, ""), "7")
    body["metadata"]["resourceVersion"] = "7"
    return body


def issue_view(ident: spec.IdentitySpec, authority: ca_mod.CA, now: dt.datetime = NOW, revision: int = 1,
               key: pki.PrivateKey | None = None, **changes) -> tlssecret.SecretView:
    """The view of that Secret."""
    view = tlssecret.read(issue_body(ident, authority, now, revision, key), UID)
    return dataclasses.replace(view, **changes) if changes else view


def swapped_key(ident: spec.IdentitySpec, authority: ca_mod.CA) -> tlssecret.SecretView:
    """The view of that Secret with another key of the same kind pasted into tls.key."""
    body = issue_body(ident, authority)
    other = pki.generate_key(ident.key.algorithm, ident.key.size)
    body["data"]["tls.key"] = tlssecret.b64(pki.key_to_pem(other))
    return tlssecret.read(body, UID)
