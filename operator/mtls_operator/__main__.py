"""The `mtls-operator` command. `run` starts the operator (kopf underneath) with the settings in config.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import uuid

from . import __version__, config

log = logging.getLogger("mtls_operator")


@contextlib.asynccontextmanager
async def _standby_health(port: int):
    """Answers /healthz while the replica waits for the lease (kopf's own endpoint takes the port once it runs)."""
    if not port:
        yield
        return
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/healthz", lambda request: web.json_response({"standby": True}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _operate(settings: config.Settings) -> int:
    import kopf

    from . import metrics
    from .handlers import build_registry
    from .kube import Kube
    from .leader import LeaderElection, LeaseTiming

    metrics.serve(settings.metrics_port)
    kube = Kube(workers=settings.api_workers)
    stop = asyncio.Event()
    lost = []
    elector = keeper = None
    try:
        if settings.leader_election:
            identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            elector = LeaderElection(kube, settings.ca_namespace, settings.lease_name, identity,
                                     LeaseTiming.for_duration(settings.lease_duration.total_seconds()))
            async with _standby_health(settings.health_port):
                await elector.acquire()

            def on_lost() -> None:
                lost.append(True)
                metrics.leader.set(0)
                stop.set()

            keeper = asyncio.create_task(elector.keep(on_lost), name="lease-renewal")
        metrics.leader.set(1)
        await kopf.operator(
            registry=build_registry(),
            memo=kopf.Memo(settings=settings, kube=kube, lease_keeper=keeper, stop=stop),
            standalone=True,  # peering is replaced by the Lease above
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
            stop_flag=stop,
        )
    finally:
        if keeper:
            keeper.cancel()
        if elector:
            await elector.release()
        kube.close()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtls-operator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the cluster in KUBECONFIG (or in-cluster)")
    config.add_arguments(run)
    run.add_argument("--log-format", choices=("text", "json"), default=config._env("log-format", "text"))
    run.add_argument("--verbose", action="store_true")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
