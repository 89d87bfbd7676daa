"""1m candles from the exchange's REST OHLC: backfill as deep as served, reconciliation, and gap repair."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fullon_ohlcv_service.collectors.backfill import Cursor, RestHealth, Retry, page_candles, page_trades
from fullon_ohlcv_service.collectors.candles import candles_from_trades
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.errors import PermanentError, TransientError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.ports import ExchangeClient, OhlcvStore
from fullon_ohlcv_service.retry import Backoff, retry_transient
from fullon_ohlcv_service.timeutil import MINUTE_MS, now_ms

REPAIR_CHUNK_MS = 60 * MINUTE_MS
STREAM_BACKOFF = Backoff(0.25, 10.0)  # re-reading live candles after a drop (cap: Settings.stream_backoff_max)


class SymbolHandle(Protocol):
    """What the candle side may read and do about one symbol (collectors.sync.SymbolSync provides it)."""

    @property
    def symbol(self) -> str: ...

    @property
    def history_start(self) -> int: ...

    @property
    def built_from(self) -> int: ...  # the first minute whose trades the trade side has all seen

    @property
    def final_to(self) -> int | None: ...  # minutes before it have their final candle queued

    @property
    def rest(self) -> RestHealth: ...

    @property
    def failed(self) -> bool: ...

    @property
    def synced(self) -> bool: ...

    @property
    def ever_synced(self) -> bool: ...

    def candle(self, minute: int) -> Candle | None: ...

    def remember(self, trades: Iterable[Trade]) -> None: ...

    def reset_minutes(self, a: int, b: int, trades: Sequence[Trade]) -> None: ...


@dataclass(frozen=True, slots=True)
class CandleBeats:
    """The candle side's counters for the heartbeat, at one instant."""

    gaps_repaired: int
    gaps_found_by: dict[str, int]
    gaps_repaired_by: dict[str, int]

    def counters(self, symbol: str) -> dict[str, int]:
        return {"gaps_found": self.gaps_found_by.get(symbol, 0), "gaps_repaired": self.gaps_repaired_by.get(symbol, 0)}


def same_candle(a: Candle, b: Candle) -> bool:
    """Equal OHLCV (floats compared to 1e-9 relative: sums may differ in the last bit)."""
    return a.ts == b.ts and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        for x, y in ((a.open, b.open), (a.high, b.high), (a.low, b.low), (a.close, b.close), (a.volume, b.volume))
    )


