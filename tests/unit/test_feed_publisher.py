"""FeedPublisher's rules with the real BatchWriter, in-memory store and sink: each row once, drops, gap markers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from fullon_ohlcv_service.collectors.feed import FeedPublisher
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.feed_layout import FeedBatch, FeedEntry, Gap
from fullon_ohlcv_service.models import Candle, Trade

M = 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % M


class Store:
    """Trades deduplicated on id, candles upserted (a final one never replaced by a provisional one)."""

    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Trade]] = {}
        self.candles: dict[str, dict[int, Candle]] = {}

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        slot = self.trades.setdefault(symbol, {})
        new = [t for t in {t.id: t for t in trades}.values() if t.id not in slot]
        slot.update({t.id: t for t in new})
        return len(new)

    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        slot = self.candles.setdefault(symbol, {})
        for c in candles:
            old = slot.get(c.ts)
            if old is None or c.final or not old.final:
                slot[c.ts] = c
        return len(candles)

    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        return None

    async def latest_trade(self, symbol: str) -> tuple[int, str] | None:
        rows = sorted((t.ts, t.id) for t in self.trades.get(symbol, {}).values())
        return rows[-1] if rows else None

    async def iter_trades(self, symbol: str, since: int | None = None,
                          until: int | None = None) -> AsyncIterator[Trade]:
        for t in sorted(self.trades.get(symbol, {}).values(), key=lambda t: (t.ts, t.id)):
            if (since is None or t.ts >= since) and (until is None or t.ts < until):
                yield t

    async def latest_candle(self, symbol: str, final_only: bool = False) -> Candle | None:
        rows = [c for _, c in sorted(self.candles.get(symbol, {}).items()) if c.final or not final_only]
        return rows[-1] if rows else None

    async def iter_candles(self, symbol: str, since: int | None = None,
                           until: int | None = None) -> AsyncIterator[Candle]:
        for ts, c in sorted(self.candles.get(symbol, {}).items()):
            if (since is None or ts >= since) and (until is None or ts < until):
                yield c


class Sink:
    """Records every published batch; ``down`` makes every call fail as an unreachable Redis does."""

    def __init__(self) -> None:
        self.batches: list[FeedBatch] = []
        self.down = False
        self.marks: dict[str, tuple[int, str]] = {}
        self.lists: dict[str, list[Candle]] = {}

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("redis down")

    async def ping(self) -> None:
        self._check()

    async def publish(self, batch: FeedBatch) -> None:
        self._check()
        self.batches.append(batch)
        for f, v in batch.published.items():
            ts, _, tid = v.partition(" ")
            self.marks[f] = (int(ts), tid)
        for sym, bars in batch.bars.items():
            merged = {c.ts: c for c in self.lists.get(sym, [])} | {c.ts: c for c in bars}
            self.lists[sym] = [merged[k] for k in sorted(merged)]

    async def published(self) -> dict[str, tuple[int, str]]:
        self._check()
        return dict(self.marks)

    async def recent(self, kind: str, count: int) -> list[FeedEntry]:
        self._check()
        return []

    async def list_last_ts(self, symbol: str) -> int | None:
        self._check()
        rows = self.lists.get(symbol)
        return rows[-1].ts if rows else None

    async def close(self) -> None:
        return None

    def trades(self) -> list[str]:
        return [t.id for b in self.batches for _, t in b.trades]

    def gaps(self) -> list[Gap]:
        return [g for b in self.batches for _, g in b.gaps]


def tr(i: int, ts: int | None = None) -> Trade:
    return Trade(ts=T0 + i * 100 if ts is None else ts, id=f"t{i}", price=1.0 + i, amount=0.5, side="buy")


def cd(minute: int, close: float = 1.0, final: bool = True) -> Candle:
    return Candle(T0 + minute * M, 1.0, 2.0, 0.5, close, 3.0, final)


async def _run(pub: FeedPublisher, writer: BatchWriter) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(pub.run()), asyncio.create_task(writer.run())]


async def _settle(pub: FeedPublisher, writer: BatchWriter) -> None:
    await writer.wait_committed()
    for _ in range(50):
        await asyncio.sleep(0)
    assert await pub.wait_published(5.0)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_each_committed_trade_is_published_once() -> None:
    store, sink = Store(), Sink()
    pub = FeedPublisher(sink, "kraken", store, trades=True)
    writer = BatchWriter(store, flush_interval=0.01, on_commit=pub.committed)
    tasks = await _run(pub, writer)
    try:
        await pub.start(["BTC/USD"])
        await writer.put_trades("BTC/USD", [tr(1), tr(2), tr(3)])
        await _settle(pub, writer)
        await writer.put_trades("BTC/USD", [tr(2), tr(3), tr(4)])  # a catch-up overlapping what is stored
        await _settle(pub, writer)
        await writer.put_trades("BTC/USD", [tr(1), tr(1)])  # nothing new
        await _settle(pub, writer)
        await writer.put_trades("ETH/USD", [tr(1)])  # another symbol, same id: its own
        await _settle(pub, writer)
    finally:
        await _stop(tasks)
    assert sink.trades() == ["t1", "t2", "t3", "t4", "t1"]
    assert sink.gaps() == []
    assert sink.marks["trades:BTC/USD"] == (tr(4).ts, "t4")


async def test_trades_it_cannot_tell_apart_become_a_gap_marker() -> None:
    """Stored trades re-fetched together with one new trade, beyond what the publisher remembers."""
    store, sink = Store(), Sink()
    pub = FeedPublisher(sink, "kraken", store, trades=True, known_ids=1)
    writer = BatchWriter(store, flush_interval=0.01, on_commit=pub.committed)
    tasks = await _run(pub, writer)
    try:
        await pub.start(["BTC/USD"])
        await writer.put_trades("BTC/USD", [tr(1), tr(2)])
        await _settle(pub, writer)
        await writer.put_trades("BTC/USD", [tr(1), tr(3)])  # remembers t2 only: t1 or t3, which one is new?
        await _settle(pub, writer)
        await writer.put_trades("BTC/USD", [tr(3), tr(5)])  # t3 remembered: t5 is the new one
        await _settle(pub, writer)
    finally:
        await _stop(tasks)
    assert sink.trades() == ["t1", "t2", "t5"]
    assert sink.gaps() == [Gap("BTC/USD", tr(1).ts, tr(3).ts, 1, "ambiguous")]


async def test_an_outage_drops_counts_and_marks_the_range_without_slowing_commits() -> None:
    store, sink = Store(), Sink()
    pub = FeedPublisher(sink, "kraken", store, trades=True, retry_s=0.05)
    writer = BatchWriter(store, flush_interval=0.01, on_commit=pub.committed)
    tasks = await _run(pub, writer)
    try:
        await pub.start(["BTC/USD"])
        await writer.put_trades("BTC/USD", [tr(1)])
        await _settle(pub, writer)
        sink.down = True
        await writer.put_trades("BTC/USD", [tr(2), tr(3)])  # the round fails: dropped, counted
        await writer.put_candles("BTC/USD", [cd(0)])
        await writer.wait_committed()
        await asyncio.sleep(0.1)
        assert pub.down
        t0 = time.perf_counter()
        for i in range(4, 40):
            await writer.put_trades("BTC/USD", [tr(i), tr(1)])
            await writer.wait_committed()
        per_commit = (time.perf_counter() - t0) / 36
        assert pub.queued_rows == 0  # nothing piles up while Redis is down
        sink.down = False
        await asyncio.sleep(0.3)
        await writer.put_trades("BTC/USD", [tr(40)])
        await _settle(pub, writer)
    finally:
        await _stop(tasks)
    assert per_commit < 0.5  # the writer never waits for the feed (generous: a loaded machine)
    assert sink.trades() == ["t1", "t40"]
    gaps = sink.gaps()
    assert Gap("BTC/USD", tr(2).ts, tr(39).ts, 38, "redis unavailable") in gaps
    assert Gap("BTC/USD", T0, T0, 1, "redis unavailable") in gaps  # the candle's minute
    assert pub.dropped_trades == 38 and pub.dropped_candles == 1
    assert [c.ts for c in sink.lists["BTC/USD"]] == [T0]  # the list was re-synced from the store


async def test_a_restart_marks_what_was_committed_but_never_published() -> None:
    store, sink = Store(), Sink()
    await store.save_trades("BTC/USD", [tr(1), tr(2), tr(3)])
    sink.marks["trades:BTC/USD"] = (tr(1).ts, "t1")  # the killed worker had published up to t1
    pub = FeedPublisher(sink, "kraken", store, trades=True)
    writer = BatchWriter(store, flush_interval=0.01, on_commit=pub.committed)
    tasks = await _run(pub, writer)
    try:
        await pub.start(["BTC/USD"])
        await writer.put_trades("BTC/USD", [tr(3), tr(4)])
        await _settle(pub, writer)
    finally:
        await _stop(tasks)
    assert sink.gaps() == [Gap("BTC/USD", tr(1).ts, tr(3).ts, 0, "restart")]
    assert sink.trades() == ["t4"]


async def test_candle_updates_once_and_finals_to_the_list() -> None:
    store, sink = Store(), Sink()
    pub = FeedPublisher(sink, "kraken", store, trades=False)
    writer = BatchWriter(store, flush_interval=0.01, on_commit=pub.committed)
    tasks = await _run(pub, writer)
    try:
        await pub.start(["BTC/USD"])
        for batch in ([cd(0, 1.0, False)], [cd(0, 1.0, False)], [cd(0, 1.5, False)], [cd(0, 1.5), cd(1, 2.0, False)],
                      [cd(0, 1.5)], [cd(0, 1.0, False)], [cd(1, 2.0), cd(2, 3.0, False)]):
            await writer.put_candles("BTC/USD", batch)
            await _settle(pub, writer)
        await writer.put_trades("BTC/USD", [tr(1)])  # --publish candles: trades are not published
        await _settle(pub, writer)
    finally:
        await _stop(tasks)
    updates = [(c.ts, c.close, c.final) for b in sink.batches for _, c in b.candles]
    assert updates == [(T0, 1.0, False), (T0, 1.5, False), (T0, 1.5, True), (T0 + M, 2.0, False),
                       (T0 + M, 2.0, True), (T0 + 2 * M, 3.0, False)]
    assert [(c.ts, c.close) for c in sink.lists["BTC/USD"]] == [(T0, 1.5), (T0 + M, 2.0)]
    assert sink.trades() == []
