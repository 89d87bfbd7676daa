#!/usr/bin/env python3
"""Memory benchmark: a worker's RSS under a high trade rate stays under the stated bound (--buffer-mb).

The case where buffers grow with market activity: busy symbols whose REST catch-up is slower than
their live stream (a long history to backfill through a slow, rate-limited REST), so every live
trade is buffered until the catch-up meets it, and the candle builder takes every trade REST
delivers. Measured side by side in one run, on one simulator (the same market for both):

  1. ours:  a real `ohlcv-worker` (this checkout) with ``--buffer-mb``;
  2. old:   with ``--old-tree DIR`` (a checkout of the code before the bound, e.g. made with
            ``git archive <commit> | tar -x -C DIR``), the same worker from that tree.

Every ``--sample-s`` seconds: each worker's RSS (psutil) and our heartbeat's buffer_bytes. The stated
bound is the README's (``memory.rss_bound_mb``): 200 MB + 2 MB per symbol + ``--buffer-mb``. Exit 1
if our peak RSS went over it.
Last line: RESULT minutes=... rss_mb=... bound_mb=... rss_vs_bound=... old_rss_mb=... old_vs_ours=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
OLD_WORKER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
              "from fullon_ohlcv_service.worker.cli import main; sys.exit(main())")


def start_sim(symbols: list[str], rate: float, history_days: float,
              latency_ms: int) -> tuple[subprocess.Popen[str], str]:
    spec = "kraken:" + ",".join(f"{s}@{rate:g}" for s in symbols)
    proc = subprocess.Popen(
        [str(BIN / "ohlcv-simulator"), "--exchanges", "kraken", "--symbols", spec, "--seed", "5", "--steady",
         "--history-days", str(history_days), "--fault", f"latency_ms={latency_ms}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the simulator did not start")
    return proc, str(json.loads(line)["url"])


def stop(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def configure(home: Path, symbols: list[str]) -> None:
    from fullon_ohlcv_service.adapters.sql_config import ConfigDB
    from fullon_ohlcv_service.settings import settings_from_env

    async def go() -> None:
        async with ConfigDB(settings_from_env({"OHLCV_HOME": str(home)}), create=True) as db:
            await db.init()
            await db.add_exchange("kraken")
            for s in symbols:
                await db.add_symbol("kraken", s, backtest=1)

    asyncio.run(go())


def worker_argv(home: Path, url: str, old_tree: Path | None, extra: list[str]) -> list[str]:
    args = ["--exchange", "kraken", "--simulator", url, "--home", str(home), "--heartbeat-interval", "2",
            "--log-level", "WARNING", *extra]
    if old_tree is None:
        return [str(BIN / "ohlcv-worker"), *args]
    return [sys.executable, "-c", OLD_WORKER, str(old_tree), *args]


def heartbeat(home: Path) -> dict[str, Any]:
    from fullon_ohlcv_service.adapters.caches import open_sync_process_cache
    from fullon_ohlcv_service.errors import OhlcvError
    from fullon_ohlcv_service.settings import settings_from_env

    if not (home / "cache.sqlite").exists():
        return {}
    cache = open_sync_process_cache(settings_from_env({"OHLCV_HOME": str(home)}).cache)
    try:
        doc = cache.get_component("ohlcv-worker:kraken") or {}
    except OhlcvError:
        return {}
    finally:
        cache.close()
    params: dict[str, Any] = doc.get("params") or {}
    return params


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long the workers run (default 10)")
    p.add_argument("--symbols", type=int, default=4, help="busy symbols (default 4)")
    p.add_argument("--rate", type=float, default=300.0, help="live trades/s per symbol (default 300)")
    p.add_argument("--latency-ms", type=int, default=2500,
                   help="REST latency: one page of 1000 trades per this (default 2500: slower than live)")
    p.add_argument("--history-days", type=float, default=0.01, help="history to backfill (default 0.01 = 14 min)")
    p.add_argument("--buffer-mb", type=int, default=64, help="our worker's --buffer-mb (default 64)")
    p.add_argument("--baseline-at-s", type=float, default=20.0,
                   help="seconds after start at which the baseline RSS is taken (default 20)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--old-tree", type=Path, help="a checkout of the code before the bound, run side by side")
    ns = p.parse_args(argv)
    import psutil

    from fullon_ohlcv_service.memory import rss_bound_mb

    symbols = [f"M{i:02d}/USD" for i in range(ns.symbols)]
    sim, url = start_sim(symbols, ns.rate, ns.history_days, ns.latency_ms)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="ohlcv-bench-mem-") as tmp:
        homes = {"ours": Path(tmp, "ours"), "old": Path(tmp, "old")}
        runs = ["ours"] + (["old"] if ns.old_tree else [])
        try:
            for name in runs:
                homes[name].mkdir()
                configure(homes[name], symbols)
                extra = ["--buffer-mb", str(ns.buffer_mb)] if name == "ours" else []
                procs[name] = subprocess.Popen(
                    worker_argv(homes[name], url, ns.old_tree if name == "old" else None, extra),
                    stdout=subprocess.DEVNULL, stderr=open(Path(tmp, f"{name}.log"), "w"), cwd=str(ROOT))
            t0 = time.monotonic()
            end = t0 + ns.minutes * 60
            baseline: dict[str, float] = {}
            peak = {name: 0.0 for name in runs}
            peak_buffer = 0
            last: dict[str, float] = {}
            beat: dict[str, Any] = {}
            while time.monotonic() < end:
                time.sleep(ns.sample_s)
                elapsed = time.monotonic() - t0
                for name in runs:
                    proc = procs[name]
                    if proc.poll() is not None:
                        log = Path(tmp, f"{name}.log").read_text()[-2000:]
                        raise SystemExit(f"the {name} worker exited {proc.returncode}:\n{log}")
                    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                    last[name] = rss
                    peak[name] = max(peak[name], rss)
                    if name not in baseline and elapsed >= ns.baseline_at_s:
                        baseline[name] = rss
                beat = heartbeat(homes["ours"])
                used = int(beat.get("buffer_bytes") or 0)
                peak_buffer = max(peak_buffer, used)
                syms = beat.get("symbols") or {}
                stored = sum(int(v.get("trades_stored") or 0) for v in syms.values())
                print(f"  {elapsed:6.0f}s  ours RSS {last['ours']:7.1f} MB (buffers {used / 2**20:6.1f} MB of "
                      f"{ns.buffer_mb} MB, {stored:,} trades stored)"
                      + (f"   old RSS {last['old']:7.1f} MB" if "old" in last else ""), flush=True)
            ours_log = Path(tmp, "ours.log").read_text()
        finally:
            for proc in procs.values():
                stop(proc)
            stop(sim)
    bound = float(rss_bound_mb(ns.buffer_mb, ns.symbols))
    rss = peak["ours"]
    print(f"{ns.symbols} symbols x {ns.rate:g} trades/s live, REST one page per {ns.latency_ms} ms (catch-ups slower "
          f"than live), {ns.minutes:g} min")
    print(f"ours: baseline RSS {baseline['ours']:.1f} MB at {ns.baseline_at_s:g}s; peak {rss:.1f} MB, final "
          f"{last['ours']:.1f} MB; stated bound {bound:.0f} MB (200 + 2 x {ns.symbols} symbols + --buffer-mb "
          f"{ns.buffer_mb}) -> {rss / bound:.2f}x the bound; heartbeat buffer_bytes peak "
          f"{peak_buffer / 2**20:.1f} MB; memory-bound log lines: {ours_log.count('memory bound reached')}")
    old_part = ""
    if "old" in peak:
        print(f"old: baseline RSS {baseline['old']:.1f} MB; peak {peak['old']:.1f} MB, final {last['old']:.1f} MB "
              f"-> {peak['old'] / rss:.2f}x ours (grew {peak['old'] - baseline['old']:.1f} MB vs ours "
              f"{rss - baseline['ours']:.1f} MB)")
        old_part = f" old_rss_mb={peak['old']:.1f} old_vs_ours={peak['old'] / rss:.2f}"
    print(f"RESULT minutes={ns.minutes:g} symbols={ns.symbols} rate_s={ns.symbols * ns.rate:g} "
          f"buffer_mb={ns.buffer_mb} baseline_mb={baseline['ours']:.1f} rss_mb={rss:.1f} bound_mb={bound:.0f} "
          f"rss_vs_bound={rss / bound:.2f} buffer_peak_mb={peak_buffer / 2**20:.1f}{old_part}")
    return 0 if rss <= bound else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
