"""``ohlcv-export --follow``: print the stored rows from --since, then every row as it is committed, like tail -f.

New rows come from the exchange's Redis Stream when a Redis is configured for the feeds (the stream
position is taken BEFORE the stored rows are read, so a row committed meanwhile is in both and is
printed once: rows are deduplicated by trade id, candles by minute and value), else by polling the
store. A gap marker in the stream, a Redis reconnect or a trimmed stream makes it read the range
from the store again (deduplicated the same way). Stops cleanly when ``stop`` is set (SIGINT/SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fullon_ohlcv_service.errors import OhlcvError, StoreUnavailable
from fullon_ohlcv_service.feed_layout import CANDLES, TRADES, Gap, parse_entry, stream_key
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.ports import OhlcvStore
from fullon_ohlcv_service.settings import StoreURL
from fullon_ohlcv_service.timeutil import MINUTE_MS, now_ms

Row = Callable[[Trade | Candle], None]
REREAD_MS = 15 * MINUTE_MS  # how far back a re-read of the store (reconnect, trimmed stream) starts
POLL_TRADES_MS = 60_000  # polling: each poll re-reads this much before the newest printed trade
POLL_CANDLES_MS = 5 * MINUTE_MS


@dataclass(slots=True)
class Printed:
    """What was printed, to print each row once: trade ids (recent ones) or each minute's last value."""

    kind: str
    since: int | None
    emit: Row
    ids: dict[str, int] = field(default_factory=dict)  # trade id -> ts
    candles: dict[int, Candle] = field(default_factory=dict)
    last_ts: int | None = None
    count: int = 0

    def offer(self, row: Trade | Candle) -> bool:
        """Print ``row`` unless it was printed already (or precedes --since); True if printed."""
        if self.since is not None and row.ts < self.since:
            return False
        if isinstance(row, Trade):
            if row.id in self.ids:
                return False
            self.ids[row.id] = row.ts
        else:
            prev = self.candles.get(row.ts)
            if prev is not None and (prev == row or (prev.final and not row.final)):
                return False
            self.candles[row.ts] = row
        self.emit(row)
        self.count += 1
        if self.last_ts is None or row.ts > self.last_ts:
            self.last_ts = row.ts
        return True

    def forget_before(self, ts: int) -> None:
        """Drop memory of rows older than ``ts`` (bounded memory while following for days)."""
        if self.kind == TRADES:
            if len(self.ids) > 200_000:
                self.ids = {i: t for i, t in self.ids.items() if t >= ts}
        elif len(self.candles) > 20_000:
            self.candles = {m: c for m, c in self.candles.items() if m >= ts}


async def _store_pass(store: OhlcvStore, symbol: str, printed: Printed, since: int | None,
                      until: int | None = None) -> None:
    if printed.kind == TRADES:
        async for t in store.iter_trades(symbol, since, until):
            printed.offer(t)
    else:
        async for c in store.iter_candles(symbol, since, until):
            printed.offer(c)


def _reread_from(printed: Printed, back_ms: int) -> int | None:
    start = (printed.last_ts if printed.last_ts is not None else now_ms()) - back_ms
    return start if printed.since is None else max(printed.since, start)


async def follow(store: OhlcvStore, symbol: str, kind: str, since: int | None, emit: Row, flush: Callable[[], None],
                 stop: asyncio.Event, feed_url: StoreURL | None, *, poll_s: float = 0.5,
                 log: Log | None = None) -> int:
    """Print stored rows from ``since``, then new ones until ``stop`` is set; return how many were printed."""
    printed = Printed(kind, since, emit)
    if feed_url is None:
        await _store_pass(store, symbol, printed, since)
        flush()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
            if stop.is_set():
                break
            back = POLL_TRADES_MS if kind == TRADES else POLL_CANDLES_MS
            await _store_pass(store, symbol, printed, _reread_from(printed, back))
            flush()
            printed.forget_before(_reread_from(printed, 2 * back) or 0)
        return printed.count
    return await _follow_stream(store, symbol, printed, flush, stop, feed_url, log or Log("fullon.ohlcv.export"))


async def _follow_stream(store: OhlcvStore, symbol: str, printed: Printed, flush: Callable[[], None],
                         stop: asyncio.Event, url: StoreURL, log: Log) -> int:
    import redis.asyncio as aredis

    from fullon_ohlcv_service.adapters.redis_cache import redis_errors

    key = stream_key(store.exchange, TRADES if printed.kind == TRADES else CANDLES)
    client = aredis.Redis.from_url(url.url, socket_connect_timeout=1.0, socket_timeout=5.0)
    try:
        with redis_errors(url):
            newest = await client.xrevrange(key, count=1)
        last_id = _id(newest[0][0]) if newest else "0-0"  # taken BEFORE the store is read: no row is lost
        await _store_pass(store, symbol, printed, printed.since)
        flush()
        reread = await _trimmed(client, key, last_id, url)
        while not stop.is_set():
            if reread:
                await _store_pass(store, symbol, printed, _reread_from(printed, REREAD_MS))
                flush()
                reread = False
            try:
                with redis_errors(url):
                    got: Any = await client.xread({key: last_id}, count=1000, block=500)
            except StoreUnavailable as exc:
                log.warning("stream unavailable; retrying", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                reread = True  # entries may have been lost with the server: read the store again
                continue
            for _, entries in got or []:
                for entry_id, fields in entries:
                    last_id = _id(entry_id)
                    await _entry(store, symbol, printed, fields)
            flush()
            printed.forget_before(_reread_from(printed, 2 * REREAD_MS) or 0)
    finally:
        await client.aclose()
    return printed.count


async def _entry(store: OhlcvStore, symbol: str, printed: Printed, fields: Any) -> None:
    try:
        entry = parse_entry(fields)
    except ValueError:
        return  # not an entry of ours
    if isinstance(entry, Gap):
        if entry.symbol == symbol:  # rows there were not published: read them from the store
            until = entry.to_ts + (1 if printed.kind == TRADES else MINUTE_MS)
            await _store_pass(store, symbol, printed, entry.from_ts, until)
    elif entry[0] == symbol:
        row = entry[1]
        if (printed.kind == TRADES) == isinstance(row, Trade):
            printed.offer(row)


async def _trimmed(client: Any, key: str, after: str, url: StoreURL) -> bool:
    """True when the stream no longer holds the entry after ``after`` (MAXLEN trimmed it meanwhile)."""
    if after == "0-0":
        return False
    try:
        from fullon_ohlcv_service.adapters.redis_cache import redis_errors

        with redis_errors(url):
            first = await client.xrange(key, count=1)
    except OhlcvError:
        return True
    return not first or _id_key(_id(first[0][0])) > _id_key(after)


def _id(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
