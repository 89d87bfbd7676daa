"""The real ohlcv-supervisor with real forked workers against the simulator: kill -9, SIGSTOP, SIGHUP,
SIGTERM, SIGKILL of the master, a parked exchange, a Redis outage, and ohlcv-status --check."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.servers import PrivateRedis
from fullon_ohlcv_service.errors import EXIT_ALL_FATAL
from fullon_ohlcv_service.timeutil import now_ms, parse_time
from tests.conftest import REDIS_HOST, REDIS_PORT
from tests.process.harness import System, children, cmdline, proc_alive, session_members, wait_for
from tests.services import need, redis_db

pytestmark = pytest.mark.slow

REDIS_DB = redis_db("OHLCV_TEST_PROCESS_REDIS_DB", 11)  # apart from conftest's 13 and chaos' 12


@pytest.fixture
def cache_url() -> Iterator[str]:
    """A Redis db of its own on the shared server (flushed before and after): the production cache."""
    need(REDIS_HOST, REDIS_PORT, "Redis")  # fails instead of skipping under OHLCV_REQUIRE_SERVICES=1
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    finally:
        try:
            client.flushdb()
        except redis.RedisError:
            pass  # the shared server went away during the test; nothing is left to flush
        client.close()


@pytest.fixture
def system(tmp_path: Path, cache_url: str) -> Iterator[System]:
    s = System(tmp_path, cache_url)
    try:
        yield s
    finally:
        s.close()


def _started(system: System, *exchanges: str) -> dict[str, int]:
    system.start_simulator()
    system.setup_config({"kraken": ["BTC/USD"], "binance": ["BTC/USDT"]})
    system.start_supervisor("--exchanges", ",".join(exchanges))
    return {ex: system.wait_beating(ex, 30) for ex in exchanges}


def test_lifecycle_titles_kill9_sigstop_sighup_sigterm(system: System) -> None:
    pids = _started(system, "kraken", "binance")
    assert system.sup is not None
    master = system.sup.pid
    # one worker per exchange, forked by the master, with the titles
    assert cmdline(master) == "ohlcv-supervisor: master [kraken,binance]"
    assert cmdline(pids["kraken"]) == "ohlcv-worker: kraken"
    assert cmdline(pids["binance"]) == "ohlcv-worker: binance"
    assert sorted(children(master)) == sorted(pids.values())
    system.wait_live_data("kraken", "BTC/USD", 30)
    system.wait_live_data("binance", "BTC/USDT", 30)
    first_ms = now_ms()

    # ohlcv-status --check: 0 while healthy
    wait_for("status --check 0", lambda: system.run("ohlcv-status", "--check").returncode == 0, 15,
             interval=0.5, log=system.log)

    # kill -9 of a worker: a new worker heartbeats soon (generous bound for a loaded machine; the
    # restart latency itself is measured by scripts/bench_supervisor.py)
    k1 = pids["kraken"]
    t0 = time.monotonic()
    os.kill(k1, signal.SIGKILL)
    k2 = system.wait_beating("kraken", 15.0, other_than=k1)
    restart_s = time.monotonic() - t0
    assert restart_s < 15.0
    assert system.state("kraken")["restarts"] == 1
    assert system.state("kraken")["last_exit"] == "killed by SIGKILL"
    assert system.state("binance")["pid"] == pids["binance"]

    # SIGSTOP: detected after the 3 s heartbeat timeout (boot grace 5 s is over by then) and replaced
    time.sleep(max(0.0, 5.5 - (time.monotonic() - t0)))
    os.kill(k2, signal.SIGSTOP)
    t1 = time.monotonic()
    k3 = system.wait_beating("kraken", 30, other_than=k2)
    replaced_s = time.monotonic() - t1
    assert 1.0 <= replaced_s <= 30.0, replaced_s  # not at once: through the heartbeat timeout (the log says so)
    assert not proc_alive(k2)
    assert "worker hung: heartbeat too old; terminating it exchange=kraken" in system.log()
    assert system.state("kraken")["restarts"] == 2
    assert system.state("binance")["pid"] == pids["binance"]  # the other exchange is untouched

    # SIGHUP after ohlcv-config add-symbol: kraken restarts with the symbol, binance keeps its pid
    system.config("add-symbol", "kraken", "ETH/USD", "--backtest", "0")
    os.kill(master, signal.SIGHUP)
    k4 = system.wait_beating("kraken", 15, other_than=k3)
    system.wait_live_data("kraken", "ETH/USD", 30)
    doc = system.worker_doc("kraken")
    assert doc is not None and set(doc["params"]["symbols"]) == {"BTC/USD", "ETH/USD"}
    assert system.state("binance")["pid"] == pids["binance"] and proc_alive(pids["binance"])
    assert system.state("kraken")["restarts"] == 2  # a configuration restart is not a failure

    # SIGTERM: everything stops, no process is left, and what was collected is complete
    time.sleep(2.0)
    stop_ms = now_ms()
    assert system.stop_supervisor() == 0
    assert session_members(master) == []
    for pid in (*pids.values(), k2, k3, k4):
        assert not proc_alive(pid)
    log = system.log()
    assert "stopped; buffers flushed exchange=kraken" in log
    assert "stopped; buffers flushed exchange=binance" in log
    for exchange, symbol in (("kraken", "BTC/USD"), ("binance", "BTC/USDT")):
        until = stop_ms - 1000  # the last second may still be in flight on the wire
        truth = system.truth_trade_ids(exchange, symbol, first_ms, until)
        stored = {str(t["id"]) for t in system.stored_trades(exchange, symbol, first_ms, until)}
        # a steady 4 trades/s over the ~15 s window: dozens of trades to audit
        assert len(truth) > 20, (exchange, len(truth))
        missing = truth - stored
        assert not missing, f"{exchange} {symbol}: {len(missing)} of {len(truth)} trades missing"
        assert stored <= truth


def test_parked_exchange_status_check_and_lone_fatal_master_exit(system: System) -> None:
    system.start_simulator()
    system.setup_config({"kraken": ["BTC/USD"], "bitmex": ["BTC/USD"]})
    system.start_supervisor("--exchanges", "kraken,bitmex")
    system.wait_beating("kraken", 30)
    st = wait_for("bitmex fatal", lambda: system.state("bitmex") if system.state("bitmex").get("state") == "fatal"
                  else None, 10, log=system.log)
    assert "bitmex" in st["reason"] and "not supported" in st["reason"]
    assert st["restarts"] == 0 and st["pid"] is None
    system.wait_live_data("kraken", "BTC/USD", 30)
    check = system.run("ohlcv-status", "--check")
    assert check.returncode != 0
    assert "UNHEALTHY: bitmex: fatal: exchange 'bitmex' is not supported" in check.stdout
    table = system.run("ohlcv-status")
    assert table.returncode == 0 and "bitmex" in table.stdout and "kraken" in table.stdout
    assert system.sup is not None and system.sup.poll() is None  # the other exchange keeps it running
    assert system.stop_supervisor() == 0

    # alone, the parked exchange ends the master with a non-zero code (supervisord sees it)
    system.start_supervisor("--exchanges", "bitmex")
    assert system.sup is not None
    code = system.sup.wait(30)
    assert code == EXIT_ALL_FATAL, system.log()[-3000:]
    assert "every exchange is parked FATAL" in system.log()


def test_a_failed_reload_keeps_the_service_running_and_shows_in_status(system: System) -> None:
    """SIGHUP while the SQLite configuration database is corrupt, then unreadable (a directory in its place:
    root ignores file modes): the master and its worker keep running, one line is logged per failure, and
    ohlcv-status shows the error until a reload succeeds."""
    kraken = _started(system, "kraken")["kraken"]
    assert system.sup is not None
    master = system.sup.pid
    path = Path(system.env["OHLCV_HOME"]) / "config.sqlite"
    good = path.read_bytes()
    path.write_bytes(b"\x00 not a database " * 4096)
    os.kill(master, signal.SIGHUP)
    err = wait_for("the reload error", lambda: system.sup_params().get("reload_error"), 15, log=system.log)
    assert str(path) in err and "\n" not in err, err
    table = system.run("ohlcv-status")
    assert table.returncode == 0 and f"configuration reload failed (the previous configuration keeps running): " \
        f"{err}" in table.stdout, table.stdout
    assert json.loads(system.run("ohlcv-status", "--json").stdout)["supervisor"]["reload_error"] == err

    path.unlink()
    path.mkdir()
    os.kill(master, signal.SIGHUP)
    err2 = wait_for("the second reload error", lambda: (e := system.sup_params().get("reload_error")) != err and e,
                    15, log=system.log)
    assert str(path) in err2 and "\n" not in err2, err2
    assert system.sup.poll() is None and proc_alive(kraken)
    st = system.state("kraken")
    assert (st["pid"], st["restarts"], st["state"]) == (kraken, 0, "running"), st
    log = system.log()
    assert log.count("configuration reload failed; keeping the running set") == 2
    assert "Traceback" not in log

    path.rmdir()
    path.write_bytes(good)
    os.kill(master, signal.SIGHUP)
    wait_for("the reload error cleared", lambda: system.sup_params().get("reload_error") == "", 15, log=system.log)
    assert "configuration reload failed" not in system.run("ohlcv-status").stdout
    assert system.state("kraken")["pid"] == kraken and proc_alive(kraken)
    assert system.stop_supervisor() == 0


def test_master_sigkill_leaves_no_orphan(system: System) -> None:
    pids = _started(system, "kraken", "binance")
    assert system.sup is not None
    os.kill(system.sup.pid, signal.SIGKILL)
    system.sup.wait(10)
    # nobody signals the workers: they notice the master is gone within a few heartbeat intervals (0.5 s);
    # the bound is generous for a loaded machine
    wait_for("workers to exit by themselves", lambda: not any(proc_alive(p) for p in pids.values()), 15,
             log=system.log)


@pytest.fixture
def private_system(tmp_path: Path, private_redis: PrivateRedis) -> Iterator[System]:
    """A system whose cache is a redis-server of the test's own, which the test may stop."""
    s = System(tmp_path, private_redis.url(0))
    try:
        yield s
    finally:
        s.close()


