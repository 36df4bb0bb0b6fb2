"""Test helpers shared by the integration tests: polling with a deadline, the built kubectl, the operator as a real
subprocess, and small readers for identities and their Secrets. No mocks: everything here talks to a real API server."""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import os
import random
import shutil
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes

REPO = Path(__file__).resolve().parent.parent
GROUP, VERSION, PLURAL = "mtls-operator.io", "v1alpha1", "mtlsidentities"
OPERATOR_NAMESPACE = "mtls-operator"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Polls until probe() returns something truthy; fails with the last value (or error) after the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except kubernetes.client.exceptions.ApiException as e:
            last = f"ApiException {e.status}: {e.reason}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def only_waiting_from_here() -> None:
    """Tells whoever runs this session (hack/kind-e2e-with-local-tests.sh, through MTLS_E2E_WAITING_FILE) that it
    now only waits on the cluster's clocks — the kubelet's refresh of a pod certificate, minutes away — so other work
    can use the machine meanwhile. Without that variable it does nothing."""
    path = os.environ.get("MTLS_E2E_WAITING_FILE")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()


def unique(prefix: str) -> str:
    # Letters only: a namespace of digits would make `<svc>.<ns>` end in an all-numeric label, which RFC 1123 linters
    # (pkilint) reject as a top-level domain.
    return f"{prefix}-{''.join(random.choices(string.ascii_lowercase, k=8))}"


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), f"--kubeconfig={self.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, check=check, timeout=60)


class Api:
    """The official client's typed APIs, plus shortcuts for MtlsIdentity (a custom resource)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
        self.client = kubernetes.client.ApiClient(config)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.client)

    def namespace(self, prefix: str = "t") -> str:
        name = unique(prefix)
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def grant(self, namespace: str, dns_names: list[str] | None = None, ip_addresses: list[str] | None = None) -> str:
        """A cluster MtlsIdentityPolicy letting one namespace use extra names (what a cluster admin would write)."""
        name = unique(f"grant-{namespace}")
        self.custom.create_cluster_custom_object(GROUP, VERSION, "mtlsidentitypolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MtlsIdentityPolicy", "metadata": {"name": name},
            "spec": {"namespaces": [namespace], "dnsNames": dns_names or [], "ipAddresses": ip_addresses or []}})
        return name

    def service_account(self, namespace: str, name: str) -> None:
        try:
            self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        except kubernetes.client.exceptions.ApiException as e:
            if e.status != 409:
                raise

    def create_identity(self, namespace: str, name: str, spec: dict[str, Any] | None = None,
                        annotations: dict[str, str] | None = None, with_service_account: bool = True
                        ) -> dict[str, Any]:
        """Creates an MtlsIdentity, and first the ServiceAccount it names (as a real workload would have)."""
        if with_service_account:
            self.service_account(namespace, (spec or {}).get("serviceAccountName") or name)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MtlsIdentity",
                "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
                "spec": spec or {}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def identity(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def patch_identity(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def delete_identity(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def secret(self, namespace: str, name: str):
        try:
            return self.core.read_namespaced_secret(name, namespace)
        except kubernetes.client.exceptions.ApiException as e:
            if e.status == 404:
                return None
            raise

    def ready(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The identity when its Ready condition is True for its current generation, else None."""
        obj = self.identity(namespace, name)
        cond = ready_condition(obj)
        if cond.get("status") == "True" and obj.get("status", {}).get("observedGeneration") == \
                obj["metadata"]["generation"]:
            return obj
        return None

    def wait_ready(self, namespace: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_for(f"{namespace}/{name} Ready", lambda: self.ready(namespace, name), timeout)

    def wait_reason(self, namespace: str, name: str, reason: str, timeout: float = 30.0) -> dict[str, Any]:
        def probe():
            obj = self.identity(namespace, name)
            return obj if ready_condition(obj).get("reason") == reason else None
        return wait_for(f"{namespace}/{name} reason {reason}", probe, timeout)

    def wait_event(self, namespace: str, name: str, match: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        """Events are posted after the status a test waits for, in the background: poll for them too."""
        return wait_for(f"an Event on {namespace}/{name}",
                        lambda: next((e for e in self.events(namespace, name) if match(e)), None), timeout)

    def events(self, namespace: str, name: str) -> list[Any]:
        items = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return list(items)

    def deny(self, name: str, namespace: str, operation: str, resource: str, expression: str, message: str) -> str:
        """A ValidatingAdmissionPolicy (and its binding, both `name`) refusing, in one namespace, each `operation` on
        a core `resource` whose CEL `expression` is false — what a cluster's guard-rail might do. Enforced a moment
        after it is created: probe before relying on it. Returns the name for lift()."""
        admission = kubernetes.client.AdmissionregistrationV1Api(self.client)
        admission.create_validating_admission_policy({
            "metadata": {"name": name},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                             "operations": [operation], "resources": [resource]}]},
                     "validations": [{"expression": expression, "message": message}]}})
        admission.create_validating_admission_policy_binding({
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                     "matchResources": {"namespaceSelector": {
                         "matchLabels": {"kubernetes.io/metadata.name": namespace}}}}})
        return name

    def lift(self, name: str) -> None:
        admission = kubernetes.client.AdmissionregistrationV1Api(self.client)
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"), {})


