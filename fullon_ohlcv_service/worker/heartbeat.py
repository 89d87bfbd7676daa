"""The worker's heartbeat: params built from collector state, written from inside the event loop on a timer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fullon_ohlcv_service.contract import (
    PROCESS_TYPE,
    SymbolBeat,
    SymbolState,
    WorkerBeat,
    WorkerState,
    cache_status,
    worker_component,
)
from fullon_ohlcv_service.errors import OhlcvError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.metrics.figures import WorkerFigures
from fullon_ohlcv_service.ports import ProcessCache


@dataclass(slots=True)
class SymbolFacts:
    """What the runtime knows about one symbol at one instant; ``beat()`` is its entry in the heartbeat."""

    last_trade_ms: int | None = None
    last_final_candle_ms: int | None = None
    trades_stored: int = 0
    candles_stored: int = 0
    backfill_pct: float = 0.0
    error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)  # more cumulative counters (gaps, for /metrics)
    rejected: int = 0  # rows refused by validation or quarantined by the writer (this worker's life)
    synced: bool = False  # on the live stream (not backfilling nor catching up)
    ever_synced: bool = False  # the first backfill is done
    rest_errors: int = 0  # failed REST calls in this worker's life
    last_rest_error: str | None = None
    rest_holding_back: bool = False  # a catch-up or gap repair is retrying a failed REST call

    @property
    def state(self) -> SymbolState:
        """error; degraded while behind because REST keeps failing; backfill; catching_up; live."""
        if self.error:
            return SymbolState.ERROR
        if self.rest_holding_back:
            return SymbolState.DEGRADED
        if not self.ever_synced:
            return SymbolState.BACKFILL
        return SymbolState.LIVE if self.synced else SymbolState.CATCHING_UP

    def beat(self) -> SymbolBeat:
        return SymbolBeat(
            state=self.state, last_trade_ms=self.last_trade_ms, last_final_candle_ms=self.last_final_candle_ms,
            trades_stored=self.trades_stored, candles_stored=self.candles_stored, backfill_pct=self.backfill_pct,
            error=self.error, rejected=self.rejected, rest_errors=self.rest_errors,
            last_rest_error=self.last_rest_error, extra=dict(self.counters),
        )


@dataclass(slots=True)
class Snapshot:
    """Everything the heartbeat reports, gathered from the runtime at one instant."""

    exchange: str
    pid: int
    started_ms: int
    live: bool  # first live data has arrived
    behind: bool
    failing: str | None  # a collector keeps failing: the message
    symbols: dict[str, SymbolFacts] = field(default_factory=dict)
    buffer_depth: int = 0
    loop_lag_ms: float = 0.0
    reconnects: int = 0
    gaps_repaired: int = 0
    errors: int = 0
    figures: WorkerFigures | None = None  # REST outcomes, rate-limit waits, histograms (for /metrics)
    buffer_bytes: int = 0  # estimated bytes held by the worker's buffers
    buffer_bytes_max: int = 0  # the bound they are kept under


def worker_state(s: Snapshot) -> WorkerState:
    """starting until the first live data, then running; behind while the store lags; error when failing;
    degraded while a symbol is behind because its REST calls keep failing."""
    if s.failing is not None or (s.symbols and all(b.error for b in s.symbols.values())):
        return WorkerState.ERROR
    if any(b.state == SymbolState.DEGRADED for b in s.symbols.values()):
        return WorkerState.DEGRADED
    if not s.live:
        return WorkerState.STARTING
    return WorkerState.BEHIND if s.behind else WorkerState.RUNNING


def worker_beat(s: Snapshot) -> WorkerBeat:
    """The worker's beat (the contract's typed params) for one snapshot."""
    return WorkerBeat(
        pid=s.pid, exchange=s.exchange, started_ms=s.started_ms, state=worker_state(s),
        symbols={sym: b.beat() for sym, b in s.symbols.items()},
        buffer_depth=s.buffer_depth, loop_lag_ms=round(s.loop_lag_ms, 3), reconnects=s.reconnects,
        gaps_repaired=s.gaps_repaired, errors=s.errors,
        buffer_bytes=s.buffer_bytes, buffer_bytes_max=s.buffer_bytes_max,
        extra=s.figures.as_params() if s.figures is not None else {},
    )


def status_message(s: Snapshot) -> str:
    state = worker_state(s)
    if state == WorkerState.ERROR:
        if s.failing:
            return s.failing
        return "every symbol failed: " + "; ".join(f"{k}: {b.error}" for k, b in s.symbols.items())
    if state == WorkerState.DEGRADED:
        return "degraded: REST failing: " + "; ".join(
            f"{k}: {b.last_rest_error} ({b.rest_errors} REST errors)"
            for k, b in s.symbols.items() if b.state == SymbolState.DEGRADED)
    if state == WorkerState.BEHIND:
        return f"behind: {s.buffer_depth} rows waiting for the store"
    bad = {k: b.error for k, b in s.symbols.items() if b.error}
    if bad:
        return "symbol errors: " + "; ".join(f"{k}: {v}" for k, v in bad.items())
    return ""


class LoopLag:
    """Measures how late the event loop wakes up (the max over the last report period)."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.max_ms = 0.0

    async def run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.period)
            lag = (time.monotonic() - t0 - self.period) * 1000
            if lag > self.max_ms:
                self.max_ms = lag

    def take(self) -> float:
        v, self.max_ms = self.max_ms, 0.0
        return max(v, 0.0)


