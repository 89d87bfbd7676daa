"""The chaos runner's /proc view: worker titles, births seen under a master, and our leftover processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from chaos import procs

# A stand-in master: forks one child per line on stdin titled "ohlcv-worker: <name>", like the supervisor.
MASTER = r"""
import os, sys, time, signal
import setproctitle
for line in sys.stdin:
    name = line.strip()
    if not name:
        continue
    pid = os.fork()
    if pid == 0:
        time.sleep(0.2)  # untitled for a while, as between fork and setproctitle
        setproctitle.setproctitle(f"ohlcv-worker: {name}")
        signal.pause()
        os._exit(0)
    print(pid, flush=True)
"""


def test_worker_exchange_from_titles() -> None:
    assert procs.worker_exchange(["ohlcv-worker: kraken"]) == "kraken"
    assert procs.worker_exchange(["ohlcv-worker:", "binance"]) == "binance"
    assert procs.worker_exchange(["ohlcv-supervisor: master [kraken]"]) is None
    assert procs.worker_exchange(["python", "-c", "x"]) is None
    assert procs.worker_exchange(["ohlcv-worker:"]) is None


def test_watch_sees_births_and_replacements_and_marker_finds_leftovers() -> None:
    token = uuid.uuid4().hex
    env = {**os.environ, procs.MARKER: token}
    master = subprocess.Popen([sys.executable, "-c", MASTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, start_new_session=True)
    assert master.stdin is not None and master.stdout is not None
    watch = procs.WorkerWatch(period=0.02)
    watch.set_master(master.pid)
    watch.start()
    try:
        master.stdin.write("kraken\n")
        master.stdin.flush()
        first = int(master.stdout.readline())
        assert watch.wait_worker("kraken", timeout=5) == first
        t_kill = time.monotonic()
        os.kill(first, 9)
        master.stdin.write("kraken\n")
        master.stdin.flush()
        second = int(master.stdout.readline())
        assert watch.wait_worker("kraken", timeout=5, not_pid=first) == second
        ev = watch.first_after("kraken", t_kill, not_pid=first)
        assert ev is not None and ev.pid == second and ev.mono >= t_kill
        assert [e.pid for e in watch.events()] == [first, second]
        assert watch.current("binance") is None
        assert not procs.alive(first) or procs.alive(first) is False
        # The retitled worker lost the marker (setproctitle reuses the environment's memory): the session finds it.
        by_marker = {p.pid for p in procs.marked_processes(token, {os.getpid()})}
        assert master.pid in by_marker
        found = {p.pid for p in procs.marked_processes(token, {os.getpid()}, sessions={master.pid})}
        assert {master.pid, second} <= found
        assert first not in found  # dead (a zombie until the master reaps it) is not left over
        assert procs.marked_processes(uuid.uuid4().hex) == []
    finally:
        watch.stop()
        for pid in [p.pid for p in procs.marked_processes(token, {os.getpid()}, {master.pid})]:
            os.kill(pid, 9)
        master.wait(timeout=5)
