"""The `mtls-operator` command. `run` starts the operator (kopf underneath) with the settings in config.py.

`selftest` proves issuance end to end against a running operator (the chart's `helm test`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from . import __version__, config

log = logging.getLogger("mtls_operator")


def kopf_options(settings: config.Settings, identity: str) -> dict[str, Any]:
    """How kopf is run, apart from the registry and the live objects. The identity is given explicitly: left alone,
    kopf would make one from the POD_ID variable or else the user name, and the user lookup raises KeyError under a
    uid with no passwd entry (the chart's 65532). Its peering is off, replaced by our Lease; its liveness endpoint too,
    replaced by health.py's server."""
    return {
        "identity": identity,
        "standalone": True,
        "clusterwide": not settings.namespaces,
        "namespaces": settings.namespaces,
    }


def _kopf_insights() -> Any:
    """kopf's record of the resources its watch streams cover, for /readyz; None where this kopf has no such thing."""
    try:
        from kopf._cogs.structs.references import Insights
    except ImportError:  # pragma: no cover - another kopf layout: readiness falls back to kopf's start-up
        return None
    return Insights()


async def _operate(settings: config.Settings) -> int:
    import kopf

    from . import metrics
    from .handlers import build_registry
    from .health import HealthServer, ProcessState
    from .kube import Kube
    from .leader import LeaderElection, LeaseTiming, replica_identity
    from .metricsserver import from_settings as metrics_server

    identity = replica_identity()
    state = ProcessState(settings)
    health = HealthServer(settings.health_port, state.snapshot, host=settings.health_bind_address)
    await health.start()
    kube = Kube(workers=settings.api_workers)
    metrics_endpoint = metrics_server(settings, kube)
    await metrics_endpoint.start()
    stop = asyncio.Event()
    lost = []
    elector = keeper = None
    try:
        if settings.leader_election:
            elector = LeaderElection(kube, settings.ca_namespace, settings.lease_name, identity,
                                     LeaseTiming.for_duration(settings.lease_duration.total_seconds()))
            state.elector = elector
            await elector.acquire()

            def on_lost() -> None:
                lost.append(True)
                state.stopping = True
                metrics.leader.set(0)
                stop.set()

            keeper = asyncio.create_task(elector.keep(on_lost), name="lease-renewal")
        metrics.leader.set(1)
        state.leading = True
        state.memo = kopf.Memo(settings=settings, kube=kube, lease_keeper=keeper, stop=stop)
        state.kopf_ready = asyncio.Event()
        state.insights = _kopf_insights()
        await kopf.operator(
            registry=build_registry(),
            memo=state.memo,
            stop_flag=stop,
            ready_flag=state.kopf_ready,
            **({"insights": state.insights} if state.insights is not None else {}),
            **kopf_options(settings, identity),
        )
    finally:
        state.stopping = True
        if keeper:
            keeper.cancel()
        if elector:
            await elector.release()
        await metrics_endpoint.stop()
        kube.close()
        await health.stop()
    return 1 if lost else 0


def _run(args: argparse.Namespace) -> int:
    import kopf

    try:
        settings = config.from_args(args)
    except ValueError as e:
        print(f"mtls-operator: {e}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_format == "json"
                   else kopf.LogFormat.PLAIN)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # kopf logs every handler call per object; at thousands of identities that drowns what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(_operate(settings))


def _selftest(args: argparse.Namespace) -> int:
    from . import selftest
    from .kube import ApiError, Kube

    plan = selftest.Plan(namespace=args.namespace, service_account=args.service_account,
                         secret_name=args.secret_name, trust_domain=args.trust_domain,
                         timeout=args.timeout.total_seconds())

    async def go() -> str:
        kube = Kube(workers=2)
        try:
            return await selftest.run(kube, plan)
        finally:
            kube.close()

    try:
        line = asyncio.run(go())
    except (selftest.Failed, ApiError) as e:
        print(f"selftest FAILED: {e}")
        return 1
    except Exception as e:  # no credentials, no network: still one line, and a failure
        print(f"selftest FAILED: {type(e).__name__}: {e}")
        return 1
    print(f"selftest PASSED: {line}")
    return 0


def _add_selftest_arguments(parser: argparse.ArgumentParser) -> None:
    import os

    from .durations import parse_duration

    namespace = os.environ.get("POD_NAMESPACE", config.Settings.ca_namespace)
    add = parser.add_argument
    add("--namespace", default=namespace, help="where the test identity is made (default: the pod's namespace)")
    add("--service-account", required=True, help="the identity's ServiceAccount: it must exist (the test's own)")
    add("--secret-name", required=True, help="the Secret the identity writes (the one the test may read)")
    add("--trust-domain", default=config._env("trust-domain", config.Settings.trust_domain),
        help="the operator's SPIFFE trust domain")
    add("--timeout", type=parse_duration, default="120s", help="how long to wait for Ready (a Go-style duration)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtls-operator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the cluster in KUBECONFIG (or in-cluster)")
    config.add_arguments(run)
    run.add_argument("--log-format", choices=("text", "json"), default=config._env("log-format", "text"))
    run.add_argument("--verbose", action="store_true")
    test = sub.add_parser("selftest", help="issue a throw-away identity, verify its Secret, delete it (helm test)")
    _add_selftest_arguments(test)
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "selftest":
        return _selftest(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
