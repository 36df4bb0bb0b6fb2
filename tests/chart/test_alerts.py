"""The chart's alerts (a PrometheusRule) and Grafana dashboard (a ConfigMap), both off by default.

The alert rules are rendered with the built helm and run by Prometheus' own promtool, built from its pinned Go module
(hack/promtool): `promtool check rules`, then `promtool test rules` with the cases in tests/chart/promtool/, which prove
that each alert fires when it should and stays silent when it should not. Every metric the rules and the dashboard
query must exist in operator/mtls_operator/metrics.py, the source of truth for names and labels.

Without promtool (no Go, no module proxy) these tests skip, saying why; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import cluster
from tests.kit import REPO

CHART = REPO / "charts" / "mtls-operator"
PROMTOOL_CASES = Path(__file__).parent / "promtool"
METRICS_PY = REPO / "operator" / "mtls_operator" / "metrics.py"
DASHBOARD = CHART / "dashboards" / "mtls-operator.json"
NAMESPACE = "mtls-system"
JOB = "rel-mtls-operator-metrics"  # what the chart's ServiceMonitor makes the job: the metrics Service's name
ALERTS = {
    "MtlsIdentityNotReady", "MtlsCertificateRenewalOverdue", "MtlsOperatorDown", "MtlsOperatorNoLeader",
    "MtlsCAUnavailable", "MtlsCALost", "MtlsCAExpiringSoon", "MtlsRootRotationStalled", "MtlsRootRotationTooLong",
}
IN_CI = os.environ.get("CI") == "true"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: the alert tests must run)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = cluster.bin_dir() / "helm"
    if not binary.exists():
        _missing(f"helm is not built ({binary}); run `make bin`")
    return binary


@pytest.fixture(scope="module")
def promtool() -> Path:
    """The pinned promtool, built (or found current: seconds) by hack/build-bins.sh like every other Go tool."""
    binary = cluster.bin_dir() / "promtool"
    try:
        subprocess.run([str(cluster.HACK / "build-bins.sh"), "promtool"], check=True, capture_output=True, text=True,
                       timeout=3600)
    except FileNotFoundError as e:
        problem = str(e)
    except subprocess.CalledProcessError as e:
        problem = (e.stdout + e.stderr).strip().splitlines()[-5:]
        problem = " / ".join(problem) or f"exit {e.returncode}"
    except subprocess.TimeoutExpired:
        problem = "the build took longer than an hour"
    else:
        problem = ""
    if not binary.exists():
        _missing(f"promtool could not be built ({problem or 'no binary'}): `hack/build-bins.sh promtool` needs Go "
                 "and the Go module proxy")
    return binary


def render(helm: Path, *sets: str, values: dict | None = None, tmp: Path | None = None) -> list[dict]:
    args = [str(helm), "template", "rel", str(CHART), "-n", NAMESPACE, "--skip-tests"]
    for s in sets:
        args += ["--set", s]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_error(helm: Path, *sets: str) -> str:
    out = subprocess.run([str(helm), "template", "rel", str(CHART), *[a for s in sets for a in ("--set", s)]],
                         capture_output=True, text=True)
    assert out.returncode != 0, f"accepted {sets}"
    return out.stderr


def prometheus_rule(docs: list[dict]) -> dict:
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, [d["kind"] for d in docs]
    return rules[0]


def alert_rules(rule: dict) -> list[dict]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_configmaps(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]


@pytest.fixture(scope="module")
def rules_dir(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered rules as a Prometheus rule file (spec.groups), beside copies of the promtool test cases (whose
    rule_files are relative to themselves)."""
    where = tmp_path_factory.mktemp("promtool")
    groups = prometheus_rule(render(helm, "alerts.enabled=true"))["spec"]["groups"]
    (where / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000))
    for case in PROMTOOL_CASES.glob("*.yaml"):
        shutil.copy(case, where / case.name)
    return where


# ---- what metrics.py defines ----

def defined_metrics() -> dict[str, str]:
    """Every series name the operator exposes (its metrics module, as registered), mapped to its metric's type: a
    counter's _total, a histogram's _bucket, _sum and _count."""
    from prometheus_client import REGISTRY

    import mtls_operator.metrics  # noqa: F401 - registers them

    names: dict[str, str] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("mtls_operator_"):
            continue
        kind = family.type.capitalize()
        if kind == "Counter":
            names[f"{family.name}_total"] = kind
        else:
            names[family.name] = kind
        if kind == "Histogram":
            names.update({f"{family.name}_{suffix}": kind for suffix in ("bucket", "sum", "count")})
    assert len(names) >= 15, "the operator's metrics are not registered as expected"
    return names


