"""Alerts (promtool-checked and unit-tested), their runbooks, the PrometheusRule that
carries the same rules, the Grafana dashboard, and the metric documentation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from support import REPO, one, render

ALERTS = REPO / "deploy/prometheus/alerts.yaml"
ALERTS_TEST = REPO / "deploy/prometheus/alerts_test.yaml"
DASHBOARD = REPO / "deploy/grafana/deployctl.json"
METRICS_DOC = REPO / "docs/metrics.md"
RUNBOOKS = REPO / "runbooks"
DEFAULT_RUNBOOK_BASE = "https://example.invalid/deployctl/blob/main/runbooks/"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (Debian ships it there)"
    return path


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    out = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass():
    out = subprocess.run([promtool(), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
    assert {r["alert"] for r in rules()} == fired


def test_the_prometheus_rule_carries_the_same_rules():
    rendered = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rendered["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_runbook_base_url_is_the_only_difference():
    base = "https://runbooks.example.org/deployctl/"
    rendered = one(render({"prometheusRule": {"enabled": True, "runbookBaseURL": base}}), "PrometheusRule")
    expected = yaml.safe_load(ALERTS.read_text().replace(DEFAULT_RUNBOOK_BASE, base))["groups"]
    assert rendered["spec"]["groups"] == expected


def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_alert_is_complete_and_its_runbook_exists(rule):
    assert rule["labels"]["severity"] in ("critical", "warning")
    for key in ("summary", "description", "runbook_url"):
        assert rule["annotations"].get(key), f"{rule['alert']} has no {key}"
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(DEFAULT_RUNBOOK_BASE), url
    page_name, _, anchor = url[len(DEFAULT_RUNBOOK_BASE):].partition("#")
    page = RUNBOOKS / page_name
    assert page.is_file(), f"{rule['alert']}: runbook {page} does not exist"
    if anchor:
        assert anchor in anchors(page), f"{rule['alert']}: {page_name} has no heading for #{anchor}"
    assert rule["alert"] in page.read_text(), f"{page_name} does not name the alert {rule['alert']}"


def test_every_runbook_is_listed_in_the_index():
    index = (RUNBOOKS / "README.md").read_text()
    for page in RUNBOOKS.glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"runbooks/README.md does not link {page.name}"


def test_runbooks_have_the_four_parts():
    for page in RUNBOOKS.glob("*.md"):
        if page.name == "README.md":
            continue
        text = page.read_text()
        for part in ("Symptoms", "Diagnose", "Fix", "Verify"):
            assert re.search(rf"^#+ .*{part}", text, re.M), f"{page.name} has no '{part}' section"


# --- dashboard --------------------------------------------------------------------------

def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def test_dashboard_is_well_formed():
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert d["uid"] == "deployctl"
    assert {v["name"] for v in d["templating"]["list"]} == {
        "datasource", "namespace", "stack_namespace", "stack"}
    # Every per-stack query follows the stack variables.
    for e in dashboard_exprs():
        if "deployctl_stack_" in e or "deployctl_snapshot_repository_" in e:
            assert 'stack=~"$stack"' in e and 'stack_namespace=~"$stack_namespace"' in e, e
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p.get("description"), f"panel {p['title']} has no description"


def test_dashboard_queries_parse():
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]}]}, f)
        f.flush()
        out = subprocess.run([promtool(), "check", "rules", f.name], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- metric names -----------------------------------------------------------------------

METRIC = re.compile(r"\bdeployctl_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def base_name(name: str) -> str:
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def documented() -> set[str]:
    return set(re.findall(r"^\| `(deployctl_[a-z_]+)", METRICS_DOC.read_text(), re.M))


def test_every_metric_used_by_alerts_and_dashboard_is_documented():
    used = {base_name(m) for m in METRIC.findall(ALERTS.read_text())}
    used |= {base_name(m) for e in dashboard_exprs() for m in METRIC.findall(e)}
    missing = used - documented()
    assert not missing, f"add to docs/metrics.md: {sorted(missing)}"


def registered_in_code() -> set[str]:
    """deployctl_* names the controller registers (controller/src/metrics/), with the
    `_total` that prometheus-client adds to counters."""
    src = "\n".join(p.read_text() for p in sorted((REPO / "controller/src/metrics").glob("*.rs")))
    types = {}
    for m in re.finditer(r"(\w+):\s*(Family<\w+,\s*(Counter|Gauge|Histogram)|Counter|Gauge|Histogram)\b", src):
        types[m.group(1)] = m.group(3) or m.group(2)
    names = set()
    for m in re.finditer(r'register\(\s*"(\w+)",\s*"[^"]*",\s*(\w+)\.clone\(\)', src, re.S):
        name, field = m.groups()
        kind = types.get(field, "")
        names.add(f"deployctl_{name}" + ("_total" if kind == "Counter" else ""))
    return names


def test_every_metric_the_controller_registers_is_documented():
    code = registered_in_code()
    assert "deployctl_leader" in code and "deployctl_reconcile_total" in code, (
        f"could not read controller/src/metrics/: {sorted(code)}")
    missing = code - documented()
    assert not missing, f"document in docs/metrics.md: {sorted(missing)}"
