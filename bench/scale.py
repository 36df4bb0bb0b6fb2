"""Scale benchmark (numbers, not pass/fail): how the operator copes with N identities on this machine.

For each N (default 100 and 1000), on a fresh local control plane:
  - time from the first create until all N identities are Ready, and per-identity time-to-Ready p50/p99
    (create acknowledged -> Ready seen on a watch);
  - API writes per issuance, counted exactly from the API server's audit log (the bench's own creates excluded);
  - the operator's peak RSS and CPU seconds (from /proc);
  - renewal lateness: R short-lived identities renew while the N sit idle; how late each renewal's Ready arrives after
    its renewalTime, and the scheduler's own firing lateness (from the operator's metrics);
  - the API floor (api_floor): the operator's writes per identity made by a bare client, best of the official client
    on 8/16/32 threads and the operator's own HTTP path with 32/64 calls in flight, and the operator's time for a
    standing backlog of N as a ratio of it; the floor is measured again right after the backlog (the best setting
    only), and the ratio is also given to each floor and to their mean (this machine's speed drifts within minutes).

Usage: python bench/scale.py [--n 100 --n 1000] [--renewals 50] [--json out.json]
       python bench/scale.py --n 10000 --namespaces 100     (the many-namespace backlog and restart only)
       python bench/scale.py --n 10000 --namespaces 100 --renewal-wave   (every renewal due at once: run_wave)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack")]

import kubernetes  # noqa: E402

import cluster  # noqa: E402
from tests.kit import GROUP, OPERATOR_NAMESPACE, PLURAL, VERSION, Api, Kubectl, OperatorProcess, wait_for  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every bench identity names the ServiceAccount "bench" (identities must name an existing one); SPIFFE IDs coincide.
IDENTITY = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MtlsIdentity", "spec": {"serviceAccountName": "bench"}}


def prepare(local: cluster.LocalCluster, namespaces: list[str]) -> tuple[Kubectl, Api]:
    """A fresh control plane made ready: the CRDs established, the operator's namespace, and these namespaces, each
    with the ServiceAccount "bench"."""
    kubectl = Kubectl(cluster.bin_dir() / "kubectl", local.kubeconfig)
    api = Api(local.kubeconfig)
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/mtlsidentities.mtls-operator.io")
    api.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    for namespace in namespaces:
        api.core.create_namespace({"metadata": {"name": namespace}})
        api.service_account(namespace, "bench")
    return kubectl, api


def create_identities(api: Api, n: int, where: Callable[[int], tuple[str, str]], threads: int = 8,
                      created: Callable[[str], None] | None = None) -> float:
    """Creates n identities, the i-th at where(i) = (namespace, name), from `threads` client threads, calling
    created(name) as each create is acknowledged; returns the seconds it took."""
    def one(i: int) -> None:
        namespace, name = where(i)
        api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            **IDENTITY, "metadata": {"name": name}})
        if created:
            created(name)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return time.monotonic() - start


class ReadyWatch:
    """Records, from a watch stream, when each identity was first seen Ready and with which serial. Namespace None
    watches every namespace (keys are then namespace/name)."""

    def __init__(self, api: Api, namespace: str | None) -> None:
        self.api, self.namespace = api, namespace
        self.ready_at: dict[str, float] = {}
        self.serials: dict[str, list[tuple[float, str, str]]] = {}  # name -> [(seen, serial, renewalTime)]
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        watch = kubernetes.watch.Watch()
        version = ""
        while not self._stop:
            try:
                scope = ((self.api.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL)
                         if self.namespace else (self.api.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL))
                for event in watch.stream(*scope, resource_version=version, timeout_seconds=60):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    status = obj.get("status") or {}
                    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                                for c in status.get("conditions") or [])
                    if not ready:
                        continue
                    now = time.monotonic()
                    name = obj["metadata"]["name"] if self.namespace else "/".join(
                        (obj["metadata"]["namespace"], obj["metadata"]["name"]))
                    self.ready_at.setdefault(name, now)
                    seen = self.serials.setdefault(name, [])
                    if not seen or seen[-1][1] != status.get("serialNumber"):
                        seen.append((time.time(), status.get("serialNumber"), status.get("renewalTime")))
                    if self._stop:
                        return
            except Exception:  # a dropped watch is re-opened
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop = True


def proc_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return hwm, cpu


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def scrape(operator: OperatorProcess, name: str) -> dict[str, float]:
    text = operator.metrics()
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}_(sum|count) ([0-9.e+-]+)$", text, re.M)}


def api_floor(api: Api, kubeconfig: Path, n: int, template: dict, status: dict,
              threads_tried: tuple[int, ...] = (8, 16, 32), in_flight_tried: tuple[int, ...] = (32, 64),
              clean_up: bool = True) -> dict:
    """The API server's floor for a standing backlog of n identities: a bare client (no reads, no signing, no
    framework) makes the writes the operator makes per identity — the Secret (the same bytes as one the operator
    wrote), the status (the same fields), an Event — for n identities that already exist, at each concurrency tried:
    the official client on threads, and the event loop's HTTP path the operator itself uses (kube.Kube over http1.py,
    nothing else of the operator), with that many calls in flight. On two shared cores the client's own CPU is part
    of the bound, so the cheapest client found sets the floor. The best time is the floor; the operator's time for its
    own backlog is reported as a ratio of it."""
    namespace = "floor"
    api.core.create_namespace({"metadata": {"name": namespace}})
    create_identities(api, n, lambda i: (namespace, f"f{i:05d}"))
    secret = {"apiVersion": "v1", "kind": "Secret", "type": template["type"], "data": template["data"],
              "metadata": {"labels": template["metadata"].get("labels", {})}}
    times = {}
    for threads in threads_tried:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = threads
        client = kubernetes.client.ApiClient(config)
        core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)

        def one(i: int, threads: int = threads, core=core, custom=custom) -> None:
            name = f"f{i:05d}"
            core.create_namespaced_secret(namespace, {**secret, "metadata": {
                **secret["metadata"], "name": f"{name}-{threads}"}})
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": {
                **status, "revision": threads}})
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            core.create_namespaced_event(namespace, {
                "metadata": {"generateName": f"{name}."}, "type": "Normal", "reason": "Issued",
                "message": f"issued serial {status.get('serialNumber')}", "firstTimestamp": now, "lastTimestamp": now,
                "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MtlsIdentity", "name": name,
                                   "namespace": namespace}, "source": {"component": "bench-floor"}, "count": 1})

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(n)))
        times[threads] = round(time.monotonic() - start, 2)
        client.close()
    client_cpu = {}
    for in_flight in in_flight_tried:
        seconds, cpu = asyncio.run(_floor_on_the_loop(kubeconfig, n, namespace, secret, status, in_flight))
        times[f"loop-{in_flight}"] = round(seconds, 2)
        client_cpu[f"loop-{in_flight}"] = round(1000 * cpu / n, 3)
    best = min(times, key=times.get)
    found = {"floor_seconds": times[best], "floor_threads": best, "floor_seconds_by_threads": times,
             "floor_client_cpu_ms_per_identity": client_cpu}
    if not clean_up:
        return found
    # Gone before the operator starts again: its own backlog must not include the floor's objects.
    api.core.delete_namespace(namespace)
    wait_for("the floor's namespace gone", lambda: namespace not in {
        n.metadata.name for n in api.core.list_namespace().items}, timeout=300, interval=0.5)
    return found


async def _floor_on_the_loop(kubeconfig: Path, n: int, namespace: str, secret: dict, status: dict,
                             in_flight: int) -> tuple[float, float]:
    """api_floor's writes from one event loop over the operator's own HTTP path (kube.Kube), `in_flight` at once: the
    seconds they took, and this process's CPU seconds for them — what the three writes alone cost a client, the part
    of the operator's CPU per identity (bench/profile.py) no change of its own logic can remove."""
    from mtls_operator.kube import Kube

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=config)
    kube = Kube(config, workers=in_flight, user_agent="bench-floor")

    async def one(i: int) -> None:
        name = f"f{i:05d}"
        await kube.create_secret({**secret, "metadata": {**secret["metadata"], "name": f"{name}-loop-{in_flight}",
                                                         "namespace": namespace}})
        # A revision no other trial wrote: an unchanged status would be a cheaper no-op for the API server.
        await kube.patch_identity_status(namespace, name, {**status, "revision": 1000 + in_flight})
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Not Kube.post_event: it forgives a failure (an Event is best effort), and a floor must not be fast by failing.
        await kube._call("POST", f"/api/v1/namespaces/{namespace}/events", {
            "metadata": {"generateName": f"{name}."}, "type": "Normal", "reason": "Issued",
            "message": f"issued serial {status.get('serialNumber')}", "firstTimestamp": now, "lastTimestamp": now,
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MtlsIdentity", "name": name,
                               "namespace": namespace}, "source": {"component": "bench-floor"}, "count": 1})

    try:
        start, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.monotonic() - start, time.process_time() - cpu
    finally:
        await kube.close()


