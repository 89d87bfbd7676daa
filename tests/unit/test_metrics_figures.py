"""Pure metric bookkeeping: cumulative histograms, tallies across worker lives, the master's ledger, the clamp."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from fullon_ohlcv_service.metrics.collector import Monotonic
from fullon_ohlcv_service.metrics.figures import COMMIT_BUCKETS, Histogram
from fullon_ohlcv_service.metrics.ledger import Ledger, restart_reason
from fullon_ohlcv_service.metrics.tally import Tally


def _status_exit(code: int) -> int:
    return code << 8  # a waitpid status for "exited with code"


def test_histogram_buckets_are_prometheus_le_and_round_trip_through_params() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.count == 4
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]  # 0.1 <= 0.1 falls in le=0.1
    assert h.total == pytest.approx(3.65)
    back = Histogram.from_params(h.as_params())
    assert back is not None and back.cumulative() == h.cumulative() and back.total == pytest.approx(3.65)
    assert Histogram.from_params({"le": [1.0], "counts": [1], "sum": 1}) is None  # counts must be len(le)+1
    assert Histogram.from_params({"le": [1.0], "counts": [1, -1], "sum": 1}) is None
    assert Histogram.from_params("junk") is None
    with pytest.raises(ValueError, match="bounds"):
        h.add(Histogram(COMMIT_BUCKETS))


def _beat(pid: int, trades: int, reconnects: int, ok: int, hist: list[int] | None = None) -> dict[str, Any]:
    h = Histogram((0.1, 1.0), hist or [0, 0, 0], 0.0)
    return {"pid": pid, "reconnects": reconnects, "errors": 0, "rest_requests": {"ok": ok, "5xx": 0},
            "symbols": {"BTC/USD": {"trades_stored": trades, "candles_stored": 1, "last_trade_ms": 5}},
            "commit_seconds": h.as_params()}


def test_tally_parses_heartbeats_adds_lives_and_tolerates_bad_fields() -> None:
    a = Tally.from_params(_beat(1, 10, 2, 5, [1, 0, 0]))
    b = Tally.from_params(_beat(2, 3, 1, 4, [0, 2, 1]))
    total = a.plus(b)
    assert total.symbols["BTC/USD"]["trades_stored"] == 13
    assert total.worker["reconnects"] == 3 and total.rest["ok"] == 9
    assert total.histograms["commit_seconds"].counts == [1, 2, 1]
    # the carry is written as heartbeat-shaped params and read back the same way
    again = Tally.from_params(total.as_params())
    assert again.symbols == {"BTC/USD": {"trades_stored": 13, "candles_stored": 2}}
    assert again.histograms["commit_seconds"].counts == [1, 2, 1]
    junk = Tally.from_params({"reconnects": "x", "symbols": {"A": {"trades_stored": None}}, "rest_requests": 3})
    assert junk.worker == {"reconnects": 0.0} and junk.symbols == {"A": {"trades_stored": 0.0}} and not junk.rest
    assert Tally.from_params(None).empty()


def test_restart_reason_from_the_masters_knowledge() -> None:
    assert restart_reason(signal.SIGKILL, hung=False) == "killed"  # a raw status: terminated by SIGKILL
    assert os.WIFSIGNALED(signal.SIGKILL)
    assert restart_reason(_status_exit(1), hung=False) == "crashed"
    assert restart_reason(_status_exit(3), hung=False) == "exited"
    assert restart_reason(signal.SIGKILL, hung=True) == "hung"  # the master killed it for a stale heartbeat


def test_ledger_carries_the_final_beat_of_each_life() -> None:
    ledger = Ledger()
    ledger.seen("kraken", 1, _beat(1, 10, 1, 3))
    # the record read after the reap is newer than the last beat the liveness check saw: it wins
    ledger.life_ended("kraken", 1, _beat(1, 12, 1, 4))
    ledger.restarted("kraken", "killed")
    ledger.seen("kraken", 2, _beat(2, 5, 0, 1))
    ledger.life_ended("kraken", 2, None)  # the cache did not answer: the last beat seen is used
    ledger.restarted("kraken", "hung")
    ledger.life_ended("kraken", 3, _beat(99, 1000, 0, 0))  # never a beat of another pid
    p = ledger.params()
    assert p["restarts"] == {"kraken": {"killed": 1, "hung": 1}}
    carried = Tally.from_params(p["carried"]["kraken"])
    assert carried.symbols["BTC/USD"]["trades_stored"] == 17
    assert carried.rest["ok"] == 5


def test_monotonic_never_exposes_less_than_before() -> None:
    mono = Monotonic()
    assert mono.value("t", ("a",), 10) == 10
    assert mono.value("t", ("a",), 7) == 10  # a carry that fell short of a fresher scrape: held
    assert mono.value("t", ("a",), 12) == 12
    assert mono.value("t", ("b",), 1) == 1  # per series
    h1 = Histogram((1.0,), [3, 0], 0.3)
    h2 = Histogram((1.0,), [2, 0], 0.2)
    assert mono.histogram("h", ("a",), h1) is h1
    assert mono.histogram("h", ("a",), h2) is h1


def test_heartbeat_params_carry_the_figures_that_the_tally_reads() -> None:
    from fullon_ohlcv_service.metrics.figures import WorkerFigures
    from fullon_ohlcv_service.worker.heartbeat import Snapshot, SymbolFacts, worker_beat

    fig = WorkerFigures(rest_requests={"ok": 4, "rate_limited": 1}, rate_limit_waits=1, rate_limit_wait_s=1.5)
    fig.commit_seconds.observe(0.002)
    snap = Snapshot(exchange="kraken", pid=9, started_ms=1, live=True, behind=False, failing=None, reconnects=2,
                    symbols={"BTC/USD": SymbolFacts(trades_stored=5, rejected=3,
                                                    counters={"gaps_found": 2, "gaps_repaired": 1})},
                    figures=fig)
    params = worker_beat(snap).to_params()
    assert params["symbols"]["BTC/USD"]["gaps_found"] == 2 and params["symbols"]["BTC/USD"]["trades_stored"] == 5
    t = Tally.from_params(params)
    assert t.rest == {"ok": 4, "rate_limited": 1}
    assert t.worker == {"reconnects": 2, "errors": 0, "rate_limit_waits": 1, "rate_limit_wait_s": 1.5}
    assert t.symbols["BTC/USD"] == {"trades_stored": 5, "candles_stored": 0, "gaps_found": 2, "gaps_repaired": 1,
                                    "rejected": 3, "rest_errors": 0}
    assert t.histograms["commit_seconds"].count == 1
