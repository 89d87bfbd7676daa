"""/metrics from process-cache records: the text format parsed back with prometheus_client's own parser,
agreement with ohlcv-status on the same records, counters across worker lives, per-symbol off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fullon_ohlcv_service import status
from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.metrics.collector import FleetCollector
from fullon_ohlcv_service.metrics.figures import COMMIT_BUCKETS, EMIT_BUCKETS, Histogram
from fullon_ohlcv_service.metrics.ledger import Ledger
from fullon_ohlcv_service.metrics.snapshot import Fleet, read_fleet
from fullon_ohlcv_service.timeutil import ms_to_iso

NOW = 1_780_000_000_000
SERIES_PER_SYMBOL = 9  # stated in the README


def worker_params(pid: int, trades: int = 500, reconnects: int = 1, symbols: int = 2) -> dict[str, Any]:
    commit = Histogram(COMMIT_BUCKETS)
    commit.observe(0.004, 3)
    emit = Histogram(EMIT_BUCKETS)
    emit.observe(0.3, 10)
    syms = {
        f"S{i}/USD": {"last_trade_ms": NOW - 2_000 - i * 1000, "last_final_candle_ms": NOW - 62_000,
                      "trades_stored": trades + i, "candles_stored": 20, "backfill_pct": 100.0 - i, "error": None,
                      "gaps_found": 1, "gaps_repaired": 1}
        for i in range(symbols)
    }
    return {
        "pid": pid, "exchange": "kraken", "started_ms": NOW - 120_000, "state": "running", "symbols": syms,
        "buffer_depth": 7, "loop_lag_ms": 2.5, "reconnects": reconnects, "gaps_repaired": 2, "errors": 0,
        "rest_requests": {"ok": 40, "rate_limited": 2, "5xx": 1, "error": 0}, "rate_limit_waits": 2,
        "rate_limit_wait_s": 2.5, "commit_seconds": commit.as_params(), "emit_to_commit_seconds": emit.as_params(),
    }


def doc(params: dict[str, Any], beat_ms: int, status_: str = "running") -> dict[str, Any]:
    return {"params": params, "heartbeat": ms_to_iso(beat_ms), "status": status_, "message": ""}


def sup_doc(pid: int | None, ledger: Ledger | None = None, state: str = "running", restarts: int = 0) -> dict[str, Any]:
    entry = {"pid": pid, "state": state, "restarts": restarts, "last_exit": None, "since_ms": NOW - 60_000,
             "reason": None, "started_ms": NOW - 120_000}
    params = {"pid": 10, "heartbeat_interval": 1.0, "heartbeat_timeout": 5.0, "boot_grace": 10.0,
              "exchanges": {"kraken": entry}, "metrics": (ledger or Ledger()).params()}
    return doc(params, NOW - 500)


def scrape(collector: FleetCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Render like the HTTP endpoint does, then parse with prometheus_client's own parser."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def collector(fleet: list[Fleet], **kw: Any) -> FleetCollector:
    def read() -> Fleet:
        return fleet[0]

    return FleetCollector(read, rss=lambda pid: 1e8 if pid == 111 else None, **kw)


def test_families_carry_the_status_report_and_the_workers_figures() -> None:
    fleet = Fleet(NOW, sup_doc(111), {"kraken": doc(worker_params(111), NOW - 1_000)})
    s = scrape(collector([fleet]))
    assert value(s, "ohlcv_healthy") == 1.0 and value(s, "ohlcv_cache_up") == 1.0
    assert value(s, "ohlcv_worker_up", exchange="kraken") == 1.0
    assert value(s, "ohlcv_worker_state", exchange="kraken", state="running") == 1.0
    assert value(s, "ohlcv_worker_state", exchange="kraken", state="fatal") == 0.0
    assert value(s, "ohlcv_worker_heartbeat_age_seconds", exchange="kraken") == pytest.approx(1.0)
    assert value(s, "ohlcv_worker_resident_memory_bytes", exchange="kraken") == 1e8
    assert value(s, "ohlcv_worker_restarts_total", exchange="kraken", reason="killed") == 0.0  # present from 0
    assert value(s, "ohlcv_rest_requests_total", exchange="kraken", outcome="rate_limited") == 2
    assert value(s, "ohlcv_rest_requests_total", exchange="kraken", outcome="5xx") == 1
    assert value(s, "ohlcv_rate_limit_wait_seconds_total", exchange="kraken") == 2.5
    assert value(s, "ohlcv_event_loop_lag_seconds", exchange="kraken") == pytest.approx(0.0025)
    assert value(s, "ohlcv_buffer_rows", exchange="kraken") == 7
    assert value(s, "ohlcv_trades_committed_total", exchange="kraken", symbol="S1/USD") == 501
    assert value(s, "ohlcv_exchange_trades_committed_total", exchange="kraken") == 1001
    assert value(s, "ohlcv_data_age_seconds", exchange="kraken", symbol="S1/USD") == pytest.approx(3.0)
    assert value(s, "ohlcv_backfill_ratio", exchange="kraken", symbol="S1/USD") == pytest.approx(0.99)
    assert value(s, "ohlcv_gaps_found_total", exchange="kraken", symbol="S0/USD") == 1
    assert value(s, "ohlcv_rejected_rows_total", exchange="kraken", symbol="S0/USD") == 0  # absent: default 0
    assert value(s, "ohlcv_batch_commit_seconds_count", exchange="kraken") == 3
    assert value(s, "ohlcv_batch_commit_seconds_bucket", exchange="kraken", le="0.005") == 3
    assert value(s, "ohlcv_batch_commit_seconds_bucket", exchange="kraken", le="0.0025") == 0
    assert value(s, "ohlcv_emit_to_commit_seconds_bucket", exchange="kraken", le="+Inf") == 10
    # buffer_bytes comes from another branch's heartbeat field: exported once present
    assert ("ohlcv_buffer_bytes", (("exchange", "kraken"),)) not in s
    params = worker_params(111)
    params.update(buffer_bytes=4096, buffer_bytes_max=1 << 20)
    assert value(s, "ohlcv_config_reload_failed") == 0
    assert value(s, "ohlcv_exchange_symbols_degraded", exchange="kraken") == 0
    # and the other fields of names.md: rest_errors, a degraded symbol, a failed reload
    params["symbols"]["S0/USD"].update(rest_errors=4, rejected=2, state="degraded")
    sup = sup_doc(111)
    sup["params"]["reload_error"] = "config: bad value"
    s2 = scrape(collector([Fleet(NOW, sup, {"kraken": doc(params, NOW - 1_000)})]))
    assert value(s2, "ohlcv_buffer_bytes", exchange="kraken") == 4096
    assert value(s2, "ohlcv_rest_errors_total", exchange="kraken", symbol="S0/USD") == 4
    assert value(s2, "ohlcv_exchange_rest_errors_total", exchange="kraken") == 4
    assert value(s2, "ohlcv_rejected_rows_total", exchange="kraken", symbol="S0/USD") == 2
    assert value(s2, "ohlcv_exchange_symbols_degraded", exchange="kraken") == 1
    assert value(s2, "ohlcv_config_reload_failed") == 1


def test_status_json_and_metrics_agree_on_the_same_records() -> None:
    """Every figure both outputs show comes from the one Report: they cannot disagree."""
    for params, beat in ((worker_params(111), NOW - 1_000), (worker_params(111), NOW - 9_000)):
        fleet = Fleet(NOW, sup_doc(111, restarts=0), {"kraken": doc(params, beat)})
        report = status.build_report(fleet.supervisor, fleet.workers, fleet.now_ms).as_json()
        s = scrape(collector([fleet]))
        (row,) = report["exchanges"]
        assert value(s, "ohlcv_healthy") == float(report["healthy"])
        assert value(s, "ohlcv_worker_up", exchange="kraken") == float(report["healthy"])
        assert value(s, "ohlcv_worker_heartbeat_age_seconds", exchange="kraken") == row["heartbeat_age_s"]
        assert value(s, "ohlcv_exchange_data_age_seconds", exchange="kraken") == row["data_age_s"]
        assert value(s, "ohlcv_exchange_backfill_ratio", exchange="kraken") == row["backfill_pct"] / 100
        assert value(s, "ohlcv_buffer_rows", exchange="kraken") == row["buffer_depth"]
        assert value(s, "ohlcv_symbols", exchange="kraken") == row["symbols"]
        for sym in row["symbol_rows"]:
            assert value(s, "ohlcv_data_age_seconds", exchange="kraken", symbol=sym["symbol"]) == sym["data_age_s"]
            assert value(s, "ohlcv_trades_committed_total", exchange="kraken",
                         symbol=sym["symbol"]) == sym["trades_stored"]
    assert value(s, "ohlcv_worker_up", exchange="kraken") == 0.0  # the 9 s old heartbeat (timeout 5 s)


def test_counters_continue_across_a_worker_restart_and_never_go_back() -> None:
    ledger = Ledger()
    first = worker_params(111, trades=500, reconnects=3)
    fleets = [Fleet(NOW, sup_doc(111, ledger), {"kraken": doc(first, NOW - 1_000)})]
    c = collector(fleets)
    before = scrape(c)
    assert value(before, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD") == 500
    # kill -9: the master folds the dead life into its carry; the new worker starts from 0
    ledger.life_ended("kraken", 111, first)
    ledger.restarted("kraken", "killed")
    fleets[0] = Fleet(NOW, sup_doc(None, ledger, state="backoff", restarts=1), {"kraken": doc(first, NOW - 1_000)})
    during = scrape(c)
    assert value(during, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD") == 500
    assert value(during, "ohlcv_worker_restarts_total", exchange="kraken", reason="killed") == 1
    assert value(during, "ohlcv_worker_up", exchange="kraken") == 0
    second = worker_params(222, trades=7, reconnects=0)
    fleets[0] = Fleet(NOW, sup_doc(222, ledger, restarts=1), {"kraken": doc(second, NOW - 1_000)})
    after = scrape(c)
    assert value(after, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD") == 507
    assert value(after, "ohlcv_websocket_reconnects_total", exchange="kraken") == 3
    assert value(after, "ohlcv_batch_commit_seconds_count", exchange="kraken") == 6  # both lives' batches
    assert value(after, "ohlcv_rest_requests_total", exchange="kraken", outcome="ok") == 80
    # a carry short of what was already exposed (the cache missed the last beat) is held, not exposed
    short = Ledger()
    short.restarted("kraken", "killed")
    fleets[0] = Fleet(NOW, sup_doc(222, short, restarts=1), {"kraken": doc(second, NOW - 1_000)})
    held = scrape(c)
    assert value(held, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD") == 507


def test_per_symbol_off_keeps_exchange_series_and_the_series_count_per_symbol() -> None:
    def count(n_symbols: int, per_symbol: bool) -> int:
        fleet = Fleet(NOW, sup_doc(111), {"kraken": doc(worker_params(111, symbols=n_symbols), NOW - 1_000)})
        return len(scrape(collector([fleet], per_symbol=per_symbol)))

    on_1, on_11, off_11 = count(1, True), count(11, True), count(11, False)
    assert (on_11 - on_1) == 10 * SERIES_PER_SYMBOL
    assert off_11 == count(1, False) == on_1 - SERIES_PER_SYMBOL
    fleet = Fleet(NOW, sup_doc(111), {"kraken": doc(worker_params(111, symbols=3), NOW - 1_000)})
    s = scrape(collector([fleet], per_symbol=False))
    assert not any("symbol" in dict(labels) for _, labels in s)
    assert value(s, "ohlcv_exchange_trades_committed_total", exchange="kraken") == 1503


def test_an_unreadable_cache_is_cache_up_0_not_an_error(tmp_path: Path) -> None:
    def down() -> Fleet:
        raise StoreUnavailable("redis down")

    s = scrape(FleetCollector(down))
    assert s == {("ohlcv_cache_up", ()): 0.0}


def test_read_fleet_reads_what_ohlcv_status_reads(tmp_path: Path) -> None:
    """The sync reader (exporter) and ohlcv-status pick the same records from a real SQLite cache."""
    cache = SyncSqliteProcessCache(tmp_path / "cache.sqlite")
    try:
        cache.register("ohlcv", "ohlcv-supervisor", sup_doc(111)["params"], status="running")
        cache.register("ohlcv", "ohlcv-worker:kraken", worker_params(111), status="running")
        stray = cache.register("ohlcv", "ohlcv-worker:binance", {"pid": 5}, status="running")
        fleet = read_fleet(cache, lambda: NOW)
        assert sorted(fleet.workers) == ["binance", "kraken"]  # a live worker without a supervisor entry too
        cache.stop(stray, "stopped")
        assert sorted(read_fleet(cache, lambda: NOW).workers) == ["kraken"]
    finally:
        cache.close()
