"""BatchWriter: size/interval flushes, order, backpressure, retry without loss, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from fullon_ohlcv_service.collectors.writer import BatchWriter, _merge
from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.models import Candle, Trade


class MemStore:
    """A pure in-memory target: trades deduped on id, candles upserted (final never replaced)."""

    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Trade]] = {}
        self.candles: dict[str, dict[int, Candle]] = {}
        self.coverage: list[tuple[str, int, int]] = []
        self.down = False
        self.calls: list[tuple[str, int]] = []
        self.log: list[str] = []

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        if self.down:
            raise StoreUnavailable("db down")
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
