"""BatchWriter: one bounded, ordered write queue per store, flushed by size or interval, retried, never dropped.

A row the store refuses (a StoreDataError) is isolated by bisecting its batch and quarantined in the
reject store; the rest of the batch is committed. Only a store that is unavailable is retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from fullon_ohlcv_service.collectors.rejects import RejectBook
from fullon_ohlcv_service.errors import PermanentError, StoreDataError, TransientError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.metrics.figures import COMMIT_BUCKETS, EMIT_BUCKETS, Histogram
from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.retry import Backoff, retry_transient
from fullon_ohlcv_service.timeutil import now_ms
from fullon_ohlcv_service.validation import candle_reject, candle_values, trade_reject, trade_values

R = TypeVar("R")


class WriteTarget(Protocol):
    """The store methods the writer calls (ports.OhlcvStore satisfies it)."""

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int: ...

    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int: ...

    async def add_coverage(self, symbol: str, start: int, end: int) -> None: ...

    async def save_rejects(self, symbol: str, rejects: Sequence[Reject]) -> int: ...


@dataclass(slots=True)
class SymbolStats:
    """What has been committed for one symbol (read by the heartbeat)."""

    trades_stored: int = 0
    candles_stored: int = 0
    last_trade_ms: int | None = None
    last_final_candle_ms: int | None = None
    coverage_to: int | None = None


@dataclass(frozen=True, slots=True)
class WriterBeats:
    """The writer's facts for the heartbeat and the shutdown log, at one instant (``BatchWriter.beats()``)."""

    depth: int  # rows queued and not yet committed
    behind: bool  # the store is failing or the queue is more than half full
    write_errors: int  # failed write attempts so far
    batches: int  # batches committed so far
    last_error: str | None  # the last write failure, one line
    symbols: Mapping[str, SymbolStats]  # what has been committed per symbol (copies)
    commit_seconds: Histogram  # per committed batch (the live histogram, for /metrics)
    emit_to_commit_seconds: Histogram  # per live trade: exchange time -> commit (the live histogram)

    def stats(self, symbol: str) -> SymbolStats:
        """What has been committed for ``symbol`` (zeros when nothing has)."""
        return self.symbols.get(symbol) or SymbolStats()


# One queued operation: (kind, symbol, payload, rows, seq, enqueued_at)
_TRADES, _CANDLES, _COVERAGE, _REJECTS = 0, 1, 2, 3


@dataclass(slots=True)
class _Op:
    kind: int
    symbol: str
    payload: object
    rows: int
    seq: int
    at: float
    live: bool = False  # live trades: their emit-to-commit latency is measured


# Told of every committed batch, after its commit (collectors/feed.py publishes it); must not block or raise.
CommitHook = Callable[[Sequence[_Op], Mapping[str, SymbolStats]], None]


