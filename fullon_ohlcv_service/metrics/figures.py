"""Cumulative figures a worker ships in its heartbeat for /metrics: counter names and bucketed histograms.

Pure and dependency-free (the worker never imports prometheus_client). Every figure here is cumulative
over one worker life; the master adds up the lives (``metrics.ledger``) so that exported counters
never go backwards when a worker restarts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Bucket upper bounds (seconds). Constants: the master adds histograms of successive worker lives
# bucket by bucket, which is only valid while every life uses the same bounds.
COMMIT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EMIT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

# REST request outcomes counted by the ccxt adapter (one per HTTP request ccxt makes).
REST_OUTCOMES: tuple[str, ...] = ("ok", "rate_limited", "5xx", "error")

# Heartbeat params keys (worker level) that are cumulative counters.
WORKER_COUNTERS: tuple[str, ...] = ("reconnects", "errors", "rate_limit_waits", "rate_limit_wait_s")
# Heartbeat params keys (per symbol) that are cumulative counters; ``rejected`` and ``rest_errors`` are
# written by other branches (names.md) and read with a default of 0.
SYMBOL_COUNTERS: tuple[str, ...] = ("trades_stored", "candles_stored", "gaps_found", "gaps_repaired", "rejected",
                                    "rest_errors")
# Heartbeat params keys (worker level) holding a histogram (``Histogram.as_params``).
HISTOGRAMS: tuple[str, ...] = ("commit_seconds", "emit_to_commit_seconds")


@dataclass(slots=True)
class Histogram:
    """Cumulative bucket counts over fixed upper bounds (the last bucket is +Inf), a sum and a count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, NOT cumulative; len(bounds) + 1
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float, n: int = 1) -> None:
        """Count ``n`` observations of ``value`` (Prometheus buckets: value <= bound)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.total += value * n

    def add(self, other: Histogram) -> None:
        """Add another histogram with the same bounds (a previous worker life)."""
        if other.bounds != self.bounds:
            raise ValueError("histograms with different bucket bounds cannot be added")
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus ``le`` buckets: (bound text, observations <= bound), ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, c in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += c
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out

    def as_params(self) -> dict[str, Any]:
        return {"le": list(self.bounds), "counts": list(self.counts), "sum": round(self.total, 6)}

    @classmethod
    def from_params(cls, value: Any) -> Histogram | None:
        """Parse ``as_params`` output (from a heartbeat); None when missing or malformed."""
        if not isinstance(value, Mapping):
            return None
        le, counts, total = value.get("le"), value.get("counts"), value.get("sum")
        if not isinstance(le, list) or not isinstance(counts, list) or len(counts) != len(le) + 1:
            return None
        if not all(_number(b) for b in le) or not all(_count(c) for c in counts) or not _number(total):
            return None
        return cls(tuple(float(b) for b in le), [int(c) for c in counts], number(total))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def number(v: Any) -> float:
    """A heartbeat counter's value: a finite non-negative number, else 0."""
    return float(v) if _number(v) and v >= 0 else 0.0


@dataclass(slots=True)
class RestCounters:
    """The ccxt adapter's REST request outcomes and its rate-limit waits."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REST_OUTCOMES, 0))
    rate_limit_waits: int = 0
    rate_limit_wait_s: float = 0.0

    def count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def waited(self, seconds: float) -> None:
        self.rate_limit_waits += 1
        self.rate_limit_wait_s += max(0.0, seconds)


@dataclass(slots=True)
class WorkerFigures:
    """The worker-level figures /metrics needs beyond the heartbeat's existing fields."""

    rest_requests: dict[str, int] = field(default_factory=dict)
    rate_limit_waits: int = 0
    rate_limit_wait_s: float = 0.0
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))
    emit_to_commit_seconds: Histogram = field(default_factory=lambda: Histogram(EMIT_BUCKETS))

    def as_params(self) -> dict[str, Any]:
        return {
            "rest_requests": dict(self.rest_requests),
            "rate_limit_waits": self.rate_limit_waits,
            "rate_limit_wait_s": round(self.rate_limit_wait_s, 6),
            "commit_seconds": self.commit_seconds.as_params(),
            "emit_to_commit_seconds": self.emit_to_commit_seconds.as_params(),
        }
