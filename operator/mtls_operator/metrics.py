"""Prometheus metrics (served by metricsserver.py): what an on-call engineer alerts on (expiry, readiness, failures)
and what capacity planning needs (issuance counts, reconcile latency, renewal lateness)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("namespace", "name")

certificate_expiry = Gauge(
    "mtls_operator_certificate_expiry_timestamp_seconds", "notAfter of the identity's current certificate", LABELS)
certificate_renewal = Gauge(
    "mtls_operator_certificate_renewal_timestamp_seconds", "when the identity's certificate will be renewed", LABELS)
identity_ready = Gauge("mtls_operator_identity_ready", "1 when the identity's Ready condition is True", LABELS)
issuance = Counter("mtls_operator_issuance_total", "certificates issued, by reason", ("reason",))
failures = Counter("mtls_operator_failures_total", "reconciles that ended not Ready, by reason", ("reason",))
reconcile_seconds = Histogram(
    "mtls_operator_reconcile_duration_seconds", "time to reconcile one identity",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
renewal_lateness = Histogram(
    "mtls_operator_renewal_lateness_seconds", "how long after its renewal time a scheduled look started",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
ca_ready = Gauge("mtls_operator_ca_ready", "1 when the issuing CA is loaded and valid")
leader = Gauge("mtls_operator_leader", "1 while this replica holds the lease and acts; 0 while it stands by")
ca_rotation_phase = Gauge(
    "mtls_operator_ca_rotation_phase", "root rotation: 0 stable, 1 propagating, 2 reissuing, 3 retiring")
ca_rotation_waiting = Gauge(
    "mtls_operator_ca_rotation_waiting",
    "identity Secrets (and bundle ConfigMaps) the current rotation phase waits for: without the new bundle, or with a "
    "leaf from the old root", ("waiting_for",))
ca_lost = Gauge(
    "mtls_operator_ca_lost",
    "1 while the CA Secret is missing but the cluster shows its root in use: no new root is minted until recovered")
renew_deferred = Counter(
    "mtls_operator_renew_requests_deferred_total",
    "renew requests (annotation) deferred by a rate limit, counted once per deferral, by limit", ("limit",))
pod_certificates = Counter(
    "mtls_operator_pod_certificates_total", "PodCertificateRequests answered by the signer, by result and reason",
    ("result", "reason"))
pod_certificate_seconds = Histogram(
    "mtls_operator_pod_certificate_duration_seconds", "from a PodCertificateRequest seen to its status written",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
pod_signer_serving = Gauge(
    "mtls_operator_pod_signer_serving", "1 while the PodCertificateRequest signer watches requests (the API is served)")
ca_expiry = Gauge("mtls_operator_ca_expiry_timestamp_seconds", "notAfter of the issuing CA")


def forget(namespace: str, name: str) -> None:
    """Drops a deleted identity's series, so thousands of churned identities do not grow the scrape forever."""
    for gauge in (certificate_expiry, certificate_renewal, identity_ready):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)

