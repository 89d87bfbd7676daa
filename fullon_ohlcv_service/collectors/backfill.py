"""REST pagination of trades and candles with a (ts, id) cursor; ends on no forward progress or on reaching a target."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fullon_ohlcv_service.errors import RateLimited, TransientError
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.ports import ExchangeClient
from fullon_ohlcv_service.timeutil import MINUTE_MS, now_ms

T = TypeVar("T")


@dataclass(slots=True)
class Cursor:
    """The newest trade taken so far: its time and the ids of every trade taken at that time."""

    ts: int
    ids: set[str] = field(default_factory=set)

    def is_new(self, t: Trade) -> bool:
        return t.ts > self.ts or (t.ts == self.ts and t.id not in self.ids)

    def take(self, t: Trade) -> None:
        if t.ts > self.ts:
            self.ts = t.ts
            self.ids = {t.id}
        elif t.ts == self.ts:
            self.ids.add(t.id)


@dataclass(slots=True)
class PageResult:
    """What one pass of pagination achieved."""

    pages: int = 0
    trades: int = 0
    reached: bool = False  # a page went past the target
    watermark: int | None = None  # every trade before this time has been taken


class Retry:
    """Capped exponential backoff for transient exchange errors, counted for the heartbeat."""

    def __init__(self, initial: float = 0.25, maximum: float = 10.0, rate_limit_floor: float = 1.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rate_limit_floor = rate_limit_floor
        self.failures = 0
        self.rate_limit_waits = 0  # backoffs after a 429/418 (for /metrics)
        self.rate_limit_wait_s = 0.0

    async def call(self, fn: Callable[[], Awaitable[T]], stop: Callable[[], bool] = lambda: False) -> T:
        delay = self.initial
        while True:
            try:
                result = await fn()
            except TransientError as exc:
                self.failures += 1
                if stop():
                    raise
                wait = max(delay, self.rate_limit_floor) if isinstance(exc, RateLimited) else delay
                if isinstance(exc, RateLimited):
                    self.rate_limit_waits += 1
                    self.rate_limit_wait_s += wait
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.maximum)
                continue
            return result


async def page_trades(
    client: ExchangeClient,
    symbol: str,
    cursor: Cursor,
    target: Callable[[], int],
    on_page: Callable[[list[Trade], int], Awaitable[None]],
    *,
    retry: Retry,
    limit: int | None = None,
    settle_ms: int = 2000,
    crowded_page: int = 100,
) -> PageResult:
    """Fetch trade pages forward from ``cursor`` until a page reaches ``target()`` or makes no progress.

    A short page is never taken as the end. Each page's new trades (after the cursor, deduplicated
    on id at the cursor's millisecond) go to ``on_page(trades, watermark)`` where ``watermark`` is
    the time before which every trade is known taken: the last trade's time (more trades may share
    that millisecond on the next page). A pass that ends with no progress proves completeness up to
    the request time minus ``settle_ms`` (unless the page was ``crowded_page`` trades or more, all
    already taken: more trades in one millisecond than a page holds cannot be paged past).
    """
    result = PageResult()
    while True:
        asked = now_ms()
        page = await retry.call(functools.partial(client.fetch_trades, symbol, cursor.ts, limit))
        result.pages += 1
        new = [t for t in page if cursor.is_new(t)]
        if not new:
            if len(page) >= crowded_page:
                # a full page of one millisecond: the exchange cannot page past it; claim nothing more
                result.watermark = cursor.ts
            else:
                result.watermark = max(asked - settle_ms, cursor.ts)
            return result
        for t in new:
            cursor.take(t)
        last = max(t.ts for t in page)
        result.trades += len(new)
        result.watermark = last
        await on_page(new, last)
        if last > target():
            result.reached = True
            return result


async def page_candles(
    client: ExchangeClient,
    symbol: str,
    since: int,
    until: int,
    on_page: Callable[[list[Candle]], Awaitable[None]],
    *,
    retry: Retry,
    limit: int | None = None,
) -> int:
    """Fetch 1m candle pages from ``since`` until a page reaches ``until`` or makes no progress."""
    count = 0
    while since < until:
        start = since
        page = await retry.call(functools.partial(client.fetch_ohlcv, symbol, start, limit))
        page = [c for c in page if c.ts >= start]
        if not page:
            return count
        count += len(page)
        await on_page(page)
        nxt = max(c.ts for c in page) + MINUTE_MS
        if nxt <= since:
            return count
        since = nxt
    return count
