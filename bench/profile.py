"""Where the operator's CPU goes per identity (issue 12: profile first): N identities created by 8 client threads while
an operator that has finished starting watches, sampled by py-spy (only the thread holding the GIL: Python CPU, not
waiting), and summed into the functions that cost most — by own time and including what they call. The operator's CPU
time (user + system, /proc) from the first create to the last Ready, divided by N, is the cost per identity; its
start-up (imports, CA load, the first lists) is reported apart.

On a fresh local control plane. py-spy is a dev tool: `pip install py-spy`.

Usage: python bench/profile.py [--n 1000] [--top 25] [--raw stacks.txt]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack"), str(REPO / "bench")]

import cluster  # noqa: E402
from scale import create_identities, prepare, proc_usage  # noqa: E402
from tests.kit import GROUP, PLURAL, VERSION, Api, OperatorProcess, wait_for  # noqa: E402


def ready_count(api: Api, namespace: str) -> int:
    items = api.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return sum(1 for o in items if any(c.get("type") == "Ready" and c.get("status") == "True"
                                       for c in (o.get("status") or {}).get("conditions") or []))


def _frame(raw: str) -> str:
    """"function (path/to/file.py:123)" -> "function (file.py)": lines of one function summed together."""
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", raw)
    return f"{m.group(1)} ({m.group(2).rsplit('/', 1)[-1]})" if m else raw


def summarize(stacks: Path, top: int) -> str:
    """py-spy's raw format: one collapsed stack per line ("outer;...;inner count")."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples"]
    for title, counter in (("own time", own), ("including callees", inclusive)):
        out.append(f"--- top {top} by {title}")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--operator-arg", action="append", default=[], help="passed to mtls-operator run")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    cluster.ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="mtls-profile-") as tmp:
        workdir = Path(tmp)
        with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig") as local:
            _, api = prepare(local, ["profile"])
            stacks = args.raw or workdir / "stacks.txt"
            operator = OperatorProcess(local.kubeconfig, workdir, tuple(args.operator_arg)).start()
            try:
                wait_for("the operator serving", lambda: "mtls_operator_ca_ready 1.0" in operator.metrics(), timeout=60)
                _, started = proc_usage(operator.proc.pid)
                sampler = subprocess.Popen([spy, "record", "--pid", str(operator.proc.pid), "--gil", "--rate", "250",
                                            "--format", "raw", "--output", str(stacks), "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                start = time.monotonic()
                create_identities(api, args.n, lambda i: ("profile", f"p{i:05d}"))
                wait_for(f"{args.n} identities Ready", lambda: ready_count(api, "profile") == args.n, timeout=600,
                         interval=0.2)
                elapsed = time.monotonic() - start
                rss, cpu = proc_usage(operator.proc.pid)
                sampler.send_signal(signal.SIGINT)
                sampler.wait(timeout=60)
            finally:
                operator.stop()
            per = 1000 * (cpu - started) / args.n
            print(f"{args.n} identities Ready {elapsed:.2f} s after the first create; operator CPU "
                  f"{cpu - started:.2f} s ({per:.2f} ms per identity; start-up {started:.2f} s apart), "
                  f"peak RSS {rss:.0f} MiB")
            print(summarize(stacks, args.top))


if __name__ == "__main__":
    main()
