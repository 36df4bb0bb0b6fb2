"""Who may read /metrics: bearer token -> TokenReview -> SubjectAccessReview, cached briefly by the token's hash."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import pytest
from cryptography import x509

from mtls_operator import config, metricsserver
from mtls_operator.metricsauth import MetricsAuth, bearer_token


class FakeApiServer:
    def __init__(self) -> None:
        self.users = {"reader-token": {"username": "system:serviceaccount:mon:prom", "groups": ["g"]},
                      "other-token": {"username": "system:serviceaccount:mon:other"}}
        self.allowed = {"system:serviceaccount:mon:prom"}
        self.token_reviews = 0
        self.access_reviews: list[tuple[str, str, str]] = []
        self.down = False

    async def review_token(self, token: str):
        self.token_reviews += 1
        if self.down:
            raise ConnectionError("API server unreachable")
        await asyncio.sleep(0)
        return self.users.get(token)

    async def review_access(self, user, path: str, verb: str) -> bool:
        self.access_reviews.append((user["username"], path, verb))
        return user["username"] in self.allowed


def _auth(api: FakeApiServer, clock=lambda: 0.0) -> MetricsAuth:
    return MetricsAuth(api.review_token, api.review_access, clock=clock, ttl=10.0, size=3)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer a b", "token"])
def test_requests_without_a_bearer_token_are_401_and_ask_nobody(header) -> None:
    api = FakeApiServer()
    verdict = asyncio.run(_auth(api).check(header))
    assert verdict.status == 401 and api.token_reviews == 0
    assert bearer_token(header) is None


def test_allowed_denied_and_unknown_tokens() -> None:
    api = FakeApiServer()
    auth = _auth(api)

    async def go():
        return [await auth.check(h) for h in ("Bearer reader-token", "bearer other-token", "Bearer forged")]

    allowed, denied, unknown = asyncio.run(go())
    assert allowed.status == 200 and allowed.user == "system:serviceaccount:mon:prom"
    assert denied.status == 403 and "get /metrics" in denied.reason
    assert unknown.status == 401
    # The authorization asked is exactly controller-runtime's: get on the non-resource URL /metrics.
    assert ("system:serviceaccount:mon:prom", "/metrics", "get") in api.access_reviews


def test_verdicts_are_cached_briefly_and_bounded() -> None:
    api = FakeApiServer()
    now = [0.0]
    auth = _auth(api, clock=lambda: now[0])

    async def go():
        for _ in range(5):
            assert (await auth.check("Bearer reader-token")).status == 200
            assert (await auth.check("Bearer forged")).status == 401
        assert api.token_reviews == 2
        now[0] = 11.0  # past the TTL: asked again (a removed binding stops working)
        api.allowed.clear()
        assert (await auth.check("Bearer reader-token")).status == 403
        assert api.token_reviews == 3
        for i in range(10):  # many distinct bad tokens: the cache keeps at most `size`
            await auth.check(f"Bearer junk{i}")
        assert len(auth._cache) == 3
        # The cache is keyed by a hash: no token is kept in memory.
        assert not any("junk" in k or "reader" in k for k in auth._cache)

    asyncio.run(go())


def test_concurrent_requests_with_one_token_share_one_review() -> None:
    api = FakeApiServer()
    auth = _auth(api)

    async def go():
        return await asyncio.gather(*(auth.check("Bearer reader-token") for _ in range(20)))

    assert {v.status for v in asyncio.run(go())} == {200}
    assert api.token_reviews == 1


def test_an_unreachable_api_server_is_503_and_not_cached() -> None:
    api = FakeApiServer()
    auth = _auth(api)
    api.down = True
    assert asyncio.run(auth.check("Bearer reader-token")).status == 503
    api.down = False
    assert asyncio.run(auth.check("Bearer reader-token")).status == 200


def test_self_signed_serving_certificate_names_its_hosts_and_loads(tmp_path) -> None:
    cert_pem, key_pem = metricsserver.self_signed(["localhost", "10.0.0.7", "op.mtls-operator.svc"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "op.mtls-operator.svc"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    context = metricsserver.server_context("", ["localhost"])
    assert isinstance(context, ssl.SSLContext) and context.minimum_version >= ssl.TLSVersion.TLSv1_2
    # A mounted certificate is used as is.
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    metricsserver.server_context(str(tmp_path), [])
    assert subprocess.run(["openssl", "x509", "-noout", "-in", str(tmp_path / "tls.crt")]).returncode == 0


def test_listen_addresses_default_to_loopback() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    settings = config.from_args(parser.parse_args([]))
    assert settings.metrics_bind_address == "127.0.0.1" and settings.health_bind_address == "127.0.0.1"
    assert settings.metrics_secure is False
    settings = config.from_args(parser.parse_args(["--metrics-bind-address", "0.0.0.0", "--metrics-secure",
                                                   "--health-bind-address", "10.1.2.3"]))
    assert (settings.metrics_bind_address, settings.health_bind_address, settings.metrics_secure) == \
        ("0.0.0.0", "10.1.2.3", True)
    assert (settings.renew_burst, settings.renew_namespace_burst) == (3, 10)
