"""`ohlcv-status` against a real SQLite process cache, and its pure report builder with a fixed clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fullon_ohlcv_service import status
from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
from fullon_ohlcv_service.timeutil import ms_to_iso, now_ms

NOW = 1_780_000_000_000


def sup_entry(pid: int | None, state: str = "running", restarts: int = 0, reason: str | None = None) -> dict[str, Any]:
    return {"pid": pid, "state": state, "restarts": restarts, "last_exit": None, "since_ms": NOW - 60_000,
            "reason": reason, "started_ms": NOW - 120_000}


def worker_params(pid: int, state: str = "running", *, ts: int = NOW - 2_000) -> dict[str, Any]:
    return {
        "pid": pid, "exchange": "kraken", "started_ms": NOW - 120_000, "state": state,
        "symbols": {
            "BTC/USD": {"last_trade_ms": ts, "last_final_candle_ms": ts - 60_000, "trades_stored": 500,
                        "candles_stored": 1440, "backfill_pct": 100.0, "error": None, "rejected": 3},
            "ETH/USD": {"last_trade_ms": ts - 30_000, "last_final_candle_ms": None, "trades_stored": 10,
                        "candles_stored": 3, "backfill_pct": 42.5, "error": None},
        },
        "buffer_depth": 7, "loop_lag_ms": 0.4, "reconnects": 0, "gaps_repaired": 0, "errors": 0,
    }


def doc(params: dict[str, Any], beat_ms: int, status_: str = "running") -> dict[str, Any]:
    return {"params": params, "heartbeat": ms_to_iso(beat_ms), "status": status_, "message": ""}


SUP_PARAMS = {"pid": 10, "heartbeat_interval": 1.0, "heartbeat_timeout": 5.0, "boot_grace": 10.0}


class TestBuildReport:
    def test_healthy(self) -> None:
        sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}}, NOW - 500)
        r = status.build_report(sup, {"kraken": doc(worker_params(111), NOW - 1_000)}, NOW)
        assert r.healthy, r.problems
        (row,) = r.exchanges
        assert (row.state, row.pid, row.restarts, row.symbols, row.buffer_depth) == ("running", 111, 0, 2, 7)
        assert row.heartbeat_age_s == pytest.approx(1.0)
        assert row.uptime_s == pytest.approx(120.0)
        assert row.data_age_s == pytest.approx(32.0)  # the stalest symbol: ETH/USD's last trade
        assert row.backfill_pct == pytest.approx(42.5)  # the least advanced symbol

    def test_stale_worker_heartbeat_is_unhealthy(self) -> None:
        sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}}, NOW - 500)
        r = status.build_report(sup, {"kraken": doc(worker_params(111), NOW - 6_000)}, NOW)
        assert r.problems == ["kraken: heartbeat 6.0s old (timeout 5s)"]

    def test_quiet_market_is_still_healthy(self) -> None:
        sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}}, NOW - 500)
        quiet = worker_params(111, ts=NOW - 3_600_000)  # no trade for an hour, heartbeat fresh
        r = status.build_report(sup, {"kraken": doc(quiet, NOW - 500)}, NOW)
        assert r.healthy
        assert r.exchanges[0].data_age_s == pytest.approx(3630.0)

    def test_previous_incarnations_beat_does_not_count(self) -> None:
        sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(222)}}, NOW - 500)
        r = status.build_report(sup, {"kraken": doc(worker_params(111), NOW - 100)}, NOW)
        assert r.problems == ["kraken: no heartbeat from its worker (pid 222)"]
        assert r.exchanges[0].heartbeat_age_s is None

    def test_parked_and_stale_supervisor_and_worker_error(self) -> None:
        entries = {"kraken": sup_entry(111), "bitmex": sup_entry(None, "fatal", reason="exchange 'bitmex' gone")}
        sup = doc({**SUP_PARAMS, "exchanges": entries}, NOW - 20_000)
        r = status.build_report(sup, {"kraken": doc(worker_params(111, "error"), NOW - 100)}, NOW)
        assert r.problems == [
            "the supervisor's own heartbeat is stale (20.0s old)",
            "bitmex: fatal: exchange 'bitmex' gone",
            "kraken: worker state error",
        ]

    def test_no_supervisor(self) -> None:
        r = status.build_report(None, {}, NOW)
        assert r.problems == ["no ohlcv-supervisor is registered in the process cache"]


@pytest.fixture
def cache_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'cache.sqlite'}"


def _register(url: str, exchanges: dict[str, Any], workers: dict[str, dict[str, Any]]) -> None:
    cache = SyncSqliteProcessCache(url.removeprefix("sqlite://"))
    cache.register("ohlcv", "ohlcv-supervisor", {**SUP_PARAMS, "exchanges": exchanges}, status="running")
    for name, params in workers.items():
        cache.register("ohlcv", f"ohlcv-worker:{name}", params, status="running")
    cache.close()


def test_cli_check_healthy_then_parked(cache_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    now = now_ms()
    wp = worker_params(111, ts=now - 2_000)
    _register(cache_url, {"kraken": sup_entry(111)}, {"kraken": wp})
    assert status.main(["--cache", cache_url, "--check"]) == 0
    assert capsys.readouterr().out.strip() == "OK: 1 worker(s) healthy"

    assert status.main(["--cache", cache_url, "-v"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("supervisor: pid 10, running")
    assert lines[1].split() == ["EXCHANGE", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "SYMBOLS",
                                "DATA_AGE", "BACKFILL", "BUFFER", "LAST_ERROR"]
    assert lines[2].split()[:3] == ["kraken", "running", "111"]
    assert "BTC/USD" in out and "ETH/USD" in out and "42%" in out
    header = next(line for line in lines if line.split()[:1] == ["SYMBOL"])
    assert "REJECTED" in header.split()
    btc = next(line for line in lines if line.split()[:1] == ["BTC/USD"]).split()
    assert btc[header.split().index("REJECTED")] == "3"  # rows refused, per symbol
    eth = next(line for line in lines if line.split()[:1] == ["ETH/USD"]).split()
    assert eth[header.split().index("REJECTED")] == "-"  # a worker that does not report it

    _register(cache_url, {"kraken": sup_entry(111), "binance": sup_entry(None, "fatal", 20,
                                                                        "restart budget exhausted")},
              {"kraken": wp})
    assert status.main(["--cache", cache_url, "--check"]) == 1
    assert capsys.readouterr().out.strip() == "UNHEALTHY: binance: fatal: restart budget exhausted"

    assert status.main(["--cache", cache_url, "--json", "--check"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is False
    assert [e["exchange"] for e in data["exchanges"]] == ["binance", "kraken"]
    assert data["exchanges"][1]["symbol_rows"][0]["symbol"] == "BTC/USD"
    assert data["exchanges"][1]["symbol_rows"][0]["rejected"] == 3


def test_cli_check_without_supervisor_and_bad_flag(cache_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--cache", cache_url, "--check"]) == 1
    assert "no ohlcv-supervisor" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        status.main(["--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ohlcv-status: error: unrecognized arguments: --bogus") and "\n" not in err
