"""Fairness benchmark (numbers, not pass/fail): how long a new identity in a quiet namespace takes to become Ready
while another namespace spams renew requests on expensive (RSA-4096) identities, against the same without the spam.

On a fresh local control plane, for each operator configuration given (default: the defaults, then renew limits off):
  1. unloaded: K identities (ECDSA P-256) created one after another in namespace `quiet`, create -> Ready each;
  2. the spammer's S RSA-4096 identities are created and become Ready;
  3. the spam: every second each of the S identities gets a new `mtls-operator.io/renew` value (the issue's attack);
  4. loaded: K more identities in `quiet`, the first one second into the spam (its burst), the rest spaced out;
  5. the spammer's renewals actually issued, and the deferrals the operator counted.
The machine's load (`uptime`) is recorded before and after: the two cores are shared.

Usage: python bench/fairness.py [--spammers 4] [--k 3] [--spam-seconds 20] [--config "" --config "--renew-burst 0
--renew-namespace-burst 0"] [--baseline GIT_REF] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack")]

import cluster  # noqa: E402
from tests.kit import OPERATOR_NAMESPACE, Api, Kubectl, OperatorProcess, wait_for  # noqa: E402

RENEW = "mtls-operator.io/renew"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def time_to_ready(api: Api, operator: OperatorProcess, namespace: str, name: str, timeout: float = 300) -> float:
    start = time.monotonic()
    api.create_identity(namespace, name, with_service_account=False)
    wait_for(f"{namespace}/{name} Ready", lambda: operator.healthy() and api.ready(namespace, name), timeout=timeout,
             interval=0.02)
    return time.monotonic() - start


class Spammer:
    """Re-annotates every identity of a namespace once a second, as a hostile tenant would, until stopped."""

    def __init__(self, api: Api, namespace: str, names: list[str]) -> None:
        self.api, self.namespace, self.names = api, namespace, names
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        value = 0
        while not self._stop.is_set():
            value += 1
            for name in self.names:
                try:
                    self.api.patch_identity(self.namespace, name, {"metadata": {"annotations": {RENEW: str(value)}}})
                    self.requests += 1
                except Exception:  # the spam goes on whatever happens
                    pass
            self._stop.wait(1.0)

    def start(self) -> Spammer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def scrape(operator: OperatorProcess, metric: str) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith(metric) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_one(local: cluster.LocalCluster, workdir: Path, round_: int, operator_args: tuple[str, ...], spammers: int,
            k: int, spam_seconds: float, code: Path | None = None) -> dict:
    api = Api(local.kubeconfig)
    quiet, spam = f"quiet{round_}", f"spam{round_}"
    for ns in (quiet, spam):
        api.core.create_namespace({"metadata": {"name": ns}})
    # Each round serves only its own namespaces (the previous rounds' spam is still pending there), without leader
    # election: the lease's own robustness under CPU starvation is another matter (issue 10, item 4).
    operator = OperatorProcess(local.kubeconfig, workdir, ("--min-duration", "10s", "--namespace", quiet,
                                                          "--namespace", spam, "--no-leader-election",
                                                          *operator_args))
    operator.starts = 100 * round_
    if code is not None:  # another version of the package (--baseline): PYTHONPATH wins over the editable install
        os.environ["PYTHONPATH"] = str(code)
    try:
        operator.start()
    finally:
        os.environ.pop("PYTHONPATH", None)
    result: dict = {"operator_args": " ".join(operator_args), "code": str(code or "this tree"), "spammers": spammers,
                    "k": k}
    try:
        for i in range(k):
            api.service_account(quiet, f"calm{i}")
            api.service_account(quiet, f"new{i}")
        for i in range(spammers):
            api.service_account(spam, f"rsa{i}")
        api.service_account(quiet, "warmup")
        time_to_ready(api, operator, quiet, "warmup")  # a namespace's first identity also publishes its trust bundle
        result["load_before"] = uptime()
        unloaded = [time_to_ready(api, operator, quiet, f"calm{i}") for i in range(k)]
        names = [f"rsa{i}" for i in range(spammers)]
        for name in names:
            api.create_identity(spam, name, {"privateKey": {"algorithm": "RSA", "size": 4096}},
                                with_service_account=False)
        for name in names:
            api.wait_ready(spam, name, timeout=300)
        revisions_before = sum(api.identity(spam, n)["status"]["revision"] for n in names)
        spammer = Spammer(api, spam, names).start()
        spam_start = time.monotonic()
        loaded = []
        try:
            time.sleep(1.0)  # the bench's pacing, not synchronisation: the first newcomer lands in the spam's burst
            for i in range(k):
                loaded.append(time_to_ready(api, operator, quiet, f"new{i}"))
                rest = spam_start + (i + 1) * spam_seconds / k - time.monotonic()
                if rest > 0 and i < k - 1:
                    time.sleep(rest)
            remaining = spam_start + spam_seconds - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
        finally:
            spammer.stop()
        spam_elapsed = time.monotonic() - spam_start
        revisions_after = sum(api.identity(spam, n)["status"]["revision"] for n in names)
        result.update({
            "unloaded_s": [round(x, 3) for x in unloaded],
            "loaded_s": [round(x, 3) for x in loaded],
            "unloaded_median_s": round(statistics.median(unloaded), 3),
            "loaded_median_s": round(statistics.median(loaded), 3),
            "loaded_max_s": round(max(loaded), 3),
            "ratio_median": round(statistics.median(loaded) / statistics.median(unloaded), 2),
            "ratio_max": round(max(loaded) / statistics.median(unloaded), 2),
            "spam_seconds": round(spam_elapsed, 1),
            "renew_requests_sent": spammer.requests,
            "spammer_renewals_issued": revisions_after - revisions_before,
            "deferrals_counted": scrape(operator, "mtls_operator_renew_requests_deferred_total"),
            "load_after": uptime(),
        })
    finally:
        operator.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spammers", type=int, default=4, help="RSA-4096 identities in the spamming namespace")
    parser.add_argument("--k", type=int, default=3, help="identities timed, unloaded and loaded")
    parser.add_argument("--spam-seconds", type=float, default=20.0)
    parser.add_argument("--config", action="append", default=None,
                        help='operator arguments of one run (repeatable); default: "" and renew limits off')
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also run the operator's code at this commit (e.g. the one before the fix), defaults")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configs = args.config if args.config is not None else ["", "--renew-burst 0 --renew-namespace-burst 0"]
    cluster.ensure_binaries()
    results = []
    with tempfile.TemporaryDirectory(prefix="mtls-fairness-") as tmp:
        workdir = Path(tmp)
        with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig") as local:
            kubectl = Kubectl(cluster.bin_dir() / "kubectl", local.kubeconfig)
            kubectl("apply", "-f", str(REPO / "crds"))
            kubectl("wait", "--for=condition=Established", "crd/mtlsidentities.mtls-operator.io")
            Api(local.kubeconfig).core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
            runs: list[tuple[str, Path | None]] = [(c, None) for c in configs]
            if args.baseline:
                old = workdir / "baseline"
                old.mkdir()
                archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "operator"],
                                         capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
                runs.insert(0, ("", old / "operator"))
            for i, (config, code) in enumerate(runs):
                res = run_one(local, workdir, i, tuple(shlex.split(config)), args.spammers, args.k,
                              args.spam_seconds, code)
                print(json.dumps(res, indent=2), flush=True)
                results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
