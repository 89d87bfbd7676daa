"""``ohlcv-simulator`` as a real process: one JSON start-up line, serves ccxt, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from fullon_ohlcv_service.adapters.ccxt_local import iter_urls


def _start(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "fullon_ohlcv_service", "simulator", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        pytest.fail(f"no start-up line; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_startup_line_serves_and_stops_on_signal(sig: signal.Signals) -> None:
    proc, info = _start("--seed", "5", "--symbols", "kraken:BTC/USD@20,ETH/USD@0.5;binance:BTC/USDT",
                        "--history-days", "0.01", "--fault", "rest_429=1,exchange=binance")
    try:
        url = info["url"]
        assert url.startswith("http://127.0.0.1:")
        assert set(info["exchanges"]) == {"kraken", "binance"}
        for frag in info["exchanges"].values():
            assert all("://127.0.0.1:" in u for u in iter_urls(frag))
            assert frag["enableRateLimit"] is False
        with urllib.request.urlopen(f"{url}/_sim/info", timeout=5) as r:
            assert json.load(r)["symbols"] == {"kraken": ["BTC/USD", "ETH/USD"], "binance": ["BTC/USDT"]}
        with urllib.request.urlopen(f"{url}/kraken/api.kraken.com/0/public/AssetPairs", timeout=5) as r:
            assert set(json.load(r)["result"]) == {"XXBTZUSD", "XETHZUSD"}
        with urllib.request.urlopen(f"{url}/_sim/stats", timeout=5) as r:
            stats = json.load(r)
        assert stats["seed"] == 5 and stats["exchanges"]["binance"]["faults"]["pending"]["rest_429"] == 1
    finally:
        proc.send_signal(sig)
        assert proc.wait(10) == 0


def test_bad_flags_exit_with_config_code() -> None:
    res = subprocess.run([sys.executable, "-m", "fullon_ohlcv_service", "simulator", "--exchanges", "bitmex"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 78 and "bitmex" in res.stderr and res.stdout == ""
    res = subprocess.run([sys.executable, "-m", "fullon_ohlcv_service", "simulator", "--fault", "nope=1"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 78 and "unknown fault keys: nope" in res.stderr
