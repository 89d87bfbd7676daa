"""deploy/: the scrape config and alert rules pass promtool (and the rules' own unit tests), and every
series the rules and the Grafana dashboard query is one /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_metrics_collector import NOW, Fleet, collector, doc, scrape, sup_doc, worker_params

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)")


def _exported_names() -> set[str]:
    params = worker_params(111)
    params.update(buffer_bytes=1, buffer_bytes_max=2)
    s = scrape(collector([Fleet(NOW, sup_doc(111), {"kraken": doc(params, NOW - 1_000)})]))
    return {name for name, _ in s}


def _queried_names(text: str) -> set[str]:
    return set(re.findall(r"\bohlcv_[a-z0-9_]+", text))


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules() -> None:
    assert PROMTOOL is not None
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        proc = subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_each_alert_fires_on_its_case_and_not_on_a_quiet_market() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=DEPLOY, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "alerts_test.yml").read_text()))
    defined = set(re.findall(r"- alert: (\w+)", (DEPLOY / "alerts.yml").read_text()))
    assert defined - tested == {"OhlcvProcessCacheUnreadable"}  # a one-liner on a gauge; all others are tested


def test_rules_and_dashboard_query_only_exported_series() -> None:
    exported = _exported_names()
    rules = _queried_names((DEPLOY / "alerts.yml").read_text())
    assert rules and rules <= exported, rules - exported
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    queried = _queried_names("\n".join(exprs))
    assert queried <= exported, queried - exported
    # one row per exchange (a repeated row) and a symbol drill-down variable
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert any(r.get("repeat") == "exchange" for r in rows)
    assert {"exchange", "symbol"} <= {v["name"] for v in dash["templating"]["list"]}
    assert any('symbol=~"$symbol"' in e for e in exprs)
