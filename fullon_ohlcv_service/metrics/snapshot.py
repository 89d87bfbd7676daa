"""One snapshot of the fleet for /metrics, built on ohlcv-status's own Report so the two never disagree."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fullon_ohlcv_service.metrics.figures import number
from fullon_ohlcv_service.metrics.tally import Tally
from fullon_ohlcv_service.ports import SyncProcessCache
from fullon_ohlcv_service.status import (
    SUPERVISOR_COMPONENT,
    WORKER_PREFIX,
    ExchangeRow,
    Report,
    build_report,
    worker_names,
)


@dataclass(frozen=True, slots=True)
class Fleet:
    """The raw process-cache records read at one instant: what ``ohlcv-status`` reads too."""

    now_ms: int
    supervisor: dict[str, Any] | None
    workers: dict[str, dict[str, Any] | None]


def read_fleet(cache: SyncProcessCache, now_ms: Callable[[], int]) -> Fleet:
    """Read the supervisor's and every worker's record (raises the cache's OhlcvError when it is down)."""
    supervisor = cache.get_component(SUPERVISOR_COMPONENT)
    names = worker_names(supervisor, cache.list_active("ohlcv"))
    workers = {name: cache.get_component(WORKER_PREFIX + name) for name in names}
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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _opt_number(value: Any) -> float | None:
    return number(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def build_snapshot(fleet: Fleet) -> FleetSnapshot:
    """Pure: the Report that ``ohlcv-status --json`` prints for these records, and the counters beside it."""
    report = build_report(fleet.supervisor, fleet.workers, fleet.now_ms)
    sup_params = _mapping(_mapping(fleet.supervisor).get("params"))
    ledger = _mapping(sup_params.get("metrics"))
    carried = _mapping(ledger.get("carried"))
    restarts = _mapping(ledger.get("restarts"))
    troubled = {p.split(":", 1)[0] for p in report.problems}
    out: list[ExchangeFigures] = []
    for row in report.exchanges:
        params = _mapping(_mapping(fleet.workers.get(row.exchange)).get("params"))
        current = row.pid is not None and params.get("pid") == row.pid
        counters = Tally.from_params(carried.get(row.exchange))
        if current:
            counters.add(Tally.from_params(params))
        shown = {r.symbol for r in row.symbol_rows}
        fig = ExchangeFigures(
            row=row, healthy=row.exchange not in troubled, counters=counters,
            restarts={str(k): int(number(v)) for k, v in _mapping(restarts.get(row.exchange)).items()},
            extra_symbols=sorted(s for s in counters.symbols if s not in shown),
        )
        if current:
            lag_ms = _opt_number(params.get("loop_lag_ms"))
            fig.loop_lag_s = None if lag_ms is None else lag_ms / 1000.0
            fig.buffer_bytes = _opt_number(params.get("buffer_bytes"))
            fig.buffer_bytes_max = _opt_number(params.get("buffer_bytes_max"))
            fig.degraded = sum(1 for info in _mapping(params.get("symbols")).values()
                               if _mapping(info).get("state") == "degraded")
        out.append(fig)
    listen = _mapping(sup_params.get("metrics_exporter")).get("listen")
    reload_error = sup_params.get("reload_error")
    return FleetSnapshot(report=report, exchanges=out, metrics_listen=str(listen) if listen else None,
                         reload_error=str(reload_error) if reload_error else None)
