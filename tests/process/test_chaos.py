"""A short chaos run in CI: the real supervisor under seeded faults must lose, duplicate and corrupt nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

VERDICT = re.compile(r"^chaos: 0 missing, 0 duplicated, 0 wrong candles over (\d+) trades, (\d+) faults$")


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_short_chaos_run_on_sqlite_loses_nothing(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fullon_ohlcv_service.chaos", "--minutes", "1", "--seed", "3", "--busy-rate", "1",
         "--report", str(report)],
        capture_output=True, text=True, timeout=460, check=False,
    )
    out = proc.stdout + "\n--- stderr ---\n" + proc.stderr[-6000:]
    assert report.exists(), out
    doc = json.loads(report.read_text())
    assert proc.returncode == 0, out
    assert doc["passed"] is True and doc["failures"] == [], out
    m = VERDICT.match(proc.stdout.strip().splitlines()[-1])
    assert m is not None, out
    trades, faults = int(m.group(1)), int(m.group(2))
    assert trades == doc["totals"]["trades"] > 1000
    assert faults == doc["applied_faults"] == doc["planned_faults"] >= 9
    kinds = {f["kind"] for f in doc["faults"] if f["ok"]}
    assert {"kill9", "sigstop", "ws_drop", "ws_stall", "rest_429", "rest_5xx", "malformed",
            "sighup_add_symbol", "sigterm_master"} <= kinds
    assert doc["detection"]["count"] >= 2 and doc["detection"]["undetected"] == []
    assert doc["orphans"] == []
    # every configured symbol and the one added at the SIGHUP were audited
    audited = {(s["exchange"], s["symbol"]) for s in doc["symbols"]}
    assert len(audited) == 7
    assert all(s["candles"]["expected"] > 0 for s in doc["symbols"] if s["trades"]["expected"] > 200)
