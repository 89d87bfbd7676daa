"""One snapshot of the fleet for /metrics, built on ohlcv-status's own Report so the two never disagree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fullon_ohlcv_service.contract import (
    PROCESS_TYPE,
    SUPERVISOR_COMPONENT,
    Record,
    SupervisorBeat,
    SymbolState,
    WorkerBeat,
    worker_component,
)
from fullon_ohlcv_service.metrics.figures import number
from fullon_ohlcv_service.metrics.tally import Tally
from fullon_ohlcv_service.ports import SyncProcessCache
from fullon_ohlcv_service.status import ExchangeRow, Report, build_report, worker_names


@dataclass(frozen=True, slots=True)
class Fleet:
    """The raw process-cache records read at one instant: what ``ohlcv-status`` reads too."""

    now_ms: int
    supervisor: dict[str, Any] | None
    workers: dict[str, dict[str, Any] | None]


def read_fleet(cache: SyncProcessCache, now_ms: Callable[[], int]) -> Fleet:
    """Read the supervisor's and every worker's record (raises the cache's OhlcvError when it is down)."""
    supervisor = cache.get_component(SUPERVISOR_COMPONENT)
    names = worker_names(supervisor, cache.list_active(PROCESS_TYPE))
    workers = {name: cache.get_component(worker_component(name)) for name in names}
    return Fleet(now_ms(), supervisor, workers)


@dataclass(slots=True)
class ExchangeFigures:
    """One exchange: its status row plus the counters /metrics adds (this life + the master's carry)."""

    row: ExchangeRow
    healthy: bool  # no ohlcv-status problem names this exchange
    counters: Tally  # carried + the current worker life's
    restarts: dict[str, int]
    loop_lag_s: float | None = None
    buffer_bytes: float | None = None
    buffer_bytes_max: float | None = None
    degraded: int = 0  # symbols whose state is "degraded" (names.md; 0 until a worker reports it)
    extra_symbols: list[str] = field(default_factory=list)  # symbols known only from the carry


@dataclass(slots=True)
class FleetSnapshot:
    """Everything one scrape exposes: ohlcv-status's Report and the figures next to each row."""

    report: Report
    exchanges: list[ExchangeFigures]
    metrics_listen: str | None
    reload_error: str | None = None  # the supervisor's failed SIGHUP reload (names.md), if any


def _params(doc: dict[str, Any] | None) -> Any:
    record = Record.from_doc(doc)
    return record.params if record is not None else None


def build_snapshot(fleet: Fleet) -> FleetSnapshot:
    """Pure: the Report that ``ohlcv-status --json`` prints for these records, and the counters beside it."""
    report = build_report(fleet.supervisor, fleet.workers, fleet.now_ms)
    sup = SupervisorBeat.from_params(_params(fleet.supervisor))
    carried, restarts = sup.carried, sup.restarts
    troubled = {p.split(":", 1)[0] for p in report.problems}
    out: list[ExchangeFigures] = []
    for row in report.exchanges:
        params = _params(fleet.workers.get(row.exchange))
        beat = WorkerBeat.from_params(params)
        current = row.pid is not None and beat.pid == row.pid
        counters = Tally.from_params(carried.get(row.exchange))
        if current:
            counters.add(Tally.from_params(params))
        shown = {r.symbol for r in row.symbol_rows}
        fig = ExchangeFigures(
            row=row, healthy=row.exchange not in troubled, counters=counters,
            restarts=dict(restarts.get(row.exchange, {})),
            extra_symbols=sorted(s for s in counters.symbols if s not in shown),
        )
        if current:
            fig.loop_lag_s = None if beat.loop_lag_ms is None else number(beat.loop_lag_ms) / 1000.0
            fig.buffer_bytes = None if beat.buffer_bytes is None else number(beat.buffer_bytes)
            fig.buffer_bytes_max = None if beat.buffer_bytes_max is None else number(beat.buffer_bytes_max)
            fig.degraded = sum(1 for info in beat.symbols.values() if info.state == SymbolState.DEGRADED)
        out.append(fig)
    return FleetSnapshot(report=report, exchanges=out, metrics_listen=sup.metrics_listen,
                         reload_error=sup.reload_error)
