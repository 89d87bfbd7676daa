"""The chaos report: faults applied, restarts, detection times, audit totals, failures and the verdict line."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.audit import CandleAudit, PoisonAudit, TradeAudit, Window
from chaos.schedule import RESTARTING_FAULTS, Fault
from fullon_ohlcv_service.timeutil import ms_to_iso


@dataclass(slots=True)
class AppliedFault:
    """What happened when the runner applied one planned fault."""

    fault: Fault
    started_ms: int  # wall clock when the fault was applied
    t: float  # seconds after the fault phase started
    ok: bool  # the fault really happened (signal delivered, server stopped, simulator accepted it)
    detail: str = ""
    pid: int | None = None  # the worker or master it hit
    detected_s: float | None = None  # fault -> new worker seen, for faults that must cause a restart
    new_pid: int | None = None
    mono: float = 0.0  # time.monotonic() when the fault hit (not reported)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": ms_to_iso(self.started_ms), "t": round(self.t, 3), "kind": self.fault.kind,
            "target": self.fault.target, "symbol": self.fault.symbol, "duration": self.fault.duration,
            "count": self.fault.count, "ok": self.ok, "detail": self.detail, "pid": self.pid,
            "new_pid": self.new_pid,
            "detected_s": None if self.detected_s is None else round(self.detected_s, 3),
        }


@dataclass(slots=True)
class SymbolResult:
    """The audit of one (exchange, symbol)."""

    exchange: str
    symbol: str
    window: Window
    trades: TradeAudit
    candles: CandleAudit
    poison: PoisonAudit = field(default_factory=PoisonAudit)

    def to_json(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "symbol": self.symbol, "window": self.window.to_json(),
                "trades": self.trades.to_json(), "candles": self.candles.to_json(), "poison": self.poison.to_json()}


@dataclass(slots=True)
class Totals:
    trades: int = 0
    missing: int = 0
    duplicated: int = 0
    extra: int = 0
    altered: int = 0
    candles: int = 0
    wrong_candles: int = 0
    poisoned: int = 0  # poisoned rows the simulator served in the audited windows
    poisoned_rejected: int = 0
    poisoned_stored: int = 0
    poisoned_unrejected: int = 0
    valid_rejected: int = 0

    def to_json(self) -> dict[str, int]:
        return {"trades": self.trades, "missing": self.missing, "duplicated": self.duplicated,
                "extra": self.extra, "altered": self.altered, "candles": self.candles,
                "wrong_candles": self.wrong_candles, "poisoned": self.poisoned,
                "poisoned_rejected": self.poisoned_rejected, "poisoned_stored": self.poisoned_stored,
                "poisoned_unrejected": self.poisoned_unrejected, "valid_rejected": self.valid_rejected}


def totals(results: Sequence[SymbolResult]) -> Totals:
    t = Totals()
    for r in results:
        t.trades += r.trades.expected
        t.missing += r.trades.missing
        t.duplicated += r.trades.duplicated
        t.extra += r.trades.extra
        t.altered += r.trades.altered
        t.candles += r.candles.expected
        t.wrong_candles += r.candles.wrong
        t.poisoned += r.poison.expected
        t.poisoned_rejected += r.poison.rejected
        t.poisoned_stored += r.poison.stored
        t.poisoned_unrejected += r.poison.unrejected
        t.valid_rejected += r.poison.valid_rejected
    return t


def detection_summary(applied: Sequence[AppliedFault]) -> dict[str, Any]:
    """Median and maximum of fault -> restart over the faults that must cause one; those never answered."""
    times = [a.detected_s for a in applied if a.ok and a.fault.kind in RESTARTING_FAULTS and a.detected_s is not None]
    undetected = [f"{a.fault.describe()} at t={a.t:.1f}s (pid {a.pid})" for a in applied
                  if a.ok and a.fault.kind in RESTARTING_FAULTS and a.detected_s is None]
    return {
        "count": len(times),
        "median_s": round(statistics.median(times), 3) if times else None,
        "max_s": round(max(times), 3) if times else None,
        "undetected": undetected,
    }


def verdict_line(t: Totals, faults: int) -> str:
    """``chaos: 0 missing, 0 duplicated, 0 wrong candles over N trades, M faults, P poisoned rejected``
    (``R of P poisoned rejected`` when some were not; extra/altered trades and stored poison if any)."""
    rejected = (f"{t.poisoned_rejected} poisoned rejected" if t.poisoned_rejected == t.poisoned
                else f"{t.poisoned_rejected} of {t.poisoned} poisoned rejected")
    line = (f"chaos: {t.missing} missing, {t.duplicated} duplicated, {t.wrong_candles} wrong candles "
            f"over {t.trades} trades, {faults} faults, {rejected}")
    if t.extra or t.altered:
        line += f"; {t.extra} extra trades, {t.altered} altered trades"
    if t.poisoned_stored:
        line += f"; {t.poisoned_stored} poisoned stored"
    return line


@dataclass(slots=True)
class Report:
    """Everything a run found; ``failures`` empty means the run passed."""

    seed: int
    minutes: float
    store: str
    cache: str
    planned: Sequence[Fault]
    applied: Sequence[AppliedFault]
    results: Sequence[SymbolResult]
    restarts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    orphans: Sequence[str] = ()
    errors: Sequence[str] = ()  # the runner's own trouble (a command that failed, a service down)
    notes: Sequence[str] = ()  # worth knowing, not a failure (unexpected restarts, ...)
    started_ms: int = 0
    ended_ms: int = 0
    context: dict[str, Any] = field(default_factory=dict)  # simulator stats, run directory...

    @property
    def applied_ok(self) -> int:
        return sum(1 for a in self.applied if a.ok)

    def failures(self) -> list[str]:
        t = totals(self.results)
        out: list[str] = []
        if t.missing:
            out.append(f"{t.missing} trades missing")
        if t.duplicated:
            out.append(f"{t.duplicated} trades duplicated")
        if t.extra:
            out.append(f"{t.extra} trades stored that the market never produced")
        if t.altered:
            out.append(f"{t.altered} trades stored with other values")
        if t.wrong_candles:
            out.append(f"{t.wrong_candles} final candles missing or different")
        if t.poisoned_stored:
            out.append(f"{t.poisoned_stored} poisoned rows stored in the trades or candles tables")
        if t.poisoned_unrejected:
            out.append(f"{t.poisoned_unrejected} of {t.poisoned} poisoned rows not in the reject store")
        if t.valid_rejected:
            out.append(f"{t.valid_rejected} valid trades in the reject store")
        if self.applied_ok < len(self.planned):
            failed = [a.fault.describe() + (f" ({a.detail})" if a.detail else "") for a in self.applied if not a.ok]
            skipped = len(self.planned) - len(self.applied)
            msg = f"{self.applied_ok} of {len(self.planned)} planned faults applied"
            if failed:
                msg += "; failed: " + "; ".join(failed)
            if skipped:
                msg += f"; {skipped} never reached"
            out.append(msg)
        undetected = detection_summary(self.applied)["undetected"]
        if undetected:
            out.append("hung or killed worker never replaced: " + "; ".join(undetected))
        if self.orphans:
            out.append(f"{len(self.orphans)} orphan processes left: " + "; ".join(self.orphans))
        out.extend(self.errors)
        return out

    def verdict(self) -> str:
        return verdict_line(totals(self.results), self.applied_ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "minutes": self.minutes, "store": self.store, "cache": self.cache,
            "started": ms_to_iso(self.started_ms) if self.started_ms else None,
            "ended": ms_to_iso(self.ended_ms) if self.ended_ms else None,
            "planned_faults": len(self.planned), "applied_faults": self.applied_ok,
            "schedule": [f.to_json() for f in self.planned],
            "faults": [a.to_json() for a in self.applied],
            "restarts": {k: dict(v) for k, v in self.restarts.items()},
            "detection": detection_summary(self.applied),
            "symbols": [r.to_json() for r in self.results],
            "totals": totals(self.results).to_json(),
            "orphans": list(self.orphans), "errors": list(self.errors), "notes": list(self.notes),
            "failures": self.failures(), "passed": not self.failures(), "verdict": self.verdict(),
            **self.context,
        }

    def render(self) -> str:
        """The human report; its last line is the verdict."""
        lines = [f"chaos run: seed={self.seed} minutes={self.minutes} store={self.store} cache={self.cache}",
                 f"faults ({self.applied_ok} applied of {len(self.planned)} planned):"]
        for a in self.applied:
            extra = ""
            if a.detected_s is not None:
                extra = f" -> new worker pid {a.new_pid} after {a.detected_s:.2f}s"
            state = "ok " if a.ok else "FAILED"
            lines.append(f"  {ms_to_iso(a.started_ms)} t={a.t:7.2f}s {state} {a.fault.describe()}"
                         f"{' pid=' + str(a.pid) if a.pid else ''}{extra}{' — ' + a.detail if a.detail else ''}")
        det = detection_summary(self.applied)
        lines.append("restarts seen:")
        for ex, info in sorted(self.restarts.items()):
            lines.append(f"  {ex}: " + " ".join(f"{k}={v}" for k, v in info.items()))
        if det["count"]:
            lines.append(f"detection (fault -> new worker): median {det['median_s']:.2f}s, max {det['max_s']:.2f}s "
                         f"over {det['count']} faults")
        else:
            lines.append("detection (fault -> new worker): none measured")
        served = self.context.get("simulator_stats", {}).get("exchanges") if self.context else None
        if served:
            lines.append("simulator faults served: " + "; ".join(
                f"{ex}: " + " ".join(f"{k}={v}" for k, v in sorted(((info.get("faults") or {}).get("counts")
                                                                   or {}).items()))
                for ex, info in sorted(served.items())))
        lines.append("audit:")
        for r in self.results:
            tr, ca = r.trades, r.candles
            lines.append(
                f"  {r.exchange} {r.symbol}: trades {tr.stored}/{tr.expected} missing={tr.missing} "
                f"duplicated={tr.duplicated} extra={tr.extra} altered={tr.altered}; candles {ca.expected} "
                f"missing={ca.missing} provisional={ca.provisional} different={ca.different} extra={ca.extra} "
                f"[{ms_to_iso(r.window.since)} .. {ms_to_iso(r.window.trades_until)})")
            po = r.poison
            if po.expected or po.valid_rejected:
                lines.append(f"      poisoned {po.rejected}/{po.expected} rejected, stored={po.stored}, "
                             f"valid rejected={po.valid_rejected} ("
                             + " ".join(f"{k}={v}" for k, v in sorted(po.kinds.items())) + ")")
            for rng in tr.missing_ranges[:SAMPLE_RANGES]:
                lines.append(f"      lost {rng['trades']} trades {ms_to_iso(rng['from_ts'])} .. "
                             f"{ms_to_iso(rng['to_ts'])}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.context.get("kept"):
            lines.append(f"run directory kept: {self.context.get('run_dir')}")
        for failure in self.failures():
            lines.append(f"FAIL: {failure}")
        lines.append(self.verdict())
        return "\n".join(lines)


SAMPLE_RANGES = 5
