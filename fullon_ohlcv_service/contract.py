"""The worker, supervisor and status contract: component names, state vocabularies and the typed beats.

Workers and the master write their records into the process cache (fullon_cache's ProcessCache
layout); ``ohlcv-status``, the /metrics exporter and the chaos audit read them. Everything those
records mean lives here: the component names and process type, the three state vocabularies (the
worker's own, a symbol's, the master's view of a worker) with their mapping to fullon_cache's
statuses, and one typed class per record with ``to_params()`` (the writer's exact params) and
``from_params()`` (a tolerant reader: a missing or malformed field, from an older or a foreign
writer, reads as None, and keys it does not know are kept in ``extra``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fullon_ohlcv_service.timeutil import parse_time

# ---------------------------------------------------------------- names

PROCESS_TYPE = "ohlcv"  # fullon_cache's ProcessType of every record we write
SUPERVISOR_COMPONENT = "ohlcv-supervisor"
WORKER_PREFIX = "ohlcv-worker:"


def worker_component(exchange: str) -> str:
    """The worker's ProcessCache component: ``ohlcv-worker:<exchange>`` (one per role and exchange)."""
    return WORKER_PREFIX + exchange


def worker_exchange(component: str) -> str | None:
    """The exchange of a worker component; None for any other component."""
    return component[len(WORKER_PREFIX):] if component.startswith(WORKER_PREFIX) else None


# ---------------------------------------------------------------- vocabularies

# fullon_cache's ProcessType enum strings (a record's type must be one of them).
PROCESS_TYPES: tuple[str, ...] = (
    "tick", "ohlcv", "bot", "account", "order", "bot_status_service", "crawler", "user_trades_service",
)


class CacheStatus(StrEnum):
    """fullon_cache's ProcessStatus: the ``status`` of a record, which fullon tools read."""

    STARTING = "starting"
    RUNNING = "running"
    PROCESSING = "processing"
    IDLE = "idle"
    ERROR = "error"
    STOPPED = "stopped"


class WorkerState(StrEnum):
    """The worker's own state (its params' ``state``)."""

    STARTING = "starting"  # until the first live data
    RUNNING = "running"
    BEHIND = "behind"  # the store lags: rows wait in the write queue
    DEGRADED = "degraded"  # a symbol is behind because its REST calls keep failing
    ERROR = "error"  # a collector keeps failing, or every symbol failed


class SymbolState(StrEnum):
    """One symbol's state (its entry's ``state`` in the worker's params)."""

    BACKFILL = "backfill"  # the first backfill is not done
    CATCHING_UP = "catching_up"  # REST catch-up to the live stream
    LIVE = "live"
    DEGRADED = "degraded"  # catching up or repairing a gap while a REST call keeps failing
    ERROR = "error"


class SupervisedState(StrEnum):
    """The master's view of one exchange's worker (its entry in the master's ``exchanges``)."""

    STARTING = "starting"  # forked, no heartbeat yet
    RUNNING = "running"  # heartbeating
    BACKOFF = "backoff"  # no process: waiting to start again
    HUNG = "hung"  # its heartbeat went stale: terminated, restarted once it exits
    FATAL = "fatal"  # parked: a configuration error or the restart budget is spent
    STOPPED = "stopped"  # stopped for good


# The worker's state -> its record's status: fullon_cache has no "behind" nor "degraded" (it is running).
WORKER_CACHE_STATUS: Mapping[WorkerState, CacheStatus] = {
    WorkerState.STARTING: CacheStatus.STARTING,
    WorkerState.RUNNING: CacheStatus.RUNNING,
    WorkerState.BEHIND: CacheStatus.RUNNING,
    WorkerState.DEGRADED: CacheStatus.RUNNING,
    WorkerState.ERROR: CacheStatus.ERROR,
}
# The worker states ``ohlcv-status --check`` counts as healthy.
HEALTHY_WORKER_STATES: tuple[WorkerState, ...] = (WorkerState.RUNNING, WorkerState.BEHIND)


def cache_status(state: WorkerState) -> CacheStatus:
    """The record status of a worker in ``state``."""
    return WORKER_CACHE_STATUS[state]


def supervisor_cache_status(*, parked: bool, final: bool) -> CacheStatus:
    """The master's record status: stopped on its way out, error while an exchange is parked, else running."""
    if final:
        return CacheStatus.STOPPED
    return CacheStatus.ERROR if parked else CacheStatus.RUNNING


# ---------------------------------------------------------------- tolerant field readers

def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> int | None:
    return int(value) if _number(value) else None


def _float(value: Any) -> float | None:
    return float(value) if _number(value) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    """A non-empty string, else None (an empty message means none)."""
    return value if isinstance(value, str) and value else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# ---------------------------------------------------------------- records

