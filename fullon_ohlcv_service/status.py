"""`ohlcv-status`: one row per exchange (and per symbol with -v) from the process cache; --check for probes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from fullon_ohlcv_service.contract import (
    HEALTHY_WORKER_STATES,
    PROCESS_TYPE,
    SUPERVISOR_COMPONENT,
    Record,
    SupervisedState,
    SupervisorBeat,
    SymbolBeat,
    SymbolState,
    WorkerBeat,
    WorkerState,
    worker_component,
    worker_exchange,
)
from fullon_ohlcv_service.errors import EXIT_USAGE
from fullon_ohlcv_service.settings import Settings, add_common_args, settings_from_args
from fullon_ohlcv_service.timeutil import now_ms, parse_time

EXIT_UNHEALTHY = 1
UNSUPERVISED = "unsupervised"  # a worker registered without a master that runs it


@dataclass(slots=True)
class SymbolRow:
    symbol: str
    last_trade_ms: int | None
    last_final_candle_ms: int | None
    data_age_s: float | None
    trades_stored: int | None
    candles_stored: int | None
    backfill_pct: float | None
    error: str | None
    rejected: int | None = None  # rows refused or quarantined by the worker (see the <symbol>_rejects table)
    state: str | None = None  # backfill|catching_up|live|degraded|error (the worker's view)
    rest_errors: int | None = None  # failed REST calls in the worker's life
    last_rest_error: str | None = None


@dataclass(slots=True)
class ExchangeRow:
    exchange: str
    state: str  # the supervisor's view: starting|running|backoff|hung|fatal|stopped (or "unsupervised")
    worker_state: str | None  # the worker's own: starting|running|behind|degraded|error
    pid: int | None
    uptime_s: float | None
    restarts: int | None
    heartbeat_age_s: float | None
    symbols: int
    data_age_s: float | None  # the stalest symbol's age of last data
    backfill_pct: float | None  # the least advanced symbol
    buffer_depth: int | None
    last_error: str | None
    last_exit: str | None
    symbol_rows: list[SymbolRow] = field(default_factory=list)
    buffer_bytes: int | None = None  # estimated bytes in the worker's buffers
    buffer_bytes_max: int | None = None  # their bound (--buffer-mb)


@dataclass(slots=True)
class Report:
    now_ms: int
    supervisor: dict[str, Any] | None
    exchanges: list[ExchangeRow]
    problems: list[str]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "problems": self.problems, "now_ms": self.now_ms,
                "supervisor": self.supervisor, "exchanges": [asdict(r) for r in self.exchanges]}


def _age_s(now: int, iso: Any) -> float | None:
    if not iso:
        return None
    try:
        return max(0.0, (now - parse_time(str(iso))) / 1000.0)
    except ValueError:
        return None


def _symbol_rows(beat: WorkerBeat, now: int) -> list[SymbolRow]:
    rows: list[SymbolRow] = []
    for symbol, info in sorted(beat.symbols.items()):
        rows.append(_symbol_row(symbol, info, now))
    return rows


def _symbol_row(symbol: str, info: SymbolBeat, now: int) -> SymbolRow:
    trade, candle = info.last_trade_ms, info.last_final_candle_ms
    newest = max((t for t in (trade, candle) if t is not None), default=None)
    return SymbolRow(
        symbol=symbol, last_trade_ms=trade, last_final_candle_ms=candle,
        data_age_s=None if newest is None else max(0.0, (now - newest) / 1000.0),
        trades_stored=info.trades_stored, candles_stored=info.candles_stored, backfill_pct=info.backfill_pct,
        error=info.error, rejected=info.rejected, state=info.state, rest_errors=info.rest_errors,
        last_rest_error=info.last_rest_error,
    )


def build_report(supervisor: dict[str, Any] | None, workers: dict[str, dict[str, Any] | None],
                 now: int) -> Report:
    """Rows and health from the supervisor's record and each worker's record (pure; ``now`` in epoch ms)."""
    problems: list[str] = []
    sup_record = Record.from_doc(supervisor)
    sup = SupervisorBeat.from_params(sup_record.params if sup_record else None)
    expected = sup.exchanges
    timeout = sup.heartbeat_timeout or 30.0
    interval = sup.heartbeat_interval or 5.0
    sup_summary: dict[str, Any] | None = None
    if sup_record is None:
        problems.append("no ohlcv-supervisor is registered in the process cache")
    else:
        sup_age = _age_s(now, sup_record.heartbeat)
        sup_summary = {"pid": sup.pid, "status": sup_record.status, "heartbeat_age_s": sup_age,
                       "message": sup_record.message, "reload_error": sup.reload_error}
        if sup_record.status == "stopped" or sup.stopping:
            problems.append("the supervisor is stopping or stopped")
        elif sup_age is None or sup_age > max(timeout, 3 * interval):
            problems.append(f"the supervisor's own heartbeat is stale ({_fmt_age(sup_age)} old)")
        if not expected:
            problems.append("the supervisor runs no exchange")
    rows: list[ExchangeRow] = []
    for name in sorted(set(expected) | set(workers)):
        entry = expected.get(name)
        record = Record.from_doc(workers.get(name))
        beat = WorkerBeat.from_params(record.params if record else None)
        pid = entry.pid if entry is not None else beat.pid
        current = record is not None and pid is not None and beat.pid == pid
        sym_rows = _symbol_rows(beat, now) if current else []
        started = beat.started_ms if current else None
        started = started if started is not None else (entry.started_ms if entry else None)
        hb_age = _age_s(now, record.heartbeat) if current and record else None
        ages = [r.data_age_s for r in sym_rows if r.data_age_s is not None]
        pcts = [r.backfill_pct for r in sym_rows if r.backfill_pct is not None]
        sym_errors = [f"{r.symbol}: {r.error}" for r in sym_rows if r.error]
        state = (entry.state if entry else None) or UNSUPERVISED
        worker_state = beat.state if current else None
        last_error = entry.reason if entry and state in (
            SupervisedState.FATAL, SupervisedState.HUNG, SupervisedState.BACKOFF, SupervisedState.STOPPED) else None
        if not last_error and current and record:
            last_error = (sym_errors[0] if sym_errors else None) or (
                record.message if worker_state == WorkerState.ERROR else None)
        if not last_error and worker_state == WorkerState.DEGRADED:
            last_error = next((f"{r.symbol}: REST failing: {r.last_rest_error}" for r in sym_rows
                               if r.state == SymbolState.DEGRADED), None)
        rows.append(ExchangeRow(
            exchange=name, state=state, worker_state=worker_state, pid=pid,
            uptime_s=None if started is None or pid is None else max(0.0, (now - started) / 1000.0),
            restarts=entry.restarts if entry else None, heartbeat_age_s=hb_age,
            symbols=len(sym_rows) if sym_rows else len(beat.symbols) if current else 0,
            data_age_s=max(ages) if ages else None, backfill_pct=min(pcts) if pcts else None,
            buffer_depth=beat.buffer_depth if current else None,
            last_error=last_error, last_exit=entry.last_exit if entry else None, symbol_rows=sym_rows,
            buffer_bytes=beat.buffer_bytes if current else None,
            buffer_bytes_max=beat.buffer_bytes_max if current else None,
        ))
        if name not in expected:
            continue
        if state != SupervisedState.RUNNING:
            why = f": {last_error}" if last_error else ""
            problems.append(f"{name}: {state}{why}")
        elif not current:
            problems.append(f"{name}: no heartbeat from its worker (pid {pid})")
        elif hb_age is None or hb_age > timeout:
            problems.append(f"{name}: heartbeat {_fmt_age(hb_age)} old (timeout {timeout:g}s)")
        elif worker_state not in HEALTHY_WORKER_STATES:
            why = f": {last_error}" if last_error else ""
            problems.append(f"{name}: worker state {worker_state}{why}")
    return Report(now_ms=now, supervisor=sup_summary, exchanges=rows, problems=problems)


def missing_cache(settings: Settings) -> str | None:
    """The one-line answer when the embedded process cache does not exist yet (nothing has run), else None."""
    if settings.cache.kind == "sqlite" and not settings.cache.path.exists():
        return f"no process cache at {settings.cache.path}: no ohlcv-supervisor has run with these settings"
    return None


async def read_report(settings: Settings) -> Report:
    """Read the supervisor's and every worker's record (one short, read-only connection; creates nothing)."""
    from fullon_ohlcv_service.adapters.caches import open_process_cache

    missing = missing_cache(settings)
    if missing:
        return Report(now_ms=now_ms(), supervisor=None, exchanges=[], problems=[missing])
    async with open_process_cache(settings.cache, readonly=True) as cache:
        supervisor = await cache.get_component(SUPERVISOR_COMPONENT)
        names = worker_names(supervisor, await cache.list_active(PROCESS_TYPE))
        workers = {name: await cache.get_component(worker_component(name)) for name in names}
    return build_report(supervisor, workers, now_ms())


def worker_names(supervisor: dict[str, Any] | None, active: list[dict[str, Any]]) -> list[str]:
    """The exchanges to report: the supervisor's, plus any worker registered and not stopped (sorted)."""
    record = Record.from_doc(supervisor)
    names = set(SupervisorBeat.from_params(record.params if record else None).exchanges)
    for doc in active:
        exchange = worker_exchange(str(doc.get("component") or ""))
        if exchange is not None and doc.get("status") != "stopped":
            names.add(exchange)
    return sorted(names)


