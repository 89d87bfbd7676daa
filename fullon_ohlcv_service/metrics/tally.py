"""Tally: the cumulative counters and histograms of one exchange, parsed from heartbeat params, addable across lives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fullon_ohlcv_service.metrics.figures import (
    HISTOGRAMS,
    SYMBOL_COUNTERS,
    WORKER_COUNTERS,
    Histogram,
    number,
)


@dataclass(slots=True)
class Tally:
    """Counter values of one worker life (from its heartbeat) or the sum of several (the master's carry).

    The params layout is the heartbeat's own: worker counters at the top, ``rest_requests`` as
    outcome -> count, ``symbols`` as symbol -> counters, histograms under their keys. Missing or
    malformed values count as 0, so a heartbeat from an older worker (or before another branch's
    field exists) still parses.
    """

    worker: dict[str, float] = field(default_factory=dict)
    rest: dict[str, float] = field(default_factory=dict)
    symbols: dict[str, dict[str, float]] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> Tally:
        t = cls()
        if not isinstance(params, Mapping):
            return t
        for key in WORKER_COUNTERS:
            if key in params:
                t.worker[key] = number(params.get(key))
        rest = params.get("rest_requests")
        if isinstance(rest, Mapping):
            t.rest = {str(k): number(v) for k, v in rest.items()}
        symbols = params.get("symbols")
        if isinstance(symbols, Mapping):
            for sym, info in symbols.items():
                if isinstance(info, Mapping):
                    t.symbols[str(sym)] = {k: number(info.get(k)) for k in SYMBOL_COUNTERS if k in info}
        for key in HISTOGRAMS:
            h = Histogram.from_params(params.get(key))
            if h is not None:
                t.histograms[key] = h
        return t

    def add(self, other: Tally) -> None:
        """Add another life's values (a histogram with other bounds replaces nothing: it is skipped)."""
        for k, v in other.worker.items():
            self.worker[k] = self.worker.get(k, 0.0) + v
        for k, v in other.rest.items():
            self.rest[k] = self.rest.get(k, 0.0) + v
        for sym, counters in other.symbols.items():
            mine = self.symbols.setdefault(sym, {})
            for k, v in counters.items():
                mine[k] = mine.get(k, 0.0) + v
        for key, h in other.histograms.items():
            mine_h = self.histograms.get(key)
            if mine_h is None:
                self.histograms[key] = Histogram(h.bounds, list(h.counts), h.total)
            elif mine_h.bounds == h.bounds:
                mine_h.add(h)

    def plus(self, other: Tally) -> Tally:
        out = Tally()
        out.add(self)
        out.add(other)
        return out

    def empty(self) -> bool:
        return not (self.worker or self.rest or self.symbols or self.histograms)

    def as_params(self) -> dict[str, Any]:
        """The heartbeat layout (what ``from_params`` reads), without zero entries, for the master's record."""
        out: dict[str, Any] = {k: _plain(v) for k, v in self.worker.items() if v}
        rest = {k: _plain(v) for k, v in self.rest.items() if v}
        if rest:
            out["rest_requests"] = rest
        symbols = {s: {k: _plain(v) for k, v in c.items() if v} for s, c in self.symbols.items()}
        symbols = {s: c for s, c in symbols.items() if c}
        if symbols:
            out["symbols"] = symbols
        for key, h in self.histograms.items():
            if h.count:
                out[key] = h.as_params()
        return out


def _plain(v: float) -> int | float:
    return int(v) if float(v).is_integer() else round(v, 6)
