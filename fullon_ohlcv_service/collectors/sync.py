"""One symbol's sync with the live stream: its Phase, guarded transitions, and the cursor, buffer, candles it owns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from fullon_ohlcv_service.collectors.backfill import Cursor, RestHealth
from fullon_ohlcv_service.collectors.candles import CandleBuilder
from fullon_ohlcv_service.models import Candle, SymbolSpec, Trade
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute

DAY_MS = 86_400_000


class Phase(Enum):
    """Where a symbol stands against the live stream."""

    BACKFILL = "backfill"  # the first REST catch-up (from the resume point) has not met the live stream yet
    CATCHING_UP = "catching_up"  # it was live; an interruption sent it back to a REST catch-up
    LIVE = "live"  # every new trade comes from the websocket
    FAILED = "failed"  # a permanent error: the symbol is no longer collected


CATCHING = frozenset({Phase.BACKFILL, Phase.CATCHING_UP})
RUNNING = frozenset({Phase.BACKFILL, Phase.CATCHING_UP, Phase.LIVE})


class InvalidTransition(RuntimeError):
    """A transition was asked from a phase it does not leave (a bug in the caller)."""


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


@dataclass(frozen=True, slots=True)
class SyncBeat:
    """One symbol's sync facts at one instant, for the heartbeat."""

    phase: Phase
    ever_synced: bool  # the first catch-up met the live stream (stays true after a failure)
    backfill_pct: float
    error: str | None
    rest_errors: int
    last_rest_error: str | None
    rest_holding_back: bool  # degraded: a catch-up or gap repair is retrying a failing REST call

    @property
    def synced(self) -> bool:
        return self.phase is Phase.LIVE