class BatchWriter:
    """Queue rows for one store and write them in batches.

    - A batch holds about ``flush_rows`` rows; while a backlog is queued (the store was slow or
      down) batches grow to ``backlog_factor`` times that, so fewer round trips carry the catch-up.
    - Order is kept: an operation is committed only after every operation queued before it, and
      within a batch trades are written before candles, candles before coverage records.
    - Bounded: ``put_*`` waits while the queue holds ``buffer_rows`` rows (backpressure; nothing
      is ever dropped). A single put larger than the buffer is accepted when the queue is empty.
    - A failed write (the database is down) is retried with capped exponential backoff; the batch
      stays queued. ``failing`` and ``behind`` report it for the heartbeat.
    - A StoreDataError (the store refuses some values) is permanent for those rows only: the batch is
      bisected, each row that fails alone is quarantined (``rejects``, reason naming the store error)
      and everything else is committed, at once, in the same order. A PermanentError that is not about
      rows (a symbol's tables are gone, a corrupt file) is retried like an unavailable store. Any other,
      unclassified exception is retried ``unclassified_attempts`` times and then handled like a
      StoreDataError, so no single row can stop the queue.
    - Rejects (``put_rejects``) go through the same queue, without ever waiting for room: at most
      ``max_queued_rejects`` rows of them are held; beyond that they are counted and logged only.
    """

    def __init__(
        self,
        store: WriteTarget,
        *,
        flush_rows: int = 1000,
        flush_interval: float = 0.25,
        buffer_rows: int = 50_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        backlog_factor: int = 10,
        log: Log | None = None,
        rejects: RejectBook | None = None,
        unclassified_attempts: int = 3,
        max_queued_rejects: int = 10_000,
        on_commit: CommitHook | None = None,
    ) -> None:
        self._store = store
        self.on_commit = on_commit
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self.buffer_rows = max(buffer_rows, flush_rows)
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.backlog_factor = max(1, backlog_factor)
        self._log = log or Log("fullon.ohlcv.writer")
        self._queue: deque[_Op] = deque()
        self._rows = 0  # rows queued, including the batch being written
        self._seq = 0  # last sequence number handed out
        self._committed = 0  # every op with seq <= this is committed
        self._wake = asyncio.Event()  # something was queued, or stop was asked
        self._progress = asyncio.Event()  # a batch was committed
        self._stopping = False
        self.failing = False
        self.write_errors = 0
        self.batches = 0
        self.stats: dict[str, SymbolStats] = {}
        self.last_error: str | None = None
        self.commit_seconds = Histogram(COMMIT_BUCKETS)  # per committed batch (for /metrics)
        self.emit_to_commit_seconds = Histogram(EMIT_BUCKETS)  # per live trade: exchange time -> commit
        self.unclassified_attempts = max(1, unclassified_attempts)
        self.max_queued_rejects = max_queued_rejects
        self._reject_rows = 0  # reject rows queued
        self.rejects_dropped = 0  # rejects not queued (over max_queued_rejects) or refused by the store
        self.quarantined = 0  # rows the store refused, moved to the reject store
        self.rejects = rejects if rejects is not None else RejectBook(self._log)
        self.rejects.attach(self.put_rejects)

    # ---- producer side -------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Rows queued and not yet committed."""
        return self._rows

    @property
    def behind(self) -> bool:
        """The database is failing or the queue is more than half full."""
        return self.failing or self._rows * 2 >= self.buffer_rows

    @property
    def last_seq(self) -> int:
        return self._seq

    def beats(self) -> WriterBeats:
        """What the heartbeat reports about the writer now."""
        return WriterBeats(
            depth=self._rows, behind=self.behind, write_errors=self.write_errors, batches=self.batches,
            last_error=self.last_error, symbols={sym: dataclasses.replace(st) for sym, st in self.stats.items()},
            commit_seconds=self.commit_seconds, emit_to_commit_seconds=self.emit_to_commit_seconds,
        )

    def stats_for(self, symbol: str) -> SymbolStats:
        st = self.stats.get(symbol)
        if st is None:
            st = self.stats[symbol] = SymbolStats()
        return st

    async def put_trades(self, symbol: str, trades: Sequence[Trade], *, live: bool = False) -> float:
        """Queue trades; return the seconds spent waiting for room (backpressure). ``live``: from the
        websocket, so their exchange-timestamp-to-commit latency is measured."""
        return await self._put_chunks(_TRADES, symbol, trades, live)

    async def put_candles(self, symbol: str, candles: Sequence[Candle]) -> float:
        return await self._put_chunks(_CANDLES, symbol, candles)

    async def _put_chunks(self, kind: int, symbol: str, rows: Sequence[Trade] | Sequence[Candle],
                          live: bool = False) -> float:
        waited = 0.0
        step = self.flush_rows
        for i in range(0, len(rows), step):
            chunk = list(rows[i : i + step])
            waited += await self._put(kind, symbol, chunk, len(chunk), live)
        return waited

    def put_rejects(self, symbol: str, rejects: Sequence[Reject]) -> None:
        """Queue rows for the reject store now, never waiting for room (callers are inside parsing)."""
        room = self.max_queued_rejects - self._reject_rows
        if room < len(rejects):
            self.rejects_dropped += len(rejects) - max(room, 0)
            if self.rejects_dropped == len(rejects) - max(room, 0) or self.rejects_dropped % 1000 == 0:
                self._log.warning("reject queue full; rejects counted but not stored", symbol=symbol,
                                  dropped=self.rejects_dropped)
            rejects = rejects[: max(room, 0)]
        if not rejects:
            return
        self._seq += 1
        self._queue.append(_Op(_REJECTS, symbol, list(rejects), len(rejects), self._seq, time.monotonic()))
        self._rows += len(rejects)
        self._reject_rows += len(rejects)
        self._wake.set()

    async def put_coverage(self, symbol: str, start: int, end: int) -> float:
        if end <= start:
            return 0.0
        return await self._put(_COVERAGE, symbol, (start, end), 1)

    async def _put(self, kind: int, symbol: str, payload: object, rows: int, live: bool = False) -> float:
        waited = 0.0
        if self._rows and self._rows + rows > self.buffer_rows:
            t0 = time.monotonic()
            while self._rows and self._rows + rows > self.buffer_rows:
                self._progress.clear()
                await self._progress.wait()
            waited = time.monotonic() - t0
        self._seq += 1
        self._queue.append(_Op(kind, symbol, payload, rows, self._seq, time.monotonic(), live))
        self._rows += rows
        self._wake.set()
        return waited

    async def wait_committed(self, seq: int | None = None) -> None:
        """Wait until every operation queued so far (or up to ``seq``) is committed."""
        target = self._seq if seq is None else seq
        while self._committed < target:
            self._progress.clear()
            await self._progress.wait()

    # ---- consumer side -------------------------------------------------------------------
    async def run(self) -> None:
        """Flush forever (until cancelled or ``stop`` then empty)."""
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._queue[0].at + self.flush_interval
            while not self._stopping and self._rows < self.flush_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            await self._flush_one_batch()

    def stop(self) -> None:
        """Ask ``run`` to flush what is queued without waiting for the interval, then return."""
        self._stopping = True
        self._wake.set()

    async def drain(self, within_s: float) -> bool:
        """Stop and flush everything within ``within_s`` seconds; True if the queue is empty."""
        self.stop()
        try:
            await asyncio.wait_for(self.wait_committed(), within_s)
        except TimeoutError:
            return False
        return True

    async def _flush_one_batch(self) -> None:
        batch: list[_Op] = []
        rows = 0
        # a backlog is written in bigger batches (fewer round trips per row) so the store catches up
        cap = self.flush_rows * (self.backlog_factor if self._rows > 2 * self.flush_rows else 1)
        for op in self._queue:
            if batch and rows + op.rows > cap:
                break
            batch.append(op)
            rows += op.rows
        isolate = False  # bisect to single rows, quarantining those the store refuses
        unclassified = 0

        async def attempt() -> None:
            """Write the batch once; switch to isolating rows at once when the store refuses some."""
            nonlocal isolate, unclassified
            while True:
                t0 = time.perf_counter()
                try:
                    await self._write(batch, isolate)
                except StoreDataError as exc:
                    if isolate:
                        raise  # (isolation catches these row by row: not expected here)
                    self._log.warning("store refused rows of a batch; isolating them", rows=rows, error=str(exc))
                    isolate = True
                    continue
                except (TransientError, PermanentError):
                    raise  # retried: unavailable, or not about rows (tables gone, a corrupt file)
                except Exception as exc:  # unclassified: retried, then isolated; never wedges
                    unclassified += 1
                    if unclassified >= self.unclassified_attempts and not isolate:
                        self._note_failure(exc, rows, unexpected=True)
                        isolate = True
                        continue
                    raise
                self._observe(batch, time.perf_counter() - t0)
                return

        def on_error(exc: Exception, wait: float) -> None:
            self._note_failure(exc, rows, unexpected=not isinstance(exc, (TransientError, PermanentError)))

        await retry_transient(attempt, backoff=self.backoff, on_error=on_error, retry_on=(Exception,))
        if self.failing:
            self._log.info("store writes recovered", rows=rows)
        self.failing = False
        self.batches += 1
        for op in batch:
            self._queue.popleft()
            if op.kind == _REJECTS:
                self._reject_rows -= op.rows
        self._rows -= rows
        self._committed = batch[-1].seq
        self._progress.set()
        if self.on_commit is not None:  # live feeds: only what is committed, after the commit
            self.on_commit(batch, self.stats)

    def _observe(self, batch: list[_Op], took_s: float) -> None:
        """Histograms of a committed batch: its commit time, and each live trade's emit-to-commit latency."""
        self.commit_seconds.observe(took_s)
        committed_ms = now_ms()
        for op in batch:
            if op.live:
                for t in cast(list[Trade], op.payload):
                    self.emit_to_commit_seconds.observe(max(0.0, (committed_ms - t.ts) / 1000.0))

    def _note_failure(self, exc: BaseException, rows: int, unexpected: bool = False) -> None:
        self.write_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self.failing or self.write_errors % 20 == 0:
            if unexpected:
                self._log.exception("store write failed; retrying", rows=rows, depth=self._rows)
            else:
                self._log.warning("store unavailable; retrying", rows=rows, depth=self._rows, error=str(exc))
        self.failing = True

    async def _write(self, batch: list[_Op], isolate: bool = False) -> None:
        trades: dict[str, list[Trade]] = {}
        candles: dict[str, dict[int, Candle]] = {}
        coverage: dict[str, list[tuple[int, int]]] = {}
        rejects: dict[str, list[Reject]] = {}
        for op in batch:
            if op.kind == _TRADES:
                trades.setdefault(op.symbol, []).extend(cast(list[Trade], op.payload))
            elif op.kind == _CANDLES:
                slot = candles.setdefault(op.symbol, {})
                for c in cast(list[Candle], op.payload):
                    old = slot.get(c.ts)
                    if old is None or c.final or not old.final:
                        slot[c.ts] = c
            elif op.kind == _COVERAGE:
                coverage.setdefault(op.symbol, []).append(cast(tuple[int, int], op.payload))
            else:
                rejects.setdefault(op.symbol, []).extend(cast(list[Reject], op.payload))
        for symbol, ts in trades.items():
            new, ts = await self._save(symbol, ts, self._store.save_trades, isolate, "trade")
            st = self.stats_for(symbol)
            st.trades_stored += new
            if ts:
                last = max(t.ts for t in ts)
                if st.last_trade_ms is None or last > st.last_trade_ms:
                    st.last_trade_ms = last
        for symbol, by_ts in candles.items():
            rows = sorted(by_ts.values(), key=lambda c: c.ts)
            changed, rows = await self._save(symbol, rows, self._store.save_candles, isolate, "candle")
            st = self.stats_for(symbol)
            st.candles_stored += changed
            finals = [c.ts for c in rows if c.final]
            if finals and (st.last_final_candle_ms is None or finals[-1] > st.last_final_candle_ms):
                st.last_final_candle_ms = finals[-1]
        for symbol, spans in coverage.items():
            for start, end in _merge(spans):
                if isolate:
                    _, kept = await self._save(symbol, [(start, end)], self._add_coverage(symbol), True, None)
                    if not kept:
                        continue
                else:
                    await self._store.add_coverage(symbol, start, end)
                st = self.stats_for(symbol)
                if st.coverage_to is None or end > st.coverage_to:
                    st.coverage_to = end
        for symbol, rs in rejects.items():
            await self._save(symbol, rs, self._store.save_rejects, isolate, None)

    def _add_coverage(self, symbol: str) -> Callable[[str, Sequence[tuple[int, int]]], Awaitable[int]]:
        async def add(_: str, spans: Sequence[tuple[int, int]]) -> int:
            for start, end in spans:
                await self._store.add_coverage(symbol, start, end)
            return len(spans)

        return add

    async def _save(
        self,
        symbol: str,
        rows: list[R],
        save: Callable[[str, Sequence[R]], Awaitable[int]],
        isolate: bool,
        kind: str | None,
    ) -> tuple[int, list[R]]:
        """``save(symbol, rows)``; with ``isolate``, bisect on a refusal: (count, the rows stored).

        A row refused alone is quarantined as a reject of ``kind``; with ``kind`` None (coverage, or
        rejects themselves) it is logged with its values and dropped.
        """
        if not isolate:
            return await save(symbol, rows), rows
        refused: list[tuple[R, BaseException]] = []
        count = await self._bisect(symbol, rows, save, refused)
        if not refused:
            return count, rows
        self._quarantine(symbol, kind, refused)
        bad = {id(row) for row, _ in refused}
        return count, [row for row in rows if id(row) not in bad]

    async def _bisect(
        self,
        symbol: str,
        rows: list[R],
        save: Callable[[str, Sequence[R]], Awaitable[int]],
        refused: list[tuple[R, BaseException]],
    ) -> int:
        try:
            return await save(symbol, rows)
        except (TransientError, asyncio.CancelledError):
            raise  # the store went away meanwhile: the whole batch is retried
        except PermanentError as exc:
            if not isinstance(exc, StoreDataError):
                raise  # not about rows
            problem: BaseException = exc
        except Exception as exc:  # noqa: BLE001 - unclassified, after retries: isolated like a data error
            problem = exc
        if len(rows) == 1:
            refused.append((rows[0], problem))
            return 0
        mid = len(rows) // 2
        return await self._bisect(symbol, rows[:mid], save, refused) + await self._bisect(
            symbol, rows[mid:], save, refused)

    def _quarantine(self, symbol: str, kind: str | None, refused: list[tuple[Any, BaseException]]) -> None:
        now = now_ms()
        out: list[Reject] = []
        for row, exc in refused:
            reason = _one_line(f"store refused: {type(exc).__name__}: {exc}")
            if isinstance(row, Trade) and kind == "trade":
                out.append(trade_reject(trade_values(row), reason, now))
            elif isinstance(row, Candle) and kind == "candle":
                out.append(candle_reject(candle_values(row), reason, now))
            else:
                self.rejects_dropped += 1
                self._log.error("store refused a row that has no reject store; dropped", symbol=symbol,
                                row=repr(row)[:500], error=reason)
        if out:
            self.quarantined += len(out)
            self._log.warning("rows quarantined: the store refused them", symbol=symbol, rows=len(out),
                              error=out[0].reason)
            self.rejects.reject(symbol, out)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping or touching [start, end) intervals."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
