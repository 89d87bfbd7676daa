"""/metrics of the real ohlcv-supervisor against the simulator: values move with the run (trades grow,
kill -9 adds one restart with reason killed, a websocket drop adds one reconnect), agree with ohlcv-status,
and a real Prometheus scrapes them and loads the deploy/ rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.process.harness import System, wait_for
from tests.services import need, redis_db

pytestmark = pytest.mark.slow

REDIS_DB = redis_db("OHLCV_TEST_PROCESS_REDIS_DB", 11)
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _redis_url() -> str:
    need("127.0.0.1", 6379, "Redis")  # fails instead of skipping with OHLCV_REQUIRE_SERVICES=1
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One simulator and one supervisor with --metrics-port 0 for the whole file (Redis, the production cache)."""
    import redis

    url = _redis_url()
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    s = System(tmp_path_factory.mktemp("metrics"), url)
    try:
        s.start_simulator()
        s.setup_config({"kraken": ["BTC/USD"], "binance": ["BTC/USDT"]})
        s.start_supervisor("--exchanges", "kraken,binance", "--metrics-port", "0")
        for ex in ("kraken", "binance"):
            s.wait_beating(ex, 30)
        s.wait_live_data("kraken", "BTC/USD", 30)
        s.wait_live_data("binance", "BTC/USDT", 30)
        yield s
    finally:
        s.close()
        client.flushdb()
        client.close()


def listen_of(system: System) -> str:
    info = wait_for("the metrics exporter", lambda: (system.sup_params().get("metrics_exporter") or {}).get("pid")
                    and system.sup_params()["metrics_exporter"], 10, log=system.log)
    return str(info["listen"])


def scrape(listen: str) -> Samples:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def get(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), -1.0)


def test_a_real_prometheus_scrapes_the_supervisor_and_loads_the_rules(system: System, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
    listen = listen_of(system)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "alerts.yml")],
        "scrape_configs": [{"job_name": "ohlcv", "static_configs": [{"targets": [listen]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(q: str) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{api}/query?{urllib.parse.urlencode({'query': q})}", timeout=5) as r:
                body = json.loads(r.read())
        except OSError:
            return []
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def prom_log() -> str:
        return (tmp_path / "prometheus.log").read_text(errors="replace")

    try:
        rows = wait_for("our series in Prometheus", lambda: query("ohlcv_exchange_trades_committed_total > 0")
                        if len(query("ohlcv_exchange_trades_committed_total > 0")) == 2 else None, 60,
                        interval=0.5, log=prom_log)
        assert {r["metric"]["exchange"] for r in rows} == {"kraken", "binance"}
        assert all(r["metric"]["job"] == "ohlcv" for r in rows)
        assert [r["value"][1] for r in query('up{job="ohlcv"}')] == ["1"]
        # a few scrape intervals later the counter has moved on
        first = float(rows[0]["value"][1])
        wait_for("trades growing in Prometheus", lambda: any(
            float(r["value"][1]) > first for r in query("ohlcv_exchange_trades_committed_total")
            if r["metric"]["exchange"] == rows[0]["metric"]["exchange"]), 30, interval=0.5, log=prom_log)
        with urllib.request.urlopen(f"{api}/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        names = {rule["name"] for g in groups for rule in g["rules"]}
        assert {"OhlcvExchangeDown", "OhlcvRestartLoop", "OhlcvDataStale", "OhlcvRejectedRows"} <= names
        assert all(rule["health"] != "err" for g in groups for rule in g["rules"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_values_move_with_the_run_and_agree_with_status(system: System) -> None:
    listen = listen_of(system)
    t1 = wait_for("committed trades", lambda: get(scrape(listen), "ohlcv_trades_committed_total",
                                                 exchange="kraken", symbol="BTC/USD") > 0 and
                  get(scrape(listen), "ohlcv_trades_committed_total", exchange="kraken", symbol="BTC/USD"),
                  20, interval=0.3, log=system.log)
    wait_for("trades committed growing", lambda: get(scrape(listen), "ohlcv_trades_committed_total",
                                                    exchange="kraken", symbol="BTC/USD") > t1,
             20, interval=0.3, log=system.log)
    s = scrape(listen)
    assert get(s, "ohlcv_worker_up", exchange="kraken") == 1.0
    assert get(s, "ohlcv_worker_restarts_total", exchange="kraken", reason="killed") == 0.0
    assert get(s, "ohlcv_rest_requests_total", exchange="kraken", outcome="ok") > 0
    assert get(s, "ohlcv_batch_commit_seconds_count", exchange="kraken") > 0
    assert get(s, "ohlcv_worker_resident_memory_bytes", exchange="kraken") > 10e6

    # kill -9 of the kraken worker: one restart with reason killed, and the counter keeps its value
    before = get(s, "ohlcv_trades_committed_total", exchange="kraken", symbol="BTC/USD")
    pid = system.wait_beating("kraken", 5)
    os.kill(pid, signal.SIGKILL)
    system.wait_beating("kraken", 10, other_than=pid)
    s = wait_for("the restart counted", lambda: (x := scrape(listen)) and get(
        x, "ohlcv_worker_restarts_total", exchange="kraken", reason="killed") == 1.0 and x, 10, interval=0.2,
        log=system.log)
    assert get(s, "ohlcv_trades_committed_total", exchange="kraken", symbol="BTC/USD") >= before
    assert get(s, "ohlcv_worker_restarts_total", exchange="binance", reason="killed") == 0.0
    report = json.loads(system.run("ohlcv-status", "--json").stdout)
    restarts = {r["exchange"]: r["restarts"] for r in report["exchanges"]}
    assert restarts["kraken"] == sum(get(s, "ohlcv_worker_restarts_total", exchange="kraken", reason=r)
                                     for r in ("killed", "crashed", "exited", "hung")) == 1

    # a websocket drop on binance: one reconnect
    r0 = get(scrape(listen), "ohlcv_websocket_reconnects_total", exchange="binance")
    req = urllib.request.Request(f"{system.sim_url}/_sim/faults", method="POST",
                                 data=json.dumps({"ws_drop": True, "exchange": "binance"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass
    wait_for("one reconnect", lambda: get(scrape(listen), "ohlcv_websocket_reconnects_total",
                                         exchange="binance") == r0 + 1, 15, interval=0.3, log=system.log)
    time.sleep(2.0)  # and only one
    assert get(scrape(listen), "ohlcv_websocket_reconnects_total", exchange="binance") == r0 + 1
    assert system.stop_supervisor() == 0
