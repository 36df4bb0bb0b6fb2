"""The `mtls-operator` command. `run` starts the operator (kopf underneath) with the settings in config.py.

`selftest` proves issuance end to end against a running operator (the chart's `helm test`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
    """kopf's insights, whose ready flags /readyz reads (its resource discovery done); None where this kopf has no
    such thing."""
    try:
        from kopf._cogs.structs.references import Insights
    except ImportError:  # pragma: no cover - another kopf layout: readiness falls back to kopf's start-up
        return None
    return Insights()


async def _operate(settings: config.Settings) -> int:
    """Campaigns, leads until the lease is lost, steps down and campaigns again — until a signal. Kubernetes would
    restart a process that exited on a lost lease anyway; staying up keeps /healthz and /readyz answering through an
    API-server outage, and a fresh kopf run per term rebuilds every cache and catches up on what fell due."""
    from . import metrics
    from .fence import Fence
    from .health import HealthServer, ProcessState
    from .kube import COMPONENT, Kube
    from .leader import LeaderElection, LeaseTiming, replica_identity
    from .metricsserver import from_settings as metrics_server

    identity = replica_identity()
    state = ProcessState(settings)
    health = HealthServer(settings.health_port, state.snapshot, host=settings.health_bind_address)
    await health.start()
    fence = Fence() if settings.leader_election else None
    kube = Kube(workers=settings.api_workers, fence=fence, user_agent=f"{COMPONENT}/{__version__} ({identity})")
    metrics_endpoint = metrics_server(settings, kube)
    await metrics_endpoint.start()
    shutdown = asyncio.Event()
    _on_signals(shutdown.set)
    elector = None
    try:
        if settings.leader_election:
            assert fence is not None
            elector = LeaderElection(kube, settings.ca_namespace, settings.lease_name, identity,
                                     LeaseTiming.for_duration(settings.lease_duration.total_seconds()), fence)
            state.elector = elector
        while not shutdown.is_set():
            if elector is not None and not await elector.acquire(shutdown):
                break
            lost = await _lead(settings, identity, kube, elector, state, shutdown)
            _on_signals(shutdown.set)  # kopf replaced our handlers with its own for its run
            if not lost:
                break
            log.warning("stepped down; standing by to campaign again")
    finally:
        state.stopping = True
        metrics.leader.set(0)
        if elector is not None:
            await asyncio.to_thread(elector.stop_keeping)
            await asyncio.to_thread(elector.release)
        await metrics_endpoint.stop()
        await kube.close()
        await health.stop()
    return 0


def _on_signals(handler: Any) -> None:
    """SIGTERM/SIGINT end the process cleanly (lease released) whether it leads or stands by."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


async def _lead(settings: config.Settings, identity: str, kube: Any, elector: Any, state: Any,
                shutdown: asyncio.Event) -> bool:
    """One term as leader: kopf runs until the lease is lost (returns True) or the process is told to stop (False).
    On a loss the fence is already closed (leader.py); here the in-flight work is cancelled as well."""
    import kopf

    from . import metrics
    from .handlers import build_registry

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lost: list[str] = []
    memo = kopf.Memo(settings=settings, kube=kube, stop=stop)

    def step_down(reason: str) -> None:
        if lost:
            return
        lost.append(reason)
        state.leading = False
        metrics.leader.set(0)
        reconciler = getattr(memo, "reconciler", None)
        if reconciler is not None:
            reconciler.stop()
        signer = getattr(memo, "pod_signer", None)
        if signer is not None:
            signer.stop()
        stop.set()

    if elector is not None:
        elector.start_keeping(lambda reason: loop.call_soon_threadsafe(step_down, reason))

    ready = asyncio.Event()

    async def relay_shutdown() -> None:
        # kopf installs SIGTERM/SIGINT handlers of its own as it starts; once it is up, ours take over again, so that
        # a signal during a step-down still ends the process instead of starting a new campaign.
        await ready.wait()
        _on_signals(shutdown.set)
        await shutdown.wait()
        stop.set()

    relay = asyncio.create_task(relay_shutdown(), name="shutdown-relay")
    metrics.leader.set(1)
    state.memo, state.kopf_ready, state.insights = memo, ready, _kopf_insights()
    state.leading = True
    try:
        await kopf.operator(
            registry=build_registry(settings),
            memo=memo,
            stop_flag=stop,
            ready_flag=state.kopf_ready,
            **({"insights": state.insights} if state.insights is not None else {}),
            **kopf_options(settings, identity),
        )
    finally:
        relay.cancel()
        if elector is not None:
            await asyncio.to_thread(elector.stop_keeping)  # joins the thread: not on the event loop
        state.leading = False
        state.memo = state.kopf_ready = state.insights = None
        metrics.leader.set(0)
    if not lost and not shutdown.is_set():
        shutdown.set()  # kopf stopped on its own signal handler: a clean shutdown
    return bool(lost)


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
    _tune_gc()
    import uvloop

    from . import http1

    try:
        # uvloop, as kopf's own CLI runs when it is installed: its event loop, transports and TLS are compiled, where
        # asyncio's are Python; 8% of the operator's CPU per identity (bench/RESULTS.md, issue 12, eighth sitting).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_operate(settings))
    except http1.Unsupported as e:  # the API server's address or proxy (transport.py checks it as the client is made)
        print(f"mtls-operator: cannot reach the API server: {e}", file=sys.stderr)
        return 2


# Allocations between young collections (CPython's default is 700), and how many young (then middle) collections
# make one of the next generation (default 10 each).
GC_THRESHOLDS = (20_000, 20, 20)


def _tune_gc() -> None:
    """The operator holds thousands of small long-lived objects (cached bodies, parsed specs and Secrets, kopf's
    per-object state), and every event allocates many short-lived ones: with CPython's default thresholds the cycle
    collector scanned the same survivors over and over, about a tenth of the CPU spent per identity (bench/profile.py).
    What exists after the imports is frozen out of collection (modules, classes: never garbage), and collections are
    rarer; the memory they free is small and bounded by the thresholds."""
    from . import handlers, leader, metricsserver  # noqa: F401 (imported by _operate anyway: here, before the freeze)

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
            await kube.close()

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
