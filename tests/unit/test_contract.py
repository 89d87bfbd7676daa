"""The typed beats of the contract: exact params for our writers, tolerant reading of older or foreign ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fullon_ohlcv_service import status
from fullon_ohlcv_service.contract import (
    HEALTHY_WORKER_STATES,
    PROCESS_TYPES,
    CacheStatus,
    Record,
    SupervisedState,
    SupervisorBeat,
    SymbolBeat,
    WorkerBeat,
    WorkerEntry,
    WorkerState,
    cache_status,
    supervisor_cache_status,
    worker_component,
    worker_exchange,
)
from fullon_ohlcv_service.metrics.figures import WorkerFigures
from fullon_ohlcv_service.worker.heartbeat import Snapshot, SymbolFacts, worker_beat

NOW = 1_780_000_000_000


def _wire(params: dict[str, Any]) -> dict[str, Any]:
    """What a reader gets back from the cache: the params through JSON."""
    out: dict[str, Any] = json.loads(json.dumps(params))
    return out


def test_names_and_vocabularies() -> None:
    assert worker_component("kraken") == "ohlcv-worker:kraken"
    assert worker_exchange("ohlcv-worker:kraken") == "kraken" and worker_exchange("ohlcv-supervisor") is None
    assert "ohlcv" in PROCESS_TYPES
    assert [s.value for s in SupervisedState] == ["starting", "running", "backoff", "hung", "fatal", "stopped"]
    # every worker state maps to a fullon_cache status; only "error" is not running once started
    assert {s: cache_status(s).value for s in WorkerState} == {
        "starting": "starting", "running": "running", "behind": "running", "degraded": "running", "error": "error"}
    assert set(HEALTHY_WORKER_STATES) == {WorkerState.RUNNING, WorkerState.BEHIND}
    assert supervisor_cache_status(parked=True, final=True) is CacheStatus.STOPPED
    assert supervisor_cache_status(parked=True, final=False) is CacheStatus.ERROR
    assert supervisor_cache_status(parked=False, final=False) is CacheStatus.RUNNING


def test_the_worker_beat_round_trips_through_the_cache() -> None:
    fig = WorkerFigures(rest_requests={"ok": 4, "rate_limited": 1}, rate_limit_waits=1, rate_limit_wait_s=1.5)
    fig.commit_seconds.observe(0.002)
    failing = SymbolFacts(last_trade_ms=NOW - 5, trades_stored=3, ever_synced=True, rest_errors=2,
                          last_rest_error="TransientError: 503", rest_holding_back=True,
                          counters={"gaps_found": 1, "gaps_repaired": 1})
    snap = Snapshot(exchange="kraken", pid=42, started_ms=NOW - 9, live=True, behind=False, failing=None,
                    symbols={"BTC/USD": failing, "ETH/USD": SymbolFacts(synced=True, ever_synced=True)},
                    buffer_depth=7, loop_lag_ms=1.23456, reconnects=2, errors=3, figures=fig,
                    buffer_bytes=4096, buffer_bytes_max=1 << 27)
    beat = worker_beat(snap)
    params = beat.to_params()
    back = WorkerBeat.from_params(_wire(params))
    assert back == beat
    assert back.to_params() == params and list(back.to_params()) == list(params)  # same keys, same order
    assert (back.state, back.symbols["BTC/USD"].state, back.symbols["ETH/USD"].state) == ("degraded", "degraded",
                                                                                           "live")
    assert back.symbols["BTC/USD"].extra == {"gaps_found": 1, "gaps_repaired": 1}
    assert back.extra["rest_requests"] == {"ok": 4, "rate_limited": 1}
    assert "last_rest_error" not in params["symbols"]["ETH/USD"]  # written only once a REST call failed


def test_the_supervisor_beat_round_trips_through_the_cache() -> None:
    beat = SupervisorBeat(
        pid=10, exchanges={"kraken": WorkerEntry(pid=11, state=SupervisedState.RUNNING, restarts=1,
                                                 last_exit="killed by SIGKILL", since_ms=NOW, reason=None,
                                                 started_ms=NOW - 1),
                           "binance": WorkerEntry(state=SupervisedState.FATAL, restarts=0, since_ms=NOW,
                                                  reason="configuration or boot error (exit 78)")},
        heartbeat_interval=5.0, heartbeat_timeout=30.0, boot_grace=60.0, stopping=False, reload_error=None,
        metrics={"restarts": {"kraken": {"killed": 1}}, "carried": {"kraken": {"errors": 2}}},
        metrics_exporter={"listen": "127.0.0.1:9321", "pid": 12},
    )
    params = beat.to_params()
    assert list(params) == ["pid", "exchanges", "heartbeat_interval", "heartbeat_timeout", "boot_grace", "stopping",
                            "reload_error", "metrics", "metrics_exporter"]
    assert params["reload_error"] == ""  # "" clears an earlier error: the cache merges params
    assert params["exchanges"]["kraken"] == {"pid": 11, "state": "running", "restarts": 1,
                                             "last_exit": "killed by SIGKILL", "since_ms": NOW, "reason": None,
                                             "started_ms": NOW - 1}
    back = SupervisorBeat.from_params(_wire(params))
    assert back == beat and back.to_params() == params
    assert back.restarts == {"kraken": {"killed": 1}} and back.carried == {"kraken": {"errors": 2}}
    assert back.metrics_listen == "127.0.0.1:9321"
    assert "metrics_exporter" not in SupervisorBeat(pid=1).to_params()  # only with --metrics-port


@pytest.mark.parametrize("raw", [None, [], "x", 3, {}])
def test_a_missing_or_malformed_record_reads_as_empty(raw: Any) -> None:
    assert WorkerBeat.from_params(raw) == WorkerBeat()
    assert SupervisorBeat.from_params(raw) == SupervisorBeat()
    assert SymbolBeat.from_params(raw) == SymbolBeat()
    assert WorkerEntry.from_params(raw) is None


def test_odd_fields_from_an_older_or_foreign_writer() -> None:
    beat = WorkerBeat.from_params({
        "pid": True, "exchange": 5, "started_ms": "yesterday", "state": "", "buffer_depth": 7.9,
        "loop_lag_ms": float("nan"), "reconnects": None, "errors": float("inf"), "buffer_bytes": -1,
        "symbols": {"BTC/USD": {"last_trade_ms": 1.5e12, "trades_stored": "9", "backfill_pct": True,
                                "error": "", "state": 3, "last_rest_error": None, "gaps_found": 2, "new": "x"},
                    "ETH/USD": "not an entry"},
        "future_field": {"a": 1},
    })
    assert (beat.pid, beat.exchange, beat.started_ms, beat.state) == (None, None, None, None)
    assert (beat.buffer_depth, beat.loop_lag_ms, beat.reconnects, beat.errors, beat.buffer_bytes) == (
        7, None, None, None, -1)
    btc = beat.symbols["BTC/USD"]
    assert (btc.last_trade_ms, btc.trades_stored, btc.backfill_pct, btc.error, btc.state) == (
        1_500_000_000_000, None, None, None, None)
    assert btc.extra == {"gaps_found": 2, "new": "x"}
    assert beat.symbols["ETH/USD"] == SymbolBeat()
    assert beat.extra == {"future_field": {"a": 1}}
    # what it writes back reads the same again: nothing is lost twice
    assert WorkerBeat.from_params(_wire(beat.to_params())) == beat
    # the symbols of an older worker had no state nor REST errors: they read as unknown, not as 0
    old = SymbolBeat.from_params({"last_trade_ms": NOW, "trades_stored": 1, "backfill_pct": 100})
    assert (old.state, old.rest_errors, old.rejected, old.backfill_pct) == (None, None, None, 100.0)

    sup = SupervisorBeat.from_params({"pid": "10", "exchanges": {"kraken": {}, "binance": "x", "ftx": {"pid": 3}},
                                      "heartbeat_timeout": "30", "stopping": 1, "reload_error": 0,
                                      "metrics": {"restarts": {"kraken": {"killed": "1", "hung": -2, "crashed": 2.0}},
                                                  "carried": "x"},
                                      "metrics_exporter": "x"})
    assert (sup.pid, sup.heartbeat_timeout, sup.stopping, sup.reload_error) == (None, None, True, None)
    assert sup.exchanges == {"kraken": None, "binance": None, "ftx": WorkerEntry(pid=3)}
    assert sup.restarts == {"kraken": {"killed": 0, "hung": 0, "crashed": 2}}
    assert sup.carried == {} and sup.metrics_listen is None


def test_records() -> None:
    assert Record.from_doc(None) is None and Record.from_doc([]) is None  # type: ignore[arg-type]
    rec = Record.from_doc({"status": "running", "message": 1, "heartbeat": "2026-01-01T00:00:00+00:00",
                           "params": "x"})
    assert rec is not None and (rec.status, rec.message, dict(rec.params)) == ("running", None, {})
    assert rec.heartbeat_ms() == 1_767_225_600_000
    assert Record(heartbeat="not a time").heartbeat_ms() is None and Record().heartbeat_ms() is None


def test_status_reads_a_foreign_record_without_failing() -> None:
    """ohlcv-status on records it did not write: odd fields are unknown (None), never a traceback."""
    sup = {"params": {"pid": 10, "heartbeat_interval": "x", "heartbeat_timeout": None,
                      "exchanges": {"kraken": {"pid": 11, "state": "running", "restarts": "many"}}},
           "heartbeat": "2026-01-01T00:00:00+00:00", "status": "running"}
    worker = {"params": {"pid": 11, "state": "running", "symbols": {"BTC/USD": {"trades_stored": "x"}}},
              "heartbeat": "garbage", "status": "running"}
    r = status.build_report(sup, {"kraken": worker}, NOW)
    (row,) = r.exchanges
    assert (row.pid, row.restarts, row.worker_state, row.heartbeat_age_s, row.symbols) == (11, None, "running", None, 1)
    assert row.symbol_rows[0].trades_stored is None
    assert "kraken: heartbeat - old (timeout 30s)" in r.problems
    json.dumps(r.as_json())  # --json prints it
