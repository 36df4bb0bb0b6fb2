"""A real, throw-away Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and kube-controller-manager.

Why this exists: every behaviour of the operator must be proven against a real API server, and these machines have no
container engine (so no kind) and no internet (so no envtest download). hack/build-bins.sh compiles the binaries from
pinned Go modules; this module runs them. Tests import it (a session fixture owns one cluster); the Makefile runs it as
`python hack/cluster.py up|down` for a cluster that outlives the command.

What it sets up is what the operator relies on in a real cluster: TLS everywhere, RBAC, service-account tokens (issuer,
signing keys, TokenRequest), and the controllers that garbage-collect owned objects, finish namespace deletion, and
create `default` ServiceAccounts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
STATE_DIR = Path(os.environ.get("MTLS_CLUSTER_STATE", REPO / ".cache" / "cluster"))
STATE_FILE = STATE_DIR / "state.json"
DEFAULT_KUBECONFIG = STATE_DIR / "kubeconfig"
SERVICE_CIDR = "10.96.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

# The controllers the operator's behaviour depends on; the rest (nodes, pods, volumes) have nothing to act on here.
CONTROLLERS = ",".join(f"{c}-controller" for c in (
    "garbage-collector", "namespace", "serviceaccount", "serviceaccount-token", "root-ca-certificate-publisher"))


def bin_dir() -> Path:
    """Where hack/build-bins.sh puts the binaries; one definition, in hack/bin-dir.sh."""
    out = subprocess.run([str(HACK / "bin-dir.sh")], check=True, capture_output=True, text=True).stdout
    return Path(out.strip())


def kube_minor() -> str:
    """The Kubernetes minor under test: MTLS_KUBE_VERSION (e.g. "1.35", the oldest supported) or the default pin's."""
    return os.environ.get("MTLS_KUBE_VERSION") or default_kube_minor()


def default_kube_minor() -> str:
    for line in (HACK / "kube" / "go.mod").read_text().splitlines():
        if line.startswith("require k8s.io/kubernetes v"):
            return ".".join(line.split()[-1].lstrip("v").split(".")[:2])
    raise RuntimeError("hack/kube/go.mod does not pin k8s.io/kubernetes")


def kube_tool() -> str:
    """The build-bins.sh tool holding that minor's kube-apiserver, kube-controller-manager and kubectl."""
    minor = kube_minor()
    if minor == default_kube_minor():
        return "kube"
    if not (HACK / f"kube-{minor}" / "go.mod").exists():
        pins = sorted(p.name.removeprefix("kube-") for p in HACK.glob("kube-*/go.mod") if p.parent.is_dir())
        raise RuntimeError(f"MTLS_KUBE_VERSION={minor}: no pin hack/kube-{minor}; pinned: {default_kube_minor()}, "
                           + ", ".join(p.split("/")[0] for p in pins))
    return f"kube-{minor}"


def kube_bin_dir() -> Path:
    """Where that minor's binaries are: the bin dir for the default pin, a folder of its own for another."""
    tool = kube_tool()
    return bin_dir() if tool == "kube" else bin_dir() / tool


