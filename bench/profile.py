"""Where the operator's CPU goes per identity (issue 12: profile first): N identities created by 8 client threads while
an operator that has finished starting watches, sampled by py-spy (only the thread holding the GIL: Python CPU, not
waiting), and summed into the functions that cost most — by own time and including what they call. The operator's CPU
time (user + system, /proc) from the first create to the last Ready, divided by N, is the cost per identity; its
start-up (imports, CA load, the first lists) is reported apart.

On a fresh local control plane. py-spy is a dev tool: `pip install py-spy`.

With --restart, the same N identities are then served by a restarted operator, and what is profiled is that restart:
from the process's start (imports excluded: sampling begins once it answers /healthz) until it has looked at every
identity and is idle — the CPU of issue 12's "a restart is idle in 15 s".

Usage: python bench/profile.py [--n 1000] [--top 25] [--raw stacks.txt] [--restart]
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
from scale import CLK_TCK, create_identities, prepare, proc_usage, reconciles, until_idle  # noqa: E402
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
    parser.add_argument("--restart", action="store_true", help="profile a restart over the N instead of issuing them")
    parser.add_argument("--namespaces", type=int, default=1, help="spread the N over this many namespaces")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    cluster.ensure_binaries()
    spaces = [f"profile-{i:03d}" for i in range(args.namespaces)]
    with tempfile.TemporaryDirectory(prefix="mtls-profile-") as tmp:
        workdir = Path(tmp)
        with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig") as local:
            _, api = prepare(local, spaces)
            stacks = args.raw or workdir / "stacks.txt"
            operator = OperatorProcess(local.kubeconfig, workdir, tuple(args.operator_arg))
            where = lambda i: (spaces[i % len(spaces)], f"p{i:05d}")  # noqa: E731
            all_ready = lambda: sum(ready_count(api, ns) for ns in spaces) == args.n  # noqa: E731
            try:
                if args.restart:
                    create_identities(api, args.n, where, threads=16)
                    operator.start()
                    wait_for(f"{args.n} identities Ready", all_ready, timeout=900, interval=2)
                    operator.stop()
                    operator.start()
                    sampler, cpu_before = record(spy, operator.proc.pid, stacks)
                    split_before = cpu_split(operator.proc.pid)
                    start = time.monotonic()
                    wait_for("the restarted operator to look at every identity",
                             lambda: reconciles(operator) >= args.n, timeout=600, interval=1)
                    idle = until_idle(operator.proc.pid, time.monotonic() + 300)
                    what = f"restart over {args.n} identities: idle {idle - start:.2f} s after /healthz answered"
                else:
                    operator.start()
                    wait_for("the operator serving", lambda: "mtls_operator_ca_ready 1.0" in operator.metrics(),
                             timeout=60)
                    sampler, cpu_before = record(spy, operator.proc.pid, stacks)
                    split_before = cpu_split(operator.proc.pid)
                    threads_before = thread_cpu(operator.proc.pid)
                    start = time.monotonic()
                    create_identities(api, args.n, where)
                    wait_for(f"{args.n} identities Ready", all_ready, timeout=600, interval=0.2)
                    what = f"{args.n} identities Ready {time.monotonic() - start:.2f} s after the first create"
                rss, cpu = proc_usage(operator.proc.pid)
                user, system = cpu_split(operator.proc.pid)
                threads = thread_cpu(operator.proc.pid)
                sampler.send_signal(signal.SIGINT)
                sampler.wait(timeout=60)
            finally:
                operator.stop()
            per = 1000 * (cpu - cpu_before) / args.n
            print(f"{what}; operator CPU {cpu - cpu_before:.2f} s ({per:.2f} ms per identity; "
                  f"{cpu_before:.2f} s before sampling began, apart), peak RSS {rss:.0f} MiB")
            print(f"of which user {user - split_before[0]:.2f} s, system (the kernel: sockets, wake-ups) "
                  f"{system - split_before[1]:.2f} s; py-spy samples only the Python part of user time")
            loop_tid = min(threads)  # the process's own id: its first thread, the event loop's
            spent = {tid: (cpu - threads_before.get(tid, (0.0, 0))[0], waits - threads_before.get(tid, (0.0, 0))[1])
                     for tid, (cpu, waits) in threads.items()}
            rest = sorted((spent[tid] for tid in spent if tid != loop_tid and spent[tid][0] > 0), reverse=True)
            print(f"by thread, per identity: the event loop {1000 * spent[loop_tid][0] / args.n:.2f} ms CPU and "
                  f"{spent[loop_tid][1] / args.n:.1f} wake-ups; the others (watches, to_thread workers) "
                  + ", ".join(f"{1000 * cpu / args.n:.2f} ms and {waits / args.n:.1f}" for cpu, waits in rest))
            print(summarize(stacks, args.top))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process: system time is the kernel's work for it (sockets, epoll, pipes), which
    no Python profile shows."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, tuple[float, int]]:
    """CPU seconds (user + system) and wake-ups (voluntary context switches: each one a wait ended) of each live
    thread of a process, by thread id: the event loop's thread is the process's own id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            waits = re.search(r"voluntary_ctxt_switches:\s+(\d+)", (task / "status").read_text())
        except FileNotFoundError:  # ended meanwhile
            continue
        out[int(task.name)] = ((int(fields[11]) + int(fields[12])) / CLK_TCK, int(waits.group(1)) if waits else 0)
    return out


def record(spy: str, pid: int, stacks: Path) -> tuple[subprocess.Popen, float]:
    """py-spy sampling the operator's GIL holder from now on, and the process's CPU seconds until now."""
    _, cpu_before = proc_usage(pid)
    sampler = subprocess.Popen([spy, "record", "--pid", str(pid), "--gil", "--rate", "250", "--format", "raw",
                                "--output", str(stacks), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return sampler, cpu_before


if __name__ == "__main__":
    main()
