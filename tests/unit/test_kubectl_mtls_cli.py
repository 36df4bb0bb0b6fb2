"""`kubectl mtls` end to end through `main`, with the API replaced by a fake that serves JSON bodies (the integration
test runs the same against a real API server): dispatch, flags before and after the command, exit codes, the renew
confirmation, errors that name the missing RBAC, JSON that parses with a stable shape, and no key material in any
output."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest

from mtls_operator import tlssecret
from mtls_operator.kubectl_mtls import api, cli, exitcodes
from mtls_operator.kubectl_mtls.api import ApiProblem, Call
from tests.unit.kubectl_mtls_material import assert_no_key_material, issue, root


def _identity(name: str, ns: str = "p", ready: str = "True", reason: str = "Issued") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "generation": 1}, "spec": {},
            "status": {"observedGeneration": 1, "serialNumber": f"{name}-serial", "notAfter": "2099-01-01T00:00:00Z",
                       "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "msg"}]}}


class FakeCluster:
    """What api.Cluster answers, from dicts; records the patches."""

    default_namespace = "p"

    def __init__(self, identities: list[dict] | None = None, secrets: dict | None = None,
                 configmaps: dict | None = None, authorities: list[dict] | None = None,
                 fail: dict[tuple[str, str], ApiProblem] | None = None) -> None:
        self._identities = identities or []
        self._secrets, self._configmaps = secrets or {}, configmaps or {}
        self._authorities = authorities or []
        self.fail = fail or {}
        self.patches: list[tuple[str, str, dict]] = []

    def _maybe_fail(self, what: str, key: str) -> None:
        if (what, key) in self.fail:
            raise self.fail[(what, key)]

    def identity(self, namespace: str, name: str) -> dict:
        self._maybe_fail("identity", f"{namespace}/{name}")
        for obj in self._identities:
            if obj["metadata"]["namespace"] == namespace and obj["metadata"]["name"] == name:
                return obj
        raise Call("get", api.IDENTITIES, namespace, name).problem(404, {"details": {"name": name}}, "https://x")

    def identities(self, namespace: str | None) -> list[dict]:
        return [o for o in self._identities if namespace is None or o["metadata"]["namespace"] == namespace]

    def annotate_identity(self, namespace: str, name: str, annotations: dict) -> dict:
        self._maybe_fail("patch", f"{namespace}/{name}")
        obj = self.identity(namespace, name)
        self.patches.append((namespace, name, dict(annotations)))
        return obj

    def identity_events(self, namespace: str, name: str) -> list[dict]:
        self._maybe_fail("events", namespace)
        return [{"type": "Normal", "reason": "Issued", "message": "Issued certificate",
                 "lastTimestamp": "2026-11-26T11:55:01Z"}]

    def authorities(self) -> list[dict]:
        return self._authorities

    def secret(self, namespace: str, name: str) -> dict:
        if (namespace, name) not in self._secrets:
            raise Call("get", "secrets", namespace, name).problem(404, {"details": {"name": name}}, "https://x")
        return self._secrets[(namespace, name)]

    def configmap(self, namespace: str, name: str) -> dict:
        if (namespace, name) not in self._configmaps:
            raise Call("get", "configmaps", namespace, name).problem(404, {"details": {"name": name}}, "https://x")
        return self._configmaps[(namespace, name)]

    def pods(self, namespace: str, selector: str) -> list[dict]:
        return []

    def lease(self, namespace: str, name: str) -> dict:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"spec": {"holderIdentity": "local-1-abc", "leaseDurationSeconds": 15, "renewTime": now}}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(monkeypatch: pytest.MonkeyPatch, fake: FakeCluster | None, *argv: str,
         stdin: io.StringIO | None = None) -> tuple[int, str, str]:
    def connect(args: Any) -> FakeCluster:
        if fake is None:
            raise AssertionError("no API call was expected")
        return fake

    monkeypatch.setattr(cli, "_connect", connect)
    monkeypatch.setattr(cli.sys, "stdin", stdin or io.StringIO(""))
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_status_exit_codes_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCluster([_identity("good"), _identity("bad", ready="False", reason="PolicyDenied")])
    code, out, _ = _run(monkeypatch, fake, "status", "good", "-o", "json")
    doc = json.loads(out)
    assert code == exitcodes.OK == doc["exitCode"] and doc["kind"] == "IdentityStatus" and doc["ok"] is True
    assert doc["events"][0]["reason"] == "Issued"
    code, out, _ = _run(monkeypatch, fake, "-n", "p", "status", "bad")  # flags before the command, too
    assert code == exitcodes.NOT_OK and "What to do (PolicyDenied):" in out
    code, out, err = _run(monkeypatch, fake, "status", "missing")
    assert code == exitcodes.API_ERROR and out == "" and "mtlsidentities.mtls-operator.io p/missing not found" in err


def test_errors_name_the_missing_rbac_verb_and_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    forbidden = Call("get", api.IDENTITIES, "p", "good").problem(
        403, {"message": 'mtlsidentities.mtls-operator.io "good" is forbidden: User "bob" cannot get resource'},
        "https://x")
    assert forbidden.kind == "Forbidden"
    assert "your RBAC needs verb 'get' on 'mtlsidentities.mtls-operator.io' in namespace p" in forbidden.message
    fake = FakeCluster([_identity("good")], fail={("identity", "p/good"): forbidden})
    code, out, _ = _run(monkeypatch, fake, "status", "good", "-o", "json")
    doc = json.loads(out)
    assert code == exitcodes.API_ERROR and doc["kind"] == "Error" and doc["exitCode"] == 3
    assert doc["error"]["missing"] == {"verb": "get", "resource": "mtlsidentities.mtls-operator.io",
                                       "namespace": "p"}
    # Events are extra: not being allowed to read them is said, and status still answers.
    fake = FakeCluster([_identity("good")], fail={("events", "p"): Call("list", "events", "p").problem(
        403, {"message": "no"}, "https://x")})
    code, out, _ = _run(monkeypatch, fake, "status", "good")
    assert code == exitcodes.OK and "Events: not shown: forbidden: you may not list events in namespace p" in out


def test_api_problems_say_what_happened() -> None:
    crd_missing = Call("list", api.IDENTITIES).problem(404, {"message": "the server could not find the requested "
                                                                        "resource"}, "https://x")
    assert "are the mtls-operator CRDs installed" in crd_missing.message
    assert "cluster-wide" in Call("list", api.AUTHORITIES).problem(403, {}, "https://x").message
    assert "did not accept your credentials" in Call("get", "secrets", "p", "s").problem(401, {}, "https://x").message
    assert Call("get", "secrets", "p", "s").problem(500, {"message": "boom"}, "https://x").kind == "Error"


def test_renew_one_sets_the_operators_annotation_and_says_it_is_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCluster([_identity("api")])
    code, out, _ = _run(monkeypatch, fake, "renew", "api")
    assert code == exitcodes.OK
    [(ns, name, annotations)] = fake.patches
    assert (ns, name) == ("p", "api") and list(annotations) == [tlssecret.ANN_RENEW_REQUEST]
    assert annotations[tlssecret.ANN_RENEW_REQUEST].startswith("kubectl-mtls@")
    assert "rate-limited" in out and "replacing serial api-serial" in out and "kubectl mtls status api -n p" in out
    code, out, _ = _run(monkeypatch, fake, "renew", "api", "-o", "json")
    doc = json.loads(out)
    assert list(doc) == ["kind", "ok", "scope", "annotation", "value", "identities", "rateLimits", "warnings",
                         "exitCode"]
    assert doc["identities"] == [{"namespace": "p", "name": "api", "requested": True, "serialBefore": "api-serial",
                                  "error": None}]


def test_renew_all_in_every_namespace_needs_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    # No terminal, no --yes: refused before any API call.
    code, out, err = _run(monkeypatch, None, "renew", "--all", "-A")
    assert code == exitcodes.USAGE and "pass --yes" in err
    code, out, _ = _run(monkeypatch, None, "renew", "--all", "-A", "-o", "json")
    assert json.loads(out)["error"]["reason"] == "Usage"

    fake = FakeCluster([_identity("a", "p"), _identity("b", "q")])
    code, out, err = _run(monkeypatch, fake, "renew", "--all", "-A", stdin=Tty("n\n"))
    assert code == exitcodes.USAGE and fake.patches == [] and "Renew all 2 identities in 2 namespaces" in err
    code, out, err = _run(monkeypatch, fake, "renew", "--all", "-A", stdin=Tty("y\n"))
    assert code == exitcodes.OK and {(n, m) for n, m, _ in fake.patches} == {("p", "a"), ("q", "b")}
    fake.patches.clear()
    code, _, _ = _run(monkeypatch, fake, "renew", "--all", "-A", "--yes")
    assert code == exitcodes.OK and len(fake.patches) == 2


def test_renew_all_of_a_namespace_goes_on_past_one_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = Call("patch", api.IDENTITIES, "p", "b").problem(403, {"message": "no"}, "https://x")
    fake = FakeCluster([_identity("a"), _identity("b"), _identity("c", "other")], fail={("patch", "p/b"): refused})
    code, out, _ = _run(monkeypatch, fake, "renew", "--all", "-n", "p")
    assert code == exitcodes.API_ERROR
    assert [name for _, name, _ in fake.patches] == ["a"]
    assert "FAILED p/b: forbidden: you may not patch mtlsidentities.mtls-operator.io in namespace p" in out


@pytest.mark.parametrize("argv", [("renew", "a", "--all"), ("renew",), ("renew", "a", "-A"), ("status",),
                                  ("inspect", "secret"), ("bogus",), ()])
def test_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]) -> None:
    try:
        code, _, _ = _run(monkeypatch, None, *argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == exitcodes.USAGE


def test_inspect_secret_falls_back_to_the_authority_and_prints_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    issued = issue(name="api", namespace="p", now=dt.datetime.now(dt.UTC))  # main reads the real clock
    authority = {"metadata": {"name": "mtls-operator.mtls-operator-ca"},
                 "status": {"trustAnchors": [{"fingerprint": root().fingerprint}]}}
    fake = FakeCluster(secrets={("p", "api-mtls"): issued.body}, authorities=[authority])
    code, text, _ = _run(monkeypatch, fake, "inspect", "secret", "api-mtls")
    assert code == exitcodes.OK, text
    assert "ConfigMap p/mtls-trust-bundle not found: used the MtlsAuthority's anchors" in text
    code, out, _ = _run(monkeypatch, fake, "inspect", "secret", "api-mtls", "-o", "json")
    doc = json.loads(out)
    assert doc["kind"] == "SecretInspection" and doc["key"]["matchesCertificate"] is True
    assert doc["verification"]["cluster"]["against"].startswith("MtlsAuthority mtls-operator.mtls-operator-ca")
    assert_no_key_material(text + out, issued.key_pem)

    # With the namespace's ConfigMap, that is what is used.
    fake = FakeCluster(secrets={("p", "api-mtls"): issued.body},
                       configmaps={("p", "mtls-trust-bundle"): {"data": {"ca.crt": root().bundle_pem.decode()}}})
    code, text, _ = _run(monkeypatch, fake, "inspect", "secret", "api-mtls", "-n", "p")
    assert code == exitcodes.OK and "(ConfigMap p/mtls-trust-bundle): OK" in text
    assert_no_key_material(text, issued.key_pem)

    code, _, err = _run(monkeypatch, fake, "inspect", "secret", "nope")
    assert code == exitcodes.API_ERROR and "secrets p/nope not found" in err


def test_check_reports_and_exits_by_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    authority = {"metadata": {"name": "a"}, "status": {
        "issuer": "CN=root", "issuerNotAfter": "2099-01-01T00:00:00Z", "rotationPhase": "Stable",
        "conditions": [{"type": "Ready", "status": "True", "reason": "CAValid"}], "trustAnchors": []}}
    fake = FakeCluster([_identity("a"), _identity("b", "q", "False", "PolicyDenied")], authorities=[authority])
    code, out, _ = _run(monkeypatch, fake, "check", "-n", "p", "-o", "json")
    doc = json.loads(out)
    assert code == exitcodes.OK == doc["exitCode"] and doc["identityNamespace"] == "p"
    code, out, _ = _run(monkeypatch, fake, "check")
    assert code == exitcodes.NOT_OK and "q/b  PolicyDenied" in out and "no operator pods" in out


def test_a_burst_over_the_namespace_budget_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtls_operator.kubectl_mtls import renewal

    assert renewal.burst_warnings(["p"] * 10 + ["q"]) == ()
    [warning] = renewal.burst_warnings(["p"] * 12)
    assert warning.startswith("namespace p: 12 requests exceed the default budget of 10") and "at least 12s" in warning
    fake = FakeCluster([_identity(f"i{n}") for n in range(12)])
    code, out, _ = _run(monkeypatch, fake, "renew", "--all")
    assert code == exitcodes.OK and "Renewal requested for 12 of 12 identities in namespace p" in out
    assert "Warning: namespace p: 12 requests" in out
