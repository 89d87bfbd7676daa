"""One settings shape: the collection flags given to the real ohlcv-supervisor reach every worker it forks."""

from __future__ import annotations

import functools
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.harness import System, wait_for

pytestmark = pytest.mark.slow

STARTING = re.compile(r" pid=(\d+) worker starting (.*)$", re.MULTILINE)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    s = System(tmp_path, f"sqlite://{tmp_path / 'cache.sqlite'}")
    try:
        yield s
    finally:
        s.close()


def _knobs(system: System, pid: int) -> dict[str, str]:
    """The fields of worker ``pid``'s "worker starting" line: what its runtime was handed."""
    for found in STARTING.finditer(system.log()):
        if int(found.group(1)) == pid:
            return dict(kv.split("=", 1) for kv in found.group(2).split())
    return {}


def test_collection_flags_reach_every_forked_worker_and_its_restarts(system: System) -> None:
    system.start_simulator()
    system.setup_config({"kraken": ["BTC/USD"], "binance": ["BTC/USDT"]})
    system.start_supervisor("--exchanges", "kraken,binance", "--silence-min", "2.5", "--gap-check", "7",
                            "--reconcile", "9", "--no-native-ohlcv", "--buffer-mb", "64")
    pids = {ex: system.wait_beating(ex, 30) for ex in ("kraken", "binance")}
    os.kill(pids["kraken"], signal.SIGKILL)  # a restart is forked with the same settings
    pids["kraken-restarted"] = system.wait_beating("kraken", 30, other_than=pids["kraken"])
    for name, pid in pids.items():
        knobs = wait_for(f"the {name} worker's starting line", functools.partial(_knobs, system, pid), 10,
                         log=system.log)
        assert {k: knobs.get(k) for k in ("exchange", "silence_min_s", "gap_check_s", "reconcile_s", "native_ohlcv",
                                          "heartbeat_interval_s", "buffer_mb")} == {
            "exchange": name.split("-")[0], "silence_min_s": "2.5", "gap_check_s": "7.0", "reconcile_s": "9.0",
            "native_ohlcv": "False", "heartbeat_interval_s": "0.5", "buffer_mb": "64"}, (name, knobs)
    assert system.stop_supervisor() == 0
