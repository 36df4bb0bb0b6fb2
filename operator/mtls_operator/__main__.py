"""The `mtls-operator` command. `run` starts the operator (kopf underneath) with the settings in config.py."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__, config


def _run(args: argparse.Namespace) -> int:
    import kopf

    from .handlers import build_registry

    try:
        settings = config.from_args(args)
    except ValueError as e:
        print(f"mtls-operator: {e}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_format == "json"
                   else kopf.LogFormat.PLAIN)
    logging.getLogger("mtls_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # kopf logs every handler call per object; at thousands of identities that drowns what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    asyncio.run(kopf.operator(
        registry=build_registry(),
        memo=kopf.Memo(settings=settings),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
    ))
    return 0


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