# ---------------------------------------------------------------------------- text output

def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _opt(value: Any) -> str:
    return "-" if value is None else str(value)


def _widths(header: list[str], rows: list[list[str]]) -> list[int]:
    return [max([len(header[i]), *(len(r[i]) for r in rows)]) for i in range(len(header))]


def _line(cells: list[str], widths: list[int], indent: str = "") -> str:
    padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)] + [cells[-1]]
    return (indent + "  ".join(padded)).rstrip()


def _exchange_cells(row: ExchangeRow) -> list[str]:
    state = row.state if row.worker_state in (None, "running") else f"{row.state}/{row.worker_state}"
    return [row.exchange, state, _opt(row.pid), _fmt_age(row.uptime_s), _opt(row.restarts),
            _fmt_age(row.heartbeat_age_s), str(row.symbols), _fmt_age(row.data_age_s),
            _fmt_pct(row.backfill_pct), _opt(row.buffer_depth), row.last_error or row.last_exit or "-"]


def _symbol_cells(r: SymbolRow, now: int) -> list[str]:
    def age(ts: int | None) -> str:
        return _fmt_age(None if ts is None else max(0.0, (now - ts) / 1000))

    return [r.symbol, _opt(r.state), _fmt_age(r.data_age_s), age(r.last_trade_ms), age(r.last_final_candle_ms),
            _opt(r.trades_stored), _opt(r.candles_stored), _fmt_pct(r.backfill_pct), _opt(r.rejected),
            _opt(r.rest_errors), r.error or "-", r.last_rest_error or "-"]


