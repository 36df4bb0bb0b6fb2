"""The per-identity gauges: what a scrape shows through an identity's life (issued, failing, renewed, deleted)."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from mtls_operator.metrics import IdentityGauges
from mtls_operator.metricsserver import MetricsServer


def _scrape(gauges: IdentityGauges) -> list[str]:
    registry = CollectorRegistry()
    registry.register(gauges)
    return [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]


def test_an_identity_through_its_life() -> None:
    gauges = IdentityGauges()
    key = ("shop", "web")
    gauges.not_ready(key)  # refused before it ever had a certificate: only the ready series
    assert _scrape(gauges) == ['mtls_operator_identity_ready{name="web",namespace="shop"} 0.0']
    gauges.serving(key, 2000.0, 1500.0)
    assert _scrape(gauges) == [
        'mtls_operator_identity_ready{name="web",namespace="shop"} 1.0',
        'mtls_operator_certificate_expiry_timestamp_seconds{name="web",namespace="shop"} 2000.0',
        'mtls_operator_certificate_renewal_timestamp_seconds{name="web",namespace="shop"} 1500.0',
    ]
    gauges.not_ready(key)  # a failed renewal: the old certificate's times stay, for the expiry alert
    assert 'mtls_operator_identity_ready{name="web",namespace="shop"} 0.0' in _scrape(gauges)
    assert 'mtls_operator_certificate_expiry_timestamp_seconds{name="web",namespace="shop"} 2000.0' in _scrape(gauges)
    gauges.serving(key, 3000.0)  # still served without a CA: the renewal time is kept
    assert 'mtls_operator_certificate_renewal_timestamp_seconds{name="web",namespace="shop"} 1500.0' in _scrape(gauges)
    gauges.serving(("bank", "db"), 4000.0, 3500.0)
    gauges.forget(key)
    assert not [line for line in _scrape(gauges) if 'namespace="shop"' in line]
    assert len(_scrape(gauges)) == 3


def test_a_scrape_restricted_to_some_series_does_not_make_the_identity_samples(monkeypatch) -> None:
    """`/metrics?name[]=...`: what a poller of one series asks for (a bench watching the reconcile count); the
    per-identity gauges' collector is not asked for its thousands of samples."""
    from mtls_operator import metrics as metrics_module

    gauges = metrics_module.identities
    collected = []
    real_collect = gauges.collect
    monkeypatch.setattr(gauges, "collect", lambda: collected.append(1) or real_collect())
    gauges.serving(("shop", "web"), 2000.0, 1500.0)
    metrics_module.ca_ready.set(1)

    async def go() -> tuple[str, str]:
        async with TestClient(TestServer(MetricsServer("127.0.0.1", 0).app())) as client:
            some = await (await client.get("/metrics", params={"name[]": "mtls_operator_ca_ready"})).text()
            assert not collected
            everything = await (await client.get("/metrics")).text()
            return some, everything

    try:
        some, everything = asyncio.run(go())
    finally:
        gauges.forget(("shop", "web"))
    assert [line for line in some.splitlines() if not line.startswith("#")] == ["mtls_operator_ca_ready 1.0"]
    assert 'mtls_operator_identity_ready{name="web",namespace="shop"} 1.0' in everything
    assert collected


def test_a_reconcile_that_outlives_its_identity_brings_no_series_back(settings) -> None:
    """Deleted while its reconcile awaited the API: the deletion removed its series, and the reconcile's end (a
    failure report, or Ready) must not make them again — thousands of churned identities would grow the scrape."""
    from mtls_operator import metrics as metrics_module
    from mtls_operator.reconciler import Reconciler

    r = Reconciler(settings, kube=None)  # type: ignore[arg-type]
    key = ("shop", "gone")
    r._gauge(key, False)
    r._gauge(key, True, 2000.0, 1500.0)
    assert ("shop", "gone") not in metrics_module.identities._records
    r.identities.put(key, {"metadata": {"namespace": "shop", "name": "gone", "uid": "u", "resourceVersion": "1"}})
    r._gauge(key, True, 2000.0, 1500.0)
    try:
        assert metrics_module.identities._records[key] == (1.0, 2000.0, 1500.0)
    finally:
        metrics_module.identities.forget(key)
