#!/usr/bin/env python3
"""Benchmark: what /metrics costs with 2 exchanges x 1,000 symbols, per-symbol series on and off.

One run, side by side: the real master loop (``Arbiter``) forks two small workers that write
synthesised heartbeats of 1,000 symbols each (the real params layout, counters and histograms growing)
into a SQLite process cache every second. Three phases of ``--seconds`` each: metrics off; metrics on
with per-symbol series, scraped every ``--interval`` s; metrics on with ``--metrics-per-symbol off``.
Measured: the master's CPU (psutil, % of one core), the exporter's CPU per scrape, scrape wall time
(p50, max), page size and series count. Last line:
``RESULT master_cpu_off_pct=... master_cpu_on_pct=... scrape_ms_on=... scrape_ms_off=... ...``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.settings import Settings, settings_from_env

EXCHANGES = ("kraken", "binance")


# ---------------------------------------------------------------------------- the master side (subprocess)

def synth_worker(spec: ExchangeSpec, settings: Settings, *, parent_pid: int | None = None) -> int:
    """A worker that only beats: 1,000 symbols with growing counters, the real heartbeat layout."""
    from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
    from fullon_ohlcv_service.metrics.figures import WorkerFigures
    from fullon_ohlcv_service.timeutil import now_ms

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    cache = SyncSqliteProcessCache(settings.cache)
    fig = WorkerFigures(rest_requests={"ok": 0, "rate_limited": 0, "5xx": 0, "error": 0})
    started = now_ms()
    pid = cache.register("ohlcv", f"ohlcv-worker:{spec.name}", {"pid": os.getpid()}, status="starting")
    n = 0
    while not stop and (parent_pid is None or os.getppid() == parent_pid):
        n += 1
        now = now_ms()
        fig.rest_requests["ok"] += 3
        fig.commit_seconds.observe(0.004, 10)
        fig.emit_to_commit_seconds.observe(0.3, 200)
        params: dict[str, Any] = {
            "pid": os.getpid(), "exchange": spec.name, "started_ms": started, "state": "running",
            "symbols": {s.symbol: {"last_trade_ms": now - 1500, "last_final_candle_ms": now - 61_000,
                                   "trades_stored": 20 * n, "candles_stored": n, "backfill_pct": 100.0,
                                   "error": None, "gaps_found": 0, "gaps_repaired": 0}
                        for s in spec.symbols},
            "buffer_depth": 12, "loop_lag_ms": 1.5, "reconnects": 0, "gaps_repaired": 0, "errors": 0,
            **fig.as_params(),
        }
        cache.update(pid, status="running", params=params)
        time.sleep(settings.heartbeat_interval)
    cache.close()
    return 0


def master_main(cfg_path: str) -> None:
    import setproctitle

    from fullon_ohlcv_service import log
    from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
    from fullon_ohlcv_service.supervisor.arbiter import Arbiter, ForkStarter

    cfg = json.loads(Path(cfg_path).read_text())
    settings = settings_from_env({}, home=cfg["home"], cache=cfg["cache"], heartbeat_interval=1.0,
                                 heartbeat_timeout=30.0, boot_grace=60.0)
    log.configure("WARNING")
    specs = [ExchangeSpec(name=ex, symbols=tuple(SymbolSpec(symbol=f"S{i:04d}/USD") for i in range(cfg["symbols"])),
                          params=MappingProxyType({})) for ex in EXCHANGES]
    exporter = None
    if cfg["metrics"]:
        from fullon_ohlcv_service.metrics.exporter import run_exporter
        from fullon_ohlcv_service.metrics.process import ExporterProcess, listen

        exporter = ExporterProcess(listen("127.0.0.1", 0), functools.partial(
            run_exporter, cache_url=settings.cache, per_symbol=cfg["per_symbol"]))
    arbiter = Arbiter(specs, settings, starter=ForkStarter(synth_worker, settings),
                      cache=SyncSqliteProcessCache(settings.cache), set_title=setproctitle.setproctitle,
                      exporter=exporter)
    sys.exit(arbiter.run())


# ---------------------------------------------------------------------------- the measuring side

def exporter_info(cache_path: Path, master: int) -> dict[str, Any] | None:
    from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache

    cache = SyncSqliteProcessCache(cache_path)
    try:
        doc = cache.get_component("ohlcv-supervisor")
    finally:
        cache.close()
    if not doc or doc["params"].get("pid") != master:
        return None
    info: dict[str, Any] | None = doc["params"].get("metrics_exporter")
    return info


def phase(tmp: Path, name: str, *, metrics: bool, per_symbol: bool, symbols: int, seconds: float,
          interval: float) -> dict[str, Any]:
    home = tmp / name
    home.mkdir()
    cfg = {"home": str(home), "cache": f"sqlite://{home / 'cache.sqlite'}", "symbols": symbols,
           "metrics": metrics, "per_symbol": per_symbol}
    (home / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, __file__, "--master", str(home / "cfg.json")], start_new_session=True)
    out: dict[str, Any] = {"name": name}
    try:
        master = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        listen = None
        while time.monotonic() < deadline:  # every worker beating (and the exporter up)
            kids = master.children()
            info = exporter_info(home / "cache.sqlite", proc.pid) if metrics else {}
            if len(kids) >= (3 if metrics else 2) and (not metrics or (info and info.get("pid"))):
                listen = (info or {}).get("listen")
                break
            time.sleep(0.2)
        time.sleep(3.0)  # the first heartbeats of 1,000 symbols are in
        exporter = next((p for p in master.children() if metrics and p.pid == (info or {}).get("pid")), None)
        c0 = sum(master.cpu_times()[:2])
        e0 = sum(exporter.cpu_times()[:2]) if exporter else 0.0
        t0 = time.monotonic()
        times: list[float] = []
        size = series = 0
        while time.monotonic() - t0 < seconds:
            if listen:
                s0 = time.perf_counter()
                with urllib.request.urlopen(f"http://{listen}/metrics", timeout=30) as resp:
                    body = resp.read()
                times.append(time.perf_counter() - s0)
                size = len(body)
                series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            time.sleep(max(0.0, interval - (times[-1] if times else 0.0)) if listen else 0.5)
        wall = time.monotonic() - t0
        out["master_cpu_pct"] = 100.0 * (sum(master.cpu_times()[:2]) - c0) / wall
        if exporter and times:
            out["exporter_cpu_ms_per_scrape"] = 1000.0 * (sum(exporter.cpu_times()[:2]) - e0) / len(times)
            out["scrape_ms_p50"] = 1000.0 * statistics.median(times)
            out["scrape_ms_max"] = 1000.0 * max(times)
            out["scrapes"] = len(times)
            out["bytes"] = size
            out["series"] = series
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--master":
        master_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=1000, help="symbols per exchange (default 1000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase (default 15)")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="seconds between scrapes (default 1; Prometheus' default is 15-60)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as d:
        tmp = Path(d)
        kw = {"symbols": args.symbols, "seconds": args.seconds, "interval": args.interval}
        off = phase(tmp, "off", metrics=False, per_symbol=False, **kw)
        on = phase(tmp, "on", metrics=True, per_symbol=True, **kw)
        agg = phase(tmp, "per_symbol_off", metrics=True, per_symbol=False, **kw)
    n = args.symbols
    print(f"{len(EXCHANGES)} exchanges x {n} symbols, heartbeats every 1 s, a scrape every {args.interval:g} s")
    print(f"master CPU: metrics off {off['master_cpu_pct']:.2f}%, on {on['master_cpu_pct']:.2f}%, "
          f"on without per-symbol series {agg['master_cpu_pct']:.2f}% (of one core)")
    for p in (on, agg):
        print(f"{p['name']:>15}: scrape p50 {p['scrape_ms_p50']:.0f} ms, max {p['scrape_ms_max']:.0f} ms, "
              f"exporter CPU {p['exporter_cpu_ms_per_scrape']:.0f} ms/scrape, {p['series']:,} series, "
              f"{p['bytes'] / 1024:,.0f} KiB, {p['scrapes']} scrapes")
    print(f"RESULT master_cpu_off_pct={off['master_cpu_pct']:.2f} master_cpu_on_pct={on['master_cpu_pct']:.2f} "
          f"master_cpu_aggregate_pct={agg['master_cpu_pct']:.2f} scrape_ms_on={on['scrape_ms_p50']:.0f} "
          f"scrape_ms_off={agg['scrape_ms_p50']:.0f} exporter_cpu_ms_on={on['exporter_cpu_ms_per_scrape']:.0f} "
          f"exporter_cpu_ms_off={agg['exporter_cpu_ms_per_scrape']:.0f} series_on={on['series']} "
          f"series_off={agg['series']} kib_on={on['bytes'] / 1024:.0f}")


if __name__ == "__main__":
    main()
