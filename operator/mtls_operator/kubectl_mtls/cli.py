"""`kubectl mtls` (console script `kubectl-mtls`): the command line, dispatch, output and exit codes.

kubectl runs a plugin with every argument after its name, so the common flags (-n, --kubeconfig, --context, -o) are
accepted both before and after the subcommand, as with kubectl itself. Each command gathers what it needs through
`api.Cluster`, hands it to the pure module that judges it, and prints the result as text or as JSON (one object, with
`kind` and `exitCode`, on stdout; errors too, so a script always gets JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ..config import Settings
from . import exitcodes, health, identity, inspect, render, renewal
from .api import ApiProblem, Cluster

OPERATOR_SELECTOR = "app.kubernetes.io/name=mtls-operator"
_FATAL = ("Unreachable", "Unauthorized", "Config")  # a read that fails like this fails every other read too

EXAMPLES = """examples:
  kubectl mtls status payments-api -n payments
  kubectl mtls renew payments-api -n payments
  kubectl mtls renew --all -n payments
  kubectl mtls renew --all -A --yes
  kubectl mtls inspect secret payments-api-mtls -n payments
  kubectl mtls check
  kubectl mtls check -n payments -o json
"""


class Usage(Exception):
    """A command line that cannot be acted on (or a bulk renewal not confirmed): exit 2, nothing done."""


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The flags every command takes. Given on the subparser with SUPPRESS defaults, so a flag after the subcommand
    wins and one before it is not reset by the subparser's default."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("-n", "--namespace", default=default(None),
                        help="namespace (default: the kubeconfig context's; for check: all namespaces)")
    parser.add_argument("--kubeconfig", default=default(None),
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)")
    parser.add_argument("--context", default=default(None), help="kubeconfig context (default: the current one)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default=default("text"),
                        help="text for people, json for scripts (one object with kind and exitCode)")
    parser.add_argument("--request-timeout", type=float, default=default(15.0), metavar="SECONDS",
                        help="give up on an API request after this long (default 15)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kubectl mtls", formatter_class=formatter,
        description="Look at and act on mtls-operator identities with your own kubeconfig and RBAC.",
        epilog=f"{EXAMPLES}\n{exitcodes.HELP}")
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description, formatter_class=formatter,
                                  epilog=exitcodes.HELP)
        _common(sub, suppress=True)
        return sub

    status = command("status", "an identity's Ready condition, certificate, Events, and what to do on failure",
                     "Show an MtlsIdentity: Ready (reason, message), SPIFFE ID, serial, validity, renewal time, "
                     "issuer, its latest Events, and on failure what to do about it. Exit 0 when Ready, 1 when not.")
    status.add_argument("name", metavar="NAME")
    status.add_argument("--events", type=int, default=5, metavar="N", help="how many of the latest Events (5)")

    renew = command("renew", "ask the operator to renew now (rate-limited)",
                    "Ask for a new certificate now, by setting the annotation "
                    f"{renewal.ANNOTATION} to a new value (as `kubectl annotate` would). " + renewal.RATE_LIMIT_NOTE
                    + " --all -A (every namespace) asks for confirmation, and without a terminal refuses unless "
                      "--yes is given.")
    renew.add_argument("name", metavar="NAME", nargs="?")
    renew.add_argument("--all", action="store_true", help="every identity of the namespace (with -A: of all)")
    renew.add_argument("-A", "--all-namespaces", action="store_true", help="with --all: every namespace")
    renew.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation (--all -A)")

    inspect_cmd = command("inspect", "decode an identity Secret", "Decode what an object holds.")
    kinds = inspect_cmd.add_subparsers(dest="what", metavar="KIND", required=True)
    secret = kinds.add_parser(
        "secret", formatter_class=formatter, epilog=exitcodes.HELP,
        help="chain, SANs, key type and fit, verification against ca.crt and the cluster's trust bundle",
        description="Decode a kubernetes.io/tls Secret: each certificate of tls.crt, the SANs (SPIFFE ID, DNS, IP), "
                    "the key type and whether tls.key belongs to the certificate, and the chain verified against "
                    "its own ca.crt and against the cluster's current trust bundle (the namespace's trust-bundle "
                    "ConfigMap, else the MtlsAuthority's trust anchors). Private key material is never printed. "
                    "Exit 0 when all is well, 1 when anything does not verify or fit.")
    _common(secret, suppress=True)
    secret.add_argument("name", metavar="NAME")
    secret.add_argument("--trust-bundle", default=Settings().bundle_configmap, metavar="CONFIGMAP",
                        help="the trust-bundle ConfigMap's name (the operator's --bundle-configmap; default "
                             "%(default)s)")

    check = command("check", "is the operator up and leading, the CA valid, every identity Ready?",
                    "Check the operator's pods and leader Lease, the CA (MtlsAuthority status: validity, expiry, "
                    "rotation phase), and the identities that are not Ready (all namespaces, or -n NS). Exit 0 when "
                    "healthy (warnings allowed), 1 when something failed, 3 when something could not be read.")
    check.add_argument("--operator-namespace", default=Settings().ca_namespace, metavar="NS",
                       help="where the operator's pods and Lease are (default %(default)s)")
    check.add_argument("--lease-name", default=Settings().lease_name, metavar="NAME",
                       help="the operator's --lease-name (default %(default)s)")
    check.add_argument("--ca-secret", default=Settings().ca_secret_name, metavar="NAME",
                       help="the operator's --ca-secret-name (default %(default)s): its MtlsAuthority is "
                            "<operator namespace>.<NAME>")
    check.add_argument("-A", "--all-namespaces", action="store_true",
                       help="identities of all namespaces (the default unless -n is given)")
    return parser


# ---- output ----

def _emit(args: argparse.Namespace, out: TextIO, document: dict[str, Any], text: str, code: int) -> int:
    if args.output == "json":
        out.write(json.dumps({**document, "exitCode": code}, indent=2) + "\n")
    else:
        out.write(text + "\n")
    return code


def _error(args: argparse.Namespace, out: TextIO, err: TextIO, problem: ApiProblem) -> int:
    if getattr(args, "output", "text") == "json":
        out.write(json.dumps({"kind": "Error", "ok": False, "error": problem.to_dict(),
                              "exitCode": exitcodes.API_ERROR}, indent=2) + "\n")
    else:
        err.write(f"error: {problem.message}\n")
    return exitcodes.API_ERROR


# ---- commands ----

def _connect(args: argparse.Namespace) -> Cluster:
    return Cluster(kubeconfig=args.kubeconfig, context=args.context, timeout=args.request_timeout)


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO, now: dt.datetime) -> int:
    cluster = _connect(args)
    namespace = args.namespace or cluster.default_namespace
    obj = cluster.identity(namespace, args.name)
    events: list[dict[str, Any]] = []
    note = ""
    try:
        events = cluster.identity_events(namespace, args.name)
    except ApiProblem as e:
        if e.kind in _FATAL:
            raise
        note = f"not shown: {e.message}"
    try:
        authorities = cluster.authorities()
    except ApiProblem as e:
        if e.kind in _FATAL:
            raise
        authorities = []  # only names the issuer; the fingerprint is shown anyway
    report = identity.report(obj, events, authorities, now, max_events=args.events, events_note=note)
    code = exitcodes.OK if report.ok else exitcodes.NOT_OK
    return _emit(args, out, report.to_dict(), render.identity(report), code)


def _confirm(question: str, stdin: TextIO, err: TextIO) -> bool:
    err.write(f"{question} [y/N] ")
    err.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def cmd_renew(args: argparse.Namespace, out: TextIO, err: TextIO, now: dt.datetime,
              stdin: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    if args.all and args.name:
        raise Usage("give a NAME or --all, not both")
    if not args.all and not args.name:
        raise Usage("give the NAME of an identity, or --all for every identity of the namespace")
    if args.all_namespaces and not args.all:
        raise Usage("-A renews every namespace's identities: it needs --all (and no NAME)")
    everywhere = args.all and args.all_namespaces
    if everywhere and not args.yes and not stdin.isatty():
        raise Usage("refusing to renew every identity in every namespace without confirmation: there is no "
                    "terminal to ask on; pass --yes to mean it")
    cluster = _connect(args)
    namespace = None if everywhere else (args.namespace or cluster.default_namespace)
    value = renewal.request_value(now)
    if args.all:
        targets = [((o.get("metadata") or {}).get("namespace", ""), (o.get("metadata") or {}).get("name", ""))
                   for o in cluster.identities(namespace)]
        scope = "all namespaces" if everywhere else f"namespace {namespace}"
    else:
        assert namespace is not None
        targets = [(namespace, args.name)]
        scope = f"{namespace}/{args.name}"
    if everywhere and not args.yes:
        spread = len({ns for ns, _ in targets})
        if not _confirm(f"Renew all {len(targets)} identities in {spread} namespaces (each gets a new certificate, "
                        f"and a new key unless its rotationPolicy is Never)?", stdin, err):
            raise Usage("not confirmed: nothing was renewed")
    outcomes = []
    for ns, name in targets:
        try:
            written = cluster.annotate_identity(ns, name, {renewal.ANNOTATION: value})
        except ApiProblem as e:
            if not args.all or e.kind in _FATAL:
                raise  # one identity: its error is the command's; unreachable: every other one fails too
            outcomes.append(renewal.Outcome(ns, name, requested=False, error=e.message))
            continue
        outcomes.append(renewal.Outcome(ns, name, requested=True,
                                        serial_before=str((written.get("status") or {}).get("serialNumber") or "")))
    report = renewal.RenewReport(value=value, outcomes=tuple(outcomes), scope=scope,
                                 warnings=renewal.burst_warnings(ns for ns, _ in targets), by_name=not args.all)
    code = exitcodes.OK if report.ok else exitcodes.API_ERROR
    return _emit(args, out, report.to_dict(), render.renew(report), code)


def _trust_bundle(cluster: Cluster, namespace: str, configmap: str) -> inspect.TrustBundle:
    """The namespace's trust-bundle ConfigMap; failing that, the MtlsAuthorities' anchors — saying why."""
    source = f"ConfigMap {namespace}/{configmap}"
    try:
        pem = ((cluster.configmap(namespace, configmap).get("data") or {}).get("ca.crt") or "").encode()
    except ApiProblem as e:
        if e.kind in _FATAL:
            raise
        note = f"{source} not found" if e.kind == "NotFound" else f"{source} not readable: {e.message}"
    else:
        if pem:
            return inspect.TrustBundle.from_pem(source, pem)
        note = f"{source} has no ca.crt"
    try:
        authorities = cluster.authorities()
    except ApiProblem as e:
        if e.kind in _FATAL:
            raise
        return inspect.TrustBundle(source="", unavailable=f"{note}, and the MtlsAuthorities are not readable: "
                                                          f"{e.message}", note=note)
    bundle = inspect.TrustBundle.from_authorities(authorities, note=f"{note}: used the MtlsAuthority's anchors")
    if bundle.unavailable:
        return inspect.TrustBundle(source="", unavailable=f"{note}, and {bundle.unavailable}", note=note)
    return bundle


def cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO, now: dt.datetime) -> int:
    cluster = _connect(args)
    namespace = args.namespace or cluster.default_namespace
    try:
        body = cluster.secret(namespace, args.name)
    except ApiProblem as e:
        if e.kind == "NotFound" and e.name:
            e.message += (f" (an identity's Secret is named in its status, `kubectl mtls status NAME -n {namespace}`; "
                          f"<name>-mtls by default)")
        raise
    trust = _trust_bundle(cluster, namespace, args.trust_bundle)
    report = inspect.inspect(namespace, args.name, body, trust, now)
    code = exitcodes.OK if report.ok else exitcodes.NOT_OK
    return _emit(args, out, report.to_dict(), render.secret(report), code)


def _read(fetch: Callable[[], Any], one: bool = False) -> health.Read:
    try:
        got = fetch()
    except ApiProblem as e:
        if e.kind in _FATAL:
            raise
        if one and e.kind == "NotFound" and e.name:
            return health.Read(missing=True)
        return health.Read(error=e.message)
    return health.Read(items=[got] if one else got)


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO, now: dt.datetime) -> int:
    cluster = _connect(args)
    where = None if args.all_namespaces else args.namespace
    ns = args.operator_namespace
    report = health.check(
        operator_namespace=ns, lease_name=args.lease_name, selector=OPERATOR_SELECTOR,
        pods=_read(lambda: cluster.pods(ns, OPERATOR_SELECTOR)),
        lease=_read(lambda: cluster.lease(ns, args.lease_name), one=True),
        # This operator's CA only (its MtlsAuthority is named after the CA Secret): another install's, or one left
        # by a CA Secret no longer in use, is not this operator's health.
        authorities=_read(lambda: [a for a in cluster.authorities()
                                   if (a.get("metadata") or {}).get("name") == f"{ns}.{args.ca_secret}"]),
        identities=_read(lambda: cluster.identities(where)),
        identity_namespace=where, now=now)
    return _emit(args, out, report.to_dict(), render.check(report), report.exit_code)


COMMANDS = {"status": cmd_status, "renew": cmd_renew, "inspect": cmd_inspect, "check": cmd_check}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)  # a wrong command line exits 2 here, with argparse's message
    if not args.command:
        parser.print_help(err)
        return exitcodes.USAGE
    now = dt.datetime.now(dt.UTC)
    try:
        return COMMANDS[args.command](args, out, err, now)
    except Usage as e:
        if args.output == "json":
            out.write(json.dumps({"kind": "Error", "ok": False, "error": {"reason": "Usage", "message": str(e)},
                                  "exitCode": exitcodes.USAGE}, indent=2) + "\n")
        else:
            err.write(f"error: {e}\n")
        return exitcodes.USAGE
    except ApiProblem as e:
        return _error(args, out, err, e)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return exitcodes.INTERRUPTED
    except BrokenPipeError:  # `kubectl mtls check | head`
        return exitcodes.OK
