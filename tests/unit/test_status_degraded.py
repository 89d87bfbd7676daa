"""`ohlcv-status` shows REST failures: per-symbol state, count and last error; a degraded worker is a problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fullon_ohlcv_service import status
from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
from fullon_ohlcv_service.timeutil import now_ms
from tests.unit.test_arbiter_status import NOW, SUP_PARAMS, doc, sup_entry, worker_params

ERR = "TransientError: ExchangeNotAvailable: kraken GET http://x/0/public/Trades 503 Service Unavailable"


def degraded_params(pid: int, ts: int = NOW - 2_000) -> dict[str, Any]:
    p = worker_params(pid, "degraded", ts=ts)
    p["symbols"]["BTC/USD"].update(state="degraded", rest_errors=12, last_rest_error=ERR)
    p["symbols"]["ETH/USD"].update(state="live", rest_errors=0)
    return p


def test_report_names_the_degraded_symbol_and_its_last_rest_error() -> None:
    sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}}, NOW - 500)
    r = status.build_report(sup, {"kraken": doc(degraded_params(111), NOW - 500)}, NOW)
    (row,) = r.exchanges
    assert row.worker_state == "degraded"
    assert row.last_error == f"BTC/USD: REST failing: {ERR}"
    btc, eth = row.symbol_rows
    assert (btc.state, btc.rest_errors, btc.last_rest_error) == ("degraded", 12, ERR)
    assert (eth.state, eth.rest_errors, eth.last_rest_error) == ("live", 0, None)
    assert r.problems == [f"kraken: worker state degraded: BTC/USD: REST failing: {ERR}"]
    text = status.render(r, verbose=True)
    assert "running/degraded" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("SYMBOL"))
    assert header.split() == ["SYMBOL", "STATE", "DATA_AGE", "LAST_TRADE", "LAST_CANDLE", "TRADES", "CANDLES",
                              "BACKFILL", "REJECTED", "REST_ERRORS", "ERROR", "LAST_REST_ERROR"]
    btc_line = next(line for line in text.splitlines() if line.strip().startswith("BTC/USD"))
    assert btc_line.split()[1] == "degraded" and " 12 " in btc_line and btc_line.endswith(ERR)


def test_a_beat_without_the_new_fields_still_renders() -> None:
    """A worker of the previous version (no state/rest fields) shows '-' instead of failing."""
    sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}}, NOW - 500)
    r = status.build_report(sup, {"kraken": doc(worker_params(111), NOW - 500)}, NOW)
    assert r.healthy and r.exchanges[0].symbol_rows[0].state is None
    assert "BTC/USD" in status.render(r, verbose=True)


def test_cli_json_and_check_show_degraded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite://{tmp_path / 'cache.sqlite'}"
    cache = SyncSqliteProcessCache(tmp_path / "cache.sqlite")
    cache.register("ohlcv", "ohlcv-supervisor", {**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}},
                   status="running")
    cache.register("ohlcv", "ohlcv-worker:kraken", degraded_params(111, now_ms() - 2_000), status="running")
    cache.close()
    assert status.main(["--cache", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (ex,) = data["exchanges"]
    assert ex["worker_state"] == "degraded"
    btc = ex["symbol_rows"][0]
    assert (btc["symbol"], btc["state"], btc["rest_errors"], btc["last_rest_error"]) == ("BTC/USD", "degraded", 12,
                                                                                         ERR)
    assert status.main(["--cache", url, "--check"]) == 1
    assert capsys.readouterr().out.strip() == f"UNHEALTHY: kraken: worker state degraded: BTC/USD: REST failing: {ERR}"