def defined_labels() -> set[str]:
    """Label names metrics.py gives its metrics (the one-word string literals: LABELS, ("reason",), ...), plus those
    Prometheus adds: the target's job and instance, a histogram's le, and exported_namespace, which a scrape without
    honor_labels makes of the metrics' own namespace label."""
    words = set(re.findall(r"\"([a-z_]+)\"", METRICS_PY.read_text()))
    return {w for w in words if not w.startswith("mtls_operator_")} | {"job", "instance", "le", "exported_namespace"}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmtls_operator_[A-Za-z0-9_]+", expr))


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by(...), without(...), on(...) and label_replace's source label."""
    labels = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    labels |= set(re.findall(r"label_replace\(.*?,\s*\"[^\"]*\",\s*\"[^\"]*\",\s*\"([^\"]+)\"", expr, re.S))
    return labels


# ---- the PrometheusRule ----

def test_alerts_and_dashboard_are_off_by_default(helm: Path) -> None:
    docs = render(helm)
    assert not [d for d in docs if d["kind"] == "PrometheusRule"]
    assert not dashboard_configmaps(docs)


def test_prometheus_rule_has_every_alert_with_a_runbook(helm: Path) -> None:
    rule = prometheus_rule(render(helm, "alerts.enabled=true", "alerts.labels.release=prometheus",
                                  "alerts.additionalRuleLabels.team=platform"))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = alert_rules(rule)
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["labels"]["team"] == "platform", r["alert"]
        summary, description = r["annotations"]["summary"], r["annotations"]["description"]
        assert summary and len(description) > 150, r["alert"]
        # Every description says where to look: a command to run.
        assert "kubectl" in description, r["alert"]
        # This release's series only.
        assert f'job="{JOB}"' in r["expr"], r["alert"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["MtlsIdentityNotReady"]["for"] == "10m"
    for alert in ("MtlsIdentityNotReady", "MtlsCertificateRenewalOverdue"):
        assert "kubectl mtls status {{ $labels.name }} -n {{ $labels.namespace }}" in \
            by_name[alert]["annotations"]["description"]


def test_alerts_about_the_operator_do_not_fan_out_per_identity(helm: Path) -> None:
    """Only the two identity alerts keep an identity's labels; the others aggregate to the operator, or use absent()."""
    for r in alert_rules(prometheus_rule(render(helm, "alerts.enabled=true"))):
        expr = " ".join(r["expr"].split())
        if r["alert"] in {"MtlsIdentityNotReady", "MtlsCertificateRenewalOverdue"}:
            assert expr.startswith("max by (job, namespace, name) ("), r["alert"]
        elif r["alert"] == "MtlsOperatorDown":
            assert expr.startswith("absent("), expr
        else:
            assert "by (namespace, job)" in expr and "name" not in grouping_labels(expr), r["alert"]


def test_alert_knobs_and_selector(helm: Path, tmp_path: Path) -> None:
    values = {"alerts": {"enabled": True, "selector": 'job="mtls",cluster="eu-1"', "identityNotReadyFor": "30m",
                         "renewalOverdueFor": "5m", "caExpiryDays": 14, "rotationStalledAfter": "20m",
                         "rotationMaxDuration": "48h", "operatorDownFor": "2m"}}
    by_name = {r["alert"]: r for r in alert_rules(prometheus_rule(render(helm, values=values, tmp=tmp_path)))}
    for r in by_name.values():
        assert JOB not in r["expr"]
        selectors = re.findall(r"\b(?:mtls_operator_\w+|up)\{([^}]*)\}", r["expr"])
        assert selectors and set(selectors) == {'job="mtls",cluster="eu-1"'}, r["alert"]
    assert by_name["MtlsIdentityNotReady"]["for"] == "30m"
    assert by_name["MtlsCertificateRenewalOverdue"]["for"] == "5m"
    assert "< 14 * 86400" in by_name["MtlsCAExpiringSoon"]["expr"]
    assert by_name["MtlsRootRotationStalled"]["expr"].count("offset 20m") == 4
    assert by_name["MtlsRootRotationTooLong"]["for"] == "48h"
    assert {by_name[a]["for"] for a in ("MtlsOperatorDown", "MtlsOperatorNoLeader", "MtlsCAUnavailable")} == {"2m"}


@pytest.mark.parametrize("bad, fragment", [
    ("alerts.enabled=yes", "/alerts/enabled"),
    ("alerts.identityNotReadyFor=10 minutes", "/alerts/identityNotReadyFor"),
    ("alerts.rotationStalledAfter=1.5h", "/alerts/rotationStalledAfter"),
    ("alerts.caExpiryDays=0", "/alerts/caExpiryDays"),
    ("alerts.selector={job=\"x\"}", "/alerts/selector"),
    ("alerts.selector=job=x", "/alerts/selector"),
    ("alerts.unknown=1", "unknown"),
    ("dashboard.enabled=yes", "/dashboard/enabled"),
    ("dashboard.namespace=Not_A_Namespace", "/dashboard/namespace"),
])
def test_schema_rejects_bad_monitoring_values(helm: Path, bad: str, fragment: str) -> None:
    assert fragment in render_error(helm, bad)


def test_alert_expressions_use_only_defined_metrics_and_labels(helm: Path) -> None:
    metrics, labels = defined_metrics(), defined_labels()
    used: set[str] = set()
    for r in alert_rules(prometheus_rule(render(helm, "alerts.enabled=true"))):
        names = metric_names(r["expr"])
        assert names <= set(metrics), f"{r['alert']}: not in metrics.py: {names - set(metrics)}"
        assert grouping_labels(r["expr"]) <= labels, f"{r['alert']}: {grouping_labels(r['expr']) - labels}"
        other = set(re.findall(r"\b([a-z_]+)\{", r["expr"])) - names
        assert other <= {"up"}, f"{r['alert']}: metrics from elsewhere: {other}"
        used |= names
    assert used >= {"mtls_operator_identity_ready", "mtls_operator_certificate_renewal_timestamp_seconds",
                    "mtls_operator_ca_expiry_timestamp_seconds", "mtls_operator_ca_rotation_waiting",
                    "mtls_operator_ca_rotation_phase", "mtls_operator_leader"}


def test_promtool_check_rules(promtool: Path, rules_dir: Path) -> None:
    out = subprocess.run([str(promtool), "check", "rules", "--lint=all", "--lint-fatal", "rules.yaml"],
                         cwd=rules_dir, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout, out.stdout


CASE_FILES = sorted(p.name for p in PROMTOOL_CASES.glob("*.yaml"))


@pytest.mark.parametrize("case", CASE_FILES)
def test_promtool_test_rules(promtool: Path, rules_dir: Path, case: str) -> None:
    out = subprocess.run([str(promtool), "test", "rules", case], cwd=rules_dir, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_proven_to_fire_and_to_stay_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in PROMTOOL_CASES.glob("*.yaml"):
        doc = yaml.safe_load(case.read_text())
        assert doc["rule_files"] == ["rules.yaml"], case.name
        for test in doc["tests"]:
            for check in test.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == ALERTS, f"never shown to fire: {ALERTS - fires}"
    assert silent == ALERTS, f"never shown to stay silent: {ALERTS - silent}"


# ---- the dashboard ----

def test_dashboard_renders_only_when_enabled(helm: Path) -> None:
    assert not dashboard_configmaps(render(helm, "alerts.enabled=true"))
    docs = render(helm, "dashboard.enabled=true", "dashboard.annotations.grafana_folder=mTLS")
    [cm] = dashboard_configmaps(docs)
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "mTLS"}
    assert json.loads(cm["data"]["mtls-operator.json"]) == json.loads(DASHBOARD.read_text())

    [elsewhere] = dashboard_configmaps(render(helm, "dashboard.enabled=true", "dashboard.namespace=monitoring",
                                              "dashboard.labels.grafana_dashboard=null", "dashboard.labels.x=y"))
    assert elsewhere["metadata"]["namespace"] == "monitoring"
    assert "grafana_dashboard" not in elsewhere["metadata"]["labels"] and elsewhere["metadata"]["labels"]["x"] == "y"


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def test_dashboard_queries_defined_metrics_through_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "mtls_operator_leader" in variables["job"]["definition"]
    metrics, labels = defined_metrics(), defined_labels()
    used: set[str] = set()
    titles = []
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            expr = target["expr"]
            names = metric_names(expr)
            assert names, f"{panel['title']}: no mtls_operator_ metric in {expr}"
            assert names <= set(metrics), f"{panel['title']}: not in metrics.py: {names - set(metrics)}"
            assert grouping_labels(expr) <= labels, f"{panel['title']}: {grouping_labels(expr) - labels}"
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend_labels <= labels, f"{panel['title']}: {legend_labels - labels}"
            assert 'job="$job"' in expr, f"{panel['title']}: {expr}"
            used |= names
    assert len(set(titles)) == len(titles), "panel titles repeat"
    # What the dashboard is for: issuance by reason, readiness, expiry, rotation, latency, leader, CA.
    assert used >= {"mtls_operator_issuance_total", "mtls_operator_identity_ready",
                    "mtls_operator_certificate_expiry_timestamp_seconds", "mtls_operator_ca_rotation_phase",
                    "mtls_operator_reconcile_duration_seconds_bucket", "mtls_operator_leader",
                    "mtls_operator_ca_expiry_timestamp_seconds"}
    # Counters are read as rates, histograms as quantiles over rates.
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                if metrics[name] in {"Counter", "Histogram"}:
                    assert re.search(rf"rate\({name}\{{", target["expr"]), target["expr"]


def test_lint_is_clean_with_alerts_and_dashboard(helm: Path) -> None:
    out = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--set", "alerts.enabled=true",
                          "--set", "dashboard.enabled=true"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout
