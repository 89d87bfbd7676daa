"""``scripts/chaos``: parse the flags, run the chaos suite once, print (and optionally write) the report."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from chaos.runner import ChaosRun, Options
from fullon_ohlcv_service.errors import EXIT_CRASH, EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos",
        description="Run the whole service (simulator + ohlcv-supervisor) under a seeded fault schedule, then "
        "audit the store against the simulator's ground truth. Exits non-zero on any loss, duplicate, "
        "wrong candle, orphan process, or fault that could not be applied. PostgreSQL and Redis outages stop "
        "the run's own private servers, never the machine's shared ones.",
    )
    p.add_argument("--minutes", type=float, default=3.0, help="length of the fault phase (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and of the market (default 1)")
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                   help="OHLCV and config store (postgres: a private cluster of the run, on a free port)")
    p.add_argument("--cache", choices=("sqlite", "redis"), default="sqlite",
                   help="process cache (redis: a private redis-server of the run, on a free port)")
    p.add_argument("--report", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, SQLite files) even on success")
    p.add_argument("--redis-db", type=int, default=12, help="Redis db on the run's private server (default 12)")
    p.add_argument("--backtest-days", type=int, default=1, help="backfill depth of every symbol (default 1)")
    p.add_argument("--busy-rate", type=float, default=2.0, help="trades/s of the busy symbol (default 2)")
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument("--heartbeat-timeout", type=float, default=3.0)
    p.add_argument("--boot-grace", type=float, default=8.0)
    p.add_argument("--plan", action="store_true", help="print the fault schedule of this seed and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _number_problem(ns: argparse.Namespace) -> str | None:
    """The first numeric flag that is not finite or out of its range (inf minutes would never end)."""
    import math

    ranges = {  # flag: (value, low, high, low allowed)
        "--minutes": (ns.minutes, 0.0, 1440.0, False), "--busy-rate": (ns.busy_rate, 0.0, 100_000.0, True),
        "--heartbeat-interval": (ns.heartbeat_interval, 0.0, 3600.0, False),
        "--heartbeat-timeout": (ns.heartbeat_timeout, 0.0, 3600.0, False),
        "--boot-grace": (ns.boot_grace, 0.0, 3600.0, True), "--backtest-days": (ns.backtest_days, 0, 365, True),
    }
    for flag, (value, lo, hi, lo_ok) in ranges.items():
        if not (math.isfinite(value) and (value > lo or (lo_ok and value == lo)) and value <= hi):
            return f"{flag}: must be a finite number {'>=' if lo_ok else '>'} {lo:g} and <= {hi:g}, got {value:g}"
    if ns.heartbeat_timeout <= ns.heartbeat_interval:
        return "--heartbeat-interval must be shorter than --heartbeat-timeout"
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if not 0 <= ns.redis_db <= 15:
        print("chaos: error: --redis-db must be 0-15", file=sys.stderr)
        return 2
    problem = _number_problem(ns)
    if problem:
        print(f"chaos: error: {problem}", file=sys.stderr)
        return 2
    opts = Options(minutes=ns.minutes, seed=ns.seed, store=ns.store, cache=ns.cache, report=ns.report, keep=ns.keep,
                   redis_db=ns.redis_db, backtest_days=ns.backtest_days, busy_rate=ns.busy_rate,
                   heartbeat_interval=ns.heartbeat_interval, heartbeat_timeout=ns.heartbeat_timeout,
                   boot_grace=ns.boot_grace, quiet=ns.quiet)
    run = ChaosRun(opts)
    if ns.plan:
        for f in run.schedule:
            print(f"t={f.at:7.2f}s {f.describe()}")
        return EXIT_OK
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stopped from outside: still restore every service
    try:
        report = run.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if ns.report is not None:
        ns.report.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(report.render(), flush=True)
    return EXIT_CRASH if report.failures() else EXIT_OK
