"""`ohlcv-worker` as a real process against the simulator: stored trades and final candles equal the ground truth."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.settings import Settings, settings_from_env
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute, now_ms

BIN = Path(sys.executable).parent
SYMBOLS = {
    "kraken": ("BTC/USD@4", "ETH/USD@1", "SOL/USD@0.3"),
    "binance": ("BTC/USDT@4", "ETH/USDT@1", "SOL/USDT@0.3"),
}
HISTORY_DAYS = 0.04  # ~58 minutes of history before the simulator started


# ---- the simulator --------------------------------------------------------------------------------
@dataclass
class Sim:
    proc: subprocess.Popen[str]
    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def faults(self, **spec: Any) -> Any:
        req = urllib.request.Request(
            self.url + "/_sim/faults", data=json.dumps(spec).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def trades(self, exchange: str, symbol: str, since: int, until: int) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"exchange": exchange, "symbol": symbol, "since": since, "until": until})
        return list(self.get(f"/_sim/trades?{q}"))

    def candles(self, exchange: str, symbol: str, since: int, until: int) -> list[list[float]]:
        q = urllib.parse.urlencode({"exchange": exchange, "symbol": symbol, "since": since, "until": until})
        return list(self.get(f"/_sim/candles?{q}"))

    @property
    def genesis(self) -> int:
        return int(self.get("/_sim/stats")["genesis_ms"])


def start_sim(tmp: Path, exchanges: tuple[str, ...] = ("kraken", "binance"), *extra: str,
              history_days: float = HISTORY_DAYS, symbols: dict[str, tuple[str, ...]] | None = None) -> Sim:
    syms = symbols or SYMBOLS
    spec = ";".join(f"{ex}:{','.join(syms[ex])}" for ex in exchanges)
    err = open(tmp / "sim.err", "w")
    proc = subprocess.Popen(
        [str(BIN / "ohlcv-simulator"), "--exchanges", ",".join(exchanges), "--symbols", spec,
         "--history-days", str(history_days), "--seed", "7", *extra],
        stdout=subprocess.PIPE, stderr=err, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise AssertionError("simulator did not start: " + (tmp / "sim.err").read_text()[-2000:])
    return Sim(proc, json.loads(line)["url"])


def stop_proc(proc: subprocess.Popen[str], timeout: float = 10) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return None
    return proc.returncode


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    s = start_sim(tmp_path)
    try:
        yield s
    finally:
        stop_proc(s.proc)


# ---- configuration and the worker -------------------------------------------------------------------
def worker_settings(home: Path, ohlcv_db: str | None = None, cache: str | None = None) -> Settings:
    return settings_from_env({"OHLCV_HOME": str(home)}, ohlcv_db=ohlcv_db, cache=cache)


def configure(settings: Settings, exchange: str, symbols: tuple[str, ...], backtest: int = 1) -> None:
    from fullon_ohlcv_service.adapters.sql_config import ConfigDB

    async def go() -> None:
        async with ConfigDB(settings, create=True) as db:
            await db.init()
            if await db.cat_ex_id(exchange) is None:
                await db.add_exchange(exchange)
            for s in symbols:
                await db.add_symbol(exchange, s.split("@")[0], backtest=backtest)

    asyncio.run(go())


@dataclass
class Worker:
    exchange: str
    settings: Settings
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    runs: int = 0
    process_id: str | None = None
    log: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.runs += 1
        err = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                     env={**os.environ, "LOG_LEVEL": "INFO"})

    def stop(self, timeout: float = 15) -> int | None:
        assert self.proc is not None
        return stop_proc(self.proc, timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text()


def make_worker(tmp: Path, sim: Sim, exchange: str, settings: Settings, *extra: str) -> Worker:
    argv = [str(BIN / "ohlcv-worker"), "--exchange", exchange, "--simulator", sim.url,
            "--home", str(settings.home), "--ohlcv-db", settings.ohlcv_db.url, "--cache", settings.cache.url,
            "--heartbeat-interval", "0.5", "--silence-min", "2", "--gap-check", "3", "--reconcile", "3", *extra]
    return Worker(exchange, settings, argv, tmp / f"worker-{exchange}.log")


def beat(settings: Settings, exchange: str, process_id: str | None = None) -> dict[str, Any] | None:
    from fullon_ohlcv_service.adapters.caches import open_sync_process_cache

    cache = open_sync_process_cache(settings.cache)
    try:
        if process_id is not None:
            return cache.get(process_id)
        return cache.get_component(f"ohlcv-worker:{exchange}")
    finally:
        cache.close()


def wait_for(pred: Callable[[], bool], timeout: float, what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited {worker.proc.returncode} while waiting for {what}:\n"
                                 + worker.logs()[-3000:])
        time.sleep(0.2)
    tail = worker.logs()[-3000:] if worker else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def live_and_synced(settings: Settings, exchange: str, symbols: int, pid: int | None = None) -> bool:
    try:
        data = beat(settings, exchange)
    except StoreUnavailable:
        return False  # another test may restart the shared Redis: ask again
    if not data:
        return False
    p = data["params"]
    if pid is not None and p.get("pid") != pid:
        return False
    syms = {k: v for k, v in p.get("symbols", {}).items() if v["error"] is None}
    return (p.get("state") in ("running", "behind") and len(syms) == symbols
            and all(s["backfill_pct"] == 100.0 for s in syms.values()))


# ---- the audit ---------------------------------------------------------------------------------------
async def stored(settings: Settings, exchange: str, symbol: str, since: int, until: int) -> tuple[list[Any], list[Any]]:
    from fullon_ohlcv_service.adapters.stores import open_ohlcv_store

    async with open_ohlcv_store(settings.ohlcv_db, exchange) as store:
        trades = [t async for t in store.iter_trades(symbol, since, until)]
        candles = [c async for c in store.iter_candles(symbol, since, until)]
    return trades, candles


def audit(sim: Sim, settings: Settings, exchange: str, until: int,
          symbols: tuple[str, ...] | None = None) -> dict[str, int]:
    """Stored trades == ground truth in [genesis, until); stored final candles == its candles before."""
    since = sim.genesis
    counts: dict[str, int] = {}
    for spec in symbols or SYMBOLS[exchange]:
        symbol = spec.split("@")[0]
        truth = sim.trades(exchange, symbol, since, until)
        trades, _ = asyncio.run(stored(settings, exchange, symbol, since, until))
        got = {t.id: t for t in trades}
        assert len(got) == len(trades), f"{symbol}: duplicate trade ids stored"
        want = {t["id"]: t for t in truth}
        missing = sorted(set(want) - set(got), key=lambda i: want[i]["timestamp"])
        extra = sorted(set(got) - set(want))
        assert not missing, f"{symbol}: {len(missing)} of {len(want)} trades missing, first {missing[:5]} " \
                            f"at {[want[i]['timestamp'] for i in missing[:5]]}"
        assert not extra, f"{symbol}: {len(extra)} trades not in the ground truth: {extra[:5]}"
        for tid, t in want.items():
            s = got[tid]
            assert (s.ts, s.price, s.amount, s.side) == (t["timestamp"], t["price"], t["amount"], t["side"]), tid
        cut = floor_minute(until) - MINUTE_MS
        truth_c = {int(r[0]): r for r in sim.candles(exchange, symbol, since, cut)}
        _, candles = asyncio.run(stored(settings, exchange, symbol, since, cut))
        ours = {c.ts: c for c in candles}
        assert set(truth_c) <= set(ours), f"{symbol}: candles missing at {sorted(set(truth_c) - set(ours))[:5]}"
        for ts, r in truth_c.items():
            c = ours[ts]
            assert c.final, f"{symbol}: candle {ts} still provisional"
            for a, b, name in zip((c.open, c.high, c.low, c.close, c.volume), r[1:], "ohlcv", strict=True):
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{symbol} {ts} {name}: {a} != {b}"
        assert not [ts for ts in ours if ts not in truth_c and ours[ts].volume > 0], f"{symbol}: extra candles"
        counts[symbol] = len(want)
        assert len(want) > 0
    return counts


def run_and_audit(tmp: Path, sim: Sim, exchange: str, settings: Settings, live_s: float = 6.0,
                  during: Callable[[Worker], None] | None = None) -> tuple[Worker, dict[str, int]]:
    configure(settings, exchange, SYMBOLS[exchange])
    w = make_worker(tmp, sim, exchange, settings)
    w.start()
    try:
        assert w.proc is not None
        wait_for(lambda: live_and_synced(settings, exchange, 3, w.proc.pid if w.proc else None), 60, "live", w)
        running = beat(settings, exchange)
        assert running is not None
        w.process_id = running["process_id"]
        if during is not None:
            during(w)
        time.sleep(live_s)
        end = now_ms()
        t0 = time.monotonic()
        code = w.stop(settings.graceful_timeout + 5)
        took = time.monotonic() - t0
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
    assert code == 0, w.logs()[-3000:]
    assert took < settings.graceful_timeout, f"SIGTERM took {took:.1f}s"
    return w, audit(sim, settings, exchange, end - 3000)


# ---- the tests ---------------------------------------------------------------------------------------
UNLISTED = {"kraken": "DOGE/USD", "binance": "DOGE/USDT"}


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
def test_sqlite_store_and_sqlite_cache(tmp_path: Path, home: Path, sim: Sim, exchange: str) -> None:
    """Also: a symbol the exchange does not list is an error in its heartbeat entry; the others run."""
    settings = worker_settings(home)
    configure(settings, exchange, (UNLISTED[exchange],))
    seen: dict[str, Any] = {}

    def read(w: Worker) -> None:
        data = beat(settings, exchange)
        assert data is not None
        seen.update(data)

    w, _ = run_and_audit(tmp_path, sim, exchange, settings, during=read)
    entry = seen["params"]["symbols"][UNLISTED[exchange]]
    assert entry["error"] and "SymbolUnknown" in entry["error"]
    assert seen["params"]["state"] in ("running", "behind") and UNLISTED[exchange] in seen["message"]
    assert beat(settings, exchange) is None, "a stopped worker leaves process:components"
    data = beat(settings, exchange, w.process_id)
    assert data is not None and data["status"] == "stopped"
    logs = w.logs()
    assert "backfill done; live" in logs and logs.count("backfill progress") <= 3 * 9


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
def test_postgres_store_and_redis_cache(tmp_path: Path, home: Path, sim: Sim, exchange: str, pg_url: str,
                                        redis_url: str) -> None:
    import redis

    settings = worker_settings(home, ohlcv_db=pg_url, cache=redis_url)
    heartbeat: dict[str, Any] = {}

    def read_raw_heartbeat(w: Worker) -> None:
        client = redis.Redis.from_url(redis_url)

        def running() -> bool:
            pid = client.hget("process:components", f"ohlcv-worker:{exchange}")
            assert pid is not None
            heartbeat.update(json.loads(client.get(f"process:data:{pid.decode()}") or b"{}"))
            p = heartbeat["params"]
            # not "behind": the backfill is written; and a beat taken after every symbol's first commits
            # (one taken while the writer is between a batch's trades and its candles counts no candles yet)
            return bool(p["state"] == "running" and all(
                e["trades_stored"] > 0 and e["candles_stored"] > 0 for e in p["symbols"].values()))

        try:
            wait_for(running, 30, "state running", w)
            assert client.get(f"TRADE:STATUS:{exchange}") is not None
        finally:
            client.close()

    w, _ = run_and_audit(tmp_path, sim, exchange, settings, during=read_raw_heartbeat)
    assert heartbeat["process_type"] == "ohlcv" and heartbeat["component"] == f"ohlcv-worker:{exchange}"
    assert heartbeat["status"] == "running" and heartbeat["heartbeat"]
    p = heartbeat["params"]
    assert p["pid"] == w.proc.pid if w.proc else False
    assert set(p) >= {"pid", "exchange", "started_ms", "state", "symbols", "buffer_depth", "loop_lag_ms",
                      "reconnects", "gaps_repaired", "errors"}
    assert p["exchange"] == exchange and p["state"] == "running"
    for spec in SYMBOLS[exchange]:
        entry = p["symbols"][spec.split("@")[0]]
        assert set(entry) >= {"last_trade_ms", "last_final_candle_ms", "trades_stored", "candles_stored",
                              "backfill_pct", "error", "rejected"}
        assert entry["backfill_pct"] == 100.0 and entry["error"] is None
        assert entry["rejected"] == 0  # nothing poisoned here: nothing refused
        assert entry["trades_stored"] > 0 and entry["candles_stored"] > 0 and entry["last_trade_ms"] > 0


def test_exchange_ccxt_lacks_exits_with_config_code(home: Path) -> None:
    settings = worker_settings(home)
    r = subprocess.run([str(BIN / "ohlcv-worker"), "--exchange", "bitmex", "--home", str(home)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bitmex" in lines[0]
    del settings


def test_unconfigured_exchange_exits_with_config_code(home: Path) -> None:
    settings = worker_settings(home)
    configure(settings, "kraken", ("BTC/USD",))
    r = subprocess.run([str(BIN / "ohlcv-worker"), "--exchange", "binance", "--home", str(home)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "binance" in r.stderr, r.stderr


ORPHAN_SCRIPT = r"""
import os, sys, time
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.settings import settings_from_env
home, url, out = sys.argv[1], sys.argv[2], sys.argv[3]
settings = settings_from_env({"OHLCV_HOME": home}, simulator=url, heartbeat_interval=0.3)
spec = ExchangeSpec("kraken", (SymbolSpec("BTC/USD", backtest_days=1),))
pid = os.fork()
if pid == 0:
    from fullon_ohlcv_service.worker.main import run_worker
    code = run_worker(spec, settings, parent_pid=os.getppid())
    with open(out, "w") as f:
        f.write(str(code))
    os._exit(code)
