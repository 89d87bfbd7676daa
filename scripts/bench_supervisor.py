#!/usr/bin/env python3
"""Benchmark: restart latency (kill -9 -> the new worker's first heartbeat) and worker USS, fork vs spawn.

One run, side by side: the real ohlcv-supervisor against the simulator, once with forked workers
(the default) and once with ``--start-method spawn`` (multiprocessing's spawn context, same target).
For each, the kraken worker is killed ``--kills`` times; the latency is measured from the kill to the
heartbeat timestamp the new worker writes first. USS (psutil, unique memory) is read from every
worker once it is collecting live data. Last line:
``RESULT fork_restart_ms=... spawn_restart_ms=... spawn_vs_fork=... fork_uss_mb=... spawn_uss_mb=... uss_ratio=...``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fullon_ohlcv_service.adapters.caches import open_sync_process_cache
from fullon_ohlcv_service.settings import parse_store_url
from fullon_ohlcv_service.timeutil import now_ms, parse_time

BIN = Path(sys.executable).parent
EXCHANGES = ("kraken", "binance")


def _bin(name: str) -> str:
    return str(BIN / name)


class Bench:
    def __init__(self, tmp: Path, kills: int) -> None:
        self.tmp = tmp
        self.kills = kills
        home = tmp / "home"
        home.mkdir()
        self.cache_url = f"sqlite://{home / 'cache.sqlite'}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DB_", "REDIS_", "OHLCV_")) and k not in ("LOG_FILE_PATH", "LOG_FORMAT")}
        env.update({"OHLCV_HOME": str(home), "OHLCV_CONFIG_DB": f"sqlite://{home / 'config.sqlite'}",
                    "OHLCV_DB": f"sqlite://{home / 'ohlcv'}", "OHLCV_CACHE": self.cache_url, "LOG_LEVEL": "WARNING",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        self.env = env
        self.cache = open_sync_process_cache(parse_store_url("cache", self.cache_url, ("sqlite",)))
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""

    def setup(self) -> None:
        self.sim = subprocess.Popen(
            [_bin("ohlcv-simulator"), "--port", "0", "--exchanges", ",".join(EXCHANGES),
             "--symbols", "kraken:BTC/USD@4,ETH/USD@1;binance:BTC/USDT@4", "--history-days", "0.02"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.sim.stdout is not None
        self.sim_url = json.loads(self.sim.stdout.readline())["url"].rstrip("/")
        threading.Thread(target=self.sim.stdout.read, daemon=True).start()
        for args in (["init"], ["add-exchange", "kraken"], ["add-exchange", "binance"],
                     ["add-symbol", "kraken", "BTC/USD", "--backtest", "0"],
                     ["add-symbol", "kraken", "ETH/USD", "--backtest", "0"],
                     ["add-symbol", "binance", "BTC/USDT", "--backtest", "0"]):
            subprocess.run([_bin("ohlcv-config"), *args], env=self.env, check=True, capture_output=True)

    def close(self) -> None:
        self.cache.close()
        if self.sim and self.sim.poll() is None:
            self.sim.send_signal(signal.SIGTERM)
            self.sim.wait(15)

    # ------------------------------------------------------------------ one method

    def _master_entry(self, master: int, exchange: str) -> dict[str, Any]:
        doc = self.cache.get_component("ohlcv-supervisor")
        if not doc or doc["params"].get("pid") != master:
            return {}
        entry: dict[str, Any] = doc["params"]["exchanges"].get(exchange) or {}
        return entry

    def _beat(self, exchange: str, pid: int) -> dict[str, Any] | None:
        doc = self.cache.get_component(f"ohlcv-worker:{exchange}")
        if doc and doc.get("params", {}).get("pid") == pid:
            return doc
        return None

    def _wait(self, what: str, pred: Any, timeout: float, interval: float = 0.005) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(interval)
        raise RuntimeError(f"timed out waiting for {what}")

    def _live_worker(self, master: int, exchange: str, other_than: int | None = None,
                     timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
        def ready() -> tuple[int, dict[str, Any]] | None:
            pid = self._master_entry(master, exchange).get("pid")
            if not pid or pid == other_than:
                return None
            doc = self._beat(exchange, pid)
            return (int(pid), doc) if doc else None

        found: tuple[int, dict[str, Any]] = self._wait(f"{exchange} worker heartbeat", ready, timeout)
        return found

    def _wait_collecting(self, exchange: str, pid: int) -> None:
        def live() -> bool:
            doc = self._beat(exchange, pid)
            return bool(doc and doc["params"].get("state") in ("running", "behind"))

        self._wait(f"{exchange} live data", live, 60.0, interval=0.1)

    def run_method(self, method: str) -> tuple[list[float], list[float]]:
        log = (self.tmp / f"supervisor-{method}.log").open("wb")
        master_proc = subprocess.Popen(
            [_bin("ohlcv-supervisor"), "--exchanges", ",".join(EXCHANGES), "--simulator", self.sim_url,
             "--start-method", method, "--heartbeat-interval", "0.5", "--heartbeat-timeout", "15",
             "--boot-grace", "30", "--restart-budget", "1000", "--backoff-reset", "1"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        master = master_proc.pid
        latencies: list[float] = []
        uss: list[float] = []
        try:
            pids = {ex: self._live_worker(master, ex)[0] for ex in EXCHANGES}
            for ex, pid in pids.items():
                self._wait_collecting(ex, pid)
            time.sleep(2.0)  # steady state: buffers, sockets and caches in place
            uss = [psutil.Process(pid).memory_full_info().uss / 2**20 for pid in pids.values()]
            pid = pids["kraken"]
            for _ in range(self.kills):
                time.sleep(1.2)  # past --backoff-reset: each kill is a first failure, restarted at once
                killed_ms = now_ms()
                os.kill(pid, signal.SIGKILL)
                new_pid, doc = self._live_worker(master, "kraken", other_than=pid)
                first_beat_ms = parse_time(str(doc["heartbeat"]))
                latencies.append(float(first_beat_ms - killed_ms))
                pid = new_pid
                self._wait_collecting("kraken", pid)
        finally:
            if master_proc.poll() is None:
                master_proc.send_signal(signal.SIGTERM)
                master_proc.wait(60)
            log.close()
        return latencies, uss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kills", type=int, default=5, help="kill -9 rounds per start method (default 5)")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ohlcv-bench-sup-") as tmp:
        bench = Bench(Path(tmp), ns.kills)
        try:
            bench.setup()
            results = {}
            for method in ("fork", "spawn"):
                lat, uss = bench.run_method(method)
                results[method] = (statistics.median(lat), statistics.mean(uss))
                print(f"{method:>5}: restart latencies ms {[round(x) for x in lat]}, "
                      f"median {statistics.median(lat):.0f} ms; worker USS MB {[round(u, 1) for u in uss]}")
        finally:
            bench.close()
    fork_ms, fork_uss = results["fork"]
    spawn_ms, spawn_uss = results["spawn"]
    spawn_vs_fork = spawn_ms / max(fork_ms, 1.0)
    uss_ratio = fork_uss / spawn_uss
    print(f"forked restart {fork_ms:.0f} ms vs spawn {spawn_ms:.0f} ms ({spawn_vs_fork:.1f}x faster; target >= 5x, "
          f"<= 1000 ms); forked worker USS {fork_uss:.1f} MB vs spawn {spawn_uss:.1f} MB "
          f"(ratio {uss_ratio:.2f}; target <= 0.5)")
    print(f"RESULT fork_restart_ms={fork_ms:.0f} spawn_restart_ms={spawn_ms:.0f} spawn_vs_fork={spawn_vs_fork:.2f} "
          f"fork_uss_mb={fork_uss:.1f} spawn_uss_mb={spawn_uss:.1f} uss_ratio={uss_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
