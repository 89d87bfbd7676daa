"""Trade collection for one exchange: routes the websocket's trades and REST catch-ups through each symbol's sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from fullon_ohlcv_service.collectors.backfill import Retry, page_trades
from fullon_ohlcv_service.collectors.candles import candles_from_trades
from fullon_ohlcv_service.collectors.connection import Connection
from fullon_ohlcv_service.collectors.sync import DAY_MS, SymbolSync, SyncBeat
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


@dataclass(frozen=True, slots=True)
class TradeBeats:
    """The trade side's facts for the heartbeat, at one instant."""

    live: bool  # first live data has arrived (or every symbol caught up with nothing new)
    reconnects: int
    buffer_bytes: int
    symbols: dict[str, SyncBeat] = field(default_factory=dict)


@dataclass(slots=True)
class _Progress:
    """The first catch-up's progress: percent of the way from its start to the time it began, logged every 10%."""

    start_ts: int
    goal: int
    next_mark: int = 10

    def page(self, sync: SymbolSync, first_ts: int) -> int | None:
        """Update ``sync.backfill_pct`` after a page; the 10% mark to log, if one was passed."""
        if sync.backfill_pct == 0.0 and first_ts > self.start_ts:
            self.start_ts = first_ts  # history starts later than asked: measure from the first trade
        pct = min(100.0, 100.0 * (sync.cursor.ts - self.start_ts) / max(1, self.goal - self.start_ts))
        sync.backfill_pct = max(round(pct, 1), 0.1)
        if pct >= self.next_mark and self.next_mark < 100:
            reached = min(90, int(pct // 10) * 10)
            self.next_mark = reached + 10
            return reached
        return None


class TradeCollector:
    """Collect every trade of an exchange's symbols with no hole between history and the live stream.

    Each symbol is a SymbolSync (sync.py: its phases and transitions); the websocket's facts are a
    Connection (connection.py). The collector routes: a live batch goes to each symbol's sync (taken
    when LIVE, buffered while catching up), a REST catch-up pages from the symbol's cursor until it
    passes the first buffered live trade (``met_live``) or the connection proves a quiet symbol
    (``proved_quiet``), and what is taken goes to the writer. A reconnect (the adapter also reports live
    trades it had to drop as one) or a silence longer than the symbol's normal activity warrants
    interrupts a LIVE symbol. A stall of our own reading (the writer's backpressure when offered more
    than the store commits) is neither: the adapter keeps every trade received meanwhile, so an
    overloaded collector stays on the live path and commits at the store's pace instead of restarting
    catch-ups (``backpressure_s`` opts back in, for a client that silently keeps only the newest trades
    while not read). Candles are built from the deduplicated trade stream (see candles.py) and become
    final when the stream is proven complete past their minute: by REST pages while catching up, by the
    clock (minus ``live_lag_ms``) while LIVE and connected.

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
        self.syncs: dict[str, SymbolSync] = {}
        self.retry = retry or Retry(log=log)
        self.stream_backoff = stream_backoff
        self.poll_backoff = poll_backoff
        self.connection = Connection(subscribe_margin_ms)
        self.live_trades = 0
        self._watching: list[str] = []  # the symbols of the current websocket read

    # ---- start ------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Read each symbol's resume point from the store (no exchange I/O)."""
        for spec in self.specs:
            await self.store.init_symbol(spec.symbol)
            now = now_ms()
            latest = await self.store.latest_trade(spec.symbol)
            seed: list[Trade] = []
            if latest is not None:
                seed = [t async for t in self.store.iter_trades(spec.symbol, floor_minute(latest[0]), latest[0] + 1)]
            self.syncs[spec.symbol] = SymbolSync.resume(spec, now, self.recent_size, latest, seed)

    def active(self) -> list[str]:
        return [s for s, sync in self.syncs.items() if not sync.failed]

    def handles(self) -> Mapping[str, SymbolSync]:
        """Each symbol's sync, read-only, for the candle side (filled by ``prepare``)."""
        return MappingProxyType(self.syncs)

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
            self.connection.delivered(batch)
            with self.connection.taking():
                waited = await self.on_live(batch)
            if self.backpressure_s is not None and waited > self.backpressure_s:
                # ccxt keeps only the newest trades while we were not reading: catch up from REST
                self.log.warning("backpressure stalled reading; catching up from REST", waited_s=round(waited, 2))
                self._interrupt_all()

    async def _read(self) -> list[tuple[str, Trade]] | None:
        """The next batch of live trades of every active symbol (None when no symbol is active)."""
        self._watching = self.active()
        if not self._watching:
            return None
        return await self.client.watch_trades(self._watching)

    def _lost(self, exc: Exception, wait: float) -> None:
        self.connection.lost()
        self._interrupt_all()
        self.log.warning("websocket lost; reconnecting", error=str(exc), reconnects=self.connection.reconnects)

    def _fail_from_ws(self, exc: PermanentError, symbols: list[str]) -> None:
        # A permanent error naming one symbol parks that symbol; otherwise it is a collector failure.
        text = str(exc)
        named = [s for s in symbols if s in text]
        if not named:
            raise exc
        for s in named:
            self.syncs[s].fail(f"{type(exc).__name__}: {text}")
            self.log.error("symbol failed permanently", symbol=s, error=text)

    def _interrupt_all(self) -> None:
        for sync in self.syncs.values():
            if not sync.failed:
                sync.interrupted()

    async def on_live(self, batch: Sequence[tuple[str, Trade]]) -> float:
        """Route live trades: LIVE symbols take them, catching-up ones buffer them. Returns backpressure wait."""
        per: dict[str, list[Trade]] = {}
        for symbol, t in batch:
            per.setdefault(symbol, []).append(t)
        waited = 0.0
        mono = time.monotonic()
        for symbol, trades in per.items():
            sync = self.syncs.get(symbol)
            if sync is None or sync.failed:
                continue
            self.live_trades += len(trades)
            sync.heard(trades, mono, self.connection.blocked_s(mono))
            if sync.synced:
                waited += await self.take(sync, trades)
            else:
                sync.buffer(trades, self.live_buffer_max)
        self.enforce_budget()
        return waited

    # ---- memory bound -------------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Estimated bytes held by the worker's buffers (see memory.py for what is counted)."""
        live = ids = minutes = 0
        for sync in self.syncs.values():
            live += len(sync.live_buf)
            ids += len(sync.recent)
            minutes += sync.builder.held
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
            sync = max((s for s in self.syncs.values() if len(s.live_buf) > 1), key=lambda s: len(s.live_buf),
                       default=None)
            if sync is None:
                break  # nothing left to shed: the rest is bounded by its own share of the budget
            n = min(len(sync.live_buf) - 1, max(len(sync.live_buf) // 2, over // TRADE_BYTES + 1))
            sync.shed(n)
            over -= n * TRADE_BYTES
            dropped += n
            self._note_shed(sync, n)
        self.shed_trades += dropped
        return dropped

    def _note_shed(self, sync: SymbolSync, n: int) -> None:
        mono = time.monotonic()
        at, since = self._shed_logged.get(sync.symbol, (0.0, 0))
        since += n
        if mono - at >= 60.0:
            self.log.warning("memory bound reached: dropped the oldest buffered live trades; REST catch-up "
                             "fetches them", symbol=sync.symbol, dropped=since, kept=len(sync.live_buf),
                             buffer_bytes_max=self.buffer_bytes_max)
            at, since = mono, 0
        self._shed_logged[sync.symbol] = (at, since)

    # ---- to the writer ------------------------------------------------------------------------
    async def take(self, sync: SymbolSync, trades: Sequence[Trade]) -> float:
        """Deduplicate, aggregate into candles and queue for storage. Returns backpressure wait."""
        new = sync.accept(trades)
        if not new:
            return 0.0
        return await self.writer.put_trades(sync.symbol, new, live=True)

    async def advance(self, sync: SymbolSync, watermark: int) -> None:
        """Every trade before ``watermark`` is taken: write final candles, then the coverage."""
        finals, span = sync.finalize(watermark)
        await self.writer.put_candles(sync.symbol, finals)
        if span is not None:
            await self.writer.put_coverage(sync.symbol, *span)

    # ---- catch-up -----------------------------------------------------------------------------
    async def sync_loop(self, symbol: str) -> None:
        """Run a REST catch-up whenever the symbol is behind the live stream."""
        sync = self.syncs[symbol]
        while not sync.failed:
            await sync.wait_behind()
            try:
                await self.catch_up(sync)
            except PermanentError as exc:
                if not sync.failed:  # (the websocket may have named it first)
                    sync.fail(f"{type(exc).__name__}: {exc}")
                self.log.error("symbol failed permanently", symbol=symbol, error=str(exc))
                return

    async def catch_up(self, sync: SymbolSync) -> None:
        """REST from the cursor in passes until one passes the first buffered live trade (or proves a quiet symbol)."""
        log = self.log.bind(symbol=sync.symbol)
        first = not sync.ever_synced
        goal = now_ms()
        poll = Attempts(self.poll_backoff)
        fetched_before = sync.fetched
        began = time.monotonic()
        progress = _Progress(sync.cursor.ts, goal) if first else None
        if first:
            log.info("backfill started", since=sync.cursor.ts, days=round((goal - sync.cursor.ts) / DAY_MS, 3))

        async def on_page(trades: list[Trade], watermark: int) -> None:
            sync.paged(trades)
            await self.writer.put_trades(sync.symbol, trades)
            self.enforce_budget()  # the write queue grew: keep the whole under the bound
            sync.build(trades)
            await self.advance(sync, watermark)
            mark = progress.page(sync, trades[0].ts) if progress is not None else None
            if mark is not None:
                log.info("backfill progress", pct=mark, trades_fetched=sync.fetched)

        def target() -> int:
            return sync.live_buf[0].ts if sync.live_buf else now_ms()

        while True:
            if sync.failed:
                return
            sync.start_pass()
            res = await page_trades(self.client, sync.symbol, sync.cursor, target, on_page, retry=self.retry,
                                    limit=self.page_limit, health=sync.rest)
            if res.watermark is not None:
                await self.advance(sync, res.watermark)
            if sync.failed:
                return
            if sync.interrupted_in_pass:
                continue  # interrupted again (a reconnect) during this pass: meet the new live stream
            if sync.live_buf and res.watermark is not None and res.watermark > sync.live_buf[0].ts:
                await self.take(sync, sync.met_live(res.watermark))
                break
            if not sync.live_buf and self.connection.proves(res.watermark):
                sync.proved_quiet()  # a quiet symbol: nothing to meet, the connection itself proves it
                break
            if res.trades == 0:
                # nothing new over REST yet: wait for the first live trade (or poll again later)
                delay = poll.next()
                if not sync.live_buf:
                    await sync.wait_live_trade(delay)
                else:
                    await asyncio.sleep(min(delay, 0.25))
            else:
                poll.reset()
        mono = time.monotonic()
        sync.mark_heard(mono, self.connection.blocked_s(mono))
        if first:
            log.info("backfill done; live", trades_fetched=sync.fetched)
        else:
            log.info("caught up with the live stream", trades_fetched=sync.fetched - fetched_before,
                     took_s=round(time.monotonic() - began, 2))

    def silent_s(self, sync: SymbolSync, mono: float) -> float:
        """How long ``sync``'s symbol has been silent while we were reading the websocket.

        Time spent not reading (a batch waiting on the writer's backpressure) is not silence of
        the exchange: counting it would send busy symbols of an overloaded worker to REST
        catch-ups over and over, each dropping its live buffer.
        """
        return sync.silent_s(mono, self.connection.blocked_s(mono))

    # ---- housekeeping -------------------------------------------------------------------------
    async def housekeeping(self, period: float = 1.0) -> None:
        """Every ``period``: finalize by the clock, write provisional candles, spot silences, rebuild stale minutes."""
        while True:
            await asyncio.sleep(period)
            await self.tick()

    async def tick(self) -> None:
        mono = time.monotonic()
        for sync in self.syncs.values():
            if sync.failed:
                continue
            if sync.synced and self.connection.connected:
                await self.advance(sync, now_ms() - self.live_lag_ms)
                limit = self.silence.threshold(sync.mean_gap_s)
                if not sync.failed and self.silent_s(sync, mono) > limit:
                    self.log.info("silence; catching up from REST", symbol=sync.symbol, silent_s=round(limit, 1))
                    sync.interrupted()
            await self.writer.put_candles(sync.symbol, sync.builder.provisional())
            if sync.stale:
                await self.rebuild_stale(sync)

    async def rebuild_stale(self, sync: SymbolSync) -> None:
        """Recompute minutes that got trades the builder cannot hold, from the committed store."""
        final_to = sync.builder.final_to
        if final_to is None:
            return
        minutes = sorted(m for m in sync.stale if m + MINUTE_MS <= final_to)
        if not minutes:
            return
        await self.writer.wait_committed()
        for m in minutes:
            trades = [t async for t in self.store.iter_trades(sync.symbol, m, m + MINUTE_MS)]
            candles = candles_from_trades(trades)
            if sync.builder.holds(m):
                sync.builder.reset_minute(m, trades)
            await self.writer.put_candles(sync.symbol, candles)
            sync.stale.discard(m)

    # ---- for the runtime ----------------------------------------------------------------------
    def beats(self) -> TradeBeats:
        """What the heartbeat reports about the trade side now."""
        ever = [s.ever_synced for s in self.syncs.values()]
        live = (self.live_trades > 0 and any(ever)) or (bool(ever) and all(ever))
        return TradeBeats(live=live, reconnects=self.connection.reconnects, buffer_bytes=self.buffer_bytes(),
                          symbols={symbol: sync.beat() for symbol, sync in self.syncs.items()})

    async def flush(self) -> None:
        """Queue every open minute's candle as provisional (on stop)."""
        for sync in self.syncs.values():
            if not sync.failed:
                await self.writer.put_candles(sync.symbol, sync.builder.provisional())
