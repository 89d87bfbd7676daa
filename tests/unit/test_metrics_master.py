"""The master with its /metrics exporter child, real processes and signals (small fake workers, SQLite cache).

A hostile scraper (hundreds of idle connections, clients that ask and never read a large page) must not
delay the master: reaping, liveness and restarts go on at their usual pace because /metrics is served by
another process. Restarts are counted by reason, and counters continue across a worker restart.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.settings import Settings, settings_from_env
from fullon_ohlcv_service.timeutil import now_ms, parse_time
from tests.unit.test_arbiter import ROOT, Master, _load, alive, children_of, cmdline

SYMBOLS = 1000  # a page of ~500 KB, more than socket buffers take from a client that never reads


def counting_worker(spec: ExchangeSpec, settings: Settings, *, parent_pid: int | None = None) -> int:
    """Beats like a worker, with ``trades_stored`` growing by 1 per beat for each of its symbols."""
    import setproctitle

    setproctitle.setproctitle(f"fake-worker: {spec.name}")
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    cache = SyncSqliteProcessCache(settings.cache)
    n = 0
    params: dict[str, Any] = {"pid": os.getpid(), "exchange": spec.name, "started_ms": now_ms(), "state": "running"}
    pid = cache.register("ohlcv", f"ohlcv-worker:{spec.name}", params, status="running")
    while not stop:
        if parent_pid is not None and os.getppid() != parent_pid:
            return 0
        n += 1
        params["symbols"] = {f"S{i}/USD": {"last_trade_ms": now_ms(), "trades_stored": n, "backfill_pct": 100.0}
                             for i in range(SYMBOLS)}
        params["reconnects"] = 1
        cache.update(pid, params=params)
        time.sleep(settings.heartbeat_interval)
    cache.stop(pid, "stopped")
    cache.close()
    return 0


def drive() -> None:
    """Entry of the master subprocess (like test_arbiter.drive) with a /metrics exporter on a free port."""
    import functools

    import setproctitle

    from fullon_ohlcv_service import log
    from fullon_ohlcv_service.metrics.exporter import run_exporter
    from fullon_ohlcv_service.metrics.process import ExporterProcess, listen
    from fullon_ohlcv_service.supervisor.arbiter import Arbiter, ForkStarter

    path = sys.argv[1]
    cfg, specs = _load(path)
    settings = settings_from_env({}, home=cfg["home"], cache=cfg["cache"], **cfg["settings"])
    log.configure("INFO")
    exporter = ExporterProcess(listen("127.0.0.1", 0),
                               functools.partial(run_exporter, cache_url=settings.cache, per_symbol=True),
                               backoff_initial=0.2)
    arbiter = Arbiter(specs, settings, starter=ForkStarter(counting_worker, settings),
                      cache=SyncSqliteProcessCache(settings.cache), set_title=setproctitle.setproctitle,
                      exporter=exporter)
    sys.exit(arbiter.run())


class MetricsMaster(Master):
    def start(self) -> MetricsMaster:
        import subprocess

        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.unit.test_metrics_master import drive; drive()", str(self.cfg_path)],
            cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        return self

    def params(self) -> dict[str, Any]:
        doc = self.cache.get_component("ohlcv-supervisor")
        return doc["params"] if doc and doc["params"].get("pid") == self.pid else {}

    def heartbeat_age(self) -> float:
        doc = self.cache.get_component("ohlcv-supervisor")
        assert doc is not None
        return (now_ms() - parse_time(doc["heartbeat"])) / 1000.0

    def exporter(self) -> tuple[str, int | None]:
        info = self.params().get("metrics_exporter") or {}
        return str(info.get("listen") or ""), info.get("pid")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MetricsMaster]:
    m = MetricsMaster(tmp_path, [{"name": "kraken"}], settings={"heartbeat_interval": 0.2})
    m.start()
    try:
        yield m
    finally:
        kids = children_of(m.pid) if m.proc and m.proc.poll() is None else []
        m.kill()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(listen: str, timeout: float = 10.0) -> Samples:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(s: Samples, name: str, **labels: str) -> float | None:
    return s.get((name, tuple(sorted(labels.items()))))


def hostile(listen: str, idle: int, deaf: int) -> list[socket.socket]:
    """``idle`` connections that never send a byte, ``deaf`` that ask for /metrics and never read."""
    host, port = listen.rsplit(":", 1)
    socks: list[socket.socket] = []
    for i in range(idle + deaf):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        if i >= idle:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    return socks


def wait(what: str, pred: Callable[[], Any], timeout: float, m: Master) -> Any:
    return m.wait(what, pred, timeout)


def test_hostile_scrapers_do_not_delay_the_master_and_restarts_are_counted(master: MetricsMaster) -> None:
    m = master
    k1 = m.running_pid("kraken")
    listen, exp1 = wait("the exporter", lambda: m.exporter() if m.exporter()[1] else None, 10, m)
    assert exp1 is not None and cmdline(exp1) == "ohlcv-supervisor: metrics"
    assert sorted(children_of(m.pid)) == sorted([k1, exp1])
    first = wait("a scrape with trades", lambda: scrape(listen), 10, m)
    t_before = sample(first, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD")
    assert t_before is not None and t_before >= 1
    assert sample(first, "ohlcv_worker_restarts_total", exchange="kraken", reason="killed") == 0

    socks = hostile(listen, idle=300, deaf=24)
    try:
        time.sleep(1.0)  # let the exporter's handler threads block on them
        assert len(os.listdir(f"/proc/{exp1}/task")) > 1, "the hostile clients hold none of the exporter's threads"
        # a legitimate scrape meanwhile is answered at once, with the page or with 503: it never hangs
        t0 = time.monotonic()
        try:
            scrape(listen, timeout=8)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        assert time.monotonic() - t0 < 8
        # the master still reaps and restarts at its usual pace, and keeps publishing its own record
        t0 = time.monotonic()
        os.kill(k1, signal.SIGKILL)
        k2 = m.running_pid("kraken", other_than=k1)
        restart_s = time.monotonic() - t0
        assert restart_s < 3.0, restart_s
        for _ in range(10):
            assert m.heartbeat_age() < 2.0
            time.sleep(0.1)
    finally:
        for s in socks:
            s.close()
    after = wait("a scrape after the kill", lambda: scrape(listen), 15, m)
    assert sample(after, "ohlcv_worker_restarts_total", exchange="kraken", reason="killed") == 1
    assert sample(after, "ohlcv_worker_restarts_total", exchange="kraken", reason="hung") == 0
    assert sample(after, "ohlcv_websocket_reconnects_total", exchange="kraken") == 2  # 1 per life, added up
    t_after = sample(after, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD")
    assert t_after is not None and t_after >= t_before  # carried over the restart, never back
    assert m.state("kraken")["pid"] == k2

    # the exporter itself killed: the master starts another one on the same socket
    os.kill(exp1, signal.SIGKILL)
    exp2 = wait("a new exporter", lambda: (m.exporter()[1] if m.exporter()[1] not in (None, exp1) else None), 10, m)
    again = wait("a scrape from the new exporter", lambda: scrape(listen), 10, m)
    t_again = sample(again, "ohlcv_trades_committed_total", exchange="kraken", symbol="S0/USD")
    assert t_again is not None and t_again >= t_after  # the carry lives in the master: no reset
    assert sample(again, "ohlcv_websocket_reconnects_total", exchange="kraken") == 2
    assert m.state("kraken")["pid"] == k2  # the worker was not touched

    assert m.stop() == 0
    assert not alive(exp2) and not alive(k2)
