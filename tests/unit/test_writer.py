"""BatchWriter: size/interval flushes, order, backpressure, retry without loss, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from fullon_ohlcv_service.collectors.writer import BatchWriter, SymbolStats, _merge
from fullon_ohlcv_service.errors import PermanentError, StoreDataError, StoreUnavailable
from fullon_ohlcv_service.models import Candle, Reject, Trade


class MemStore:
    """A pure in-memory target: trades deduped on id, candles upserted (final never replaced)."""

    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Trade]] = {}
        self.candles: dict[str, dict[int, Candle]] = {}
        self.coverage: list[tuple[str, int, int]] = []
        self.rejects: dict[str, dict[tuple[str, str, str], Reject]] = {}
        self.down = False
        self.broken: Exception | None = None  # raised by every write while set
        self.refuse: dict[str, Exception] = {}  # trade id -> what a batch holding it raises
        self.calls: list[tuple[str, int]] = []
        self.log: list[str] = []

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        if self.down:
            raise StoreUnavailable("db down")
        if self.broken is not None:
            raise self.broken
        for t in trades:
            if t.id in self.refuse:
                raise self.refuse[t.id]
        self.calls.append(("t", len(trades)))
        self.log.append("t")
        slot = self.trades.setdefault(symbol, {})
        new = 0
        for t in trades:
            if t.id not in slot:
                slot[t.id] = t
                new += 1
        return new

    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        if self.down:
            raise StoreUnavailable("db down")
        self.log.append("c")
        slot = self.candles.setdefault(symbol, {})
        n = 0
        for c in candles:
            old = slot.get(c.ts)
            if old is not None and old.final and not c.final:
                continue
            slot[c.ts] = c
            n += 1
        return n

    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        if self.down:
            raise StoreUnavailable("db down")
        self.log.append("v")
        self.coverage.append((symbol, start, end))

    async def save_rejects(self, symbol: str, rejects: Sequence[Reject]) -> int:
        if self.down:
            raise StoreUnavailable("db down")
        self.log.append("r")
        slot = self.rejects.setdefault(symbol, {})
        new = [r for r in rejects if (r.kind, r.ref, r.reason) not in slot]
        slot.update(((r.kind, r.ref, r.reason), r) for r in new)
        return len(new)


def trades(n: int, start: int = 0) -> list[Trade]:
    return [Trade(1000 * (start + i), str(start + i), 1.0, 1.0, "buy") for i in range(n)]


async def run_writer(w: BatchWriter) -> asyncio.Task[None]:
    return asyncio.create_task(w.run())


async def test_flush_on_size_before_interval() -> None:
    store = MemStore()
    w = BatchWriter(store, flush_rows=100, flush_interval=30.0, buffer_rows=1000)
    task = await run_writer(w)
    await w.put_trades("A", trades(200))
    await asyncio.wait_for(w.wait_committed(), 2.0)
    await w.put_trades("A", trades(100, start=200))
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert len(store.trades["A"]) == 300
    assert all(n <= 100 for _, n in store.calls)
    assert w.stats_for("A").trades_stored == 300 and w.stats_for("A").last_trade_ms == 299_000
    task.cancel()


async def test_flush_on_interval() -> None:
    store = MemStore()
    w = BatchWriter(store, flush_rows=1000, flush_interval=0.05)
    task = await run_writer(w)
    t0 = time.monotonic()
    await w.put_trades("A", trades(3))
    await asyncio.wait_for(w.wait_committed(), 10.0)
    assert 0.04 <= time.monotonic() - t0  # not before the interval (flush_rows is never reached)
    assert len(store.trades["A"]) == 3
    task.cancel()


async def test_beats_is_a_snapshot_of_the_writer() -> None:
    store = MemStore()
    store.down = True
    w = BatchWriter(store, flush_rows=10, flush_interval=0.01, buffer_rows=40, backoff_initial=0.01, backoff_max=0.05)
    task = await run_writer(w)
    await w.put_trades("A", trades(30))
    await asyncio.sleep(0.2)
    down = w.beats()
    assert down.depth == 30 and down.behind and down.write_errors >= 1 and down.batches == 0
    assert down.last_error == "StoreUnavailable: db down"
    assert down.stats("A") == SymbolStats() and dict(down.symbols) == {}  # nothing committed yet
    store.down = False
    await asyncio.wait_for(w.wait_committed(), 2.0)
    up = w.beats()
    assert up.depth == 0 and not up.behind and up.batches >= 1 and up.write_errors >= down.write_errors
    assert up.stats("A").trades_stored == 30 and up.stats("A").last_trade_ms == 29_000
    assert up.commit_seconds is w.commit_seconds  # the live histograms, for /metrics
    await w.put_trades("A", trades(5, start=30))
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert up.stats("A").trades_stored == 30 and w.beats().stats("A").trades_stored == 35  # a copy, not a view
    task.cancel()


async def test_order_trades_candles_coverage_and_final_wins() -> None:
    store = MemStore()
    w = BatchWriter(store, flush_rows=1000, flush_interval=0.01)
    await w.put_coverage("A", 0, 60_000)
    await w.put_candles("A", [Candle(0, 1, 2, 0.5, 1.5, 3.0, final=True)])
    await w.put_candles("A", [Candle(0, 9, 9, 9, 9, 9.0, final=False)])
    await w.put_trades("A", trades(2))
    task = await run_writer(w)
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert store.log == ["t", "c", "v"]
    assert store.candles["A"][0].final and store.candles["A"][0].open == 1
    assert w.stats_for("A").last_final_candle_ms == 0 and w.stats_for("A").coverage_to == 60_000
    task.cancel()


async def test_database_down_retries_and_loses_nothing() -> None:
    store = MemStore()
    store.down = True
    w = BatchWriter(store, flush_rows=10, flush_interval=0.01, buffer_rows=100, backoff_initial=0.01, backoff_max=0.05)
    task = await run_writer(w)
    await w.put_trades("A", trades(30))
    await asyncio.sleep(0.2)
    assert w.failing and w.behind and w.write_errors >= 2 and w.depth == 30
    store.down = False
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert not w.failing and w.depth == 0
    assert sorted(store.trades["A"]) == sorted(str(i) for i in range(30))
    task.cancel()


async def test_full_buffer_applies_backpressure() -> None:
    store = MemStore()
    store.down = True
    w = BatchWriter(store, flush_rows=10, flush_interval=0.01, buffer_rows=20, backoff_initial=0.01, backoff_max=0.02)
    task = await run_writer(w)
    await w.put_trades("A", trades(20))
    blocked = asyncio.create_task(w.put_trades("A", trades(5, start=100)))
    await asyncio.sleep(0.1)
    assert not blocked.done(), "a full buffer must make the producer wait"
    store.down = False
    waited = await asyncio.wait_for(blocked, 2.0)
    assert waited > 0.05
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert len(store.trades["A"]) == 25
    task.cancel()


async def test_drain_flushes_immediately_and_run_returns() -> None:
    store = MemStore()
    w = BatchWriter(store, flush_rows=1000, flush_interval=60.0)
    task = await run_writer(w)
    await w.put_trades("A", trades(7))
    assert await w.drain(2.0)
    await asyncio.wait_for(task, 1.0)
    assert len(store.trades["A"]) == 7


async def test_drain_times_out_when_database_stays_down() -> None:
    store = MemStore()
    store.down = True
    w = BatchWriter(store, flush_interval=0.01, backoff_initial=0.01)
    task = await run_writer(w)
    await w.put_trades("A", trades(3))
    assert not await w.drain(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_backlog_is_written_in_bigger_batches() -> None:
    store = MemStore()
    store.down = True
    w = BatchWriter(store, flush_rows=10, flush_interval=0.01, buffer_rows=1000, backoff_initial=0.01,
                    backoff_max=0.02, backlog_factor=5)
    task = await run_writer(w)
    await w.put_trades("A", trades(200))
    await asyncio.sleep(0.05)
    store.down = False
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert max(n for _, n in store.calls) == 50 and len(store.trades["A"]) == 200
    task.cancel()


def test_merge_intervals() -> None:
    assert _merge([(5, 7), (0, 2), (2, 4), (6, 9)]) == [(0, 4), (5, 9)]


# ---- rows the store refuses ---------------------------------------------------------------------

async def test_a_data_error_isolates_the_row_at_once_and_commits_the_rest_in_order() -> None:
    store = MemStore()
    store.refuse["17"] = StoreDataError("value out of range")
    w = BatchWriter(store, flush_rows=1000, flush_interval=0.01, backoff_initial=5.0)  # a retry would be slow
    task = await run_writer(w)
    await w.put_trades("A", trades(40))
    await w.put_candles("A", [Candle(0, 1, 2, 0.5, 1.5, 3.0)])
    await w.put_coverage("A", 0, 60_000)
    seq = w.last_seq
    await w.put_trades("A", trades(5, start=100))  # queued behind the bad batch
    await asyncio.wait_for(w.wait_committed(), 2.0)
    await asyncio.wait_for(w.wait_committed(), 2.0)  # and the reject queued while isolating
    expected = [str(i) for i in [*range(17), *range(18, 40), *range(100, 105)]]
    assert sorted(store.trades["A"], key=int) == expected
    assert store.candles["A"] and store.coverage == [("A", 0, 60_000)]
    assert w._committed >= seq and w.depth == 0 and not w.failing
    (r,) = store.rejects["A"].values()
    assert (r.kind, r.ref, r.reason) == ("trade", "17", "store refused: StoreDataError: value out of range")
    assert w.rejects.counts == {"A": 1} and w.quarantined == 1
    # bisection: about log2(40) extra writes, not one per row
    assert len(store.calls) < 20
    task.cancel()


async def test_an_unclassified_error_is_retried_then_isolated() -> None:
    store = MemStore()
    store.refuse["3"] = RuntimeError("driver bug on this value")
    w = BatchWriter(store, flush_rows=1000, flush_interval=0.01, backoff_initial=0.01, backoff_max=0.02,
                    unclassified_attempts=3)
    task = await run_writer(w)
    await w.put_trades("A", trades(8))
    await asyncio.wait_for(w.wait_committed(), 2.0)
    await asyncio.wait_for(w.wait_committed(), 2.0)  # and the reject queued while isolating
    assert w.write_errors == 3 and sorted(store.trades["A"]) == ["0", "1", "2", "4", "5", "6", "7"]
    assert [r.reason for r in store.rejects["A"].values()] == ["store refused: RuntimeError: driver bug on this value"]
    task.cancel()


async def test_a_store_wide_permanent_error_is_retried_not_quarantined() -> None:
    store = MemStore()
    store.broken = PermanentError("kraken: a symbol's tables do not exist; call init_symbol first")
    w = BatchWriter(store, flush_rows=1000, flush_interval=0.01, backoff_initial=0.01, backoff_max=0.02)
    task = await run_writer(w)
    await w.put_trades("A", trades(5))
    await asyncio.sleep(0.2)
    assert w.failing and w.write_errors >= 3 and w.depth == 5 and not store.rejects  # not about rows: kept
    store.broken = None
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert len(store.trades["A"]) == 5 and not store.rejects and not w.failing
    task.cancel()


async def test_rejects_never_wait_for_room_and_are_bounded() -> None:
    store = MemStore()
    store.down = True
    w = BatchWriter(store, flush_rows=10, flush_interval=0.01, buffer_rows=20, backoff_initial=0.01,
                    backoff_max=0.02, max_queued_rejects=3)
    task = await run_writer(w)
    await w.put_trades("A", trades(20))  # the buffer is full and the store is down
    rejects = [Reject("trade", str(i), "price not finite", "{}", 1) for i in range(5)]
    w.rejects.reject("A", rejects[:2])  # synchronous: called from inside parsing, it cannot wait
    w.rejects.reject("A", rejects[2:])
    assert w.rejects.counts == {"A": 5} and w.rejects_dropped == 2  # counted; only 3 are held for the store
    store.down = False
    await asyncio.wait_for(w.wait_committed(), 2.0)
    assert sorted(r.ref for r in store.rejects["A"].values()) == ["0", "1", "2"]
    assert store.log[-1] == "r" and w.depth == 0
    task.cancel()