def ensure_binaries() -> Path:
    """Builds whatever is missing or stale (a no-op in seconds when the cache is warm) and returns the folder."""
    subprocess.run([str(HACK / "build-bins.sh"), "etcd", "helm", kube_tool()], check=True)
    return bin_dir()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port to listen on later, below the kernel's ephemeral range: a port bind(0) hands out is free only for that
    moment, and the many outgoing connections of a test run (each takes an ephemeral port) can take it before the
    server binds it (seen: "address already in use" for an operator's health port). Never the same one twice in a
    process."""
    low, _high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates:
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


# ---- throw-away PKI for the control plane itself (not the operator's CA) ----

def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key, issuer: x509.Name | None = None, issuer_key=None, *, ca: bool = False,
          server_names: tuple[str, ...] = (), client: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        usages = ([x509.ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []) + (
            [x509.ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write_pki(d: Path) -> None:
    """CA, serving cert, two client certs (admin, controller-manager) and the service-account signing key."""
    ca_key = _key()
    ca_name = _name("mtls-operator-local-cluster-ca")
    ca = _cert(ca_name, ca_key, ca=True)
    files: dict[str, bytes] = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(ca_key)}
    svc_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    pairs = {
        "apiserver": (_name("kube-apiserver"), dict(server_names=(
            "127.0.0.1", "localhost", svc_ip, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local"))),
        # system:masters: the launcher's own admin, and the controller-manager (it runs with one credential here).
        "admin": (_name("admin", "system:masters"), dict(client=True)),
        "kcm": (_name("system:kube-controller-manager", "system:masters"), dict(client=True)),
    }
    for stem, (subject, kind) in pairs.items():
        key = _key()
        cert = _cert(subject, key, ca_name, ca_key, **kind)
        files[f"{stem}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{stem}.key"] = _pem_key(key)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["sa.key"] = sa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    files["sa.pub"] = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, data in files.items():
        (d / name).write_bytes(data)
        (d / name).chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str = "admin") -> None:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "mtls-local",
        "clusters": [{"name": "mtls-local", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "mtls-local", "context": {"cluster": "mtls-local", "user": user}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: every client reads it
    path.chmod(0o600)


def die_with_parent() -> None:
    """Child-side: ask the kernel to kill us when the launcher dies, so a crashed test run leaves no orphans."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class LocalCluster:
    """One control plane. `start()` returns once /readyz is green and the controllers have acted; `stop()` ends it all.

    detached=True makes the processes outlive this Python process (for `make cluster-up`); otherwise they die with it.
    """

    kubeconfig: Path | None = None
    detached: bool = False
    workdir: Path = field(default=Path())
    server: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)  # how each was started, for resume()

    def start(self, timeout: float = 60.0) -> LocalCluster:
        bins, kube = bin_dir(), kube_bin_dir()
        missing = [str(p) for p in (bins / "etcd", kube / "kube-apiserver", kube / "kube-controller-manager")
                   if not p.exists()]
        if missing:
            raise RuntimeError(f"missing {missing}: run `hack/build-bins.sh etcd {kube_tool()}` (or `make bin`) first")
        self.workdir = Path(tempfile.mkdtemp(prefix="mtls-cluster-"))
        d = self.workdir
        _write_pki(d)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self.kubeconfig = self.kubeconfig or d / "kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, d / "ca.crt", d / "admin.crt", d / "admin.key")
        write_kubeconfig(d / "kcm.kubeconfig", self.server, d / "ca.crt", d / "kcm.crt", d / "kcm.key", "kcm")
        try:
            self._spawn("etcd", [
                str(bins / "etcd"), "--name=local", f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # a disposable test store: durability buys nothing, fsync costs seconds
                "--log-level=warn",
            ])
            self._spawn("kube-apiserver", [
                str(kube / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true", "--profiling=false", "--v=1",
                # No node can reach 127.0.0.1 anyway, and from 1.37 the endpoint reconciler refuses a loopback
                # advertise address ("cannot use public IP 127.0.0.1"): the `kubernetes` Service gets no endpoints.
                "--endpoint-reconciler-type=none",
                # Every write, one line each: how tests and benchmarks count the operator's API writes exactly.
                f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-maxbackup=1",
            ])
            self._wait_readyz(timeout)
            self._spawn("kube-controller-manager", [
                str(kube / "kube-controller-manager"),
                f"--kubeconfig={d / 'kcm.kubeconfig'}",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--leader-elect=false", "--secure-port=0",
                # GC and namespace controllers discover resources; CRDs created by tests must be picked up quickly.
                "--concurrent-gc-syncs=5", "--v=1",
            ])
            self._wait_controllers(timeout)
        except BaseException:
            self.stop()
            self.cleanup()
            raise
        return self

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.json"
        path.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "verbs": sorted(WRITE_VERBS)},
                      # Reads of single Secrets too: whether a restart read a Secret's data is for the audit to say.
                      {"level": "Metadata", "verbs": ["get"], "resources": [{"group": "", "resources": ["secrets"]}]},
                      {"level": "None"}],
        }))
        return path

    def audited(self) -> list[dict]:
        """The audit log's events so far (one per request, at ResponseComplete): every write, and GETs of a Secret."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def writes(self) -> list[dict]:
        """The audit log's write events so far."""
        return [e for e in self.audited() if e.get("verb") in WRITE_VERBS]

    def halt(self, name: str = "kube-apiserver", grace: float = 10.0) -> None:
        """Stops one component (SIGTERM, SIGKILL after the grace), as an outage or a restart would; `resume` starts it
        again with the same arguments, ports and data. For tests of how clients live through an API-server outage."""
        proc = self.procs.pop(name)
        _terminate(proc.pid, grace)
        proc.wait()

    def resume(self, name: str = "kube-apiserver", timeout: float = 60.0) -> None:
        self._spawn(name, self.argv[name], append_log=True)
        if name == "kube-apiserver":
            self._wait_readyz(timeout)

    def _spawn(self, name: str, argv: list[str], append_log: bool = False) -> None:
        self.argv[name] = argv
        log = (self.workdir / f"{name}.log").open("ab" if append_log else "wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
            start_new_session=True,  # a Ctrl-C on the terminal reaches us, and we stop them in order
            preexec_fn=None if self.detached else die_with_parent,
        )

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "ca.crt"))
        ctx.load_cert_chain(self.workdir / "admin.crt", self.workdir / "admin.key")
        return ctx

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _poll(self, what: str, ok, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError):
                if ok():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached within {timeout:.0f}s;\n{self.log_tail('kube-apiserver')}")

    def _wait_readyz(self, timeout: float) -> None:
        self._poll("kube-apiserver /readyz", lambda: self.get("/readyz")[0] == 200, timeout)

    def _wait_controllers(self, timeout: float) -> None:
        # The serviceaccount controller creating `default` proves the controller-manager is connected and running.
        self._poll("the controller-manager (default ServiceAccount)",
                   lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200, timeout)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """Stops in reverse start order: controllers, then the API server, then etcd; SIGKILL after the grace."""
        for name in reversed(list(self.procs)):
            _terminate(self.procs[name].pid, grace)
            self.procs[name].wait()
        self.procs.clear()

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()


