"""An overloaded collector (reading stalled on the writer's backpressure) stays live: no silence, no catch-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

from fullon_ohlcv_service.collectors.backfill import Cursor
from fullon_ohlcv_service.collectors.connection import Connection
from fullon_ohlcv_service.collectors.sync import RecentIds, SymbolSync
from fullon_ohlcv_service.collectors.trades import SilencePolicy, TradeCollector
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, SymbolSpec, Trade
from fullon_ohlcv_service.timeutil import now_ms


class SlowStore:
    """A store that commits slowly: each save takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.trades: dict[str, list[Trade]] = {}

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        await asyncio.sleep(self.delay)
        self.trades.setdefault(symbol, []).extend(trades)
        return len(trades)

    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        return len(candles)

    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        return None


class OneBurst:
    """A websocket that delivers one big batch, then nothing (the socket stays open)."""

    name = "fake"

    def __init__(self, batch: list[tuple[str, Trade]]) -> None:
        self.batch = batch

    async def watch_trades(self, symbols: Sequence[str]) -> list[tuple[str, Trade]]:
        if self.batch:
            out, self.batch = self.batch, []
            return out
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def synced_collector(client: Any, writer: BatchWriter, symbols: list[str]) -> TradeCollector:
    col = TradeCollector(cast(Any, client), cast(Any, None), writer, [SymbolSpec(s, backtest_days=0) for s in symbols],
                         log=Log("test"), silence=SilencePolicy(min_s=0.1, max_s=0.1))
    for s in symbols:
        sync = SymbolSync(SymbolSpec(s, backtest_days=0), 0, Cursor(0), RecentIds(10_000, 0))
        sync.start_pass()
        sync.proved_quiet()
        col.syncs[s] = sync
    col.connection.connected = True
    return col


async def test_stalled_reading_is_not_silence_and_does_not_unsync() -> None:
    # 2 symbols x 60 trades through a writer that holds 10 rows and commits 5 per 50 ms: taking the
    # batch stalls our reading for ~1.2 s, longer than the silence threshold (0.1 s) and the old 1 s
    # backpressure trigger. Both used to send every symbol to a REST catch-up, dropping its live buffer.
    t0 = now_ms()
    symbols = ["A/USD", "B/USD"]
    batch = [(s, Trade(t0 + i, f"{s}-{i}", 1.0, 1.0, "buy")) for i in range(60) for s in symbols]
    store = SlowStore(0.05)
    writer = BatchWriter(store, flush_rows=5, flush_interval=0.01, buffer_rows=10)
    col = synced_collector(OneBurst(batch), writer, symbols)
    unsynced: list[str] = []
    for sync in col.syncs.values():
        orig = sync.interrupted

        def spy(sync: SymbolSync = sync, orig: Any = orig) -> None:
            unsynced.append(sync.symbol)
            orig()

        sync.interrupted = spy  # type: ignore[method-assign]
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(col.live_loop())]
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        while sum(len(v) for v in store.trades.values()) < len(batch) and loop.time() < end:
            await col.tick()  # housekeeping runs while the live loop waits on the writer
            await asyncio.sleep(0.05)
        assert not unsynced
        assert all(s.synced and not s.interrupted_in_pass for s in col.syncs.values())
        for s in symbols:
            assert [t.id for t in store.trades[s]] == [f"{s}-{i}" for i in range(60)]
        # reading resumed and the socket really is quiet: that is silence, and it is noticed
        await asyncio.sleep(0.2)
        await col.tick()
        assert sorted(unsynced) == symbols
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def test_silent_s_counts_only_time_spent_reading() -> None:
    writer = BatchWriter(SlowStore(0.0))
    col = synced_collector(OneBurst([]), writer, ["A/USD", "B/USD"])
    a, b = col.syncs["A/USD"], col.syncs["B/USD"]
    conn = col.connection
    a.last_live_mono, a.blocked_mark = 100.0, conn.blocked_s(100.0)
    assert col.silent_s(a, 105.0) == 5.0
    conn.reading, conn.block_started = False, 105.0  # taking a batch, maybe waiting on the writer
    assert col.silent_s(a, 200.0) == 5.0  # the 95 s spent not reading are not the exchange's silence
    conn.blocked_total, conn.reading = 95.0, True  # resumed at 200
    assert col.silent_s(a, 201.0) == 6.0
    # a quiet symbol next to a busy one: batches keep arriving (B's), A's silence still grows
    b.last_live_mono, b.blocked_mark = 201.0, conn.blocked_s(201.0)
    assert col.silent_s(a, 230.0) == 35.0
    assert col.silent_s(b, 230.0) == 29.0


def test_the_connection_proves_a_quiet_symbol_only_while_it_flows() -> None:
    conn = Connection(subscribe_margin_ms=3000)
    assert not conn.proves(10_000)  # never connected
    conn.connected, conn.connected_ms, conn.newest_ts = True, 1_000, 20_000
    assert conn.proves(4_000) and conn.proves(20_000)
    assert not conn.proves(3_999)  # within the subscribe margin of the first delivery
    assert not conn.proves(20_001)  # past what the socket has delivered: it may be stalled
    assert not conn.proves(None)
    conn.connected = False  # dropped: no proof until the next connection delivers
    assert not conn.proves(10_000)
