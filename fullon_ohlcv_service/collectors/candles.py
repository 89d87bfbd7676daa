"""Trades -> 1m candles: per-minute aggregation (open first, close last, volume sum) and finality."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute


def trade_key(t: Trade) -> tuple[int, int, str]:
    """Order of trades: time, then id (numeric ids compare as numbers: shorter text first)."""
    return (t.ts, len(t.id), t.id)


class ExactSum:
    """The exact sum of floats added one at a time, held in a few non-overlapping partials.

    Shewchuk's algorithm (the one ``math.fsum`` runs internally): the partials always add up to the
    exact real sum of every value added, so ``value()`` is ``math.fsum`` of all of them, bit for
    bit, whatever the order, while holding a handful of floats (non-overlapping doubles: at most
    about 40, in practice 1-3) instead of every value. A minute's volume therefore costs the same
    memory at 1 or 50,000 trades.
    """

    __slots__ = ("_partials",)

    def __init__(self, first: float | None = None) -> None:
        self._partials: list[float] = []
        if first is not None:
            self.add(first)

    def add(self, x: float) -> None:
        partials = self._partials
        if not math.isfinite(x) or (partials and not math.isfinite(partials[-1])):
            # inf or nan (validation keeps them out of trades): one non-finite value, IEEE rules
            special = partials[-1] if partials and not math.isfinite(partials[-1]) else 0.0
            partials[:] = [special + x]
            return
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    def value(self) -> float:
        return math.fsum(self._partials)

    def __len__(self) -> int:
        return len(self._partials)


@dataclass(slots=True)
class MinuteAgg:
    """Running aggregate of one minute's trades; order-independent (any arrival order gives one result).

    Constant size: prices are kept as first/last/high/low and the volume as an exact running sum.
    """

    minute: int
    first: tuple[int, int, str]
    open: float
    last: tuple[int, int, str]
    close: float
    high: float
    low: float
    volume: ExactSum = field(default_factory=ExactSum)

    @classmethod
    def of(cls, t: Trade) -> MinuteAgg:
        k = trade_key(t)
        return cls(floor_minute(t.ts), k, t.price, k, t.price, t.price, t.price, ExactSum(t.amount))

    def add(self, t: Trade) -> None:
        k = trade_key(t)
        if k < self.first:
            self.first, self.open = k, t.price
        if k > self.last:
            self.last, self.close = k, t.price
        if t.price > self.high:
            self.high = t.price
        if t.price < self.low:
            self.low = t.price
        self.volume.add(t.amount)

    def candle(self, final: bool) -> Candle:
        return Candle(self.minute, self.open, self.high, self.low, self.close, self.volume.value(), final)


def candles_from_trades(trades: Iterable[Trade], final: bool = True) -> list[Candle]:
    """1m candles of ``trades`` (any order), one per minute that has trades, in time order."""
    aggs: dict[int, MinuteAgg] = {}
    for t in trades:
        m = floor_minute(t.ts)
        a = aggs.get(m)
        if a is None:
            aggs[m] = MinuteAgg.of(t)
        else:
            a.add(t)
    return [aggs[m].candle(final) for m in sorted(aggs)]


class CandleBuilder:
    """Builds one symbol's 1m candles from its (deduplicated) trade stream.

    Minutes before ``final_to`` are final: every trade in them is known (the caller advances the
    watermark when the trade stream is proven complete up to a time). Final minutes are kept for
    ``keep_minutes`` so a late trade (found by a REST catch-up) re-emits a corrected final candle;
    a trade older than that is reported as *stale* so the caller rebuilds that minute from the store.
    """

    def __init__(self, keep_minutes: int = 120) -> None:
        self.keep_minutes = keep_minutes
        self._aggs: dict[int, MinuteAgg] = {}
        self.final_to: int | None = None  # minute boundary: minutes < final_to are final
        self._changed_final: set[int] = set()  # final minutes whose candle must be (re)written
        self._dirty_open: set[int] = set()  # open minutes changed since the last provisional emit

    def add(self, t: Trade) -> bool:
        """Aggregate a trade; False when its minute is too old to be held (caller rebuilds it)."""
        m = floor_minute(t.ts)
        if self.final_to is not None and m < self.final_to - self.keep_minutes * MINUTE_MS:
            return False
        a = self._aggs.get(m)
        if a is None:
            self._aggs[m] = MinuteAgg.of(t)
        else:
            a.add(t)
        if self.final_to is not None and m < self.final_to:
            self._changed_final.add(m)
        else:
            self._dirty_open.add(m)
        return True

    def seed(self, trades: Iterable[Trade]) -> None:
        """Load already-stored trades of a minute that was open when a previous run stopped."""
        for t in trades:
            self.add(t)
        self._dirty_open.clear()

    def advance(self, watermark: int) -> list[Candle]:
        """Trades before ``watermark`` are complete: return the candles that became final or changed."""
        boundary = floor_minute(watermark)
        out: list[Candle] = []
        if self.final_to is None or boundary > self.final_to:
            lo = self.final_to
            for m in sorted(self._aggs):
                if m >= boundary:
                    break
                if lo is None or m >= lo:
                    self._changed_final.add(m)
                    self._dirty_open.discard(m)
            self.final_to = boundary
        for m in sorted(self._changed_final):
            out.append(self._aggs[m].candle(True))
        self._changed_final.clear()
        horizon = self.final_to - self.keep_minutes * MINUTE_MS
        for m in [m for m in self._aggs if m < horizon]:
            del self._aggs[m]
        return out

    def provisional(self) -> list[Candle]:
        """Candles of open minutes that changed since the last call (written as provisional)."""
        out = [self._aggs[m].candle(False) for m in sorted(self._dirty_open) if m in self._aggs]
        self._dirty_open.clear()
        return out

    def reset_minute(self, minute: int, trades: Iterable[Trade]) -> None:
        """Replace a held minute's aggregate with one built from ``trades`` (read back from the store)."""
        agg: MinuteAgg | None = None
        for t in trades:
            if agg is None:
                agg = MinuteAgg.of(t)
            else:
                agg.add(t)
        if agg is None:
            self._aggs.pop(minute, None)
        else:
            self._aggs[minute] = agg

    def candle(self, minute: int, final: bool = True) -> Candle | None:
        agg = self._aggs.get(minute)
        return None if agg is None else agg.candle(final)

    def holds(self, minute: int) -> bool:
        return minute in self._aggs

    @property
    def held(self) -> int:
        """Minutes held (open ones and the final ones kept for late trades)."""
        return len(self._aggs)