def run_one(n: int, renewals: int, workdir: Path, operator_args: tuple[str, ...] = ()) -> dict:
    result: dict = {"n": n, "operator_args": " ".join(operator_args)}
    with cluster.LocalCluster(kubeconfig=workdir / f"kubeconfig-{n}") as local:
        _, api = prepare(local, ["bench", "renew", "backlog"])
        log_dir = workdir / f"logs-{n}"
        log_dir.mkdir()
        operator = OperatorProcess(local.kubeconfig, log_dir, ("--min-duration", "10s", *operator_args))
        operator.start()
        try:
            watch = ReadyWatch(api, "bench")
            created_at: dict[str, float] = {}
            start = time.monotonic()
            result["create_seconds"] = round(create_identities(
                api, n, lambda i: ("bench", f"id{i:05d}"),
                created=lambda name: created_at.__setitem__(name, time.monotonic())), 2)
            deadline = time.monotonic() + max(120, n / 5)
            while len(watch.ready_at) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            ready = len(watch.ready_at)
            result["ready"] = ready
            result["all_ready_seconds"] = round(max(watch.ready_at.values()) - start, 2) if ready == n else None
            latencies = [watch.ready_at[k] - created_at[k] for k in watch.ready_at if k in created_at]
            result["time_to_ready_p50_ms"] = round(percentile(latencies, 50) * 1000)
            result["time_to_ready_p99_ms"] = round(percentile(latencies, 99) * 1000)
            watch.stop()

            # Writes per issuance: wait for the count to settle (the last watch events cause no writes).
            def bench_writes() -> list[dict]:
                return [e for e in local.writes() if e.get("objectRef", {}).get("namespace") == "bench"
                        and e["user"]["username"] != "system:kube-controller-manager"
                        and not (e["objectRef"].get("resource") in ("mtlsidentities", "serviceaccounts")
                                 and e["verb"] == "create")
                        and e["objectRef"].get("resource") != "configmaps"]  # the namespace's one trust bundle
            settled = -1
            while settled != len(bench_writes()):
                settled = len(bench_writes())
                time.sleep(1)
            kinds: dict[str, int] = {}
            for e in bench_writes():
                key = f"{e['verb']} {e['objectRef']['resource']}" + (
                    f"/{e['objectRef']['subresource']}" if e["objectRef"].get("subresource") else "")
                kinds[key] = kinds.get(key, 0) + 1
            result["writes_per_issuance"] = round(settled / n, 2)
            result["writes_by_kind"] = kinds
            rss, cpu = proc_usage(operator.proc.pid)
            result["operator_peak_rss_mib"] = round(rss, 1)
            result["operator_cpu_seconds_to_all_ready"] = round(cpu, 1)

            # Renewals while the N identities sit idle.
            if renewals:
                before = scrape(operator, "mtls_operator_renewal_lateness_seconds")
                rwatch = ReadyWatch(api, "renew")
                for i in range(renewals):
                    api.custom.create_namespaced_custom_object(GROUP, VERSION, "renew", PLURAL, {
                        **IDENTITY, "metadata": {"name": f"r{i:03d}"},
                        "spec": {**IDENTITY["spec"], "duration": "20s", "renewBefore": "10s"}})
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and sum(len(v) >= 2 for v in rwatch.serials.values()) < renewals:
                    time.sleep(0.1)
                rwatch.stop()
                late = []
                for seen in rwatch.serials.values():
                    if len(seen) >= 2 and seen[0][2]:
                        due = dt.datetime.strptime(seen[0][2], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
                        late.append(seen[1][0] - due.timestamp())
                after = scrape(operator, "mtls_operator_renewal_lateness_seconds")
                fired = after.get("count", 0) - before.get("count", 0)
                result["renewals_observed"] = len(late)
                if late:
                    # renewalTime in status has 1 s resolution (truncated), so these read up to 1 s high.
                    result["renewal_ready_after_renewal_time_p50_s"] = round(statistics.median(late), 2)
                    result["renewal_ready_after_renewal_time_max_s"] = round(max(late), 2)
                if fired:
                    result["scheduler_fire_lateness_mean_ms"] = round(
                        (after["sum"] - before.get("sum", 0)) / fired * 1000, 1)
            rss, cpu = proc_usage(operator.proc.pid)
            result["operator_peak_rss_mib_end"] = round(rss, 1)
            result["operator_cpu_seconds_end"] = round(cpu, 1)

            # Backlog: N identities already exist when the operator starts (the operator's own throughput, without the
            # client's create rate), and a restart must reissue none of the N it already served. Its floor first, with
            # the operator stopped: the same writes by a bare client.
            operator.stop()
            sample = api.identity("bench", "id00000")
            template = api.core.api_client.sanitize_for_serialization(
                api.core.read_namespaced_secret(sample["spec"].get("secretName") or "id00000-mtls", "bench"))
            result.update(api_floor(api, local.kubeconfig, n, template, sample["status"]))
            create_identities(api, n, lambda i: ("backlog", f"b{i:05d}"))
            served_writes = len(bench_writes())
            bwatch = ReadyWatch(api, "backlog")
            start, wall = time.monotonic(), time.time()
            operator.start()
            deadline = time.monotonic() + max(120, n / 5)
            while len(bwatch.ready_at) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            bwatch.stop()
            result["backlog_ready"] = len(bwatch.ready_at)
            if len(bwatch.ready_at) == n:
                last = max(bwatch.ready_at.values())
                result["backlog_all_ready_seconds_from_operator_start"] = round(last - start, 2)
                result["backlog_ratio_to_floor"] = round((last - start) / result["floor_seconds"], 2)
                # Without the process's start-up (imports, CA load, the first lists): from the first identity Ready.
                first = min(bwatch.ready_at.values())
                result["backlog_all_ready_seconds_from_first_ready"] = round(last - first, 2)
                result["backlog_ratio_to_floor_after_start_up"] = round((last - first) / result["floor_seconds"], 2)
            until_idle(operator.proc.pid, time.monotonic() + 120)
            result["backlog_events_written_seconds_from_operator_start"] = events_done(
                local, lambda ns: ns == "backlog", wall)
            result["restart_writes_for_served_identities"] = len(bench_writes()) - served_writes
            rss, cpu = proc_usage(operator.proc.pid)
            result["backlog_operator_peak_rss_mib"] = round(rss, 1)
            result["backlog_operator_cpu_seconds"] = round(cpu, 1)
            # The floor again, right after, at the concurrency found best (the operator stopped): this machine's
            # speed drifts by a fifth within minutes, so one floor a minute before the backlog can meet a faster or
            # slower machine than the backlog did. The two floors bracket it. Their mean reads a little high (the
            # floor before is the best of five tries, the one after a single try), so the ratio to it is an estimate
            # of the drift's share, next to the ratio to the floor before.
            operator.stop()
            best = str(result["floor_threads"])  # a thread count (an int key) or "loop-<in flight>"
            after = api_floor(api, local.kubeconfig, n, template, sample["status"],
                              threads_tried=() if best.startswith("loop-") else (int(best),),
                              in_flight_tried=(int(best.removeprefix("loop-")),) if best.startswith("loop-") else ())
            result["floor_after_seconds"] = after["floor_seconds"]
            if "backlog_all_ready_seconds_from_operator_start" in result:
                backlog = result["backlog_all_ready_seconds_from_operator_start"]
                result["backlog_ratio_to_floor_after"] = round(backlog / after["floor_seconds"], 2)
                result["backlog_ratio_to_floors_mean"] = round(
                    backlog / ((result["floor_seconds"] + after["floor_seconds"]) / 2), 2)
        finally:
            operator.stop()
    return result


def events_done(local: cluster.LocalCluster, in_scope: Callable[[str], bool], since: float) -> float | None:
    """Seconds from `since` (wall clock) to the last Event the operator created in the namespaces `in_scope`, from
    the audit log: Events wait behind the writes that make identities Ready (events.py), so "all Ready" is not "all
    written", and the bench says both."""
    stamps = [dt.datetime.fromisoformat(e["stageTimestamp"]).timestamp() for e in local.writes()
              if e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "events"
              and in_scope(e["objectRef"].get("namespace", ""))
              and e["user"]["username"] != "system:kube-controller-manager"]
    return round(max(stamps) - since, 1) if stamps else None


def metrics_or_nothing(operator: OperatorProcess, *names: str) -> str:
    """The operator's metrics (or only the named series), or "" while it is not listening yet (or too busy to answer
    in time)."""
    try:
        return operator.metrics(*names)
    except OSError:
        return ""


def reconciles(operator: OperatorProcess) -> int:
    """How many reconciles the operator has finished (its reconcile histogram's count)."""
    series = "mtls_operator_reconcile_duration_seconds_count"
    found = re.search(rf"^{series} (\S+)$", metrics_or_nothing(operator, series), re.M)
    return int(float(found.group(1))) if found else 0


def until_idle(pid: int, deadline: float, window: float = 1.0, busy: float = 0.05) -> float:
    """Waits until the process spends less than `busy` CPU seconds in a `window`; returns when that window began.
    Call it once the process has work in hand: waiting on the API server looks idle too."""
    _, last = proc_usage(pid)
    began = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(window)
        _, cpu = proc_usage(pid)
        if cpu - last < busy:
            return began
        last, began = cpu, time.monotonic()
    raise TimeoutError("the operator never went idle")


def run_large(n: int, namespaces: int, workdir: Path, operator_args: tuple[str, ...] = (), floor: bool = False) -> dict:
    """Many identities over many namespaces (issue 12: 10,000 in 100): a standing backlog issued from the operator's
    start, its peak RSS, then a restart — what it writes for identities it already served (nothing, it must be) and
    how soon it is idle again, with its peak RSS during that initial list. With `floor`, last, the operator stopped:
    the API floor for the same N (api_floor: 8 client threads, and the event loop's path with 32 in flight), in the
    same run."""
    result: dict = {"n": n, "namespaces": namespaces, "operator_args": " ".join(operator_args)}
    with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig-large") as local:
        spaces = [f"large-{i:03d}" for i in range(namespaces)]
        _, api = prepare(local, spaces)
        result["create_seconds"] = round(create_identities(
            api, n, lambda i: (spaces[i % namespaces], f"l{i:05d}"), threads=16), 1)

        def operator_writes() -> int:
            return sum(1 for e in local.writes() if e.get("objectRef", {}).get("namespace", "").startswith("large-")
                       and e["user"]["username"] != "system:kube-controller-manager"
                       and not (e["objectRef"].get("resource") in ("mtlsidentities", "serviceaccounts")
                                and e["verb"] == "create"))

        log_dir = workdir / "logs-large"
        log_dir.mkdir()
        operator = OperatorProcess(local.kubeconfig, log_dir, ("--min-duration", "10s", *operator_args))
        watch = ReadyWatch(api, None)
        result["load_before"] = os.getloadavg()[0]
        start, wall = time.monotonic(), time.time()
        operator.start()
        try:
            deadline = start + 900
            while len(watch.ready_at) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            watch.stop()
            result["ready"] = len(watch.ready_at)
            if len(watch.ready_at) == n:
                result["backlog_all_ready_seconds_from_operator_start"] = round(max(watch.ready_at.values()) - start,
                                                                                1)
            rss, cpu = proc_usage(operator.proc.pid)
            result["operator_peak_rss_mib"] = round(rss, 1)
            result["operator_cpu_seconds"] = round(cpu, 1)
            until_idle(operator.proc.pid, time.monotonic() + 300)
            result["backlog_events_written_seconds_from_operator_start"] = events_done(
                local, lambda ns: ns.startswith("large-"), wall)
            served = operator_writes()
            result["writes_per_identity"] = round(served / n, 2)
            operator.stop()
            start = time.monotonic()
            operator.start()
            # Idle counts once every identity has been looked at (a restart reconciles each once) and the CPU is quiet.
            # Only the reconcile count is asked for: a whole scrape of 10,000 identities' gauges every 2 s would be a
            # sizeable part of the CPU measured.
            wait_for("the restarted operator to look at every identity", lambda: reconciles(operator) >= n,
                     timeout=600, interval=1)
            result["restart_all_seen_seconds_from_start"] = round(time.monotonic() - start, 1)
            result["restart_idle_seconds_from_start"] = round(until_idle(operator.proc.pid, start + 600) - start, 1)
            rss, cpu = proc_usage(operator.proc.pid)
            result["restart_peak_rss_mib"] = round(rss, 1)
            result["restart_cpu_seconds"] = round(cpu, 1)
            result["restart_writes"] = operator_writes() - served
        finally:
            operator.stop()
        if floor:
            sample = api.identity(spaces[0], "l00000")
            result["load_before_floor"] = os.getloadavg()[0]
            result.update(api_floor(api, local.kubeconfig, n, api.core.api_client.sanitize_for_serialization(
                api.core.read_namespaced_secret(sample["spec"].get("secretName") or "l00000-mtls", spaces[0])),
                sample["status"], threads_tried=(8,), in_flight_tried=(32,), clean_up=False))
            result["backlog_ratio_to_floor"] = round(
                result["backlog_all_ready_seconds_from_operator_start"] / result["floor_seconds"], 2)
    return result


def run_wave(n: int, namespaces: int, workdir: Path, operator_args: tuple[str, ...] = ()) -> dict:
    """A renewal wave (issue 12): n identities whose renewals all fall due together, as after an outage of the
    operator. They are issued with a 40-minute lifetime renewed 33 minutes before its end (due 3.7-7 minutes after
    issuance, the jitter included: a slow machine's backlog and its Events end before the first falls due); the
    operator is stopped once all are Ready and started again when every renewal is due. Measured: the time until
    every identity shows a new serial, 429 answers to its writes (audit log), and a newcomer's create -> Ready in
    another namespace every 2 s during the wave, against the same idle."""
    result: dict = {"n": n, "namespaces": namespaces, "operator_args": " ".join(operator_args)}
    with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig-wave") as local:
        spaces = [f"wave-{i:03d}" for i in range(namespaces)]
        _, api = prepare(local, [*spaces, "newcomers"])

        def one(i: int) -> None:
            api.custom.create_namespaced_custom_object(GROUP, VERSION, spaces[i % namespaces], PLURAL, {
                **IDENTITY, "metadata": {"name": f"w{i:05d}"},
                "spec": {**IDENTITY["spec"], "duration": "40m", "renewBefore": "33m"}})

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(n)))
        log_dir = workdir / "logs-wave"
        log_dir.mkdir()
        operator = OperatorProcess(local.kubeconfig, log_dir, ("--min-duration", "10s", *operator_args))
        watch = ReadyWatch(api, None)
        operator.start()
        newcomer = iter(range(10**6))

        def newcomer_seconds() -> float:
            name = f"n{next(newcomer):04d}"
            start = time.monotonic()
            api.custom.create_namespaced_custom_object(GROUP, VERSION, "newcomers", PLURAL, {
                **IDENTITY, "metadata": {"name": name}})
            wait_for(f"newcomer {name} Ready", lambda: watch.ready_at.get(f"newcomers/{name}", 0) > start,
                     timeout=300, interval=0.02)
            return watch.ready_at[f"newcomers/{name}"] - start

        try:
            wait_for("every identity Ready", lambda: len(watch.ready_at) >= n, timeout=900, interval=0.5)
            until_idle(operator.proc.pid, time.monotonic() + 300)
            idle = [newcomer_seconds() for _ in range(5)]
            result["newcomer_idle_median_ms"] = round(statistics.median(idle) * 1000)
            operator.stop()
            due = max(dt.datetime.strptime(seen[-1][2], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
                      for name, seen in watch.serials.items() if not name.startswith("newcomers/"))
            wait_for("every renewal to fall due", lambda: dt.datetime.now(dt.UTC) > due + dt.timedelta(seconds=2),
                     timeout=600, interval=1)
            first = {name: seen[-1][1] for name, seen in watch.serials.items() if not name.startswith("newcomers/")}
            writes_before = len(local.writes())
            result["load_before"] = os.getloadavg()[0]
            start, start_wall = time.monotonic(), time.time()
            operator.start()
            during: list[float] = []
            created_at: list[float] = []  # seconds from the operator's start: the first ones wait for its start-up

            def renewed() -> int:
                return sum(1 for name, serial in first.items() if watch.serials[name][-1][1] != serial)

            while renewed() < n and time.monotonic() < start + 900:
                created_at.append(round(time.monotonic() - start, 1))
                during.append(newcomer_seconds())
                time.sleep(2)
            result["renewed"] = renewed()
            if result["renewed"] == n:
                last = max(next(t for t, serial, _ in watch.serials[name] if serial != first[name])
                           for name in first)
                result["wave_all_renewed_seconds_from_operator_start"] = round(last - start_wall, 1)
            watch.stop()
            if during:
                result["newcomers_during_wave"] = len(during)
                result["newcomer_during_wave_median_ms"] = round(statistics.median(during) * 1000)
                result["newcomer_during_wave_max_ms"] = round(max(during) * 1000)
                result["newcomers_created_at_s_and_ms"] = [[at, round(took * 1000)]
                                                           for at, took in zip(created_at, during, strict=True)]
            writes = local.writes()[writes_before:]
            codes: dict[str, int] = {}
            for e in writes:
                code = str(e.get("responseStatus", {}).get("code", "?"))
                codes[code] = codes.get(code, 0) + 1
            result["wave_write_codes"] = codes
            result["wave_429s"] = codes.get("429", 0)
            rss, cpu = proc_usage(operator.proc.pid)
            result["wave_operator_peak_rss_mib"] = round(rss, 1)
            result["wave_operator_cpu_seconds"] = round(cpu, 1)
        finally:
            operator.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append")
    parser.add_argument("--renewals", type=int, default=50)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--operator-arg", action="append", default=[], help="passed to mtls-operator run")
    parser.add_argument("--namespaces", type=int, default=0,
                        help="spread each N over this many namespaces: the standing-backlog and restart run only")
    parser.add_argument("--renewal-wave", action="store_true",
                        help="with --namespaces: N renewals falling due at once instead (run_wave)")
    parser.add_argument("--floor", action="store_true",
                        help="with --namespaces: also the API floor at that N, after the restart (run_large)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the operator's logs and the kubeconfigs here (an empty folder) instead of a "
                             "temporary one")
    args = parser.parse_args()
    cluster.ensure_binaries()
    results = []
    with contextlib.nullcontext(str(args.workdir)) if args.workdir else tempfile.TemporaryDirectory(
            prefix="mtls-bench-") as tmp:
        for n in (args.n or [10_000]) if args.namespaces else []:
            if args.renewal_wave:
                res = run_wave(n, args.namespaces, Path(tmp), tuple(args.operator_arg))
            else:
                res = run_large(n, args.namespaces, Path(tmp), tuple(args.operator_arg), floor=args.floor)
            print(json.dumps(res, indent=2), flush=True)
            results.append(res)
        for n in [] if args.namespaces else args.n or [100, 1000]:
            res = run_one(n, args.renewals, Path(tmp), tuple(args.operator_arg))
            print(json.dumps(res, indent=2), flush=True)
            results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
