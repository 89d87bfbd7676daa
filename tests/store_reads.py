"""Counts and ends of a symbol's stored rows for tests, read through the store's public streaming API."""

from __future__ import annotations

from fullon_ohlcv_service.models import Candle
from fullon_ohlcv_service.ports import OhlcvStore


async def count_trades(store: OhlcvStore, symbol: str, since: int | None = None, until: int | None = None) -> int:
    """Stored trades of ``symbol`` in [since, until)."""
    return sum([1 async for _ in store.iter_trades(symbol, since, until)])


async def count_candles(store: OhlcvStore, symbol: str, since: int | None = None, until: int | None = None) -> int:
    """Stored 1m candles of ``symbol`` whose minute opens in [since, until)."""
    return sum([1 async for _ in store.iter_candles(symbol, since, until)])


async def latest_candle(store: OhlcvStore, symbol: str, final_only: bool = False) -> Candle | None:
    """The newest stored candle (the newest final one with ``final_only``), or None."""
    last: Candle | None = None
    async for c in store.iter_candles(symbol):
        if c.final or not final_only:
            last = c
    return last


async def oldest_candle(store: OhlcvStore, symbol: str) -> Candle | None:
    async for c in store.iter_candles(symbol):
        return c
    return None


async def count_rejects(store: OhlcvStore, symbol: str) -> int:
    return len(await store.load_rejects(symbol))
