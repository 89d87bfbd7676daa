"""`ohlcv-status`: one row per exchange (and per symbol with -v) from the process cache; --check for probes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from fullon_ohlcv_service.errors import EXIT_USAGE
from fullon_ohlcv_service.settings import Settings, add_common_args, settings_from_args
from fullon_ohlcv_service.timeutil import now_ms, parse_time

SUPERVISOR_COMPONENT = "ohlcv-supervisor"
WORKER_PREFIX = "ohlcv-worker:"
EXIT_UNHEALTHY = 1
HEALTHY_WORKER_STATES = ("running", "behind")


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


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _symbol_rows(params: dict[str, Any], now: int) -> list[SymbolRow]:
    rows: list[SymbolRow] = []
    symbols = params.get("symbols")
    if not isinstance(symbols, dict):
        return rows
    for symbol, info in sorted(symbols.items()):
        info = info if isinstance(info, dict) else {}
        trade, candle = _int(info.get("last_trade_ms")), _int(info.get("last_final_candle_ms"))
        newest = max((t for t in (trade, candle) if t is not None), default=None)
        pct = info.get("backfill_pct")
        rows.append(SymbolRow(
            symbol=symbol, last_trade_ms=trade, last_final_candle_ms=candle,
            data_age_s=None if newest is None else max(0.0, (now - newest) / 1000.0),
            trades_stored=_int(info.get("trades_stored")), candles_stored=_int(info.get("candles_stored")),
            backfill_pct=float(pct) if isinstance(pct, int | float) else None,
            error=info.get("error") or None,
            rejected=_int(info.get("rejected")),
            state=str(info["state"]) if info.get("state") else None,
            rest_errors=_int(info.get("rest_errors")),
            last_rest_error=str(info["last_rest_error"]) if info.get("last_rest_error") else None,
        ))
    return rows


def build_report(supervisor: dict[str, Any] | None, workers: dict[str, dict[str, Any] | None],
                 now: int) -> Report:
    """Rows and health from the supervisor's record and each worker's record (pure; ``now`` in epoch ms)."""
    problems: list[str] = []
    sup_params: dict[str, Any] = (supervisor or {}).get("params") or {}
    expected: dict[str, Any] = sup_params.get("exchanges") or {}
    timeout = float(sup_params.get("heartbeat_timeout") or 30.0)
    interval = float(sup_params.get("heartbeat_interval") or 5.0)
    sup_summary: dict[str, Any] | None = None
    if supervisor is None:
        problems.append("no ohlcv-supervisor is registered in the process cache")
    else:
        sup_age = _age_s(now, supervisor.get("heartbeat"))
        sup_summary = {"pid": sup_params.get("pid"), "status": supervisor.get("status"),
                       "heartbeat_age_s": sup_age, "message": supervisor.get("message"),
                       "reload_error": sup_params.get("reload_error") or None}
        if supervisor.get("status") == "stopped" or sup_params.get("stopping"):
            problems.append("the supervisor is stopping or stopped")
        elif sup_age is None or sup_age > max(timeout, 3 * interval):
            problems.append(f"the supervisor's own heartbeat is stale ({_fmt_age(sup_age)} old)")
        if not expected:
            problems.append("the supervisor runs no exchange")
    rows: list[ExchangeRow] = []
    for name in sorted(set(expected) | set(workers)):
        sup_entry: dict[str, Any] = expected.get(name) or {}
        doc = workers.get(name)
        wparams: dict[str, Any] = (doc or {}).get("params") or {}
        sup_pid = _int(sup_entry.get("pid"))
        pid = sup_pid if sup_entry else _int(wparams.get("pid"))
        current = doc is not None and pid is not None and _int(wparams.get("pid")) == pid
        sym_rows = _symbol_rows(wparams, now) if current else []
        started = _int(wparams.get("started_ms")) if current else None
        started = started if started is not None else _int(sup_entry.get("started_ms"))
        hb_age = _age_s(now, doc.get("heartbeat")) if current and doc else None
        ages = [r.data_age_s for r in sym_rows if r.data_age_s is not None]
        pcts = [r.backfill_pct for r in sym_rows if r.backfill_pct is not None]
        sym_errors = [f"{r.symbol}: {r.error}" for r in sym_rows if r.error]
        state = str(sup_entry.get("state") or "unsupervised")
        worker_state = str(wparams.get("state")) if current and wparams.get("state") else None
        last_error = sup_entry.get("reason") if state in ("fatal", "hung", "backoff", "stopped") else None
        if not last_error and current and doc:
            last_error = (sym_errors[0] if sym_errors else None) or (
                doc.get("message") if worker_state == "error" else None)
        if not last_error and worker_state == "degraded":
            last_error = next((f"{r.symbol}: REST failing: {r.last_rest_error}" for r in sym_rows
                               if r.state == "degraded"), None)
        n_symbols = len(sym_rows) if sym_rows else len(wparams.get("symbols") or {}) if current else 0
        rows.append(ExchangeRow(
            exchange=name, state=state, worker_state=worker_state, pid=pid,
            uptime_s=None if started is None or pid is None else max(0.0, (now - started) / 1000.0),
            restarts=_int(sup_entry.get("restarts")), heartbeat_age_s=hb_age, symbols=n_symbols,
            data_age_s=max(ages) if ages else None, backfill_pct=min(pcts) if pcts else None,
            buffer_depth=_int(wparams.get("buffer_depth")) if current else None,
            last_error=last_error, last_exit=sup_entry.get("last_exit"), symbol_rows=sym_rows,
            buffer_bytes=_int(wparams.get("buffer_bytes")) if current else None,
            buffer_bytes_max=_int(wparams.get("buffer_bytes_max")) if current else None,
        ))
        if name not in expected:
            continue
        if state != "running":
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
        names = worker_names(supervisor, await cache.list_active("ohlcv"))
        workers = {name: await cache.get_component(WORKER_PREFIX + name) for name in names}
    return build_report(supervisor, workers, now_ms())


def worker_names(supervisor: dict[str, Any] | None, active: list[dict[str, Any]]) -> list[str]:
    """The exchanges to report: the supervisor's, plus any worker registered and not stopped (sorted)."""
    names = set(((supervisor or {}).get("params") or {}).get("exchanges") or {})
    for doc in active:
        component = str(doc.get("component") or "")
        if component.startswith(WORKER_PREFIX) and doc.get("status") != "stopped":
            names.add(component[len(WORKER_PREFIX):])
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