@dataclass(frozen=True, slots=True)
class Record:
    """A ProcessCache document as readers see it (fullon_cache's fields; ``params`` is the beat)."""

    status: str | None = None
    message: str | None = None
    heartbeat: str | None = None  # ISO-8601 UTC, fullon_cache's form
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Record | None:
        """None for no document; a malformed field reads as None (params as empty)."""
        if not isinstance(doc, Mapping):
            return None
        return cls(status=_str(doc.get("status")), message=_str(doc.get("message")),
                   heartbeat=_str(doc.get("heartbeat")), params=_mapping(doc.get("params")))

    def heartbeat_ms(self) -> int | None:
        """The heartbeat as epoch ms; None when missing or unparseable."""
        if not self.heartbeat:
            return None
        try:
            return parse_time(self.heartbeat)
        except ValueError:
            return None


_SYMBOL_KEYS = frozenset({
    "last_trade_ms", "last_final_candle_ms", "trades_stored", "candles_stored", "backfill_pct", "error",
    "rejected", "state", "rest_errors", "last_rest_error",
})


@dataclass(slots=True)
class SymbolBeat:
    """One symbol's entry in a worker's beat (``params["symbols"][symbol]``).

    ``extra`` holds the further cumulative counters (``gaps_found``, ``gaps_repaired``, read by
    /metrics) and any key this version does not know; the writer puts them first.
    """

    state: str | None = None  # a SymbolState value (kept as written: a newer writer may add states)
    last_trade_ms: int | None = None
    last_final_candle_ms: int | None = None
    trades_stored: int | None = None
    candles_stored: int | None = None
    backfill_pct: float | None = None
    error: str | None = None
    rejected: int | None = None  # rows refused or quarantined by the worker (its <symbol>_rejects table)
    rest_errors: int | None = None  # failed REST calls in the worker's life
    last_rest_error: str | None = None  # written only once a REST call failed
    extra: dict[str, Any] = field(default_factory=dict)

    def to_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "last_trade_ms": self.last_trade_ms,
            "last_final_candle_ms": self.last_final_candle_ms,
            "trades_stored": self.trades_stored,
            "candles_stored": self.candles_stored,
            "backfill_pct": self.backfill_pct,
            "error": self.error,
            "rejected": self.rejected,
            "state": self.state,
            "rest_errors": self.rest_errors,
        }
        if self.last_rest_error:
            out["last_rest_error"] = self.last_rest_error
        return out

    @classmethod
    def from_params(cls, raw: Any) -> SymbolBeat:
        p = _mapping(raw)
        return cls(
            state=_text(p.get("state")),
            last_trade_ms=_int(p.get("last_trade_ms")),
            last_final_candle_ms=_int(p.get("last_final_candle_ms")),
            trades_stored=_int(p.get("trades_stored")),
            candles_stored=_int(p.get("candles_stored")),
            backfill_pct=_float(p.get("backfill_pct")),
            error=_text(p.get("error")),
            rejected=_int(p.get("rejected")),
            rest_errors=_int(p.get("rest_errors")),
            last_rest_error=_text(p.get("last_rest_error")),
            extra={str(k): v for k, v in p.items() if k not in _SYMBOL_KEYS},
        )


_WORKER_KEYS = frozenset({
    "pid", "exchange", "started_ms", "state", "symbols", "buffer_depth", "loop_lag_ms", "reconnects",
    "gaps_repaired", "errors", "buffer_bytes", "buffer_bytes_max",
})


@dataclass(slots=True)
class WorkerBeat:
    """A worker's heartbeat params (component ``ohlcv-worker:<exchange>``).

    ``extra`` holds the /metrics figures (``rest_requests``, rate-limit waits, histograms: see
    metrics/figures.py, read by metrics/tally.py) and any key this version does not know.
    """

    pid: int | None = None
    exchange: str | None = None
    started_ms: int | None = None
    state: str | None = None  # a WorkerState value
    symbols: dict[str, SymbolBeat] = field(default_factory=dict)
    buffer_depth: int | None = None  # rows queued, not yet committed
    loop_lag_ms: float | None = None
    reconnects: int | None = None
    gaps_repaired: int | None = None
    errors: int | None = None
    buffer_bytes: int | None = None  # estimated bytes held by the worker's buffers
    buffer_bytes_max: int | None = None  # their bound (--buffer-mb)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_params(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "exchange": self.exchange,
            "started_ms": self.started_ms,
            "state": self.state,
            "symbols": {sym: b.to_params() for sym, b in self.symbols.items()},
            "buffer_depth": self.buffer_depth,
            "loop_lag_ms": self.loop_lag_ms,
            "reconnects": self.reconnects,
            "gaps_repaired": self.gaps_repaired,
            "errors": self.errors,
            **self.extra,
            "buffer_bytes": self.buffer_bytes,
            "buffer_bytes_max": self.buffer_bytes_max,
        }

    @classmethod
    def from_params(cls, raw: Any) -> WorkerBeat:
        p = _mapping(raw)
        return cls(
            pid=_int(p.get("pid")),
            exchange=_str(p.get("exchange")),
            started_ms=_int(p.get("started_ms")),
            state=_text(p.get("state")),
            symbols={str(s): SymbolBeat.from_params(info) for s, info in _mapping(p.get("symbols")).items()},
            buffer_depth=_int(p.get("buffer_depth")),
            loop_lag_ms=_float(p.get("loop_lag_ms")),
            reconnects=_int(p.get("reconnects")),
            gaps_repaired=_int(p.get("gaps_repaired")),
            errors=_int(p.get("errors")),
            buffer_bytes=_int(p.get("buffer_bytes")),
            buffer_bytes_max=_int(p.get("buffer_bytes_max")),
            extra={str(k): v for k, v in p.items() if k not in _WORKER_KEYS},
        )


