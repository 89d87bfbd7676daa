"""Heartbeat params and worker state: the contract's fields, starting/running/behind/error."""

from __future__ import annotations

from fullon_ohlcv_service.contract import WorkerState, cache_status
from fullon_ohlcv_service.worker.heartbeat import (
    Snapshot,
    SymbolFacts,
    status_message,
    worker_beat,
    worker_state,
)


def snap(**kw: object) -> Snapshot:
    base: dict[str, object] = {"exchange": "kraken", "pid": 42, "started_ms": 1, "live": True, "behind": False,
                               "failing": None}
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_params_carry_the_contract_fields() -> None:
    s = snap(symbols={"BTC/USD": SymbolFacts(5, 4, 3, 2, 100.0, None, rejected=6)}, buffer_depth=7, loop_lag_ms=1.23456,
             reconnects=2, gaps_repaired=1, errors=3, buffer_bytes=4096, buffer_bytes_max=128 << 20)
    p = worker_beat(s).to_params()
    assert p == {
        "pid": 42, "exchange": "kraken", "started_ms": 1, "state": "running",
        "symbols": {"BTC/USD": {"last_trade_ms": 5, "last_final_candle_ms": 4, "trades_stored": 3,
                                "candles_stored": 2, "backfill_pct": 100.0, "error": None, "rejected": 6,
                                "state": "backfill", "rest_errors": 0}},
        "buffer_depth": 7, "loop_lag_ms": 1.235, "reconnects": 2, "gaps_repaired": 1, "errors": 3,
        "buffer_bytes": 4096, "buffer_bytes_max": 128 << 20,
    }


def test_states() -> None:
    assert worker_state(snap(live=False)) == "starting"
    assert worker_state(snap()) == "running"
    assert worker_state(snap(behind=True)) == "behind" and cache_status(WorkerState.BEHIND) == "running"
    assert worker_state(snap(failing="live: boom")) == "error"
    assert status_message(snap(failing="live: boom")) == "live: boom"
    one_bad = {"A/B": SymbolFacts(error="SymbolUnknown"), "C/D": SymbolFacts()}
    assert worker_state(snap(symbols=one_bad)) == "running"
    assert "A/B: SymbolUnknown" in status_message(snap(symbols=one_bad))
    all_bad = {"A/B": SymbolFacts(error="SymbolUnknown")}
    assert worker_state(snap(symbols=all_bad)) == "error"


def test_a_symbol_behind_on_failing_rest_is_degraded_and_so_is_the_worker() -> None:
    live = SymbolFacts(synced=True, ever_synced=True)
    assert live.state == "live" and SymbolFacts(ever_synced=True).state == "catching_up"
    assert SymbolFacts().state == "backfill" and SymbolFacts(error="x", rest_holding_back=True).state == "error"
    failing = SymbolFacts(ever_synced=True, rest_errors=7, rest_holding_back=True,
                         last_rest_error="TransientError: ExchangeNotAvailable: kraken 503 Service Unavailable")
    assert failing.state == "degraded"
    entry = failing.beat().to_params()
    assert (entry["state"], entry["rest_errors"]) == ("degraded", 7)
    assert entry["last_rest_error"].endswith("503 Service Unavailable")
    assert "last_rest_error" not in live.beat().to_params()  # absent until a REST call fails
    s = snap(symbols={"BTC/USD": failing, "ETH/USD": live})
    assert worker_state(s) == "degraded" and cache_status(WorkerState.DEGRADED) == "running"
    assert worker_beat(s).to_params()["state"] == "degraded"
    msg = status_message(s)
    assert msg.startswith("degraded: REST failing: BTC/USD: TransientError") and "7 REST errors" in msg
    assert "ETH/USD" not in msg
    assert worker_state(snap(live=False, symbols={"BTC/USD": failing})) == "degraded"  # not "starting" forever
    recovered = SymbolFacts(synced=True, ever_synced=True, rest_errors=7, last_rest_error="TransientError: 503")
    assert recovered.state == "live" and worker_state(snap(symbols={"BTC/USD": recovered})) == "running"