def token_kubeconfig(kubeconfig: Path, token: str, path: Path) -> Path:
    """A copy of `kubeconfig` that authenticates with a bearer token (a ServiceAccount's): to act as that account."""
    import json

    import yaml

    config = yaml.safe_load(kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "sa"
    path.write_text(json.dumps(config))
    return path


def secret_files(secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def write_identity_dir(secret, folder: Path) -> Path:
    """The files a pod would see where the Secret is mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in secret_files(secret).items():
        (folder / name).write_bytes(data)
    return folder


@functools.cache
def _with_bytecode() -> None:
    """The package's bytecode written beside its source, once per run, as pip writes it when it installs the package
    (the image has it). These machines set PYTHONDONTWRITEBYTECODE, so without it every operator process would compile
    each of its modules from source as it starts: a cost no installed operator pays, counted in every benchmark that
    times a start (the standing backlog is timed from the process's start). Sources edited later are compiled afresh."""
    import compileall

    import mtls_operator

    compileall.compile_dir(Path(mtls_operator.__file__).parent, quiet=1)


class OperatorProcess:
    """`mtls-operator run` as a real subprocess, against the test cluster. Its whole output is kept in a log file (the
    secrets-hygiene test scans it for key material)."""

    def __init__(self, kubeconfig: Path, log_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.kubeconfig, self.log_dir, self.extra_args = kubeconfig, log_dir, extra_args
        self.proc: subprocess.Popen | None = None
        self.metrics_port = self.health_port = 0
        self.starts = 0
        self.log_path = log_dir / "operator-0.log"

    def start(self, *more_args: str) -> OperatorProcess:
        assert self.proc is None, "already running"
        self.starts += 1
        _with_bytecode()
        import cluster  # hack/cluster.py: one way to pick ports (outside the ephemeral range)

        self.metrics_port, self.health_port = cluster.free_port(), cluster.free_port()
        self.log_path = self.log_dir / f"operator-{self.starts}.log"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "mtls_operator", "run", "--ca-namespace", OPERATOR_NAMESPACE,
                "--min-duration", "10s", "--metrics-port", str(self.metrics_port),
                "--health-port", str(self.health_port), *self.extra_args, *more_args]
        import cluster  # hack/cluster.py: the operator dies with the test run, as the control plane does

        self.proc = subprocess.Popen(args, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
                                     cwd=REPO, preexec_fn=cluster.die_with_parent)
        wait_for("the operator's liveness endpoint", self.healthy, timeout=60)
        return self

    def healthy(self) -> bool:
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self, *names: str) -> str:
        """The scrape, or only the named series (`name[]`)."""
        import urllib.parse
        import urllib.request

        query = f"?{urllib.parse.urlencode([('name[]', n) for n in names])}" if names else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics{query}", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease handed back (what a crash or an OOM kill looks like)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self, *more_args: str) -> OperatorProcess:
        self.stop()
        return self.start(*more_args)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


class InClusterOperator:
    """The operator the chart runs inside a real cluster (kind), seen through the API server: the same questions the
    tests ask an OperatorProcess, answered by the Deployment, its logs and its metrics Service (via the API server's
    service proxy). Starting and stopping it is not offered; tests that need that are marked `local_operator`."""

    def __init__(self, kubectl: Kubectl, namespace: str = OPERATOR_NAMESPACE, release: str = "mtls-operator") -> None:
        self.kubectl, self.namespace, self.release = kubectl, namespace, release

    def healthy(self) -> bool:
        out = self.kubectl("get", "deployment", "-n", self.namespace, self.release, "-o",
                           "jsonpath={.status.availableReplicas}", check=False).stdout.strip()
        return out.isdigit() and int(out) >= 1

    def metrics(self) -> str:
        return self.kubectl("get", "--raw", f"/api/v1/namespaces/{self.namespace}/services/"
                            f"http:{self.release}-metrics:metrics/proxy/metrics").stdout

    def all_logs(self) -> str:
        return self.kubectl("logs", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.release}",
                            "--tail=-1", "--prefix", check=False).stdout

    log = all_logs


def swap_volume(folder: Path, files: dict[str, bytes]) -> None:
    """Updates `folder` the way the kubelet updates a Secret volume: the files go into a new hidden timestamped
    directory, then the `..data` symlink is swapped to it in one rename; tls.crt etc. are links through `..data`."""
    folder.mkdir(parents=True, exist_ok=True)
    fresh = folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
    fresh.mkdir()
    for name, data in files.items():
        (fresh / name).write_bytes(data)
    link = folder / f"..data_tmp.{uuid.uuid4().hex[:8]}"
    link.symlink_to(fresh.name)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    os.replace(link, folder / "..data")
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(Path("..data") / name)
    if old:
        shutil.rmtree(folder / old, ignore_errors=True)


_other_runs = itertools.count(1)


def other_operator(operator: OperatorProcess, *args: str, kubeconfig: Path | None = None) -> OperatorProcess:
    """Another operator process (not started) beside the session's, with log files of its own that the
    secrets-hygiene scan reads with the rest."""
    other = OperatorProcess(kubeconfig or operator.kubeconfig, operator.log_dir, args)
    other.starts = 1000 * next(_other_runs)
    return other


@contextlib.contextmanager
def swapped_operator(operator: OperatorProcess, *args: str, kubeconfig: Path | None = None):
    """Stops the session's operator, runs one with other settings (or credentials), and puts the session's back."""
    operator.stop()
    other = other_operator(operator, *args, kubeconfig=kubeconfig)
    try:
        yield other.start()
    finally:
        other.stop()
        operator.start()