def _terminate(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (cluster-down): probe for existence instead
                os.kill(pid, 0)
                done = 0
            if done:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def _ours(pid: int) -> bool:
    """Guards cluster-down against a recycled pid: the process must be one of our binaries."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return Path(exe).parent in (bin_dir(), kube_bin_dir())


def up(kubeconfig: Path) -> None:
    if STATE_FILE.exists():
        print(f"a cluster is already up (state in {STATE_FILE}); run `make cluster-down` first", file=sys.stderr)
        sys.exit(1)
    started = time.monotonic()
    cluster = LocalCluster(kubeconfig=kubeconfig, detached=True)
    cluster.start()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({
        "pids": {n: p.pid for n, p in cluster.procs.items()}, "workdir": str(cluster.workdir),
        "server": cluster.server, "kubeconfig": str(kubeconfig),
    }, indent=2))
    print(f"control plane ready in {time.monotonic() - started:.1f}s at {cluster.server}")
    print(f"export KUBECONFIG={kubeconfig}")


def down() -> None:
    if not STATE_FILE.exists():
        print("no cluster is up")
        return
    state = json.loads(STATE_FILE.read_text())
    for name, pid in reversed(list(state["pids"].items())):
        if _ours(pid):
            _terminate(pid, 10.0)
            print(f"stopped {name} (pid {pid})")
    import shutil

    shutil.rmtree(state["workdir"], ignore_errors=True)
    Path(state["kubeconfig"]).unlink(missing_ok=True)
    STATE_FILE.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "bin-dir"])
    parser.add_argument("--kubeconfig", type=Path, default=DEFAULT_KUBECONFIG)
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.kubeconfig)
    elif args.command == "down":
        down()
    else:
        print(bin_dir())


if __name__ == "__main__":
    main()
