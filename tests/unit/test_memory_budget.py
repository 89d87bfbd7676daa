"""The worker's memory bound: the byte estimates hold, and one budget across symbols loses no trade.

The estimates are measured with tracemalloc on realistic objects (ids as long as Kraken's); the
shedding test runs the real TradeCollector (live routing, REST catch-up, dedup, candle builder and
BatchWriter) against an in-memory exchange whose live stream outruns its REST pages.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from fullon_ohlcv_service.adapters.ccxt_exchange import to_trade
from fullon_ohlcv_service.collectors.candles import CandleBuilder, candles_from_trades
from fullon_ohlcv_service.collectors.sync import RecentIds
from fullon_ohlcv_service.collectors.trades import TradeCollector
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.memory import (
    MIB,
    MINUTE_BYTES,
    RECENT_ID_BYTES,
    ROW_BYTES,
    TRADE_BYTES,
    pending_trades_max,
    recent_ids_per_symbol,
    writer_rows_fit,
)
from fullon_ohlcv_service.models import Candle, SymbolSpec, Trade
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute, now_ms

N = 20_000


def raw_trade(i: int, rng: random.Random) -> dict[str, Any]:
    return {"timestamp": 1_796_322_197_400 + i * 3, "id": str(1_796_322_197_400_999_999 + i),
            "price": 50_000 + rng.random() * 100, "amount": rng.random(), "side": "buy" if i % 2 else "sell",
            "type": "limit"}


def measured(build: Any) -> tuple[Any, float]:
    """(what ``build()`` returns, bytes it holds per item), allocations traced from before it ran."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = build()
        gc.collect()
        return held, (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()


def test_the_byte_estimates_are_not_short() -> None:
    rng = random.Random(3)
    trades, per_trade = measured(lambda: [to_trade(raw_trade(i, rng)) for i in range(N)])
    assert per_trade <= TRADE_BYTES, per_trade

    def ids_only() -> RecentIds:
        ids = RecentIds(N, 0)
        for t in (to_trade(raw_trade(i, rng)) for i in range(N)):
            ids.add(t)
        return ids

    _, per_id = measured(ids_only)
    assert per_id <= RECENT_ID_BYTES, per_id
    _, per_candle = measured(lambda: [Candle(1_796_322_180_000 + i * MINUTE_MS, 50_000 + rng.random(), 50_100.5,
                                             49_900.25, 50_000 + rng.random(), rng.random() * 10, bool(i % 2))
                                      for i in range(N)])
    assert per_candle <= ROW_BYTES, per_candle

    def minutes() -> CandleBuilder:
        b = CandleBuilder(keep_minutes=10**6)
        for i, t in enumerate(trades):  # N minutes, 1-3 trades each
            b.add(Trade(i * MINUTE_MS + t.ts % 1000, t.id, t.price, t.amount, t.side))
        return b

    _, per_minute = measured(minutes)
    assert per_minute <= MINUTE_BYTES, per_minute


def test_budget_shares() -> None:
    assert recent_ids_per_symbol(128 * MIB, 3) == 20_000
    assert recent_ids_per_symbol(128 * MIB, 50) * 50 * RECENT_ID_BYTES <= 32 * MIB
    assert recent_ids_per_symbol(16 * MIB, 10_000) == 1_000  # a floor: the dedup window never vanishes
    assert pending_trades_max(128 * MIB) * TRADE_BYTES <= 32 * MIB
    assert writer_rows_fit(50_000, 128 * MIB) and not writer_rows_fit(50_000, 32 * MIB)


# ---- shedding at the bound loses nothing --------------------------------------------------------------
class Market:
    """An exchange whose live stream outruns its REST: pages of ``cap`` trades, each after ``delay`` s."""

    name = "fake"
    ohlcv_depth = None

    def __init__(self, cap: int, delay: float) -> None:
        self.trades: dict[str, list[Trade]] = {}
        self.cap = cap
        self.delay = delay
        self.pages = 0

    async def fetch_trades(self, symbol: str, since: int, limit: int | None = None) -> list[Trade]:
        await asyncio.sleep(self.delay)
        self.pages += 1
        return [t for t in self.trades.get(symbol, []) if t.ts >= since][: self.cap]


class MemoryStore:
    """Enough of an OhlcvStore for the collector and the writer: trades dedup on id, candle upserts."""

    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Trade]] = {}
        self.candles: dict[str, dict[int, Candle]] = {}

    async def init_symbol(self, symbol: str) -> None:
        self.trades.setdefault(symbol, {})
        self.candles.setdefault(symbol, {})

    async def latest_trade(self, symbol: str) -> tuple[int, str] | None:
        return None

    async def iter_trades(self, symbol: str, since: int | None = None,
                          until: int | None = None) -> AsyncIterator[Trade]:
        for t in sorted(self.trades[symbol].values(), key=lambda t: (t.ts, t.id)):
            if (since is None or t.ts >= since) and (until is None or t.ts < until):
                yield t

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        slot = self.trades[symbol]
        new = [t for t in trades if t.id not in slot]
        slot.update((t.id, t) for t in trades)
        return len(new)

    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        slot = self.candles[symbol]
        for c in candles:
            old = slot.get(c.ts)
            if old is None or c.final or not old.final:
                slot[c.ts] = c
        return len(candles)

    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        return None


