"""REST pagination of trades and candles with a (ts, id) cursor; ends on no forward progress or on reaching a target."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fullon_ohlcv_service.errors import PermanentError, RateLimited
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.ports import ExchangeClient
from fullon_ohlcv_service.retry import Backoff, retry_transient
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


def one_line(text: str, limit: int = 240) -> str:
    """``text`` on one line of at most ``limit`` characters (for the heartbeat and logs)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class RestHealth:
    """One symbol's REST record for the heartbeat: failed calls so far, the last failure, and whether a
    call the symbol's completeness waits on (trade catch-up, gap repair) is retrying a failure now.

    Error texts come from the exchange adapter, which masks credentials in URLs.
    """

    symbol: str = ""
    errors: int = 0  # failed REST calls in this worker's life
    last_error: str | None = None
    last_error_ms: int | None = None
    consecutive: int = 0  # failures since the last successful call
    retrying: int = 0  # calls that hold the symbol back, now between a failure and their retry's success

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.consecutive += 1
        self.last_error = one_line(f"{type(exc).__name__}: {exc}")
        self.last_error_ms = now_ms()

    @property
    def holding_back(self) -> bool:
        """A catch-up or repair of this symbol is waiting on a failing REST call."""
        return self.retrying > 0


class Retry:
    """REST calls retried along a capped backoff on transient exchange errors, counted for the heartbeat.

    With ``health``, each failure is recorded on that symbol's RestHealth (and logged: the first of a
    run of failures, then every 10th), and while a call with ``holds_back`` is retrying, the symbol
    is shown *degraded*. A rate limit (429/418) waits at least ``rate_limit_floor``.
    """

    def __init__(self, initial: float = 0.25, maximum: float = 10.0, rate_limit_floor: float = 1.0,
                 log: Log | None = None) -> None:
        self.backoff = Backoff(initial, maximum)
        self.rate_limit_floor = rate_limit_floor
        self.log = log
        self.failures = 0
        self.rate_limit_waits = 0  # backoffs after a 429/418 (for /metrics)
        self.rate_limit_wait_s = 0.0

    async def call(self, fn: Callable[[], Awaitable[T]], health: RestHealth | None = None,
                   holds_back: bool = True) -> T:
        counted = False  # this call is in health.retrying

        def on_error(exc: Exception, wait: float) -> float:
            nonlocal counted
            self.failures += 1
            if isinstance(exc, RateLimited):
                wait = max(wait, self.rate_limit_floor)
                self.rate_limit_waits += 1
                self.rate_limit_wait_s += wait
            self._note(health, exc, wait)
            if health is not None and holds_back and not counted:
                health.retrying += 1
                counted = True
            return wait

        try:
            result = await retry_transient(fn, backoff=self.backoff, on_error=on_error)
        except PermanentError as exc:
            self._note(health, exc, None)
            raise
        finally:
            if counted and health is not None:
                health.retrying -= 1
        if health is not None:
            health.consecutive = 0
        return result

    def _note(self, health: RestHealth | None, exc: Exception, wait: float | None) -> None:
        if health is None:
            return
        health.failed(exc)
        if self.log is not None and (health.consecutive == 1 or health.consecutive % 10 == 0):
            self.log.warning("REST call failed" + ("; retrying" if wait is not None else ""),
                             symbol=health.symbol, error=health.last_error, rest_errors=health.errors,
                             failing_in_a_row=health.consecutive,
                             retry_in_s=None if wait is None else round(wait, 2))


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
    health: RestHealth | None = None,
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
        page = await retry.call(functools.partial(client.fetch_trades, symbol, cursor.ts, limit), health=health)
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
    health: RestHealth | None = None,
) -> int:
    """Fetch 1m candle pages from ``since`` until a page reaches ``until`` or makes no progress."""
    count = 0
    while since < until:
        start = since
        # the trades make every candle: a failing candle backfill is counted but holds nothing back
        page = await retry.call(functools.partial(client.fetch_ohlcv, symbol, start, limit), health=health,
                                holds_back=False)
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
