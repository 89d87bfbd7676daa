"""FeedPublisher: publish what the BatchWriter committed (OHLCVCache list, Redis Streams), best-effort.

The writer calls ``committed`` after every successful batch (one synchronous call that only queues).
A task of its own publishes the queue in rounds, each round one atomic write to the sink:

- **Only committed rows, each once.** The store deduplicates trades by id and the writer counts the
  new rows of each symbol (``SymbolStats.trades_stored``). When every trade of a batch was new they are
  all published; when none was, nothing is; in between (a repair re-fetched stored trades) the
  trades this process has not published yet are published if their number is the new count, else a
  gap marker covers them (the consumer reads that range from the store).
- **Candles**: an update is published when it differs from the last one published for that minute;
  final candles also go to the OHLCVCache list, where a server-side script appends newer minutes,
  replaces a changed minute in place and inserts a late one in order (adapters/redis_feed.py).
- **Best-effort**: the queue is bounded. While the sink is down (or the queue is full) rows are
  dropped and counted per symbol with their time range; when it is back, a gap marker per symbol and
  stream says which range to read from the store, and the OHLCVCache lists are re-synced from the store.
- **Restarts**: the newest published point per symbol is written with the entries; a new worker
  compares it with the store and publishes a gap marker for what was committed and never published
  (a kill -9 between a commit and its publication).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from fullon_ohlcv_service.collectors.writer import _CANDLES, _TRADES, SymbolStats, _Op
from fullon_ohlcv_service.errors import OhlcvError, PermanentError, TransientError
from fullon_ohlcv_service.feed_layout import (
    CANDLES,
    LIST_KEEP,
    TRADES,
    FeedBatch,
    Gap,
    Kind,
    published_field,
)
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.ports import FeedSink
from fullon_ohlcv_service.settings import Settings
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute, now_ms


class FeedStore(Protocol):
    """The store reads the publisher needs (ports.OhlcvStore satisfies it)."""

    async def latest_trade(self, symbol: str) -> tuple[int, str] | None: ...

    async def latest_candle(self, symbol: str, final_only: bool = False) -> Candle | None: ...

    def iter_trades(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Trade]: ...

    def iter_candles(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Candle]: ...


@dataclass(slots=True)
class _Item:
    """One committed batch, as the publisher keeps it until it is published or dropped."""

    at: float  # time.monotonic() of the commit
    trades: dict[str, list[Trade]]
    new: dict[str, int]  # symbol -> trades of this batch that were new in the store
    candles: dict[str, list[Candle]]  # ts ascending, one per minute
    rows: int


@dataclass(slots=True)
class _Span:
    """Rows not published for one (stream, symbol): their time range and count."""

    lo: int
    hi: int
    count: int = 0
    reasons: set[str] = field(default_factory=set)

    def add(self, lo: int, hi: int, count: int, reason: str) -> None:
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.count += count
        self.reasons.add(reason)


class _RecentIds:
    """The ids of the trades this process published lately, for one symbol (bounded)."""

    __slots__ = ("ids", "order")

    def __init__(self, size: int) -> None:
        self.order: deque[str] = deque(maxlen=size)
        self.ids: set[str] = set()

    def add(self, tid: str) -> None:
        if tid in self.ids:
            return
        if len(self.order) == self.order.maxlen:
            self.ids.discard(self.order[0])
        self.order.append(tid)
        self.ids.add(tid)

    def __contains__(self, tid: object) -> bool:
        return tid in self.ids


def _same(a: Candle, b: Candle) -> bool:
    return (a.open, a.high, a.low, a.close, a.volume, a.final) == (b.open, b.high, b.low, b.close, b.volume, b.final)


class FeedPublisher:
    """Queue committed batches and publish them to a FeedSink from a task of its own."""

    def __init__(
        self,
        sink: FeedSink,
        exchange: str,
        store: FeedStore,
        *,
        trades: bool,
        log: Log | None = None,
        queue_rows: int = 200_000,
        round_rows: int = 5_000,
        retry_s: float = 1.0,
        list_keep: int = LIST_KEEP,
        known_ids: int = 5_000,
        candle_memory: int = 2_000,
        seed_entries: int = 5_000,
        known_window_ms: int = 5 * MINUTE_MS,
    ) -> None:
        self.sink = sink
        self.exchange = exchange
        self.store = store
        self.with_trades = trades
        self.log = log or Log("fullon.ohlcv.feed", exchange=exchange)
        self.queue_rows = queue_rows
        self.round_rows = round_rows
        self.retry_s = retry_s
        self.list_keep = list_keep
        self.known_size = known_ids
        self.candle_memory = candle_memory
        self.seed_entries = seed_entries
        self.known_window_ms = known_window_ms
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stored_seen: dict[str, int] = {}
        self._known: dict[str, _RecentIds] = {}
        self._cvals: dict[str, OrderedDict[int, Candle]] = {}
        self._dropped: dict[tuple[Kind, str], _Span] = {}
        self._list_from: dict[str, int] = {}  # symbol -> the oldest final minute its list may lack
        self._wm: dict[str, tuple[int, str]] = {}
        self._symbols: list[str] | None = None
        self._startup: dict[str, tuple[tuple[int, str] | None, Candle | None]] | None = None
        self._seeded = False
        self._need_sync = False
        self._down = False  # the sink failed: rows are dropped (counted) until it answers again
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        # counters (logs, tests, the benchmark)
        self.published_trades = 0
        self.published_candles = 0
        self.published_bars = 0
        self.dropped_trades = 0
        self.dropped_candles = 0
        self.gap_markers = 0
        self.rounds = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=200_000)  # commit -> published, seconds

    # ---- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> FeedPublisher:
        self._task = asyncio.create_task(self.run(), name=f"feed:{self.exchange}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(1.0)

    async def close(self, within_s: float) -> None:
        """Publish what is queued within ``within_s`` (if the sink answers), then stop and close the sink."""
        if self._task is not None and not self._task.done() and not self._down:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), within_s)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue or self._dropped:
            self.log.warning("feed stopped with rows not published; the next start marks the gap",
                             queued_rows=self._queued_rows, dropped_spans=len(self._dropped))
        with contextlib.suppress(OhlcvError):
            await self.sink.close()

    async def start(self, symbols: Sequence[str]) -> None:
        """Note what the store holds before this process commits anything (for the restart check)."""
        startup: dict[str, tuple[tuple[int, str] | None, Candle | None]] = {}
        for sym in symbols:
            try:
                startup[sym] = (await self.store.latest_trade(sym), await self.store.latest_candle(sym))
            except TransientError as exc:
                self.log.warning("feed restart check skipped: store unavailable", symbol=sym, error=str(exc))
        self._startup = startup
        self._symbols = list(symbols)
        self._need_sync = True
        self._wake.set()

    # ---- the writer's hook (synchronous, after a commit) -------------------------------------
    def committed(self, batch: Sequence[_Op], stats: Mapping[str, SymbolStats]) -> None:
        """Queue one committed batch. Never blocks and never raises into the writer."""
        try:
            item = self._item(batch, stats)
            if item is None:
                return
            if self._down:
                self._drop(item, "redis unavailable")
            elif self._queued_rows + item.rows > self.queue_rows:
                self._drop(item, "queue full")
            else:
                self._queue.append(item)
                self._queued_rows += item.rows
                self._idle.clear()
                self._wake.set()
        except Exception:  # the feed must never fail a commit: logged and counted
            self.errors += 1
            self.log.exception("feed: could not queue a committed batch")

    def _item(self, batch: Sequence[_Op], stats: Mapping[str, SymbolStats]) -> _Item | None:
        trades: dict[str, list[Trade]] = {}
        slots: dict[str, dict[int, Candle]] = {}
        rows = 0
        for op in batch:
            if op.kind == _TRADES and self.with_trades:
                trades.setdefault(op.symbol, []).extend(cast(list[Trade], op.payload))
                rows += op.rows
            elif op.kind == _CANDLES:
                slot = slots.setdefault(op.symbol, {})
                for c in cast(list[Candle], op.payload):
                    old = slot.get(c.ts)
                    if old is None or c.final or not old.final:  # the writer's rule: final wins
                        slot[c.ts] = c
                rows += op.rows
        new: dict[str, int] = {}
        for sym in trades:
            st = stats.get(sym)
            total = st.trades_stored if st is not None else 0
            new[sym] = total - self._stored_seen.get(sym, 0)
            self._stored_seen[sym] = total
        if not trades and not slots:
            return None
        candles = {s: [v[ts] for ts in sorted(v)] for s, v in slots.items()}
        return _Item(time.monotonic(), trades, new, candles, rows)

    def _drop(self, item: _Item, reason: str) -> None:
        for sym, ts in item.trades.items():
            n = item.new.get(sym, 0)
            if n <= 0 or not ts:
                continue  # nothing new was committed: nothing is missing
            new, unsure = self._resolve(sym, ts, n)
            span = new if new is not None else unsure
            self._span(TRADES, sym, min(t.ts for t in span), max(t.ts for t in span), n, reason)
            self.dropped_trades += n
        for sym, cs in item.candles.items():
            if not cs:
                continue
            self._span(CANDLES, sym, cs[0].ts, cs[-1].ts, len(cs), reason)
            self.dropped_candles += len(cs)
            finals = [c.ts for c in cs if c.final]
            if finals:
                self._list_from[sym] = min(self._list_from.get(sym, finals[0]), finals[0])

    def _resolve(self, sym: str, trades: Sequence[Trade], n: int,
                 also_known: set[str] | None = None) -> tuple[list[Trade] | None, list[Trade]]:
        """Which of a batch's trades were the ``n`` new: (those, []), or (None, suspects) when that cannot be told.

        All new, none new, or the trades this process has not published (nor marked) yet when their
        number is ``n``.
        """
        unique = list({t.id: t for t in trades}.values())
        if n >= len(unique):
            return unique, []
        known = self._known_ids(sym)
        out = [t for t in unique if t.id not in known and (also_known is None or t.id not in also_known)]
        if len(out) == n:
            return out, []
        return None, out or unique

    def _span(self, kind: Kind, sym: str, lo: int, hi: int, count: int, reason: str) -> None:
        span = self._dropped.get((kind, sym))
        if span is None:
            self._dropped[(kind, sym)] = _Span(lo, hi, count, {reason})
        else:
            span.add(lo, hi, count, reason)

    # ---- the publishing task ------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                if not self._connected:
                    await self.sink.ping()
                    self._connected = True
                    self._need_sync = True
                await self._housekeeping()
            except (TransientError, PermanentError) as exc:
                self._failed(exc, [])
                await self._pause(self.retry_s)
                continue
            if self._down:
                self.log.info("feed recovered", dropped_trades=self.dropped_trades,
                              dropped_candles=self.dropped_candles, gap_markers=self.gap_markers)
                self._down = False
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            items = self._pop_round()
            batch, done = self._build(items)
            try:
                if batch:
                    await self.sink.publish(batch)
            except (TransientError, PermanentError) as exc:
                self._failed(exc, items)
                continue
            done()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _failed(self, exc: BaseException, items: Sequence[_Item]) -> None:
        if not self._down:
            level = self.log.error if isinstance(exc, PermanentError) else self.log.warning
            level("feed unavailable; dropping and counting rows until it is back", error=str(exc))
        self.errors += 1
        self._down = True
        self._connected = False
        for it in items:
            self._drop(it, "redis unavailable")
        while self._queue:  # everything queued is dropped too: the queue stays empty while down
            self._drop(self._queue.popleft(), "redis unavailable")
        self._queued_rows = 0
        self._idle.set()

    async def _housekeeping(self) -> None:
        """Once connected: seed, check the restart, re-sync the OHLCVCache lists, publish the gap markers owed."""
        if not self._seeded:
            await self._seed()
        if self._startup is not None and self._symbols is not None:
            await self._restart_check()
        if self._need_sync and self._symbols is not None:
            await self._sync_lists(self._symbols)
            self._need_sync = False
        if self._dropped:
            await self._publish_gaps()

    async def _seed(self) -> None:
        """What an earlier process published: the newest points, the last trade ids and candle values."""
        self._wm = await self.sink.published()
        if self.with_trades:
            for entry in reversed(await self.sink.recent(TRADES, self.seed_entries)):
                if not isinstance(entry, Gap) and isinstance(entry[1], Trade):
                    self._known_ids(entry[0]).add(entry[1].id)
        for entry in reversed(await self.sink.recent(CANDLES, self.seed_entries)):
            if not isinstance(entry, Gap) and isinstance(entry[1], Candle):
                self._remember(entry[0], entry[1])
        self._seeded = True

    async def _restart_check(self) -> None:
        """Committed by an earlier process but never published (it was killed): a gap marker, or the candles."""
        startup = self._startup or {}
        batch = FeedBatch.empty()
        republish: dict[str, list[Candle]] = {}
        for sym, (latest_trade, latest_candle) in startup.items():
            if self.with_trades and latest_trade is not None:
                # The newest stored trades were published or fall inside the marker below: never again.
                # (A repair or a catch-up re-sends some of them together with new ones.)
                since = latest_trade[0] - self.known_window_ms
                async for t in self.store.iter_trades(sym, since, latest_trade[0] + 1):
                    self._known_ids(sym).add(t.id)
            wm = self._wm.get(published_field(TRADES, sym))
            if self.with_trades and latest_trade is not None and wm is not None and latest_trade > wm:
                batch.gaps.append((TRADES, Gap(sym, wm[0], latest_trade[0], 0, "restart")))
                batch.published[published_field(TRADES, sym)] = f"{latest_trade[0]} {latest_trade[1]}"
            cwm = self._wm.get(published_field(CANDLES, sym))
            if latest_candle is not None and cwm is not None:
                since = floor_minute(min(cwm[0], latest_candle.ts)) - 2 * MINUTE_MS
                rows = [c async for c in self.store.iter_candles(sym, since, None)]
                fresh = [c for c in rows if not self._published_already(sym, c)]
                if fresh:
                    republish[sym] = fresh
        if batch:
            await self.sink.publish(batch)
            self.gap_markers += len(batch.gaps)
            self._wm.update({k: _parse_wm(v) for k, v in batch.published.items()})
            for _, gap in batch.gaps:
                self.log.warning("feed: rows committed before a restart were not published; gap marker sent",
                                 symbol=gap.symbol, from_ts=gap.from_ts, to_ts=gap.to_ts)
        if republish:
            self._queue.appendleft(_Item(time.monotonic(), {}, {}, republish, sum(map(len, republish.values()))))
        self._startup = None

    async def _sync_lists(self, symbols: Sequence[str]) -> None:
        """Append to each OHLCVCache list the final candles the store has and the list lacks (bounded)."""
        floor = floor_minute(now_ms()) - self.list_keep * MINUTE_MS
        for sym in symbols:
            last = await self.sink.list_last_ts(sym)
            since = last + MINUTE_MS if last is not None else floor
            since = max(floor, min(since, self._list_from.get(sym, since)))
            chunk: list[Candle] = []
            async for c in self.store.iter_candles(sym, since, None):
                if c.final:
                    chunk.append(c)
                    if len(chunk) >= 2_000:
                        await self._push_bars(sym, chunk)
                        chunk = []
            if chunk:
                await self._push_bars(sym, chunk)
            self._list_from.pop(sym, None)

    async def _push_bars(self, sym: str, bars: list[Candle]) -> None:
        batch = FeedBatch.empty()
        batch.bars[sym] = bars
        await self.sink.publish(batch)
        self.published_bars += len(bars)

    async def _publish_gaps(self) -> None:
        spans, self._dropped = self._dropped, {}  # rows dropped while this awaits start new spans
        batch = FeedBatch.empty()
        for (kind, sym), span in sorted(spans.items()):
            batch.gaps.append((kind, Gap(sym, span.lo, span.hi, span.count, ",".join(sorted(span.reasons)))))
            f = published_field(kind, sym)
            if f not in self._wm or self._wm[f] < (span.hi, ""):
                batch.published[f] = f"{span.hi} "
        try:
            await self.sink.publish(batch)
        except BaseException:
            for (kind, sym), span in spans.items():
                for reason in span.reasons:
                    self._span(kind, sym, span.lo, span.hi, 0, reason)
                self._dropped[(kind, sym)].count += span.count
            raise
        for kind, gap in batch.gaps:
            self.log.warning("feed gap marker published", stream=kind, symbol=gap.symbol, from_ts=gap.from_ts,
                             to_ts=gap.to_ts, count=gap.count, reason=gap.reason)
        self.gap_markers += len(batch.gaps)
        self._wm.update({k: _parse_wm(v) for k, v in batch.published.items()})

    def _pop_round(self) -> list[_Item]:
        items: list[_Item] = []
        rows = 0
        while self._queue and (not items or rows + self._queue[0].rows <= self.round_rows):
            it = self._queue.popleft()
            self._queued_rows -= it.rows
            items.append(it)
            rows += it.rows
        return items

    # ---- one round ------------------------------------------------------------------------------
    def _build(self, items: Sequence[_Item]) -> tuple[FeedBatch, Callable[[], None]]:
        """The entries of a round, and what to remember once they are published."""
        batch = FeedBatch.empty()
        ids: list[tuple[str, str]] = []
        seen: list[tuple[str, Candle]] = []
        bars: dict[str, dict[int, Candle]] = {}
        wm: dict[str, tuple[int, str]] = {}

        def advance(kind: Kind, sym: str, point: tuple[int, str]) -> None:
            f = published_field(kind, sym)
            cur = wm.get(f) or self._wm.get(f)
            if cur is None or point > cur:
                wm[f] = point

        round_ids: dict[str, set[str]] = {}
        for it in items:
            for sym, trades in it.trades.items():
                n = it.new.get(sym, 0)
                if n <= 0:
                    continue
                taken = round_ids.setdefault(sym, set())
                out, unsure = self._resolve(sym, trades, n, taken)
                if out is None:  # cannot tell which are new: the consumer reads the range from the store
                    lo, hi = min(t.ts for t in unsure), max(t.ts for t in unsure)
                    batch.gaps.append((TRADES, Gap(sym, lo, hi, n, "ambiguous")))
                    self.log.info("feed: cannot tell which re-sent trades are new; gap marker", symbol=sym, new=n,
                                  trades=len(trades), suspects=len(unsure), from_ts=lo, to_ts=hi)
                    advance(TRADES, sym, (hi, ""))
                    out = unsure
                else:
                    batch.trades.extend((sym, t) for t in out)
                    advance(TRADES, sym, max((t.ts, t.id) for t in out))
                ids.extend((sym, t.id) for t in out)
                taken.update(t.id for t in out)
            for sym, candles in it.candles.items():
                for c in candles:
                    if self._published_already(sym, c):
                        continue
                    batch.candles.append((sym, c))
                    seen.append((sym, c))
                    advance(CANDLES, sym, (c.ts, ""))
                    if c.final:
                        bars.setdefault(sym, {})[c.ts] = c
        batch.bars = {s: [v[ts] for ts in sorted(v)] for s, v in bars.items()}
        batch.published = {f: f"{p[0]} {p[1]}" for f, p in wm.items()}
        n_gaps = len(batch.gaps)

        def done() -> None:
            for sym, tid in ids:
                self._known_ids(sym).add(tid)
            for sym, c in seen:
                self._remember(sym, c)
            self._wm.update(wm)
            self.published_trades += len(batch.trades)
            self.published_candles += len(batch.candles)
            self.published_bars += sum(map(len, batch.bars.values()))
            self.gap_markers += n_gaps
            self.rounds += 1
            now = time.monotonic()
            for it in items:
                self.latencies.append(now - it.at)

        return batch, done

    # ---- memory of what was published ----------------------------------------------------------
    def _known_ids(self, sym: str) -> _RecentIds:
        known = self._known.get(sym)
        if known is None:
            known = self._known[sym] = _RecentIds(self.known_size)
        return known

    def _published_already(self, sym: str, c: Candle) -> bool:
        vals = self._cvals.get(sym)
        prev = vals.get(c.ts) if vals is not None else None
        if prev is None:
            return False
        # the store never replaces a final candle by a provisional one: neither does the feed
        return (prev.final and not c.final) or _same(prev, c)

    def _remember(self, sym: str, c: Candle) -> None:
        vals = self._cvals.get(sym)
        if vals is None:
            vals = self._cvals[sym] = OrderedDict()
        vals[c.ts] = c
        if len(vals) > 2 * self.candle_memory:
            for ts in sorted(vals)[: len(vals) - self.candle_memory]:
                del vals[ts]

    # ---- for the heartbeat and tests -------------------------------------------------------------
    @property
    def down(self) -> bool:
        return self._down

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def wait_published(self, within_s: float) -> bool:
        """True once everything queued so far is published (tests)."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            return False
        return not self._queue

    def latency_p(self, q: float) -> float:
        """A quantile of commit-to-publish latency in seconds (nan when nothing was published)."""
        if not self.latencies:
            return math.nan
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]


def _parse_wm(text: str) -> tuple[int, str]:
    ts, _, tid = text.partition(" ")
    return int(ts), tid



def open_feed(settings: Settings, exchange: str, store: FeedStore, log: Log | None = None) -> FeedPublisher | None:
    """The publisher the settings ask for (``--publish``), unopened; None when publishing is off."""
    mode, url = settings.publish_mode, settings.feed_url
    if mode == "off" or url is None:
        return None
    from fullon_ohlcv_service.adapters.redis_feed import RedisFeedSink

    sink = RedisFeedSink(url, exchange, maxlen=settings.stream_maxlen, qualified=settings.feed_symbols == "qualified")
    return FeedPublisher(sink, exchange, store, trades=mode == "all", log=log)