class CandleCollector:
    """REST candles next to the trade-built ones.

    Plan (documented in docs): every final 1m candle is built from the complete trade stream
    (trades.py), which equals the exchange's candle by construction. The exchange's REST OHLC is
    used (1) to backfill candles as deep as it serves them (Kraken ~720 bars: older minutes come
    from the trades only), (2) to reconcile the last few final candles periodically: a difference
    means trades were missed mid-stream, so that minute's trades are re-fetched over REST and the
    exchange's candle is written, and (3) ``candle_gaps`` is checked periodically and each gap is
    repaired from REST trades (trades, candles, and the coverage record for the range).
    """

    def __init__(
        self,
        symbols: Mapping[str, SymbolHandle],
        client: ExchangeClient,
        store: OhlcvStore,
        writer: BatchWriter,
        *,
        retry: Retry,
        log: Log,
        reconcile_every: float = 60.0,
        reconcile_minutes: int = 5,
        gap_every: float = 60.0,
        max_repairs: int = 30,
        stream_backoff: Backoff = STREAM_BACKOFF,
    ) -> None:
        self.symbols = symbols
        self.client = client
        self.store = store
        self.writer = writer
        self.retry = retry
        self.log = log
        self.reconcile_every = reconcile_every
        self.reconcile_minutes = reconcile_minutes
        self.gap_every = gap_every
        self.max_repairs = max_repairs
        self.stream_backoff = stream_backoff
        self.gaps_repaired = 0
        self.gaps_found_by: Counter[str] = Counter()  # per symbol: gaps and candle mismatches found
        self.gaps_repaired_by: Counter[str] = Counter()  # per symbol: ranges repaired from REST trades

    def beats(self) -> CandleBeats:
        """What the heartbeat reports about the candle side now."""
        return CandleBeats(self.gaps_repaired, dict(self.gaps_found_by), dict(self.gaps_repaired_by))

    async def backfill(self, symbol: str) -> None:
        """Write the exchange's REST candles from the history start (or as deep as served) to now."""
        run = self.symbols[symbol]
        if run.failed:
            return
        since = run.history_start
        depth = self.client.ohlcv_depth
        if depth is not None:
            since = max(since, now_ms() - (depth - 1) * MINUTE_MS)
        since -= since % MINUTE_MS

        async def on_page(candles: list[Candle]) -> None:
            await self.writer.put_candles(symbol, candles)

        try:
            n = await page_candles(self.client, symbol, since, now_ms(), on_page, retry=self.retry,
                                   health=run.rest)
        except PermanentError as exc:
            self.log.warning("REST candles unavailable", symbol=symbol, error=str(exc))
            return
        self.log.info("REST candle backfill done", symbol=symbol, candles=n)

    async def live_loop(self, symbol: str) -> None:
        """Native websocket OHLC for the forming minute, written as provisional only.

        The exchange's live candle is the freshest view of the open minute, so it is stored while
        that minute is open for us (at or after the trade builder's final boundary). The stream's
        closing signals (Binance's ``x`` flag, Kraken's next-minute update) are not used: a final 1m
        row is written only from the complete trade stream or from REST, so a socket that missed
        updates can never leave a wrong final candle behind.
        """
        run = self.symbols[symbol]

        def on_error(exc: Exception, wait: float) -> None:
            self.log.debug("live candles interrupted", symbol=symbol, error=str(exc))

        while not run.failed:
            try:
                candles = await retry_transient(lambda: self.client.watch_ohlcv(symbol), backoff=self.stream_backoff,
                                                stop=lambda: run.failed, on_error=on_error)
            except TransientError:
                return  # (raised only once the symbol failed)
            except PermanentError as exc:
                self.log.warning("live candles unavailable; using trades and REST only", symbol=symbol,
                                 error=str(exc))
                return
            final_to = run.final_to
            # a zero-volume kline (Binance pushes them for empty minutes) would stay provisional forever
            fresh = [dataclasses.replace(c, final=False) for c in candles
                     if c.volume > 0 and (final_to is None or c.ts >= final_to)]
            if fresh:
                await self.writer.put_candles(symbol, fresh)

    async def reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_every)
            for run in list(self.symbols.values()):
                if not run.failed and run.synced:
                    try:
                        await self.reconcile(run)
                    except TransientError as exc:
                        self.log.warning("candle reconciliation skipped", symbol=run.symbol, error=str(exc))

    async def reconcile(self, run: SymbolHandle) -> int:
        """Compare the last few final candles with the exchange's; repair the minutes that differ."""
        final_to = run.final_to
        if final_to is None:
            return 0
        since = final_to - self.reconcile_minutes * MINUTE_MS
        rest = await self.retry.call(lambda: self.client.fetch_ohlcv(run.symbol, since, None), health=run.rest,
                                      holds_back=False)
        fixed = 0
        for c in rest:
            if not c.final or c.ts < since or c.ts + MINUTE_MS > final_to:
                continue
            ours = run.candle(c.ts)
            if ours is not None and same_candle(ours, c):
                continue
            if ours is None and c.ts < run.built_from:
                continue  # a minute from before this run: its stored candle was built then
            self.gaps_found_by[run.symbol] += 1
            self.log.warning("candle differs from the exchange; repairing its trades", symbol=run.symbol, ts=c.ts)
            await self.repair(run, c.ts, c.ts + MINUTE_MS)
            await self.writer.put_candles(run.symbol, [c])
            fixed += 1
        return fixed

    async def gap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gap_every)
            try:
                await self.check_gaps()
            except TransientError as exc:  # the store or the exchange is down: try again next round
                self.log.warning("gap check skipped", error=str(exc))

    async def check_gaps(self) -> int:
        """Repair the committed history's candle gaps (minutes with no candle and no coverage)."""
        repaired = 0
        for run in list(self.symbols.values()):
            if run.failed or not run.ever_synced:
                continue
            # minutes before the builder's final boundary have had their candles queued: once the
            # writer has committed what is queued now, a minute with no candle there is a true gap
            until = run.final_to if run.final_to is not None else run.built_from
            await self.writer.wait_committed(self.writer.last_seq)
            gaps = await self.store.candle_gaps(run.symbol, run.history_start, until)
            self.gaps_found_by[run.symbol] += len(gaps)
            for a, b in gaps:
                while a < b and repaired < self.max_repairs:
                    end = min(b, a + REPAIR_CHUNK_MS)
                    await self.repair(run, a, end)
                    repaired += 1
                    a = end
        return repaired

    async def repair(self, run: SymbolHandle, a: int, b: int) -> None:
        """Fetch [a, b)'s trades over REST; store them, their candles and (if complete) the coverage."""
        got: list[Trade] = []

        async def on_page(trades: list[Trade], watermark: int) -> None:
            got.extend(t for t in trades if a <= t.ts < b)

        res = await page_trades(self.client, run.symbol, Cursor(a - 1), lambda: b - 1, on_page, retry=self.retry,
                                health=run.rest)
        complete = res.reached or (res.watermark is not None and res.watermark >= b)
        await self.writer.put_trades(run.symbol, got)
        run.remember(got)
        await self.writer.put_candles(run.symbol, candles_from_trades(got))
        run.reset_minutes(a, b, got)
        if complete:
            await self.writer.put_coverage(run.symbol, a, b)
        self.gaps_repaired += 1
        self.gaps_repaired_by[run.symbol] += 1
        self.log.info("gap repaired from REST trades", symbol=run.symbol, start=a, end=b, trades=len(got),
                      complete=complete)