class SymbolSync:
    """One symbol's collection state, as a state machine over ``Phase``.

    ::

        BACKFILL ──met_live / proved_quiet──> LIVE ──interrupted──> CATCHING_UP ──met_live / proved_quiet──> LIVE
        (BACKFILL and CATCHING_UP stay where they are on interrupted(); any phase but FAILED ──fail──> FAILED)

    Each transition checks the phase it leaves and raises InvalidTransition otherwise. While not LIVE,
    live trades are buffered (``live_buf``) and a REST catch-up pages from ``cursor``; a *pass* of it
    starts with ``start_pass()``. ``met_live(watermark)`` merges when REST has passed the first buffered
    live trade; ``proved_quiet()`` goes live with nothing buffered (the connection proved that every later
    trade comes live). Both refuse when the symbol was interrupted since its pass started.
    ``interrupted()`` (a reconnect, a silence, backpressure) drops the buffer: REST returns those
    trades again, and the catch-up must reach a trade received *after* the interruption.

    It also owns what the symbol's trades feed: the dedup window (``recent``), the candle builder,
    the coverage mark, the minutes to rebuild from the store, and the REST health. No I/O here.
    """

    def __init__(self, spec: SymbolSpec, history_start: int, cursor: Cursor, recent: RecentIds,
                 builder: CandleBuilder | None = None, *, cov_to: int | None = None, built_from: int = 0) -> None:
        self.spec = spec
        self.history_start = history_start
        self.cursor = cursor
        self.recent = recent
        self.builder = builder or CandleBuilder()
        self.cov_to = cov_to  # coverage is queued up to here
        self.built_from = built_from  # the first minute this run's builder has seen every trade of
        self.phase = Phase.BACKFILL
        self.ever_live = False
        self.error: str | None = None
        self.live_buf: list[Trade] = []
        self._behind = asyncio.Event()  # a catch-up is wanted: set now, and by every interruption
        self._behind.set()
        self._arrived = asyncio.Event()  # a live trade was buffered
        self.rest = RestHealth(spec.symbol)  # this symbol's REST failures (heartbeat)
        self.backfill_pct = 0.0
        self.stale: set[int] = set()  # minutes whose candle must be rebuilt from the store
        self.mean_gap_s: float | None = None
        self.last_live_mono = time.monotonic()  # when the symbol was last heard live
        self.blocked_mark = 0.0  # the connection's blocked seconds at that moment
        self.fetched = 0

    @classmethod
    def resume(cls, spec: SymbolSpec, now: int, recent_size: int, latest: tuple[int, str] | None,
               seed: Sequence[Trade]) -> SymbolSync:
        """The sync of a symbol resuming after ``latest`` (the last stored (ts, id)), or from its backtest start.

        ``seed`` is the stored trades of ``latest``'s minute, up to it.
        """
        start = floor_minute(now - spec.backtest_days * DAY_MS)
        builder = CandleBuilder()
        if latest is None:
            cursor = Cursor(start - 1)
            recent = RecentIds(recent_size, start - 1)
            cov_from = start
        else:
            ts = latest[0]
            minute = floor_minute(ts)
            cursor = Cursor(ts, {t.id for t in seed if t.ts == ts} | {latest[1]})
            recent = RecentIds(recent_size, ts - 1)
            for t in seed:
                if t.ts == ts:
                    recent.add(t)
            builder.seed(seed)
            cov_from = minute
            start = min(start, minute)
        return cls(spec, start, cursor, recent, builder, cov_to=cov_from, built_from=cov_from)

    @property
    def symbol(self) -> str:
        return self.spec.symbol

    # ---- phases -------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return self.phase is Phase.LIVE

    @property
    def ever_synced(self) -> bool:
        return self.ever_live

    @property
    def failed(self) -> bool:
        return self.phase is Phase.FAILED

    @property
    def catching_up(self) -> bool:
        """BACKFILL or CATCHING_UP: live trades are buffered while REST pages."""
        return self.phase in CATCHING

    def _leave(self, allowed: frozenset[Phase], transition: str) -> None:
        if self.phase not in allowed:
            raise InvalidTransition(f"{self.symbol}: {transition}() from {self.phase.value}")

    def interrupted(self) -> None:
        """Continuity with the live stream is lost: LIVE -> CATCHING_UP; drop the buffer, want a catch-up."""
        self._leave(RUNNING, "interrupted")
        if self.phase is Phase.LIVE:
            self.phase = Phase.CATCHING_UP
        self.live_buf.clear()
        self._behind.set()

    def start_pass(self) -> None:
        """A catch-up pass begins: from now, an interruption means this pass cannot go live."""
        self._leave(CATCHING, "start_pass")
        self._behind.clear()

    @property
    def interrupted_in_pass(self) -> bool:
        return self._behind.is_set()

    def met_live(self, watermark: int | None) -> list[Trade]:
        """REST has taken every trade before ``watermark``, past the first buffered live trade: go LIVE.

        Returns the live buffer, for the caller to take (deduplicated against what REST took).
        """
        self._leave(CATCHING, "met_live")
        if not self.live_buf or watermark is None or watermark <= self.live_buf[0].ts:
            raise InvalidTransition(f"{self.symbol}: met_live() before REST passed the first buffered live trade")
        if self._behind.is_set():
            raise InvalidTransition(f"{self.symbol}: met_live() after an interruption in this pass")
        buf, self.live_buf = self.live_buf, []
        self._go_live()
        return buf

    def proved_quiet(self) -> None:
        """Nothing is buffered and the connection proves every later trade comes live: go LIVE."""
        self._leave(CATCHING, "proved_quiet")
        if self.live_buf:
            raise InvalidTransition(f"{self.symbol}: proved_quiet() with live trades buffered")
        if self._behind.is_set():
            raise InvalidTransition(f"{self.symbol}: proved_quiet() after an interruption in this pass")
        self._go_live()

    def _go_live(self) -> None:
        self.phase = Phase.LIVE
        self.ever_live = True
        self.backfill_pct = 100.0

    def fail(self, reason: str) -> None:
        """A permanent error: the symbol is no longer collected."""
        self._leave(RUNNING, "fail")
        self.phase = Phase.FAILED
        self.error = reason

    async def wait_behind(self) -> None:
        """Until a catch-up is wanted."""
        await self._behind.wait()

    async def wait_live_trade(self, within_s: float) -> None:
        """Until a live trade is buffered from now on, or ``within_s`` seconds."""
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), within_s)

    # ---- live trades --------------------------------------------------------------------------
    def heard(self, trades: Sequence[Trade], mono: float, blocked: float) -> None:
        """Live trades arrived at ``mono`` (``blocked``: the connection's blocked seconds then)."""
        sample = (mono - self.last_live_mono) / len(trades)
        self.mean_gap_s = sample if self.mean_gap_s is None else 0.9 * self.mean_gap_s + 0.1 * sample
        self.mark_heard(mono, blocked)

    def mark_heard(self, mono: float, blocked: float) -> None:
        """Restart the silence clock at ``mono``."""
        self.last_live_mono = mono
        self.blocked_mark = blocked

    def silent_s(self, mono: float, blocked: float) -> float:
        """Seconds of silence at ``mono`` while the connection was read (``blocked``: its blocked seconds then).

        Only blocked time since the symbol's own last trade is subtracted, so a quiet symbol next to
        a busy one on the same connection is still noticed.
        """
        return (mono - self.last_live_mono) - (blocked - self.blocked_mark)

    def buffer(self, trades: Sequence[Trade], most: int) -> None:
        """Hold live trades while catching up (beyond ``most``, keep the newest half: REST fetches the rest)."""
        self._leave(CATCHING, "buffer")
        self.live_buf.extend(trades)
        self._arrived.set()
        if len(self.live_buf) > most:
            del self.live_buf[: len(self.live_buf) - most // 2]

    def shed(self, n: int) -> None:
        """Drop the ``n`` oldest buffered live trades (never the newest): the merge point moves later."""
        del self.live_buf[: min(n, len(self.live_buf) - 1)]

    def accept(self, trades: Sequence[Trade]) -> list[Trade]:
        """The trades not taken yet, now taken: deduplicated on id, into the cursor and the candles."""
        new: list[Trade] = []
        for t in trades:
            if t.id in self.recent:
                continue
            uncertain = t.ts <= self.recent.floor and not self.cursor.is_new(t)
            self.recent.add(t)
            self.cursor.take(t)
            new.append(t)
            if uncertain or not self.builder.add(t):
                # may be a duplicate we forgot, or too old to hold: rebuild that minute from the store
                self.stale.add(floor_minute(t.ts))
        return new

    # ---- REST pages ---------------------------------------------------------------------------
    def paged(self, trades: Sequence[Trade]) -> None:
        """A REST page's new trades (already past the cursor): remember their ids."""
        if self.mean_gap_s is None and len(trades) > 1:
            self.mean_gap_s = max((trades[-1].ts - trades[0].ts) / 1000 / (len(trades) - 1), 1e-3)
        self.remember(trades)
        self.fetched += len(trades)

    def build(self, trades: Iterable[Trade]) -> None:
        """Aggregate trades into candles (a minute too old to hold is rebuilt from the store later)."""
        for t in trades:
            if not self.builder.add(t):
                self.stale.add(floor_minute(t.ts))

    def finalize(self, watermark: int) -> tuple[list[Candle], tuple[int, int] | None]:
        """Every trade before ``watermark`` is taken: the candles that became final, and the coverage to add."""
        finals = self.builder.advance(watermark)
        final_to = self.builder.final_to
        span = None
        if final_to is not None and self.cov_to is not None and final_to > self.cov_to:
            span = (self.cov_to, final_to)
            self.cov_to = final_to
        return finals, span

    # ---- the candle side's view (ohlcv.SymbolHandle) ------------------------------------------
    @property
    def final_to(self) -> int | None:
        return self.builder.final_to

    def candle(self, minute: int) -> Candle | None:
        return self.builder.candle(minute)

    def remember(self, trades: Iterable[Trade]) -> None:
        """Trades stored by someone else (REST): their ids join the dedup window."""
        for t in trades:
            self.recent.add(t)

    def reset_minutes(self, a: int, b: int, trades: Sequence[Trade]) -> None:
        """The held minutes of [a, b) are rebuilt from ``trades`` (a repair fetched them all)."""
        for m in range(a - a % MINUTE_MS, b, MINUTE_MS):
            if self.builder.holds(m):
                self.builder.reset_minute(m, (t for t in trades if m <= t.ts < m + MINUTE_MS))

    def beat(self) -> SyncBeat:
        return SyncBeat(self.phase, self.ever_live, self.backfill_pct, self.error, self.rest.errors,
                        self.rest.last_error, self.rest.holding_back)