print(pid, flush=True)
time.sleep(120)
"""


def test_worker_exits_when_its_parent_dies(tmp_path: Path, home: Path, sim: Sim) -> None:
    """A forked worker whose parent is SIGKILLed stops by itself (PR_SET_PDEATHSIG / getppid) and exits 0."""
    out = tmp_path / "exit-code"
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(home), sim.url, str(out)],
                              stdout=subprocess.PIPE, stderr=open(tmp_path / "orphan.log", "w"), text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        settings = worker_settings(home)
        wait_for(lambda: (d := beat(settings, "kraken")) is not None and d["params"]["pid"] == child, 30,
                 "the forked worker's heartbeat")
        parent.kill()
        parent.wait(5)
        wait_for(lambda: out.exists(), 15, "the orphaned worker to exit")
        assert out.read_text() == "0"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    finally:
        if parent.poll() is None:
            parent.kill()


DAYS_SYMBOLS = {
    "kraken": ("BTC/USD@0.5", "ETH/USD@0.05", "SOL/USD@0.01"),
    "binance": ("BTC/USDT@0.5", "ETH/USDT@0.05", "SOL/USDT@0.01"),
}


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
def test_a_few_days_of_history_are_backfilled_exactly(tmp_path: Path, home: Path, exchange: str) -> None:
    """Three days of history (Kraken's REST OHLC serves 720 bars: the rest are built from trades), then live."""
    symbols = DAYS_SYMBOLS[exchange]
    sim = start_sim(tmp_path, (exchange,), "--steady", history_days=2.9, symbols={exchange: symbols})
    settings = worker_settings(home)
    configure(settings, exchange, symbols, backtest=3)
    w = make_worker(tmp_path, sim, exchange, settings)
    w.start()
    try:
        assert w.proc is not None
        pid = w.proc.pid
        wait_for(lambda: live_and_synced(settings, exchange, 3, pid), 120, "three days backfilled, live", w)
        time.sleep(3.0)
        end = now_ms()
        assert w.stop() == 0
        counts = audit(sim, settings, exchange, end - 3000, symbols)
        assert counts[symbols[0].split("@")[0]] > 100_000  # 2.9 days at 0.5 trades/s
        genesis = sim.genesis
        _, candles = asyncio.run(stored(settings, exchange, symbols[0].split("@")[0], 0, genesis + 60 * MINUTE_MS))
        assert candles and candles[0].ts < genesis + 2 * MINUTE_MS  # candles reach back to the first minute
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
        stop_proc(sim.proc)
