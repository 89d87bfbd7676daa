"""The Redis feed sink on a real Redis: the OHLCVCache list merge (read as fullon_cache reads it), the streams."""

from __future__ import annotations

import json
from typing import Any

import redis

from fullon_ohlcv_service.adapters.redis_feed import RedisFeedSink
from fullon_ohlcv_service.feed_layout import FeedBatch, Gap, parse_entry
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.settings import parse_store_url

M = 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % M


def get_latest_ohlcv_bars(r: redis.Redis, symbol: str, timeframe: str, count: int) -> list[list[Any]]:
    """fullon_cache's OHLCVCache.get_latest_ohlcv_bars: the same key, command and decoding."""
    key = f"ohlcv:{symbol}:{timeframe}"
    bars = []
    for bar_str in r.lrange(key, -count, -1):  # type: ignore[union-attr]
        bar = json.loads(bar_str)
        if isinstance(bar, list) and len(bar) >= 6:
            bars.append(bar)
    return bars


def cd(minute: int, close: float = 1.0) -> Candle:
    return Candle(T0 + minute * M, 1.0, 2.0, 0.5, close, 3.25)


async def test_ohlcv_list_keeps_each_minute_once_in_order(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    sink = RedisFeedSink(parse_store_url("feed", redis_url, ("redis",)), "kraken", list_keep=8)
    bare = RedisFeedSink(parse_store_url("feed", redis_url, ("redis",)), "kraken", qualified=False)

    async def push(*bars: Candle, to: RedisFeedSink = sink) -> list[tuple[int, float]]:
        batch = FeedBatch.empty()
        batch.bars["BTC/USD"] = list(bars)
        await to.publish(batch)
        return [(b[0] * 1000 - T0) // M for b in get_latest_ohlcv_bars(r, "kraken:BTCUSD", "1m", 100)]  # type: ignore[misc]

    try:
        assert await push(cd(1), cd(2), cd(3)) == [1, 2, 3]
        assert await push(cd(2), cd(3), cd(4)) == [1, 2, 3, 4]  # a catch-up re-sends finals: no duplicate
        assert await push(cd(6)) == [1, 2, 3, 4, 6]
        assert await push(cd(5), cd(7)) == [1, 2, 3, 4, 5, 6, 7]  # a late minute goes in its place
        assert await push(cd(3, close=9.5)) == [1, 2, 3, 4, 5, 6, 7]  # a repaired candle replaces its minute
        bars = get_latest_ohlcv_bars(r, "kraken:BTCUSD", "1m", 100)
        assert bars[2] == [(T0 + 3 * M) // 1000, 1.0, 2.0, 0.5, 9.5, 3.25]
        assert r.lindex("ohlcv:kraken:BTCUSD:1m", 2) == json.dumps(bars[2]).encode()  # fullon_cache's encoding
        assert await push(cd(0), cd(8), cd(9), cd(10)) == [3, 4, 5, 6, 7, 8, 9, 10]  # trimmed to the newest 8
        assert get_latest_ohlcv_bars(r, "kraken:BTCUSD", "1m", 3)[0][0] == (T0 + 8 * M) // 1000
        assert await push(cd(1)) == [3, 4, 5, 6, 7, 8, 9, 10]  # older than the kept window: trimmed again
        assert await sink.list_last_ts("BTC/USD") == T0 + 10 * M
        await push(cd(1), to=bare)
        assert get_latest_ohlcv_bars(r, "BTCUSD", "1m", 5) == [[(T0 + M) // 1000, 1.0, 2.0, 0.5, 1.0, 3.25]]
    finally:
        await sink.close()
        await bare.close()
        r.close()


async def test_stream_entries_round_trip_and_stay_bounded(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    sink = RedisFeedSink(parse_store_url("feed", redis_url, ("redis",)), "binance", maxlen=500)
    trades = [Trade(T0 + i, f"{i}", 100.0 + i / 7, 0.001 * (i + 1), "sell" if i % 2 else "buy") for i in range(2000)]
    try:
        for i in range(0, 2000, 200):
            batch = FeedBatch.empty()
            batch.trades = [("BTC/USDT", t) for t in trades[i:i + 200]]
            batch.published = {"trades:BTC/USDT": f"{trades[i + 199].ts} {trades[i + 199].id}"}
            await sink.publish(batch)
        batch = FeedBatch.empty()
        batch.gaps = [("trades", Gap("BTC/USDT", T0 + 5, T0 + 9, 3, "redis unavailable"))]
        batch.candles = [("BTC/USDT", Candle(T0, 1.0, 2.0, 0.5, 1.5, 7.0, final=False))]
        await sink.publish(batch)
        n = r.xlen("ohlcv:stream:binance:trades")
        assert 500 <= n < 800  # MAXLEN ~ 500: whole nodes are trimmed
        rows = r.xrange("ohlcv:stream:binance:trades")
        got = [parse_entry(f) for _, f in rows]
        assert got[-1] == Gap("BTC/USDT", T0 + 5, T0 + 9, 3, "redis unavailable")
        assert got[:-1] == [("BTC/USDT", t) for t in trades[-(n - 1):]]  # floats and ids exact
        assert r.xrange("ohlcv:stream:binance:candles")[0][1] == {
            b"type": b"candle", b"symbol": b"BTC/USDT", b"ts": str(T0).encode(), b"open": b"1.0", b"high": b"2.0",
            b"low": b"0.5", b"close": b"1.5", b"volume": b"7.0", b"final": b"false"}
        assert await sink.published() == {"trades:BTC/USDT": (trades[-1].ts, trades[-1].id)}
        recent = await sink.recent("trades", 3)
        assert recent[0] == got[-1] and recent[1:] == [("BTC/USDT", trades[-1]), ("BTC/USDT", trades[-2])]
    finally:
        await sink.close()
        r.close()
