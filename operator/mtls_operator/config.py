"""Operator settings: one frozen object built once from flags and environment, passed to everything that needs it.

Every flag has an environment twin (MTLS_<FLAG>, dashes as underscores) so the Helm chart can set them either
way; a flag on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os

from .durations import parse_duration

KEY_CHOICES = ("ECDSA-256", "ECDSA-384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")


@dataclasses.dataclass(frozen=True)
class Settings:
    ca_secret_name: str = "mtls-operator-ca"
    ca_namespace: str = "mtls-operator"
    ca_key: str = "ECDSA-256"
    # "root": leaves are issued by the root itself. "intermediate": by an intermediate the operator signs with a root
    # kept in <ca_secret_name>-root, renewed (with no change to what peers trust) ca_rotate_before (at most a third of
    # its lifetime) before it expires.
    ca_mode: str = "root"
    intermediate_lifetime: dt.timedelta = dt.timedelta(days=90)
    ca_lifetime: dt.timedelta = dt.timedelta(days=3650)
    # Root rotation (roots the operator created): start this long before expiry; wait this long with both roots in
    # every bundle before issuing from the new one (at least a kubelet sync period plus its cache); keep the old root
    # trusted this long after the last leaf moved.
    ca_rotate_before: dt.timedelta = dt.timedelta(days=30)
    ca_propagation: dt.timedelta = dt.timedelta(minutes=3)
    ca_grace: dt.timedelta = dt.timedelta(minutes=10)
    ca_stall: dt.timedelta = dt.timedelta(hours=1)
    # The trust-bundle ConfigMap in every namespace holding identities (and these): "" turns it off.
    bundle_configmap: str = "mtls-trust-bundle"
    bundle_namespaces: tuple[str, ...] = ()
    # A workload named in restartTargets is rolled at most this often (a burst of reissues rolls it once).
    restart_min_interval: dt.timedelta = dt.timedelta(minutes=5)
    # Leaves reissued per second when the issuing CA changes (a rotation, a replaced CA): no storm on the API server.
    reissue_rate: float = 50.0
    trust_domain: str = "cluster.local"
    cluster_domain: str = "cluster.local"
    min_duration: dt.timedelta = dt.timedelta(hours=1)
    max_duration: dt.timedelta = dt.timedelta(days=90)
    # notBefore is set this far in the past, so a peer whose clock runs behind still accepts a fresh certificate.
    backdate: dt.timedelta = dt.timedelta(minutes=5)
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = 8080
    health_port: int = 8081
    # How many certificates may be signed at once; a cap on CPU bursts when many identities fall due together.
    max_concurrent_issuance: int = 8
    # The API client's connection pool and worker threads: one request in flight per thread.
    api_workers: int = 32
    # Only the holder of this Lease (in ca_namespace) acts; other replicas stand by.
    leader_election: bool = True
    lease_name: str = "mtls-operator"
    lease_duration: dt.timedelta = dt.timedelta(seconds=15)  # how long a silent leader keeps the lease
    # Issue only for ServiceAccounts that exist: a SPIFFE ID that names no workload is most likely a typo.
    require_service_account: bool = True
    # Renew requests (the mtls-operator.io/renew annotation) per identity and per namespace: a burst, then one per
    # interval (fairness.RenewLimits says why these numbers). A burst of 0 turns that limit off.
    renew_burst: int = 3
    renew_interval: dt.timedelta = dt.timedelta(minutes=1)
    renew_namespace_burst: int = 10
    renew_namespace_interval: dt.timedelta = dt.timedelta(seconds=6)
    # Where /metrics and /healthz listen. Loopback by default: /metrics names every namespace's identities. The chart
    # binds both to the pod IP (the kubelet probes it), and can serve /metrics over HTTPS with TokenReview and
    # SubjectAccessReview checks (metrics_secure).
    metrics_bind_address: str = "127.0.0.1"
    health_bind_address: str = "127.0.0.1"
    metrics_secure: bool = False
    metrics_cert_dir: str = ""  # tls.crt and tls.key for the secure endpoint; empty: a self-signed one made at start
    # The PodCertificateRequest signer (podsigner.py): its name ("" turns it off), the longest pod certificate it
    # signs (the API's floor is one hour; Kubernetes' own signers stop at 24 h), and which namespaces may use it: a
    # label selector on namespaces, which only cluster admins can label ("" means every namespace served).
    pod_signer: str = "mtls-operator.io/spiffe"
    pod_cert_max_lifetime: dt.timedelta = dt.timedelta(hours=24)
    pod_cert_namespace_selector: str = "mtls-operator.io/pod-certificates=enabled"
    # How far into a pod certificate's lifetime the kubelet is asked to refresh it (±1/12, and never within 10 minutes
    # of either end, the API's rule). Earlier leaves more time to ride out an outage, and costs more signatures.
    pod_cert_refresh: float = 2 / 3

    @property
    def reconcile_workers(self) -> int:
        """Identities reconciled at once: twice the API requests in flight, so that workers waiting on a signing slot
        or on the reissue pace leave the API client busy, and no more (what waits beyond them is a queued key)."""
        return 2 * self.api_workers

    def check(self) -> None:
        if self.min_duration > self.max_duration:
            raise ValueError("min-duration must not exceed max-duration")
        if self.ca_key not in KEY_CHOICES:
            raise ValueError(f"ca-key must be one of {', '.join(KEY_CHOICES)}")
        if not self.trust_domain or "/" in self.trust_domain or ":" in self.trust_domain:
            raise ValueError(f"trust-domain {self.trust_domain!r} must be a bare domain name")
        if self.pod_signer and (self.pod_signer.count("/") != 1 or self.pod_signer.startswith("kubernetes.io/")
                                or not all(self.pod_signer.split("/"))):
            raise ValueError(f"pod-signer {self.pod_signer!r} must be <domain>/<name>, outside kubernetes.io")
        if "(" in self.pod_cert_namespace_selector:
            raise ValueError("pod-cert-namespace-selector takes equality terms only (key=value, key!=value, key, !key)")
        if not 0 <= self.pod_cert_refresh <= 1:
            raise ValueError("pod-cert-refresh is a fraction of the lifetime, between 0 and 1")
        if self.pod_cert_max_lifetime < dt.timedelta(hours=1):
            raise ValueError("pod-cert-max-lifetime must be at least 1h (the API's minimum for a pod certificate)")


def _env(name: str, default: str) -> str:
    return os.environ.get("MTLS_" + name.upper().replace("-", "_"), default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    pod_namespace = os.environ.get("POD_NAMESPACE", d.ca_namespace)
    add = parser.add_argument

    def duration(flag: str, help: str) -> None:
        """A Go-style duration flag; its default and MTLS_ twin are parsed the same way (argparse parses string
        defaults), so a bad value fails at start with the flag named."""
        default = os.environ.get("MTLS_" + flag.upper().replace("-", "_"), getattr(d, flag.replace("-", "_")))
        add(f"--{flag}", type=parse_duration, default=default, help=help)

    add("--ca-secret-name", default=_env("ca-secret-name", d.ca_secret_name), help="Secret holding the root CA")
    add("--ca-namespace", default=_env("ca-namespace", pod_namespace), help="namespace of the CA Secret")
    add("--ca-key", default=_env("ca-key", d.ca_key), choices=KEY_CHOICES, help="key type of a bootstrapped root")
    add("--ca-mode", default=_env("ca-mode", d.ca_mode), choices=("root", "intermediate"),
        help="issue leaves from the self-made root, or from an intermediate under it")
    duration("intermediate-lifetime", "lifetime of an operator-made intermediate (with --ca-mode intermediate)")
    duration("ca-lifetime", "lifetime of a bootstrapped root")
    duration("ca-rotate-before", "rotate a self-made root this long before it expires")
    duration("ca-propagation",
             "during a root rotation, how long both roots sit in every bundle before leaves move to the new one")
    duration("ca-grace", "during a root rotation, how long the old root stays trusted after the last leaf moved")
    duration("ca-stall", "during a root rotation, how long a phase waits for lagging Secrets before it moves on anyway")
    add("--bundle-configmap", default=_env("bundle-configmap", d.bundle_configmap),
        help='name of the trust-bundle ConfigMap published per namespace ("" turns it off)')
    add("--bundle-namespace", dest="bundle_namespaces", action="append", default=None,
        help="also publish the trust bundle in this namespace (repeatable), or MTLS_BUNDLE_NAMESPACES=a,b")
    duration("restart-min-interval", "roll a workload named in restartTargets at most this often")
    add("--reissue-rate", type=float, default=float(_env("reissue-rate", str(d.reissue_rate))),
        help="leaves reissued per second when the issuing CA changes")
    add("--trust-domain", default=_env("trust-domain", d.trust_domain), help="SPIFFE trust domain")
    add("--cluster-domain", default=_env("cluster-domain", d.cluster_domain), help="DNS suffix of Services")
    duration("min-duration", "shortest certificate lifetime an identity may ask for")
    duration("max-duration", "longest certificate lifetime an identity may ask for")
    add("--namespace", dest="namespaces", action="append", default=None,
        help="watch only this namespace (repeatable); default all, or MTLS_NAMESPACES=a,b")
    add("--metrics-port", type=int, default=int(_env("metrics-port", str(d.metrics_port))),
        help="port of the Prometheus /metrics endpoint (0: off)")
    add("--health-port", type=int, default=int(_env("health-port", str(d.health_port))),
        help="port of the /healthz liveness endpoint (0: off)")
    add("--max-concurrent-issuance", type=int,
        default=int(_env("max-concurrent-issuance", str(d.max_concurrent_issuance))),
        help="certificates signed at once (a cap on CPU bursts)")
    add("--require-service-account", action=argparse.BooleanOptionalAction,
        default=_env("require-service-account", "true").lower() in ("1", "true", "yes"),
        help="issue only when the identity's ServiceAccount exists (default on)")
    add("--leader-election", action=argparse.BooleanOptionalAction,
        default=_env("leader-election", "true").lower() in ("1", "true", "yes"),
        help="act only while holding the Lease, so replicas never act at once (default on)")
    add("--lease-name", default=_env("lease-name", d.lease_name), help="name of the Lease, in --ca-namespace")
    duration("lease-duration", "how long a leader that stopped renewing keeps the lease")
    add("--api-workers", type=int, default=int(_env("api-workers", str(d.api_workers))),
        help="API requests in flight at once")
    add("--renew-burst", type=int, default=int(_env("renew-burst", str(d.renew_burst))),
        help="renew requests (annotation) an identity may make at once before --renew-interval applies (0: no limit)")
    duration("renew-interval", "after the burst, one renew request per identity this often")
    add("--renew-namespace-burst", type=int,
        default=int(_env("renew-namespace-burst", str(d.renew_namespace_burst))),
        help="renew requests a namespace's identities may make at once before --renew-namespace-interval applies "
             "(0: no limit)")
    duration("renew-namespace-interval", "after the burst, one renew request per namespace this often")
    add("--metrics-bind-address", default=_env("metrics-bind-address", d.metrics_bind_address),
        help="address /metrics listens on (0.0.0.0 or :: for all)")
    add("--health-bind-address", default=_env("health-bind-address", d.health_bind_address),
        help="address /healthz and /readyz listen on (the kubelet probes the pod IP)")
    add("--metrics-secure", action=argparse.BooleanOptionalAction,
        default=_env("metrics-secure", "false").lower() in ("1", "true", "yes"),
        help="serve /metrics over HTTPS to bearer tokens allowed `get` on the /metrics URL (TokenReview and "
             "SubjectAccessReview)")
    add("--metrics-cert-dir", default=_env("metrics-cert-dir", d.metrics_cert_dir),
        help="directory with tls.crt and tls.key for --metrics-secure (default: a self-signed certificate)")
    add("--pod-signer", default=_env("pod-signer", d.pod_signer),
        help='sign PodCertificateRequests for this signer name and publish its ClusterTrustBundle ("" turns it off)')
    duration("pod-cert-max-lifetime", "longest pod certificate signed (at least 1h)")
    add("--pod-cert-namespace-selector", default=_env("pod-cert-namespace-selector", d.pod_cert_namespace_selector),
        help='label selector of the namespaces whose pods may get certificates ("" every namespace served)')
    add("--pod-cert-refresh", type=float, default=float(_env("pod-cert-refresh", str(d.pod_cert_refresh))),
        help="fraction of a pod certificate's lifetime after which the kubelet refreshes it (0: as early as the "
             "API allows, 10 minutes in)")


def from_args(args: argparse.Namespace) -> Settings:
    namespaces = args.namespaces
    if namespaces is None:
        namespaces = [n for n in _env("namespaces", "").split(",") if n.strip()]
    settings = Settings(
        ca_secret_name=args.ca_secret_name,
        ca_namespace=args.ca_namespace,
        ca_key=args.ca_key,
        ca_mode=args.ca_mode,
        intermediate_lifetime=args.intermediate_lifetime,
        ca_lifetime=args.ca_lifetime,
        ca_rotate_before=args.ca_rotate_before,
        ca_propagation=args.ca_propagation,
        ca_grace=args.ca_grace,
        ca_stall=args.ca_stall,
        reissue_rate=max(0.1, args.reissue_rate),
        restart_min_interval=args.restart_min_interval,
        bundle_configmap=args.bundle_configmap,
        bundle_namespaces=tuple(args.bundle_namespaces if args.bundle_namespaces is not None else
                                [n.strip() for n in _env("bundle-namespaces", "").split(",") if n.strip()]),
        trust_domain=args.trust_domain,
        cluster_domain=args.cluster_domain,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        namespaces=tuple(n.strip() for n in namespaces),
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        max_concurrent_issuance=max(1, args.max_concurrent_issuance),
        api_workers=max(1, args.api_workers),
        require_service_account=args.require_service_account,
        leader_election=args.leader_election,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_burst=max(0, args.renew_burst),
        renew_interval=args.renew_interval,
        renew_namespace_burst=max(0, args.renew_namespace_burst),
        renew_namespace_interval=args.renew_namespace_interval,
        metrics_bind_address=args.metrics_bind_address,
        health_bind_address=args.health_bind_address,
        metrics_secure=args.metrics_secure,
        metrics_cert_dir=args.metrics_cert_dir,
        pod_signer=args.pod_signer,
        pod_cert_max_lifetime=args.pod_cert_max_lifetime,
        pod_cert_namespace_selector=args.pod_cert_namespace_selector,
        pod_cert_refresh=args.pod_cert_refresh,
    )
    settings.check()
    return settings
