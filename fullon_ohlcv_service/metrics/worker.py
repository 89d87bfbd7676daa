"""Gather a worker's /metrics figures (REST outcomes, rate-limit waits, histograms) for its heartbeat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fullon_ohlcv_service.metrics.figures import RestCounters, WorkerFigures

if TYPE_CHECKING:
    from fullon_ohlcv_service.collectors.backfill import Retry
    from fullon_ohlcv_service.collectors.writer import WriterBeats
    from fullon_ohlcv_service.ports import ExchangeClient


def worker_figures(client: ExchangeClient | None, rest: Retry | None, writer: WriterBeats | None) -> WorkerFigures:
    """The figures of this worker life so far: the adapter's REST counters (when it keeps them, as the
    ccxt adapter does), the collectors' backoffs after a 429, and the writer's histograms."""
    fig = WorkerFigures()
    counters = getattr(client, "rest_counters", None)
    if isinstance(counters, RestCounters):
        fig.rest_requests = dict(counters.requests)
        fig.rate_limit_waits = counters.rate_limit_waits
        fig.rate_limit_wait_s = counters.rate_limit_wait_s
    if rest is not None:
        fig.rate_limit_waits += rest.rate_limit_waits
        fig.rate_limit_wait_s += rest.rate_limit_wait_s
    if writer is not None:
        fig.commit_seconds = writer.commit_seconds
        fig.emit_to_commit_seconds = writer.emit_to_commit_seconds
    return fig