class Heartbeat:
    """Registers the worker in the process cache and beats every ``interval`` seconds from the loop.

    A cache outage is logged and retried on the next beat: it never stops the worker. When
    ``parent_pid`` is given and the parent goes away, ``on_orphan`` is called.
    """

    def __init__(
        self,
        cache: ProcessCache,
        exchange: str,
        interval: float,
        snapshot: Callable[[], Snapshot],
        *,
        log: Log,
        parent_pid: int | None = None,
        on_orphan: Callable[[], None] | None = None,
    ) -> None:
        self.cache = cache
        self.exchange = exchange
        self.component = worker_component(exchange)
        self.interval = interval
        self.snapshot = snapshot
        self.log = log
        self.parent_pid = parent_pid
        self.on_orphan = on_orphan
        self.process_id: str | None = None
        self.beats = 0
        self.failures = 0
        self._last_trade_status: int | None = None

    async def register(self, params: Mapping[str, Any]) -> None:
        try:
            self.process_id = await self.cache.register(PROCESS_TYPE, self.component, params, status="starting")
        except OhlcvError as exc:
            self.failures += 1
            self.log.warning("process cache register failed; will retry", error=str(exc))

    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    async def run(self) -> None:
        while True:
            if self.orphaned():
                self.log.warning("parent process is gone; stopping", parent_pid=self.parent_pid)
                if self.on_orphan is not None:
                    self.on_orphan()
                return
            await self.beat()
            await asyncio.sleep(self.interval)

    async def beat(self) -> None:
        snap = self.snapshot()
        beat = worker_beat(snap)
        params = beat.to_params()
        try:
            if self.process_id is None:
                await self.register(params)
                if self.process_id is None:
                    return
            await self.cache.update(
                self.process_id, status=cache_status(worker_state(snap)), message=status_message(snap), params=params
            )
            last = max((b.last_trade_ms for b in snap.symbols.values() if b.last_trade_ms is not None), default=None)
            if last is not None and last != self._last_trade_status:
                await self.cache.set_trade_status(self.exchange, last)
                self._last_trade_status = last
            self.beats += 1
        except OhlcvError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 10 == 0:
                self.log.warning("heartbeat failed; will retry", error=str(exc), failures=self.failures)

    async def stopped(self, message: str = "stopped") -> None:
        if self.process_id is None:
            return
        try:
            await self.cache.stop(self.process_id, message)
        except OhlcvError as exc:
            self.log.warning("could not mark the process stopped", error=str(exc))