async def test_at_the_bound_live_buffers_shed_their_oldest_trades_and_rest_fetches_them() -> None:
    symbols = ["A/USD", "B/USD", "C/USD"]
    market = Market(cap=100, delay=0.004)  # ~25,000 trades/s over REST, shared by the three catch-ups
    store = MemoryStore()
    writer = BatchWriter(cast(Any, store), flush_rows=500, flush_interval=0.005, buffer_rows=5_000)
    t0 = floor_minute(now_ms()) - 6 * MINUTE_MS
    budget = (3 * 1_000 * RECENT_ID_BYTES + 3 * 10 * MINUTE_BYTES + 5_000 * ROW_BYTES  # the fixed shares
              + 3_000 * TRADE_BYTES)  # room for 3,000 buffered live trades across the three symbols
    col = TradeCollector(cast(Any, market), cast(Any, store), writer,
                         [SymbolSpec(s, backtest_days=0) for s in symbols], log=Log("test"),
                         recent_size=1_000, buffer_bytes_max=budget)
    await col.prepare()
    for sync in col.syncs.values():  # history starts at t0
        sync.cursor.ts = sync.recent.floor = t0 - 1
        sync.history_start = sync.built_from = sync.cov_to = t0
    rng = random.Random(11)
    most = 0
    tasks: list[asyncio.Task[None]] = []
    try:
        # 3 x 30,000 trades, 10 ms apart; the first 20,000 of each are history (REST only), the rest
        # arrive live, 200 per symbol a batch, while the catch-ups still page through the history:
        # their live buffers would hold everything that arrives meanwhile
        for step in range(150):
            batch: list[tuple[str, Trade]] = []
            for s in symbols:
                made = [Trade(t0 + (step * 200 + k) * 10, f"{s}-{step * 200 + k}", 100.0 + rng.random(),
                              round(rng.uniform(0.0001, 2.0), 8), "buy") for k in range(200)]
                market.trades.setdefault(s, []).extend(made)
                batch += [(s, t) for t in made]
            if step < 100:
                continue
            if step == 100:  # the worker starts: websocket first, then the catch-ups
                tasks = [asyncio.create_task(writer.run())]
                tasks += [asyncio.create_task(col.sync_loop(s)) for s in symbols]
            await col.on_live(batch)
            used = col.buffer_bytes()
            most = max(most, used)
            assert used <= budget, (step, used, budget)
            await asyncio.sleep(0.002)
            if step % 10 == 0:
                await col.tick()
        assert col.shed_trades > 0, "the budget must have been reached"
        for _ in range(2_000):  # the market goes quiet: every catch-up meets its live buffer
            if all(r.synced for r in col.syncs.values()):
                break
            await asyncio.sleep(0.01)
        assert all(r.synced for r in col.syncs.values()), {s: len(r.live_buf) for s, r in col.syncs.items()}
        await col.tick()
        await asyncio.wait_for(writer.wait_committed(), 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for s in symbols:
        made = market.trades[s]
        assert sorted(store.trades[s]) == sorted(t.id for t in made), s  # every trade, once
        sync = col.syncs[s]
        final_to = sync.builder.final_to
        assert final_to is not None and final_to > t0
        want = {c.ts: c for c in candles_from_trades(made) if c.ts + MINUTE_MS <= final_to}
        got = {ts: c for ts, c in store.candles[s].items() if c.final and ts + MINUTE_MS <= final_to}
        assert set(got) == set(want), s
        for ts, c in want.items():  # volumes are the exact sum of the stored trades, as the chaos audit checks
            assert got[ts] == c and got[ts].volume == math.fsum(t.amount for t in made if floor_minute(t.ts) == ts)
    assert most <= budget


def test_the_bound_is_a_validated_setting() -> None:
    import pytest

    from fullon_ohlcv_service.errors import ConfigError
    from fullon_ohlcv_service.settings import settings_from_env

    env = {"OHLCV_HOME": "/nonexistent-ohlcv-home"}
    assert settings_from_env(env).buffer_mb == 128
    assert settings_from_env(env, buffer_mb=64).buffer_mb == 64
    with pytest.raises(ConfigError, match=r"^--buffer-mb: must be an integer >= 16, got 8$"):
        settings_from_env(env, buffer_mb=8)
    with pytest.raises(ConfigError, match=r"^--buffer-rows: 200000 rows do not fit in a quarter of --buffer-mb 32"):
        settings_from_env(env, buffer_mb=32, buffer_rows=200_000)


def test_status_json_carries_the_bound() -> None:
    from fullon_ohlcv_service import status
    from tests.unit.test_arbiter_status import NOW, SUP_PARAMS, doc, sup_entry, worker_params

    params = {**worker_params(111), "buffer_bytes": 5 * MIB, "buffer_bytes_max": 128 * MIB}
    sup = doc({**SUP_PARAMS, "exchanges": {"kraken": sup_entry(111)}}, NOW - 500)
    row = status.build_report(sup, {"kraken": doc(params, NOW - 500)}, NOW).as_json()["exchanges"][0]
    assert (row["buffer_bytes"], row["buffer_bytes_max"]) == (5 * MIB, 128 * MIB)
