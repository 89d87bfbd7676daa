"""One exchange's worker runtime: adapters in one exit stack, collectors as guarded tasks, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fullon_ohlcv_service.collectors.backfill import Retry
from fullon_ohlcv_service.collectors.feed import FeedPublisher, open_feed
from fullon_ohlcv_service.collectors.ohlcv import CandleCollector
from fullon_ohlcv_service.collectors.rejects import RejectBook
from fullon_ohlcv_service.collectors.trades import SilencePolicy, TradeCollector
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.errors import (
    EXIT_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    ConfigError,
    TransientError,
)
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.memory import MIB, pending_trades_max
from fullon_ohlcv_service.metrics.worker import worker_figures
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.ports import ExchangeClient, OhlcvStore, ProcessCache
from fullon_ohlcv_service.retry import Backoff, retry_transient
from fullon_ohlcv_service.settings import Settings
from fullon_ohlcv_service.timeutil import now_ms
from fullon_ohlcv_service.worker.heartbeat import Heartbeat, LoopLag, Snapshot, SymbolFacts


@dataclass(slots=True)
class Tuning:
    """Collector knobs that are not user settings (tests shorten them)."""

    silence: SilencePolicy | None = None
    reconcile_every: float = 60.0
    gap_every: float = 60.0
    housekeeping_every: float = 1.0
    native_ohlcv: bool = True  # also watch the exchange's live 1m candles (provisional rows only)
    failing_after: int = 3  # crashes of one task within failing_window before the worker reports "error"
    failing_window: float = 120.0


class WorkerRuntime:
    """Runs one exchange until ``stop`` is set, then flushes and returns an exit code."""

    def __init__(
        self,
        spec: ExchangeSpec,
        settings: Settings,
        *,
        parent_pid: int | None = None,
        tuning: Tuning | None = None,
        open_client: Callable[[ExchangeSpec, str | None], ExchangeClient] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.parent_pid = parent_pid
        self.tuning = tuning or Tuning()
        self._open_client = open_client
        self.log = Log(f"fullon.ohlcv.worker.{spec.name}", exchange=spec.name)
        self.stop = asyncio.Event()
        self.started_ms = now_ms()
        self.errors = 0
        self.crashes: dict[str, list[float]] = {}
        self.crash_messages: dict[str, str] = {}
        self.unknown: dict[str, str] = {}
        self.trades: TradeCollector | None = None
        self.candles: CandleCollector | None = None
        self.writer: BatchWriter | None = None
        self.feed: FeedPublisher | None = None
        self.rest: Retry | None = None
        self.lag = LoopLag()
        self.heartbeat: Heartbeat | None = None
        self.client: ExchangeClient | None = None
        # refused rows from the exchange adapter and rows the writer quarantines: counted, logged, stored
        self.rejects = RejectBook(self.log)

    # ---- entry ------------------------------------------------------------------------------
    async def run(self) -> int:
        from fullon_ohlcv_service.adapters.ccxt_exchange import check_exchange_supported

        try:
            check_exchange_supported(self.spec.name)
            if not self.spec.symbols:
                raise ConfigError(f"exchange {self.spec.name!r} has no symbols to collect")
        except ConfigError as exc:
            self.log.error("cannot start", error=str(exc))
            return EXIT_CONFIG
        try:
            return await self._run()
        except ConfigError as exc:
            self.log.error("cannot start", error=str(exc))
            return EXIT_CONFIG

    async def _run(self) -> int:
        from fullon_ohlcv_service.adapters.caches import open_process_cache
        from fullon_ohlcv_service.adapters.stores import open_ohlcv_store

        s = self.settings
        async with AsyncExitStack() as stack:
            cache: ProcessCache | None = await self._open_retrying(
                stack, lambda: open_process_cache(s.cache), "process cache")
            if cache is None:
                return EXIT_OK  # asked to stop before the cache could be reached
            hb = self.heartbeat = Heartbeat(
                cache, self.spec.name, s.heartbeat_interval, self.snapshot, log=self.log,
                parent_pid=self.parent_pid, on_orphan=self.stop.set,
            )
            await hb.register(self._boot_params())
            # beating from now on: a store still coming up is "starting", not hung
            beat_task = asyncio.create_task(hb.run(), name="heartbeat")
            lag_task = asyncio.create_task(self.lag.run(), name="loop-lag")
            try:
                store: OhlcvStore | None = await self._open_retrying(
                    stack, lambda: open_ohlcv_store(s.ohlcv_db, self.spec.name), "store")
                if store is None:
                    code = EXIT_OK
                else:
                    feed = open_feed(s, self.spec.name, store, self.log)  # live feeds, if published
                    self.feed = await stack.enter_async_context(feed) if feed is not None else None
                    client: ExchangeClient = await stack.enter_async_context(self._client())  # type: ignore[arg-type]
                    self.client = client
                    code = await self._collect(store, client)
            except BaseException:
                await self._stop_tasks(beat_task, lag_task)
                await hb.stopped("crashed")
                raise
            await self._stop_tasks(beat_task, lag_task)
            await hb.stopped("stopped")
            return code
        return EXIT_CRASH  # pragma: no cover - the exit stack never swallows

    async def _open_retrying(self, stack: AsyncExitStack, factory: Callable[[], Any], what: str) -> Any | None:
        """Enter ``factory()``'s context, retrying while it is unreachable (an outage must not crash-loop us).

        Returns None when asked to stop first.
        """
        if self.stop.is_set():
            return None

        def on_error(exc: Exception, wait: float) -> None:
            self.errors += 1
            self.log.warning(f"{what} unavailable; retrying", error=str(exc))

        try:
            return await retry_transient(lambda: stack.enter_async_context(factory()),
                                         backoff=Backoff(0.5, self.settings.open_backoff_max),
                                         stop=self.stop.is_set, on_error=on_error, sleep=self._nap)
        except TransientError:
            return None  # (raised only once asked to stop)

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _client(self) -> ExchangeClient:
        if self._open_client is not None:
            return self._open_client(self.spec, self.settings.simulator)
        from fullon_ohlcv_service.adapters.ccxt_exchange import CcxtExchange

        return CcxtExchange(self.spec, simulator=self.settings.simulator, rejects=self.rejects,
                            pending_max=pending_trades_max(self.settings.buffer_mb * MIB))

    def _boot_params(self) -> dict[str, object]:
        return {"pid": os.getpid(), "exchange": self.spec.name, "started_ms": self.started_ms, "state": "starting",
                "symbols": {}, "buffer_depth": 0, "loop_lag_ms": 0.0, "reconnects": 0, "gaps_repaired": 0,
                "errors": 0, "buffer_bytes": 0, "buffer_bytes_max": self.settings.buffer_mb * MIB}

    async def _load_markets(self, client: ExchangeClient) -> set[str] | None:
        if self.stop.is_set():
            return None

        def on_error(exc: Exception, wait: float) -> None:
            self.errors += 1
            self.log.warning("load_markets failed; retrying", error=str(exc))

        try:
            return await retry_transient(client.load_markets, backoff=Backoff(0.5, self.settings.markets_backoff_max),
                                         stop=self.stop.is_set, on_error=on_error, sleep=self._nap)
        except TransientError:
            return None  # (raised only once asked to stop)

    @staticmethod
    async def _stop_tasks(*tasks: asyncio.Task[None]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect(self, store: OhlcvStore, client: ExchangeClient) -> int:
        s = self.settings
        t = self.tuning
        markets = await self._load_markets(client)
        if markets is None:
            return EXIT_OK
        listed = [sp for sp in self.spec.symbols if sp.symbol in markets]
        for sp in self.spec.symbols:
            if sp.symbol not in markets:
                self.unknown[sp.symbol] = f"SymbolUnknown: {self.spec.name} does not list {sp.symbol}"
                self.log.error("symbol not listed by the exchange", symbol=sp.symbol)
        writer = self.writer = BatchWriter(
            store, flush_rows=s.flush_rows, flush_interval=s.flush_interval, buffer_rows=s.buffer_rows,
            backoff_max=s.store_backoff_max, log=self.log, rejects=self.rejects,
            on_commit=self.feed.committed if self.feed is not None else None,
        )
        stream = Backoff(0.25, s.stream_backoff_max)
        rest = self.rest = Retry(0.25, s.rest_backoff_max, log=self.log)  # every REST call, both collectors
        trades = self.trades = TradeCollector(
            client, store, writer, listed, log=self.log, silence=t.silence, buffer_bytes_max=s.buffer_mb * MIB,
            retry=rest, stream_backoff=stream, poll_backoff=Backoff(0.25, s.poll_backoff_max),
        )
        candles = self.candles = CandleCollector(
            trades.handles(), client, store, writer, retry=rest, log=self.log, reconcile_every=t.reconcile_every,
            gap_every=t.gap_every, stream_backoff=stream,
        )
        writer_task = asyncio.create_task(writer.run(), name="writer")
        await self._until_stopped(self._retrying_prepare(trades))
        if self.stop.is_set():
            return await self._shutdown([], writer, writer_task)
        if self.feed is not None:
            await self.feed.start(trades.active())  # before any commit: what the store held at start
        tasks = [asyncio.create_task(self._guard("live", trades.live_loop), name="live")]
        for sp in listed:
            tasks.append(asyncio.create_task(self._guard(f"sync:{sp.symbol}", self._sync(trades, sp.symbol))))
            tasks.append(asyncio.create_task(self._guard(f"candles:{sp.symbol}", self._bf(candles, sp.symbol))))
            if t.native_ohlcv:
                tasks.append(asyncio.create_task(
                    self._guard(f"ohlcv:{sp.symbol}", self._native(candles, sp.symbol))))
        tasks.append(asyncio.create_task(self._guard("housekeeping", self._hk(trades))))
        tasks.append(asyncio.create_task(self._guard("reconcile", candles.reconcile_loop)))
        tasks.append(asyncio.create_task(self._guard("gaps", candles.gap_loop)))
        await self.stop.wait()
        return await self._shutdown(tasks, writer, writer_task)

    @staticmethod
    def _sync(trades: TradeCollector, symbol: str) -> Callable[[], Awaitable[None]]:
        return lambda: trades.sync_loop(symbol)

    @staticmethod
    def _bf(candles: CandleCollector, symbol: str) -> Callable[[], Awaitable[None]]:
        return lambda: candles.backfill(symbol)

    @staticmethod
    def _native(candles: CandleCollector, symbol: str) -> Callable[[], Awaitable[None]]:
        return lambda: candles.live_loop(symbol)

    def _hk(self, trades: TradeCollector) -> Callable[[], Awaitable[None]]:
        return lambda: trades.housekeeping(self.tuning.housekeeping_every)

    async def _retrying_prepare(self, trades: TradeCollector) -> None:
        def on_error(exc: Exception, wait: float) -> None:
            self.errors += 1
            self.log.warning("store not ready; retrying", error=str(exc))

        await retry_transient(trades.prepare, backoff=Backoff(0.5, self.settings.open_backoff_max), on_error=on_error)

    async def _until_stopped(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            task.result()

    async def _guard(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run a collector task; a crash is logged, counted and retried with capped backoff."""

        def on_error(exc: Exception, wait: float) -> None:
            self.errors += 1
            if isinstance(exc, TransientError):  # a store or exchange outage: the task retries, nothing is broken
                self.log.warning("collector interrupted; retrying", task=name, error=f"{type(exc).__name__}: {exc}")
            else:  # a crashing collector must not take down the rest
                self.log.exception("collector crashed; restarting", task=name)
                self._crashed(name, exc)

        await retry_transient(factory, backoff=Backoff(0.5, self.settings.task_backoff_max), on_error=on_error,
                              retry_on=(Exception,), healthy_after=60.0)

    def _crashed(self, name: str, exc: BaseException) -> None:
        now = time.monotonic()
        times = [t for t in self.crashes.get(name, []) if now - t < self.tuning.failing_window] + [now]
        self.crashes[name] = times
        self.crash_messages[name] = f"{name}: {type(exc).__name__}: {exc}"

    def failing_message(self) -> str | None:
        """A task that crashed ``failing_after`` times within ``failing_window`` seconds: the worker is failing."""
        now = time.monotonic()
        for name, times in self.crashes.items():
            if sum(1 for t in times if now - t < self.tuning.failing_window) >= self.tuning.failing_after:
                return self.crash_messages.get(name)
        return None

    async def _shutdown(
        self, tasks: list[asyncio.Task[None]], writer: BatchWriter, writer_task: asyncio.Task[None]
    ) -> int:
        """Stop watching, flush every buffer within the graceful timeout; never wait longer.

        With the store down and the buffer full nothing can be flushed: the collectors are cancelled,
        the open minutes' candles are queued only if there is room in time, and what is still queued
        at the deadline is left (REST re-fetches it on the next start: the collectors resume from the
        last stored trade). One second is kept for closing the adapters.
        """
        deadline = time.monotonic() + self.settings.graceful_timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic() - 1.0)

        for task in tasks:
            task.cancel()
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=left())
            for task in done:  # a guarded task ends cancelled; anything else was logged by its guard
                if not task.cancelled() and task.exception() is not None:
                    self.log.warning("collector ended with an error while stopping", task=task.get_name(),
                                     error=repr(task.exception()))
        if self.trades is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.trades.flush(), left())
        flushed = await writer.drain(left())
        writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer_task
        wb = writer.beats()
        if flushed:
            self.log.info("stopped; buffers flushed", batches=wb.batches)
        else:
            why = {"error": wb.last_error} if wb.last_error else {}
            self.log.warning("stopped with rows not committed (store unavailable); they are re-fetched from REST "
                             "on the next start", rows=wb.depth, **why)
        return EXIT_OK

    # ---- heartbeat ------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        wr = self.writer.beats() if self.writer is not None else None
        tb = self.trades.beats() if self.trades is not None else None
        cb = self.candles.beats() if self.candles is not None else None
        snap = Snapshot(
            exchange=self.spec.name, pid=os.getpid(), started_ms=self.started_ms,
            live=tb is not None and tb.live, behind=wr is not None and wr.behind, failing=self.failing_message(),
            loop_lag_ms=self.lag.take(), errors=self.errors + (wr.write_errors if wr else 0),
        )
        if tb is not None:
            snap.reconnects = tb.reconnects
            for sym, b in tb.symbols.items():
                st = wr.stats(sym) if wr else None
                snap.symbols[sym] = SymbolFacts(
                    last_trade_ms=st.last_trade_ms if st else None,
                    last_final_candle_ms=st.last_final_candle_ms if st else None,
                    trades_stored=st.trades_stored if st else 0,
                    candles_stored=st.candles_stored if st else 0,
                    backfill_pct=b.backfill_pct,
                    error=b.error,
                    rejected=self.rejects.count(sym),
                    synced=b.synced,
                    ever_synced=b.ever_synced,
                    rest_errors=b.rest_errors,
                    last_rest_error=b.last_rest_error,
                    rest_holding_back=b.rest_holding_back,
                )
                snap.errors += b.rest_errors
        for sym, err in self.unknown.items():
            snap.symbols[sym] = SymbolFacts(error=err)
        if wr is not None:
            snap.buffer_depth = wr.depth
        snap.buffer_bytes_max = self.settings.buffer_mb * MIB
        if tb is not None:
            snap.buffer_bytes = tb.buffer_bytes
        if cb is not None:
            snap.gaps_repaired = cb.gaps_repaired
        snap.figures = worker_figures(self.client, self.rest, wr)
        if cb is not None:
            for sym, beat in snap.symbols.items():
                beat.counters = cb.counters(sym)
        return snap
