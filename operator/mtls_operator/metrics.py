"""Prometheus metrics (served by metricsserver.py): what an on-call engineer alerts on (expiry, readiness, failures)
and what capacity planning needs (issuance counts, reconcile latency, renewal lateness)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

LABELS = ("namespace", "name")

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


class IdentityGauges:
    """The per-identity gauges (ready, expiry, renewal): one small record per identity, turned into samples at scrape
    time. prometheus_client's labelled Gauge keeps an object with its own lock per series: three per identity came to
    about 2 KB an identity, 20 MB of a 10,000-identity operator's memory."""

    FAMILIES = (
        ("mtls_operator_identity_ready", "1 when the identity's Ready condition is True"),
        ("mtls_operator_certificate_expiry_timestamp_seconds", "notAfter of the identity's current certificate"),
        ("mtls_operator_certificate_renewal_timestamp_seconds", "when the identity's certificate will be renewed"),
    )

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], tuple[float, float | None, float | None]] = {}

    def serving(self, key: tuple[str, str], expiry: float, renewal: float | None = None) -> None:
        """Ready with a certificate valid until `expiry`, renewed at `renewal` (the last one kept when not given)."""
        previous = self._records.get(key)
        self._records[key] = (1.0, expiry, previous[2] if renewal is None and previous else renewal)

    def not_ready(self, key: tuple[str, str]) -> None:
        """Not Ready; the last certificate's times stay (a failed renewal leaves the old certificate in place)."""
        previous = self._records.get(key)
        self._records[key] = (0.0, *previous[1:]) if previous else (0.0, None, None)

    def forget(self, key: tuple[str, str]) -> None:
        """A deleted identity's series go, so thousands of churned identities do not grow the scrape forever."""
        self._records.pop(key, None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter([GaugeMetricFamily(name, text, labels=LABELS) for name, text in self.FAMILIES])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = [GaugeMetricFamily(name, text, labels=LABELS) for name, text in self.FAMILIES]
        for key, record in list(self._records.items()):
            for family, value in zip(families, record, strict=True):
                if value is not None:
                    family.add_metric(key, value)
        return iter(families)


identities = IdentityGauges()
REGISTRY.register(identities)
events_dropped = Counter(
    "mtls_operator_events_dropped_total",
    "Events never posted, by cause: full (the queue was full: the namespace with the most waiting lost its oldest), "
    "stopped (the process stopped, or lost the lease, with them waiting), failed (the API server refused the Event or "
    "could not be reached)", ["cause"])
for _cause in ("full", "stopped", "failed"):
    events_dropped.labels(_cause)  # each series exists from the start, at 0: a rate over it is 0, not "no data"
events_waiting = Gauge("mtls_operator_events_waiting", "Events queued behind the operator's other API calls")
