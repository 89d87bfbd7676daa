"""Heartbeat params and worker state: the contract's fields, starting/running/behind/error."""

from __future__ import annotations

from fullon_ohlcv_service.worker.heartbeat import (
    Snapshot,
    SymbolBeat,
    build_params,
    cache_status,
    status_message,
    worker_state,
)


def snap(**kw: object) -> Snapshot:
    base: dict[str, object] = {"exchange": "kraken", "pid": 42, "started_ms": 1, "live": True, "behind": False,
                               "failing": None}
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_params_carry_the_contract_fields() -> None:
    s = snap(symbols={"BTC/USD": SymbolBeat(5, 4, 3, 2, 100.0, None, rejected=6)}, buffer_depth=7, loop_lag_ms=1.23456,
             reconnects=2, gaps_repaired=1, errors=3)
    p = build_params(s)
    assert p == {
        "pid": 42, "exchange": "kraken", "started_ms": 1, "state": "running",
        "symbols": {"BTC/USD": {"last_trade_ms": 5, "last_final_candle_ms": 4, "trades_stored": 3,
                                "candles_stored": 2, "backfill_pct": 100.0, "error": None, "rejected": 6}},
        "buffer_depth": 7, "loop_lag_ms": 1.235, "reconnects": 2, "gaps_repaired": 1, "errors": 3,
    }


def test_states() -> None:
    assert worker_state(snap(live=False)) == "starting"
    assert worker_state(snap()) == "running"
    assert worker_state(snap(behind=True)) == "behind" and cache_status("behind") == "running"
    assert worker_state(snap(failing="live: boom")) == "error"
    assert status_message(snap(failing="live: boom")) == "live: boom"
    one_bad = {"A/B": SymbolBeat(error="SymbolUnknown"), "C/D": SymbolBeat()}
    assert worker_state(snap(symbols=one_bad)) == "running"
    assert "A/B: SymbolUnknown" in status_message(snap(symbols=one_bad))
    all_bad = {"A/B": SymbolBeat(error="SymbolUnknown")}
    assert worker_state(snap(symbols=all_bad)) == "error"
