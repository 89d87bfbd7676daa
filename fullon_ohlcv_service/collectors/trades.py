"""Trade collection for one exchange: websocket first, REST catch-up to the live stream, dedup, candles from trades."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from fullon_ohlcv_service.collectors.backfill import Cursor, RestHealth, Retry, page_trades
from fullon_ohlcv_service.collectors.candles import CandleBuilder, candles_from_trades
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.errors import PermanentError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.memory import (
    DEFAULT_BUFFER_MB,
    MIB,
    MINUTE_BYTES,
    RECENT_ID_BYTES,
    ROW_BYTES,
    TRADE_BYTES,
    recent_ids_per_symbol,
)
from fullon_ohlcv_service.models import SymbolSpec, Trade
from fullon_ohlcv_service.ports import ExchangeClient, OhlcvStore
from fullon_ohlcv_service.retry import Attempts, Backoff, retry_transient
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute, now_ms

DAY_MS = 86_400_000
STREAM_BACKOFF = Backoff(0.25, 10.0)  # re-reading the websocket after it dropped (cap: Settings.stream_backoff_max)
POLL_BACKOFF = Backoff(0.25, 15.0)  # a catch-up polling REST that has nothing new (cap: Settings.poll_backoff_max)


@dataclass(slots=True)
class SilencePolicy:
    """How long a symbol may be quiet before a REST catch-up: ``factor`` x its mean trade gap, clamped."""

    factor: float = 10.0
    min_s: float = 3.0
    max_s: float = 300.0

    def threshold(self, mean_gap_s: float | None) -> float:
        if mean_gap_s is None:
            return self.max_s
        return min(self.max_s, max(self.min_s, self.factor * mean_gap_s))


class RecentIds:
    """The ids of the last ``size`` trades taken, and the newest time among the ids forgotten."""

    __slots__ = ("_ids", "_order", "floor", "size")

    def __init__(self, size: int, floor: int) -> None:
        self.size = size
        self._ids: set[str] = set()
        self._order: deque[tuple[str, int]] = deque()
        self.floor = floor  # a trade at or before this time may be a forgotten duplicate

    def __contains__(self, tid: str) -> bool:
        return tid in self._ids

    def __len__(self) -> int:
        return len(self._order)

    def add(self, t: Trade) -> None:
        self._ids.add(t.id)
        self._order.append((t.id, t.ts))
        while len(self._order) > self.size:
            old, ts = self._order.popleft()
            self._ids.discard(old)
            if ts > self.floor:
                self.floor = ts


@dataclass
class SymbolRun:
    """Collection state of one symbol."""

    spec: SymbolSpec
    history_start: int
    cursor: Cursor
    recent: RecentIds
    builder: CandleBuilder = field(default_factory=CandleBuilder)
    synced: bool = False
    ever_synced: bool = False
    live_buf: list[Trade] = field(default_factory=list)
    need_sync: asyncio.Event = field(default_factory=asyncio.Event)
    live_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    backfill_pct: float = 0.0
    cov_to: int | None = None
    stale: set[int] = field(default_factory=set)
    mean_gap_s: float | None = None
    last_live_mono: float = field(default_factory=time.monotonic)
    blocked_mark: float = 0.0  # the collector's blocked_total when last_live_mono was set
    last_live_ts: int | None = None
    syncs: int = 0
    fetched: int = 0
    built_from: int = 0  # the first minute this run's builder has seen every trade of
    rest: RestHealth = field(default_factory=RestHealth)  # this symbol's REST failures (heartbeat)

    def __post_init__(self) -> None:
        self.rest.symbol = self.spec.symbol

    @property
    def symbol(self) -> str:
        return self.spec.symbol

    def unsync(self) -> None:
        """Continuity with the live stream is lost: buffer live trades until a REST catch-up meets them.

        Trades buffered before the interruption are dropped: REST returns them again, and the
        catch-up must reach a trade received *after* the interruption.
        """
        self.synced = False
        self.live_buf.clear()
        self.need_sync.set()


class TradeCollector:
    """Collect every trade of an exchange's symbols with no hole between history and the live stream.

    The websocket is read first; a symbol's live trades are buffered while its REST catch-up runs
    from the last stored (ts, id) until a page goes past the first buffered live trade, then the
    buffer is merged (dedup on trade id) and the symbol is *synced*. A reconnect (the adapter also
    reports live trades it had to drop as one) or a silence longer than the symbol's normal
    activity warrants makes it unsynced again. A stall of our own reading (the writer's
    backpressure when offered more than the store commits) is neither: the adapter keeps every
    trade received meanwhile, so an overloaded collector stays on the live path and commits at
    the store's pace instead of restarting catch-ups (``backpressure_s`` opts back in, for a
    client that silently keeps only the newest trades while not read). A quiet symbol that has no
    live trade to meet is synced by the connection instead: once REST has taken everything up to a
    watermark that is past the connection's first delivery (plus ``subscribe_margin_ms``, so its
    subscription is surely active) and not past the newest trade the socket has delivered (so the
    socket is flowing), every later trade of the symbol can only come live. Candles are built from the
    deduplicated trade stream (see candles.py) and become final when the stream is proven complete
    past their minute: by REST pages while catching up, by the clock (minus ``live_lag_ms``) while
    synced and connected.

    Memory: every buffer that grows with market activity counts against one byte budget shared by
    the worker's symbols (``buffer_bytes_max``, see memory.py). At the bound, the largest live buffer
    of a symbol that is catching up drops its oldest half (keeping its newest trade): REST fetches
    those trades instead and the merge point moves later, so nothing is lost.
    """

    def __init__(
        self,
        client: ExchangeClient,
        store: OhlcvStore,
        writer: BatchWriter,
        symbols: Sequence[SymbolSpec],
        *,
        log: Log,
        silence: SilencePolicy | None = None,
        live_lag_ms: int = 2000,
        recent_size: int | None = None,
        live_buffer_max: int = 200_000,
        buffer_bytes_max: int = DEFAULT_BUFFER_MB * MIB,
        page_limit: int | None = None,
        backpressure_s: float | None = None,
        subscribe_margin_ms: int = 3000,
        retry: Retry | None = None,
        stream_backoff: Backoff = STREAM_BACKOFF,
        poll_backoff: Backoff = POLL_BACKOFF,
    ) -> None:
        self.client = client
        self.store = store
        self.writer = writer
        self.specs = list(symbols)
        self.log = log
        self.silence = silence or SilencePolicy()
        self.live_lag_ms = live_lag_ms
        self.buffer_bytes_max = buffer_bytes_max
        self.recent_size = recent_size or recent_ids_per_symbol(buffer_bytes_max, len(self.specs))
        self.live_buffer_max = live_buffer_max
        self.shed_trades = 0  # live trades dropped at the memory bound (REST fetched them instead)
        self._shed_logged: dict[str, tuple[float, int]] = {}  # symbol -> (when logged, trades dropped since)
        self.page_limit = page_limit
        self.backpressure_s = backpressure_s
        self.subscribe_margin_ms = subscribe_margin_ms
        self.runs: dict[str, SymbolRun] = {}
        self.retry = retry or Retry(log=log)
        self.stream_backoff = stream_backoff
        self.poll_backoff = poll_backoff
        self._watching: list[str] = []  # the symbols of the current websocket read
        self.reconnects = 0
        self.live_trades = 0
        self.connected = False
        self.connected_ms: int | None = None  # when the current connection first delivered (local clock)
        self.newest_live_ts: int | None = None  # the newest trade time delivered on the current connection
        self.errors = 0
        self.reading = True  # False while a received batch is being taken (maybe waiting on the writer)
        self.block_started = 0.0  # when the current batch began to be taken
        self.blocked_total = 0.0  # seconds spent taking batches (not reading the websocket) so far

    # ---- start ------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Read each symbol's resume point from the store (no exchange I/O)."""
        for spec in self.specs:
            await self.store.init_symbol(spec.symbol)
            start = floor_minute(now_ms() - spec.backtest_days * DAY_MS)
            latest = await self.store.latest_trade(spec.symbol)
            builder = CandleBuilder()
            if latest is None:
                cursor = Cursor(start - 1)
                recent = RecentIds(self.recent_size, start - 1)
                cov_from = start
            else:
                ts = latest[0]
                minute = floor_minute(ts)
                seed = [t async for t in self.store.iter_trades(spec.symbol, minute, ts + 1)]
                cursor = Cursor(ts, {t.id for t in seed if t.ts == ts} | {latest[1]})
                recent = RecentIds(self.recent_size, ts - 1)
                for t in seed:
                    if t.ts == ts:
                        recent.add(t)
                builder.seed(seed)
                cov_from = minute
                start = min(start, minute)
            run = SymbolRun(spec, start, cursor, recent, builder)
            run.cov_to = cov_from
            run.built_from = cov_from
            run.need_sync.set()
            self.runs[spec.symbol] = run

    def active(self) -> list[str]:
        return [s for s, r in self.runs.items() if r.error is None]

    # ---- live ---------------------------------------------------------------------------------
    async def live_loop(self) -> None:
        """Read the websocket forever; a dropped socket is a reconnect, followed by catch-ups."""
        while True:
            try:
                batch = await retry_transient(self._read, backoff=self.stream_backoff, on_error=self._lost)
            except PermanentError as exc:
                self._fail_from_ws(exc, self._watching)
                continue
            if batch is None:  # no symbol left to watch
                await asyncio.sleep(1.0)
                continue
            if not self.connected:
                self.connected = True
                self.connected_ms = now_ms()
            if batch:
                newest = max(t.ts for _, t in batch)
                if self.newest_live_ts is None or newest > self.newest_live_ts:
                    self.newest_live_ts = newest
            self.reading = False
            self.block_started = time.monotonic()
            try:
                waited = await self.on_live(batch)
            finally:
                self.blocked_total += time.monotonic() - self.block_started
                self.reading = True
            if self.backpressure_s is not None and waited > self.backpressure_s:
                # ccxt keeps only the newest trades while we were not reading: catch up from REST
                self.log.warning("backpressure stalled reading; catching up from REST", waited_s=round(waited, 2))
                self._all_unsynced()

    async def _read(self) -> list[tuple[str, Trade]] | None:
        """The next batch of live trades of every active symbol (None when no symbol is active)."""
        self._watching = self.active()
        if not self._watching:
            return None
        return await self.client.watch_trades(self._watching)

    def _lost(self, exc: Exception, wait: float) -> None:
        self.reconnects += 1
        self._all_unsynced()
        self.connected = False
        self.connected_ms = self.newest_live_ts = None
        self.log.warning("websocket lost; reconnecting", error=str(exc), reconnects=self.reconnects)

    def _fail_from_ws(self, exc: PermanentError, symbols: list[str]) -> None:
        # A permanent error naming one symbol parks that symbol; otherwise it is a collector failure.
        text = str(exc)
        named = [s for s in symbols if s in text]
        if not named:
            raise exc
        for s in named:
            self.runs[s].error = f"{type(exc).__name__}: {text}"
            self.log.error("symbol failed permanently", symbol=s, error=text)

    def _all_unsynced(self) -> None:
        for r in self.runs.values():
            if r.error is None:
                r.unsync()

    async def on_live(self, batch: Sequence[tuple[str, Trade]]) -> float:
        """Route live trades: synced symbols store them, others buffer them. Returns backpressure wait."""
        per: dict[str, list[Trade]] = {}
        for symbol, t in batch:
            per.setdefault(symbol, []).append(t)
        waited = 0.0
        mono = time.monotonic()
        for symbol, trades in per.items():
            run = self.runs.get(symbol)
            if run is None or run.error is not None:
                continue
            self.live_trades += len(trades)
            gap = mono - run.last_live_mono
            n = len(trades)
            sample = gap / n
            run.mean_gap_s = sample if run.mean_gap_s is None else 0.9 * run.mean_gap_s + 0.1 * sample
            run.last_live_mono = mono
            run.blocked_mark = self.blocked_s(mono)
            newest = max(t.ts for t in trades)
            if run.last_live_ts is None or newest > run.last_live_ts:
                run.last_live_ts = newest
            if run.synced:
                waited += await self.take(run, trades)
            else:
                run.live_buf.extend(trades)
                run.live_arrived.set()
                if len(run.live_buf) > self.live_buffer_max:
                    # REST will fetch what we forget; the merge point just moves later
                    del run.live_buf[: len(run.live_buf) - self.live_buffer_max // 2]
        self.enforce_budget()
        return waited

    # ---- memory bound -------------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Estimated bytes held by the worker's buffers (see memory.py for what is counted)."""
        live = ids = minutes = 0
        for r in self.runs.values():
            live += len(r.live_buf)
            ids += len(r.recent)
            minutes += r.builder.held
        pending = int(getattr(self.client, "pending_trades", 0))  # the ccxt adapter's queue between reads
        return ((live + pending) * TRADE_BYTES + ids * RECENT_ID_BYTES + minutes * MINUTE_BYTES
                + self.writer.depth * ROW_BYTES)

    def enforce_budget(self) -> int:
        """Above the budget, drop the oldest half of the largest live buffers until under it.

        A live buffer only exists while its symbol catches up over REST, which pages until it passes
        the buffer's first trade: dropping the oldest trades (never the newest one) moves that merge
        point later and REST fetches them instead. Returns the trades dropped.
        """
        over = self.buffer_bytes() - self.buffer_bytes_max
        dropped = 0
        while over > 0:
            run = max((r for r in self.runs.values() if len(r.live_buf) > 1), key=lambda r: len(r.live_buf),
                      default=None)
            if run is None:
                break  # nothing left to shed: the rest is bounded by its own share of the budget
            n = min(len(run.live_buf) - 1, max(len(run.live_buf) // 2, over // TRADE_BYTES + 1))
            del run.live_buf[:n]
            over -= n * TRADE_BYTES
            dropped += n
            self._note_shed(run, n)
        self.shed_trades += dropped
        return dropped

    def _note_shed(self, run: SymbolRun, n: int) -> None:
        mono = time.monotonic()
        at, since = self._shed_logged.get(run.symbol, (0.0, 0))
        since += n
        if mono - at >= 60.0:
            self.log.warning("memory bound reached: dropped the oldest buffered live trades; REST catch-up "
                             "fetches them", symbol=run.symbol, dropped=since, kept=len(run.live_buf),
                             buffer_bytes_max=self.buffer_bytes_max)
            at, since = mono, 0
        self._shed_logged[run.symbol] = (at, since)

    # ---- taking trades --------------------------------------------------------------------------
    async def take(self, run: SymbolRun, trades: Sequence[Trade]) -> float:
        """Deduplicate, aggregate into candles and queue for storage. Returns backpressure wait."""
        new: list[Trade] = []
        for t in trades:
            if t.id in run.recent:
                continue
            uncertain = t.ts <= run.recent.floor and not run.cursor.is_new(t)
            run.recent.add(t)
            run.cursor.take(t)
            new.append(t)
            if uncertain or not run.builder.add(t):
                # may be a duplicate we forgot, or too old to hold: rebuild that minute from the store
                run.stale.add(floor_minute(t.ts))
        if not new:
            return 0.0
        return await self.writer.put_trades(run.symbol, new, live=True)

    async def advance(self, run: SymbolRun, watermark: int) -> None:
        """Every trade before ``watermark`` is taken: write final candles, then the coverage."""
        finals = run.builder.advance(watermark)
        await self.writer.put_candles(run.symbol, finals)
        final_to = run.builder.final_to
        if final_to is not None and run.cov_to is not None and final_to > run.cov_to:
            await self.writer.put_coverage(run.symbol, run.cov_to, final_to)
            run.cov_to = final_to

    # ---- catch-up -----------------------------------------------------------------------------
    async def sync_loop(self, symbol: str) -> None:
        """Run a REST catch-up whenever the symbol is not synced with the live stream."""
        run = self.runs[symbol]
        while run.error is None:
            await run.need_sync.wait()
            try:
                await self.catch_up(run)
            except PermanentError as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                self.log.error("symbol failed permanently", symbol=symbol, error=str(exc))
                return

    async def catch_up(self, run: SymbolRun) -> None:
        """REST from the cursor until a page passes the first buffered live trade; then merge."""
        log = self.log.bind(symbol=run.symbol)
        first = not run.ever_synced
        start_ts = run.cursor.ts
        goal = now_ms()
        next_mark = 10
        poll = Attempts(self.poll_backoff)
        run.syncs += 1
        fetched_before = run.fetched
        began = time.monotonic()
        if first:
            log.info("backfill started", since=start_ts, days=round((goal - start_ts) / DAY_MS, 3))

        async def on_page(trades: list[Trade], watermark: int) -> None:
            nonlocal next_mark, start_ts
            if first and run.backfill_pct == 0.0 and trades[0].ts > start_ts:
                start_ts = trades[0].ts  # history starts later than asked: measure from the first trade
            if run.mean_gap_s is None and len(trades) > 1:
                run.mean_gap_s = max((trades[-1].ts - trades[0].ts) / 1000 / (len(trades) - 1), 1e-3)
            for t in trades:
                run.recent.add(t)
            run.fetched += len(trades)
            await self.writer.put_trades(run.symbol, trades)
            self.enforce_budget()  # the write queue grew: keep the whole under the bound
            for t in trades:
                if not run.builder.add(t):
                    run.stale.add(floor_minute(t.ts))
            await self.advance(run, watermark)
            if first:
                pct = min(100.0, 100.0 * (run.cursor.ts - start_ts) / max(1, goal - start_ts))
                run.backfill_pct = max(round(pct, 1), 0.1)
                if pct >= next_mark and next_mark < 100:
                    reached = min(90, int(pct // 10) * 10)
                    log.info("backfill progress", pct=reached, trades_fetched=run.fetched)
                    next_mark = reached + 10

        def target() -> int:
            return run.live_buf[0].ts if run.live_buf else now_ms()

        while True:
            run.need_sync.clear()
            res = await page_trades(
                self.client, run.symbol, run.cursor, target, on_page, retry=self.retry, limit=self.page_limit,
                health=run.rest,
            )
            if res.watermark is not None:
                await self.advance(run, res.watermark)
            if run.need_sync.is_set():
                continue  # interrupted again (a reconnect) during this pass: meet the new live stream
            if run.live_buf and res.watermark is not None and res.watermark > run.live_buf[0].ts:
                buf, run.live_buf = run.live_buf, []
                run.synced = True
                await self.take(run, buf)
                break
            if not run.live_buf and self.live_proves(res.watermark):
                run.synced = True  # a quiet symbol: nothing to meet, the connection itself proves it
                break
            if run.error is not None:
                return
            if res.trades == 0:
                # nothing new over REST yet: wait for the first live trade (or poll again later)
                delay = poll.next()
                run.live_arrived.clear()
                if not run.live_buf:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.live_arrived.wait(), delay)
                else:
                    await asyncio.sleep(min(delay, 0.25))
            else:
                poll.reset()
        first_sync = not run.ever_synced
        run.ever_synced = True
        run.backfill_pct = 100.0
        run.last_live_mono = time.monotonic()
        run.blocked_mark = self.blocked_s(run.last_live_mono)
        if first_sync:
            log.info("backfill done; live", trades_fetched=run.fetched)
        else:
            log.info("caught up with the live stream", trades_fetched=run.fetched - fetched_before,
                     took_s=round(time.monotonic() - began, 2))

    def live_proves(self, watermark: int | None) -> bool:
        """Whether the current connection delivers every trade after ``watermark`` of every symbol.

        True when the watermark is at least ``subscribe_margin_ms`` past the connection's first
        delivery (every symbol was subscribed in that one request) and the socket has already
        delivered a trade at or after the watermark (it is flowing, not stalled). A reconnect
        resets both, and unsyncs every symbol, so the proof never spans an interruption.
        """
        return (watermark is not None and self.connected and self.connected_ms is not None
                and self.newest_live_ts is not None
                and self.connected_ms + self.subscribe_margin_ms <= watermark <= self.newest_live_ts)

    def silent_s(self, run: SymbolRun, mono: float) -> float:
        """How long ``run``'s symbol has been silent while we were reading the websocket.

        Only blocked time since the symbol's own last trade is subtracted, so a quiet symbol next to
        a busy one on the same connection is still noticed.

        Time spent not reading (a batch waiting on the writer's backpressure) is not silence of
        the exchange: counting it would send busy symbols of an overloaded worker to REST
        catch-ups over and over, each dropping its live buffer.
        """
        return (mono - run.last_live_mono) - (self.blocked_s(mono) - run.blocked_mark)

    def blocked_s(self, mono: float) -> float:
        """Seconds spent taking batches (not reading the websocket) up to ``mono``."""
        if self.reading:
            return self.blocked_total
        return self.blocked_total + max(0.0, mono - self.block_started)

    # ---- housekeeping -------------------------------------------------------------------------
    async def housekeeping(self, period: float = 1.0) -> None:
        """Every ``period``: finalize by the clock, write provisional candles, spot silences, rebuild stale minutes."""
        while True:
            await asyncio.sleep(period)
            await self.tick()

    async def tick(self) -> None:
        mono = time.monotonic()
        for run in self.runs.values():
            if run.error is not None:
                continue
            if run.synced and self.connected:
                await self.advance(run, now_ms() - self.live_lag_ms)
                limit = self.silence.threshold(run.mean_gap_s)
                if self.silent_s(run, mono) > limit:
                    self.log.info("silence; catching up from REST", symbol=run.symbol, silent_s=round(limit, 1))
                    run.unsync()
            await self.writer.put_candles(run.symbol, run.builder.provisional())
            if run.stale:
                await self.rebuild_stale(run)

    async def rebuild_stale(self, run: SymbolRun) -> None:
        """Recompute minutes that got trades the builder cannot hold, from the committed store."""
        final_to = run.builder.final_to
        if final_to is None:
            return
        minutes = sorted(m for m in run.stale if m + MINUTE_MS <= final_to)
        if not minutes:
            return
        await self.writer.wait_committed()
        for m in minutes:
            trades = [t async for t in self.store.iter_trades(run.symbol, m, m + MINUTE_MS)]
            candles = candles_from_trades(trades)
            if run.builder.holds(m):
                run.builder.reset_minute(m, trades)
            await self.writer.put_candles(run.symbol, candles)
            run.stale.discard(m)
