"""REST failures are visible: a worker whose REST answers 5xx after a websocket drop shows them and `degraded`.

Before, the worker reported ``running``, ``errors=0`` and backfill 100% while it stored nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from fullon_ohlcv_service.settings import Settings
from fullon_ohlcv_service.timeutil import now_ms
from tests.integration.test_worker_sim import (
    BIN,
    SYMBOLS,
    Sim,
    audit,
    beat,
    configure,
    live_and_synced,
    make_worker,
    sim,
    wait_for,
    worker_settings,
)

__all__ = ["sim"]  # the fixture, re-exported for pytest


def status(settings: Settings, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ohlcv-status"), "--home", str(settings.home), "--cache", settings.cache.url,
                           *flags], capture_output=True, text=True, timeout=60)


def test_rest_5xx_after_a_websocket_drop_is_degraded_and_recovers(tmp_path: Path, home: Path, sim: Sim) -> None:
    settings = worker_settings(home)
    configure(settings, "kraken", SYMBOLS["kraken"])
    symbols = [s.split("@")[0] for s in SYMBOLS["kraken"]]
    w = make_worker(tmp_path, sim, "kraken", settings)
    w.start()
    seen: dict[str, Any] = {}
    try:
        assert w.proc is not None
        pid = w.proc.pid
        wait_for(lambda: live_and_synced(settings, "kraken", 3, pid), 60, "live", w)
        sim.faults(rest_5xx=1_000_000, exchange="kraken")  # every REST call fails from now on
        sim.faults(ws_drop=True, exchange="kraken")  # every symbol must catch up over REST

        def degraded() -> bool:
            d = beat(settings, "kraken")
            if not d or d["params"]["state"] != "degraded":
                return False
            entries = d["params"]["symbols"]
            if not all(entries[s]["state"] == "degraded" and entries[s]["rest_errors"] >= 2 for s in symbols):
                return False
            seen.update(d)
            return True

        wait_for(degraded, 40, "every symbol degraded by REST 5xx", w)
        p = seen["params"]
        assert p["errors"] >= sum(p["symbols"][s]["rest_errors"] for s in symbols)
        assert 0 < p["buffer_bytes"] <= p["buffer_bytes_max"] == 128 << 20  # the memory bound is reported
        for s in symbols:
            last = p["symbols"][s]["last_rest_error"]
            assert "503" in last and "\n" not in last, last
        assert seen["message"].startswith("degraded: REST failing:")

        verbose = status(settings, "-v")
        assert verbose.returncode == 0, verbose.stderr
        assert "/degraded" in verbose.stdout  # the worker summary
        rows = [line.split() for line in verbose.stdout.splitlines() if line.split()[:1] in ([s] for s in symbols)]
        assert len(rows) == 3 and all(r[1] == "degraded" for r in rows), verbose.stdout
        assert "503" in verbose.stdout
        doc = json.loads(status(settings, "--json").stdout)
        (ex,) = doc["exchanges"]
        assert ex["worker_state"] == "degraded" and "REST failing" in ex["last_error"]
        assert all(r["state"] == "degraded" and r["rest_errors"] >= 2 and "503" in r["last_rest_error"]
                   for r in ex["symbol_rows"])

        sim.faults(rest_5xx=0, exchange="kraken")  # the exchange recovers

        def recovered() -> bool:
            d = beat(settings, "kraken")
            if not d or d["params"]["state"] not in ("running", "behind"):
                return False
            entries = d["params"]["symbols"]
            return all(entries[s]["state"] == "live" and entries[s]["rest_errors"] >= 2
                       and "503" in entries[s]["last_rest_error"] for s in symbols)

        wait_for(recovered, 60, "caught up after REST recovered, errors still counted", w)
        time.sleep(3.0)
        end = now_ms()
        assert w.stop() == 0
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
    assert "REST call failed; retrying" in w.logs()
    audit(sim, settings, "kraken", end - 3000)  # nothing was lost meanwhile