def _shared_redis_up() -> bool:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_redis_outage_of_30s_restarts_nobody(private_system: System, private_redis: PrivateRedis) -> None:
    """The outage stops the test's own redis-server; the machine's shared one keeps answering throughout."""
    system = private_system
    shared_up = _shared_redis_up()
    pids = _started(system, "kraken", "binance")
    system.wait_live_data("kraken", "BTC/USD", 30)
    time.sleep(6.0)  # past the boot grace, so a wrong judgement would kill
    private_redis.stop()
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            assert _shared_redis_up() or not shared_up, "the machine's shared Redis went down"
            time.sleep(1.0)
        assert system.sup is not None and system.sup.poll() is None
        for pid in pids.values():
            assert proc_alive(pid)
    finally:
        private_redis.start()  # the same port, empty (no persistence)
    # the cache is empty again (no persistence): workers and master re-register by themselves
    for ex, pid in pids.items():
        wait_for(f"{ex} heartbeating again", lambda ex=ex, pid=pid: system.beating_pid(ex) == pid, 30,
                 log=system.log)
    time.sleep(4.0)  # more than the heartbeat timeout after the outage
    for ex, pid in pids.items():
        st = system.state(ex)
        assert (st["pid"], st["restarts"], st["state"]) == (pid, 0, "running"), st
    log = system.log()
    assert log.count("process cache unreadable: worker liveness unknown") == 1
    assert "worker hung" not in log and "worker died" not in log
    assert system.stop_supervisor() == 0


def test_a_quiet_market_is_not_a_hang(system: System) -> None:
    system.start_simulator(symbols="kraken:BTC/USD@0;binance:BTC/USDT@4")
    system.setup_config({"kraken": ["BTC/USD"]})
    system.start_supervisor("--exchanges", "kraken")
    pid = system.wait_beating("kraken", 30)
    time.sleep(5.0 + 2 * 3.0)  # boot grace, then twice the heartbeat timeout without a single trade
    st = system.state("kraken")
    assert (st["pid"], st["restarts"], st["state"]) == (pid, 0, "running"), st
    doc = system.worker_doc("kraken")
    assert doc is not None and doc["params"]["pid"] == pid
    first_beat = parse_time(doc["heartbeat"])
    wait_for("a newer heartbeat", lambda: parse_time((system.worker_doc("kraken") or doc)["heartbeat"]) > first_beat,
             15, log=system.log)  # the loop beats although no data arrives
    assert doc["params"]["symbols"]["BTC/USD"]["last_trade_ms"] is None
    assert "worker hung" not in system.log()
    assert system.stop_supervisor() == 0