RELOAD_FAILED = "configuration reload failed (the previous configuration keeps running)"
EXCHANGE_HEADER = ["EXCHANGE", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "SYMBOLS", "DATA_AGE",
                   "BACKFILL", "BUFFER", "LAST_ERROR"]
SYMBOL_HEADER = ["SYMBOL", "STATE", "DATA_AGE", "LAST_TRADE", "LAST_CANDLE", "TRADES", "CANDLES", "BACKFILL",
                 "REJECTED", "REST_ERRORS", "ERROR", "LAST_REST_ERROR"]


def render(report: Report, verbose: bool) -> str:
    """The human table: a supervisor line, then one row per exchange (and per symbol when verbose)."""
    lines: list[str] = []
    sup = report.supervisor
    if sup is None:
        lines.append("supervisor: not registered")
    else:
        message = f" ({sup['message']})" if sup.get("message") else ""
        lines.append(f"supervisor: pid {_opt(sup['pid'])}, {sup['status']}, heartbeat "
                     f"{_fmt_age(sup['heartbeat_age_s'])} ago{message}")
        if sup.get("reload_error"):
            lines.append(f"{RELOAD_FAILED}: {sup['reload_error']}")
    if not report.exchanges:
        lines.append("no exchange")
        return "\n".join(lines)
    cells = [_exchange_cells(r) for r in report.exchanges]
    widths = _widths(EXCHANGE_HEADER, cells)
    lines.append(_line(EXCHANGE_HEADER, widths))
    for row, row_cells in zip(report.exchanges, cells, strict=True):
        lines.append(_line(row_cells, widths))
        if verbose and row.symbol_rows:
            sym_cells = [_symbol_cells(r, report.now_ms) for r in row.symbol_rows]
            sym_widths = _widths(SYMBOL_HEADER, sym_cells)
            lines.append(_line(SYMBOL_HEADER, sym_widths, indent="    "))
            lines.extend(_line(c, sym_widths, indent="    ") for c in sym_cells)
    if report.problems:
        lines.extend(f"problem: {p}" for p in report.problems)
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ohlcv-status", description="Show the supervisor's workers from the process cache.")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--check", action="store_true",
                   help="exit 0 only when every expected worker is healthy; print why not otherwise")
    p.add_argument("-v", "--verbose", action="store_true", help="one row per symbol under each exchange")
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    settings = settings_from_args(ns)
    missing = missing_cache(settings)
    report = asyncio.run(read_report(settings))
    if missing and not ns.json:
        print(f"UNHEALTHY: {missing}" if ns.check else missing)
    elif ns.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    elif ns.check:
        if report.healthy:
            print(f"OK: {len(report.exchanges)} worker(s) healthy")
        else:
            for problem in report.problems:
                print(f"UNHEALTHY: {problem}")
        if report.supervisor and report.supervisor.get("reload_error"):
            # the workers run the previous configuration, so they are healthy: a warning, not a failure
            print(f"WARNING: {RELOAD_FAILED}: {report.supervisor['reload_error']}")
    else:
        print(render(report, ns.verbose))
    if ns.check and not report.healthy:
        return EXIT_UNHEALTHY
    return 0