@dataclass(slots=True)
class WorkerEntry:
    """The master's view of one exchange's worker (``params["exchanges"][exchange]`` of its record)."""

    pid: int | None = None  # None while no process runs (backoff, fatal, stopped)
    state: str | None = None  # a SupervisedState value
    restarts: int | None = None
    last_exit: str | None = None  # "exit 1", "killed by SIGKILL", ...
    since_ms: int | None = None  # when ``state`` last changed
    reason: str | None = None
    started_ms: int | None = None  # the current (or last) process's start

    def to_params(self) -> dict[str, Any]:
        return {"pid": self.pid, "state": self.state, "restarts": self.restarts, "last_exit": self.last_exit,
                "since_ms": self.since_ms, "reason": self.reason, "started_ms": self.started_ms}

    @classmethod
    def from_params(cls, raw: Any) -> WorkerEntry | None:
        """None for an empty or malformed entry (the exchange is listed, its worker unknown)."""
        p = _mapping(raw)
        if not p:
            return None
        return cls(pid=_int(p.get("pid")), state=_str(p.get("state")), restarts=_int(p.get("restarts")),
                   last_exit=_str(p.get("last_exit")), since_ms=_int(p.get("since_ms")),
                   reason=_str(p.get("reason")), started_ms=_int(p.get("started_ms")))


_SUPERVISOR_KEYS = frozenset({
    "pid", "exchanges", "heartbeat_interval", "heartbeat_timeout", "boot_grace", "stopping", "reload_error",
    "metrics", "metrics_exporter",
})


@dataclass(slots=True)
class SupervisorBeat:
    """The master's record params (component ``ohlcv-supervisor``).

    ``exchanges`` maps every exchange the master runs to its view of that worker (None: listed with
    an empty or malformed entry). ``metrics`` is the ledger's publication for /metrics
    (metrics/ledger.py: ``restarts`` by exchange and reason, ``carried`` counters of ended lives).
    """

    pid: int | None = None
    exchanges: dict[str, WorkerEntry | None] = field(default_factory=dict)
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None
    boot_grace: float | None = None
    stopping: bool = False
    reload_error: str | None = None  # why the last SIGHUP reload failed; None once one succeeds
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_exporter: dict[str, Any] | None = None  # the /metrics child: listen, pid (with --metrics-port)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_params(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "exchanges": {ex: e.to_params() if e is not None else {} for ex, e in self.exchanges.items()},
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "boot_grace": self.boot_grace,
            "stopping": self.stopping,
            # "" once a reload succeeds: the cache merges params, so an absent key would keep the old one
            "reload_error": self.reload_error or "",
            "metrics": self.metrics,
            **({"metrics_exporter": self.metrics_exporter} if self.metrics_exporter is not None else {}),
            **self.extra,
        }

    @classmethod
    def from_params(cls, raw: Any) -> SupervisorBeat:
        p = _mapping(raw)
        exporter = p.get("metrics_exporter")
        return cls(
            pid=_int(p.get("pid")),
            exchanges={str(ex): WorkerEntry.from_params(e) for ex, e in _mapping(p.get("exchanges")).items()},
            heartbeat_interval=_float(p.get("heartbeat_interval")),
            heartbeat_timeout=_float(p.get("heartbeat_timeout")),
            boot_grace=_float(p.get("boot_grace")),
            stopping=bool(p.get("stopping")),
            reload_error=_text(p.get("reload_error")),
            metrics=dict(_mapping(p.get("metrics"))),
            metrics_exporter=dict(exporter) if isinstance(exporter, Mapping) else None,
            extra={str(k): v for k, v in p.items() if k not in _SUPERVISOR_KEYS},
        )

    @property
    def restarts(self) -> dict[str, dict[str, int]]:
        """Restarts by exchange and reason (the ledger's), for /metrics."""
        out: dict[str, dict[str, int]] = {}
        for ex, reasons in _mapping(self.metrics.get("restarts")).items():
            out[str(ex)] = {str(k): max(0, _int(v) or 0) for k, v in _mapping(reasons).items()}
        return out

    @property
    def carried(self) -> dict[str, Mapping[str, Any]]:
        """Counters of ended worker lives by exchange, in the worker beat's layout (metrics/tally.py reads them)."""
        return {str(ex): _mapping(t) for ex, t in _mapping(self.metrics.get("carried")).items()}

    @property
    def metrics_listen(self) -> str | None:
        """The /metrics exporter's address, when it runs."""
        listen = (self.metrics_exporter or {}).get("listen")
        return str(listen) if listen else None
