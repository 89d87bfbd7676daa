"""Orchestrate a chaos run: simulator, fresh config, real supervisor, seeded faults, catch-up, audit, report."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chaos import audit, feed_audit, procs, services
from chaos import schedule as sched
from chaos.report import AppliedFault, Report, SymbolResult
from chaos.servers import HOST, PrivatePostgres, PrivateRedis
from fullon_ohlcv_service.contract import (
    SUPERVISOR_COMPONENT,
    Record,
    SupervisorBeat,
    WorkerBeat,
    WorkerState,
    worker_component,
)
from fullon_ohlcv_service.errors import OhlcvError
from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.ports import SyncProcessCache
from fullon_ohlcv_service.settings import parse_store_url
from fullon_ohlcv_service.simulator.faults import COUNT_KEYS, SECONDS_KEYS
from fullon_ohlcv_service.timeutil import ms_to_iso, now_ms

SUPERVISOR = SUPERVISOR_COMPONENT
Ending = Callable[[], None]  # ends a fault that lasts (SIGCONT, a server started again)
DAY_MS = 86_400_000
EXPORT_ATTEMPTS = 10  # 5 s apart: outlasts a 30 s outage of the store


@dataclass(frozen=True, slots=True)
class SymbolPlan:
    """One simulated symbol: its rate, and whether it is configured at start or added by a SIGHUP fault."""

    exchange: str
    symbol: str
    rate: float  # trades per second on average
    initial: bool = True


def default_symbols(busy_rate: float) -> tuple[SymbolPlan, ...]:
    """Kraken and Binance, several symbols each: one busy, some quiet, one left to add at a SIGHUP."""
    return (
        SymbolPlan("kraken", "BTC/USD", busy_rate),
        SymbolPlan("kraken", "ETH/USD", 0.3),
        SymbolPlan("kraken", "XRP/USD", 0.02),
        SymbolPlan("kraken", "SOL/USD", 0.2, initial=False),
        SymbolPlan("binance", "ETH/USDT", 0.4),
        SymbolPlan("binance", "DOGE/USDT", 0.02),
        SymbolPlan("binance", "LTC/USDT", 0.05),
        SymbolPlan("binance", "SOL/USDT", 0.2, initial=False),
    )


@dataclass(frozen=True, slots=True)
class Options:
    minutes: float = 3.0
    seed: int = 1
    store: str = "sqlite"
    cache: str = "sqlite"
    report: Path | None = None
    keep: bool = False
    redis_db: int = 12
    backtest_days: int = 1
    busy_rate: float = 2.0
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    boot_grace: float = 8.0
    kill_grace: float = 1.0
    graceful_timeout: float = 5.0
    ready_timeout: float = 120.0
    catchup_timeout: float = 120.0
    slack_ms: int = 30_000  # a worker computes its backfill start at most this long after it is forked
    margin_ms: int = 8_000  # trades this close to the final stop are not audited (still in flight)
    exchanges: tuple[str, ...] = ("kraken", "binance")
    quiet: bool = False


class RunAborted(Exception):
    """The run cannot go on (a service missing, workers never ready); the report says why."""


def _bin(name: str) -> str:
    """A console script of this package: next to the running interpreter first, then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RunAborted(f"{name} is not installed (pip install -e . in the venv)")
    return found


@dataclass(slots=True)
class AddedSymbol:
    plan: SymbolPlan
    mono: float
    wall_ms: int


@dataclass(slots=True)
class Supervised:
    proc: subprocess.Popen[bytes]
    log: IO[bytes]


class ChaosRun:
    """One run. ``run()`` returns the Report; every service it stopped is restored before it returns."""

    def __init__(self, opts: Options, symbols: Sequence[SymbolPlan] | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.symbols = tuple(symbols) if symbols is not None else default_symbols(opts.busy_rate)
        self.token = uuid.uuid4().hex
        self.plan = sched.Plan(
            minutes=opts.minutes, exchanges=opts.exchanges, store=opts.store, cache=opts.cache,
            heartbeat_timeout=opts.heartbeat_timeout, kill_grace=opts.kill_grace, boot_grace=opts.boot_grace,
            add_symbols=tuple((s.exchange, s.symbol) for s in self.symbols if not s.initial),
        )
        self.schedule = sched.build_schedule(opts.seed, self.plan)
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.watch = procs.WorkerWatch()
        self.applied: list[AppliedFault] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.orphans: list[str] = []
        self.added: list[AddedSymbol] = []
        self.first_seen: dict[str, int] = {}  # exchange -> wall ms of its first worker
        self.sup_params: dict[int, SupervisorBeat] = {}  # master pid -> its latest published params
        self.fault_master = 0  # pid of the master that ran the fault phase
        self.phase_mono = 0.0
        self.phase_end_mono = 0.0
        self.stop_ms = 0
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""
        self.sup: Supervised | None = None
        self.dir: Path | None = None
        self.env: dict[str, str] = {}
        self.pg_urls: list[str] = []
        self.pg: PrivatePostgres | None = None  # the run's own servers: its outages never touch the shared ones
        self.redis: PrivateRedis | None = None
        self.cache_url = ""
        self._sampler_stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.sim_stats: dict[str, Any] = {}
        self.started_ms = 0
        self.sessions: set[int] = set()  # every process we start leads its own session
        self.planned_down: list[tuple[str, float, float]] = []  # (server, from, to) of our own outages
        self.availability = services.Availability({})  # watches the private servers once they run
        self.feeds = feed_audit.FeedCheck(opts.redis_db)  # --publish all, audited after the catch-up

    # ------------------------------------------------------------------ helpers

    def say(self, msg: str) -> None:
        if not self.opts.quiet:
            self._say(f"chaos {ms_to_iso(now_ms())[11:23]} {msg}")

    def _t(self) -> float:
        return time.monotonic() - self.phase_mono if self.phase_mono else 0.0

    def _cmd(self, name: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_bin(name), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def _config(self, *args: str) -> None:
        proc = self._cmd("ohlcv-config", *args)
        if proc.returncode != 0:
            raise RunAborted(f"ohlcv-config {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[:300]}")

    def _http(self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.sim_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    # ------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ohlcv-chaos-"))
        home = self.dir / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DB_", "REDIS_", "OHLCV_")) and k not in ("LOG_FILE_PATH", "LOG_FORMAT")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["OHLCV_HOME"] = str(home)
        env["LOG_LEVEL"] = "INFO"
        env[procs.MARKER] = self.token
        self._start_servers()
        if self.pg is not None:
            self.pg_urls.append(services.create_database(self.pg.url(), "ohlcv_chaos_cfg"))
            self.pg_urls.append(services.create_database(self.pg.url(), "ohlcv_chaos_data"))
            env["OHLCV_CONFIG_DB"], env["OHLCV_DB"] = self.pg_urls
        else:
            env["OHLCV_CONFIG_DB"] = f"sqlite://{home / 'config.sqlite'}"
            env["OHLCV_DB"] = f"sqlite://{home / 'ohlcv'}"
        if self.redis is not None:
            self.cache_url = self.redis.url(self.opts.redis_db)
        else:
            self.cache_url = f"sqlite://{home / 'cache.sqlite'}"
        env["OHLCV_CACHE"] = self.cache_url
        self.env = env
        self.feeds.prepare(self)
        self._start_simulator()
        self._config("init")
        for ex in self.opts.exchanges:
            self._config("add-exchange", ex)
        for s in self.symbols:
            if s.initial:
                self._config("add-symbol", s.exchange, s.symbol, "--backtest", str(self.opts.backtest_days))
        self.say(f"config ready in {home} (store={self.opts.store} cache={self.opts.cache})")

    def _start_servers(self) -> None:
        """A private PostgreSQL cluster and redis-server for ``--store postgres`` / ``--cache redis``.

        The run stops and starts them as faults; the machine's shared servers are never touched.
        """
        targets: dict[str, tuple[str, int]] = {}
        if self.opts.store == "postgres":
            self.pg = PrivatePostgres()
            self.pg.start()
            targets["postgresql"] = (HOST, self.pg.port)
            self.say(f"private PostgreSQL on port {self.pg.port} ({self.pg.root})")
        if self.opts.cache == "redis":
            self.redis = PrivateRedis()
            self.redis.start()
            targets["redis"] = (HOST, self.redis.port)
            self.say(f"private Redis on port {self.redis.port}")
        self.availability.stop()
        self.availability = services.Availability(targets)
        self.availability.start()

    def simulator_args(self) -> list[str]:
        """``--symbols 'kraken:BTC/USD@2,ETH/USD@0.3;binance:...'`` and history a little deeper than the backfill."""
        exchanges = list(dict.fromkeys(s.exchange for s in self.symbols))
        spec = ";".join(f"{ex}:" + ",".join(f"{s.symbol}@{s.rate:g}" for s in self.symbols if s.exchange == ex)
                        for ex in exchanges)
        return ["--port", "0", "--seed", str(self.opts.seed), "--exchanges", ",".join(exchanges),
                "--symbols", spec, "--history-days", f"{self.opts.backtest_days + 0.25:g}"]

    def _start_simulator(self) -> None:
        assert self.dir is not None
        log = (self.dir / "simulator.log").open("wb")
        self.sim = subprocess.Popen([_bin("ohlcv-simulator"), *self.simulator_args()], env=self.env,
                                    stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        self.sessions.add(self.sim.pid)
        assert self.sim.stdout is not None
        line = _readline(self.sim.stdout, 60.0)
        if not line:
            raise RunAborted(f"ohlcv-simulator printed no start-up line (exit {self.sim.poll()}); "
                             f"see {self.dir / 'simulator.log'}")
        try:
            doc = json.loads(line)
            self.sim_url = str(doc["url"]).rstrip("/")
        except (ValueError, KeyError, TypeError) as exc:
            raise RunAborted(f"ohlcv-simulator start-up line is not the documented JSON: {line[:200]!r}") from exc
        threading.Thread(target=_drain, args=(self.sim.stdout, log), daemon=True).start()
        self.say(f"simulator at {self.sim_url} (pid {self.sim.pid})")

    def supervisor_args(self) -> list[str]:
        o = self.opts
        return ["--exchanges", ",".join(o.exchanges), "--simulator", self.sim_url,
                "--heartbeat-interval", f"{o.heartbeat_interval:g}", "--heartbeat-timeout", f"{o.heartbeat_timeout:g}",
                "--boot-grace", f"{o.boot_grace:g}", "--kill-grace", f"{o.kill_grace:g}",
                "--graceful-timeout", f"{o.graceful_timeout:g}", "--backoff-initial", "0.5", "--backoff-max", "4",
                "--restart-budget", str(self.restart_budget()), *self.feeds.supervisor_args()]

    def restart_budget(self) -> int:
        """The default hourly budget (20), raised when the schedule itself restarts one exchange more often."""
        per_exchange = [sum(1 for f in self.schedule if f.target == ex and f.kind in sched.PROCESS_TRACK)
                        for ex in self.opts.exchanges]
        return max(20, 2 * max(per_exchange, default=0) + 5)

    def _start_supervisor(self, name: str) -> Supervised:
        assert self.dir is not None
        log = (self.dir / f"{name}.log").open("wb")
        proc = subprocess.Popen([_bin(SUPERVISOR), *self.supervisor_args()], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.sup = Supervised(proc, log)
        self.sessions.add(proc.pid)
        self.watch.set_master(proc.pid)
        self.say(f"{SUPERVISOR} started (pid {proc.pid}), log {self.dir / (name + '.log')}")
        return self.sup

    def _open_cache(self) -> SyncProcessCache:
        from fullon_ohlcv_service.adapters.caches import open_sync_process_cache

        return open_sync_process_cache(parse_store_url("cache", self.cache_url, ("sqlite", "redis")))

    def _sample(self) -> None:
        """Keep the supervisor's latest params (restarts per exchange) while the run goes on."""
        cache = self._open_cache()
        try:
            while not self._sampler_stop.wait(1.0):
                sup = self.sup
                if sup is None:
                    continue
                try:
                    doc = cache.get_component(SUPERVISOR)
                except OhlcvError:
                    continue  # the cache is down (a planned outage): the last sample stands
                record = Record.from_doc(doc)
                beat = SupervisorBeat.from_params(record.params if record else None)
                if beat.pid == sup.proc.pid:
                    self.sup_params[sup.proc.pid] = beat
        finally:
            cache.close()

    def _worker_beat(self, cache: SyncProcessCache, exchange: str) -> WorkerBeat | None:
        try:
            record = Record.from_doc(cache.get_component(worker_component(exchange)))
        except OhlcvError:
            return None
        return WorkerBeat.from_params(record.params) if record else None

    def _wait_ready(self, timeout: float) -> None:
        """Until every exchange's current worker beats ``running`` (first live data, or caught up when quiet)."""
        cache = self._open_cache()
        deadline = time.monotonic() + timeout
        waiting: dict[str, str] = {}
        next_note = time.monotonic() + 10.0
        try:
            while time.monotonic() < deadline:
                sup = self.sup
                if sup is not None and sup.proc.poll() is not None:
                    raise RunAborted(f"{SUPERVISOR} exited {sup.proc.returncode} while starting")
                waiting = {}
                for ex in self.opts.exchanges:
                    pid = self.watch.current(ex)
                    beat = self._worker_beat(cache, ex) if pid else None
                    if pid is None:
                        waiting[ex] = "no worker process"
                    elif beat is None or beat.pid != pid:
                        waiting[ex] = "no heartbeat from the current worker"
                    elif beat.state != WorkerState.RUNNING:
                        waiting[ex] = f"state {beat.state}"
                if not waiting:
                    return
                if time.monotonic() >= next_note:
                    self.say("waiting for workers: " + "; ".join(f"{k}: {v}" for k, v in waiting.items()))
                    next_note = time.monotonic() + 10.0
                time.sleep(0.25)
        finally:
            cache.close()
        why = "; ".join(f"{k}: {v}" for k, v in waiting.items())
        raise RunAborted(f"workers not ready after {timeout:.0f}s: {why}")

    def _stored_latest(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
        """The newest stored trade time of each (exchange, symbol), read through the store API."""
        from fullon_ohlcv_service.adapters.stores import open_ohlcv_store

        url = parse_store_url("ohlcv-db", self.env["OHLCV_DB"], ("sqlite", "postgresql"))

        async def read() -> dict[tuple[str, str], int | None]:
            out: dict[tuple[str, str], int | None] = {}
            for ex in dict.fromkeys(e for e, _ in pairs):
                if url.kind == "sqlite" and not (url.path / f"{ex}.sqlite").is_file():
                    continue  # never collected (and not created by a reader)
                async with open_ohlcv_store(url, ex) as store:
                    for e, sym in pairs:
                        if e == ex and await store.has_symbol(sym):
                            latest = await store.latest_trade(sym)
                            out[(ex, sym)] = latest[0] if latest else None
            return out

        try:
            return asyncio.run(read())
        except OhlcvError:
            return {}

    def _last_true_trade(self, ex: str, sym: str, before: int) -> int | None:
        for span in (15 * 60_000, (self.opts.backtest_days + 1) * DAY_MS):
            trades = self._truth_trades(ex, sym, before - span, before)
            if trades:
                return int(max(t.ts for t in trades))
        return None

    def _wait_caught_up(self, need: Mapping[tuple[str, str], int], timeout: float) -> bool:
        """Until the store holds, for every symbol, a trade at least as new as the last one before the restart."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 10.0
        behind: dict[tuple[str, str], int | None] = {}
        while time.monotonic() < deadline:
            latest = self._stored_latest(list(need))
            behind = {k: latest.get(k) for k, ts in need.items() if (latest.get(k) or 0) < ts}
            if not behind:
                return True
            if time.monotonic() >= next_note:
                self.say("catching up: " + "; ".join(f"{e} {s}" for e, s in behind))
                next_note = time.monotonic() + 10.0
            time.sleep(1.0)
        why = "; ".join(f"{e} {s} stored up to {ms_to_iso(v) if v else 'nothing'}, last true trade "
                        f"{ms_to_iso(need[(e, s)])}" for (e, s), v in behind.items())
        self.errors.append(f"catch-up did not finish within {timeout:.0f}s: {why}")
        return False

    # ------------------------------------------------------------------ faults

    def _apply(self, fault: sched.Fault) -> tuple[AppliedFault, Ending | None]:
        """Start one fault; the second value ends it later (SIGCONT, a server started again) or is None."""
        started = now_ms()
        mono = time.monotonic()
        rec = AppliedFault(fault=fault, started_ms=started, t=self._t(), ok=False)
        end: Ending | None = None
        try:
            handler: Callable[[sched.Fault, AppliedFault], Ending | None] = getattr(self, f"_fault_{fault.kind}")
            end = handler(fault, rec)
        except (OSError, urllib.error.URLError, subprocess.SubprocessError, ValueError, OhlcvError) as exc:
            rec.ok = False
            rec.detail = f"{type(exc).__name__}: {exc}"[:300]
        if not rec.mono:
            rec.mono = mono
        return rec, end

    def _target_pid(self, fault: sched.Fault) -> int | None:
        assert fault.target is not None
        return self.watch.wait_worker(fault.target, timeout=15.0)

    def _fault_kill9(self, fault: sched.Fault, rec: AppliedFault) -> None:
        pid = self._target_pid(fault)
        if pid is None:
            rec.detail = f"no live {fault.target} worker to kill"
            return
        rec.started_ms, rec.t = now_ms(), self._t()
        rec.mono = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rec.pid, rec.ok = pid, True

    def _fault_sigstop(self, fault: sched.Fault, rec: AppliedFault) -> Ending | None:
        pid = self._target_pid(fault)
        if pid is None:
            rec.detail = f"no live {fault.target} worker to stop"
            return None
        rec.started_ms, rec.t = now_ms(), self._t()
        rec.mono = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        rec.pid, rec.ok = pid, True

        def resume() -> None:
            if procs.alive(pid):
                os.kill(pid, signal.SIGCONT)
                rec.detail = f"still there after {fault.duration:.1f}s: SIGCONT"
            else:
                rec.detail = "killed by the supervisor"

        return resume

    def _sim_fault(self, rec: AppliedFault, body: dict[str, Any]) -> None:
        if rec.fault.target:
            body["exchange"] = rec.fault.target
        self._http("POST", "/_sim/faults", body, timeout=10)
        rec.ok = True
        rec.detail = json.dumps(body, sort_keys=True)

    def _fault_ws_drop(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"ws_drop": True})

    def _fault_ws_stall(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"ws_stall_s": fault.duration})

    def _fault_ws_refuse(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"ws_refuse_s": fault.duration, "ws_drop": True})

    def _fault_rest_429(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"rest_429": fault.count})

    def _fault_rest_5xx(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"rest_5xx": fault.count})

    def _fault_malformed(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"malformed": fault.count})

    def _fault_duplicates(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"duplicates": fault.count})

    def _fault_poison(self, fault: sched.Fault, rec: AppliedFault) -> None:
        self._sim_fault(rec, {"poison": fault.count})

    def _outage(self, rec: AppliedFault, server: str, stop: Callable[[], tuple[bool, str]],
                start: Callable[[], tuple[bool, str]]) -> Ending:
        rec.mono, rec.started_ms, rec.t = time.monotonic(), now_ms(), self._t()
        ok, msg = stop()
        rec.ok, rec.detail = ok, msg

        def restore() -> None:
            up, up_msg = start()
            self.planned_down.append((server, rec.mono, time.monotonic()))
            rec.ok = ok and up
            rec.detail = f"{msg}; down {time.monotonic() - rec.mono:.1f}s; {up_msg}"
            if not up:
                raise RunAborted(up_msg)

        return restore

    def _fault_redis_restart(self, fault: sched.Fault, rec: AppliedFault) -> Ending:
        if self.redis is None:
            raise RunAborted("a Redis outage was planned but the run has no Redis")
        return self._outage(rec, "redis", services.stop_call(self.redis), services.start_call(self.redis))

    def _fault_pg_restart(self, fault: sched.Fault, rec: AppliedFault) -> Ending:
        if self.pg is None:
            raise RunAborted("a PostgreSQL outage was planned but the run has no PostgreSQL")
        return self._outage(rec, "postgresql", services.stop_call(self.pg), services.start_call(self.pg))

    def _fault_sighup_add_symbol(self, fault: sched.Fault, rec: AppliedFault) -> None:
        assert fault.target is not None and fault.symbol is not None and self.sup is not None
        plan = next(s for s in self.symbols if (s.exchange, s.symbol) == (fault.target, fault.symbol))
        added = self._cmd("ohlcv-config", "add-symbol", fault.target, fault.symbol,
                          "--backtest", str(self.opts.backtest_days))
        if added.returncode != 0:
            rec.detail = f"ohlcv-config add-symbol exited {added.returncode}: {added.stderr.strip()[:200]}"
            return
        rec.started_ms, rec.t = now_ms(), self._t()
        mono = time.monotonic()
        os.kill(self.sup.proc.pid, signal.SIGHUP)
        self.added.append(AddedSymbol(plan, mono, rec.started_ms))
        rec.pid, rec.ok = self.sup.proc.pid, True

    def _fault_sigterm_master(self, fault: sched.Fault, rec: AppliedFault) -> None:
        assert self.sup is not None
        rc, took = self._stop_supervisor(self.sup)
        rec.pid = self.sup.proc.pid
        rec.ok = rc == 0
        rec.detail = f"master exited {rc} after {took:.1f}s"

    def _stop_supervisor(self, sup: Supervised) -> tuple[int | None, float]:
        t0 = time.monotonic()
        if sup.proc.poll() is None:
            sup.proc.send_signal(signal.SIGTERM)
        limit = self.opts.graceful_timeout + self.opts.kill_grace + 20.0
        try:
            rc = sup.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.errors.append(f"{SUPERVISOR} did not exit within {limit:.0f}s of SIGTERM; killed")
            _killpg(sup.proc.pid)
            sup.proc.wait(timeout=10)
            rc = None
        took = time.monotonic() - t0
        sup.log.close()
        self.watch.set_master(None)
        self._check_orphans("after the master's SIGTERM")
        return rc, took

    def _check_orphans(self, when: str) -> None:
        """Our processes still alive (except the simulator) once the master is gone are orphans."""
        keep = {os.getpid()} | ({self.sim.pid} if self.sim is not None else set())
        deadline = time.monotonic() + 3.0
        left = procs.marked_processes(self.token, keep, self.sessions)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = procs.marked_processes(self.token, keep, self.sessions)
        for p in left:
            self.orphans.append(f"{procs.describe(p)} {when}")
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ phases

    def _phase_faults(self) -> None:
        """Apply the schedule; faults with a duration are ended (SIGCONT, server restarted) when due."""
        self.phase_mono = time.monotonic()
        self.say(f"fault phase: {len(self.schedule)} faults over {sched.schedule_end(self.schedule):.0f}s")
        pending: list[tuple[float, int, Ending, AppliedFault]] = []
        order = itertools.count()

        def end_due(until: float) -> None:
            while pending and pending[0][0] <= until:
                due, _, end, rec = heapq.heappop(pending)
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    end()
                finally:
                    self.say(f"t={self._t():6.1f}s end of {rec.fault.describe()}: {rec.detail}")

        try:
            for fault in self.schedule:
                due = self.phase_mono + fault.at
                end_due(math.inf if fault.kind == sched.SIGTERM_MASTER else due)
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sup = self.sup
                if fault.kind != sched.SIGTERM_MASTER and sup is not None and sup.proc.poll() is not None:
                    raise RunAborted(f"{SUPERVISOR} exited {sup.proc.returncode} during the fault phase")
                rec, end = self._apply(fault)
                self.applied.append(rec)
                self.say(f"t={rec.t:6.1f}s {'ok' if rec.ok else 'FAILED'} {fault.describe()}"
                         f"{' pid=' + str(rec.pid) if rec.pid else ''}{' — ' + rec.detail if rec.detail else ''}")
                if end is not None:
                    heapq.heappush(pending, (rec.mono + fault.duration, next(order), end, rec))
        finally:
            while pending:  # never leave a worker stopped or a server down
                _, _, end, rec = heapq.heappop(pending)
                with contextlib.suppress(RunAborted, OSError):
                    end()
        self.phase_end_mono = time.monotonic()

    def _measure_detection(self) -> None:
        restarting = [r for r in self.applied if r.ok and r.fault.kind in sched.RESTARTING_FAULTS]
        for i, rec in enumerate(restarting):
            assert rec.fault.target is not None
            mono = rec.mono
            later = [r.mono for r in restarting[i + 1:] if r.fault.target == rec.fault.target]
            limit = min(later) if later else self.phase_end_mono
            ev = self.watch.first_after(rec.fault.target, mono, not_pid=rec.pid)
            if ev is not None and ev.mono <= limit:
                rec.detected_s = ev.mono - mono
                rec.new_pid = ev.pid

    def _restarts(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        events = self.watch.events()
        sup_beat = self.sup_params.get(self.fault_master)
        sup_ex = sup_beat.exchanges if sup_beat is not None else {}
        for ex in self.opts.exchanges:
            pids = [e for e in events if e.exchange == ex and e.mono <= self.phase_end_mono]
            caused = sum(1 for r in self.applied if r.ok and r.fault.target == ex
                         and r.fault.kind in (*sched.RESTARTING_FAULTS, sched.SIGHUP_ADD))
            info: dict[str, Any] = {"workers_seen": len(pids), "restarts_seen": max(0, len(pids) - 1),
                                    "caused_by_faults": caused}
            sup = sup_ex.get(ex)
            if sup is not None:
                info["supervisor_restarts"] = sup.restarts
                info["supervisor_last_exit"] = sup.last_exit
                info["supervisor_state"] = sup.state
            out[ex] = info
            extra = info["restarts_seen"] - caused
            if extra > 0:
                explained = {r.new_pid for r in self.applied if r.new_pid is not None}
                explained |= {ev.pid for a in self.added if a.plan.exchange == ex
                              for ev in [self.watch.first_after(ex, a.mono)] if ev is not None}
                odd = [f"pid {e.pid} at t={e.mono - self.phase_mono:.1f}s" for e in pids[1:] if e.pid not in explained]
                self.notes.append(f"{ex}: {extra} worker restart(s) not caused by a process fault or SIGHUP "
                                  f"({', '.join(odd)}; see the supervisor log)")
        return out

    def audit_targets(self) -> list[tuple[SymbolPlan, int]]:
        """Each audited symbol with the wall time its first worker started (the base of its window)."""
        targets: list[tuple[SymbolPlan, int]] = []
        for s in self.symbols:
            if s.initial and s.exchange in self.first_seen:
                targets.append((s, self.first_seen[s.exchange]))
        for add in self.added:
            ev = self.watch.first_after(add.plan.exchange, add.mono)
            targets.append((add.plan, max(add.wall_ms, ev.wall_ms if ev else 0)))
        return targets

    def _end_faults(self) -> None:
        """The fault phase is over: note the count faults the simulator still holds, then clear every fault.

        A burst of REST 429/5xx planned just before the final SIGTERM is otherwise served to the
        catch-up run, whose boot backs off (rightly) up to 30 s a request and never gets ready in time.
        """
        stats = self._http("GET", "/_sim/stats", timeout=10)
        self._note_unserved(stats, "never served before the final SIGTERM, cleared for the catch-up")
        self._http("POST", "/_sim/faults", body=dict.fromkeys((*COUNT_KEYS, *SECONDS_KEYS, "latency_ms"), 0))

    def _phase_catchup(self) -> None:
        self._end_faults()
        restart = now_ms()
        need: dict[tuple[str, str], int] = {}
        for s, _ in self.audit_targets():
            last = self._last_true_trade(s.exchange, s.symbol, restart)
            if last is not None:
                need[(s.exchange, s.symbol)] = last
        sup = self._start_supervisor("supervisor-catchup")
        self._wait_ready(self.opts.ready_timeout)
        self._wait_caught_up(need, self.opts.catchup_timeout)
        time.sleep(3.0)
        self.stop_ms = now_ms()
        rc, took = self._stop_supervisor(sup)
        self.say(f"catch-up done; master exited {rc} after {took:.1f}s")
        if rc != 0:
            self.errors.append(f"{SUPERVISOR} (catch-up run) exited {rc} on SIGTERM")

    # ------------------------------------------------------------------ audit

    def _truth_trades(self, ex: str, sym: str, since: int, until: int) -> list[Trade]:
        q = urllib.parse.urlencode({"exchange": ex, "symbol": sym, "since": since, "until": until})
        return [audit.truth_trade(d) for d in self._http("GET", f"/_sim/trades?{q}", timeout=120)]

    def _truth_candles(self, ex: str, sym: str, since: int, until: int) -> list[Candle]:
        q = urllib.parse.urlencode({"exchange": ex, "symbol": sym, "since": since, "until": until})
        return [audit.truth_candle(r) for r in self._http("GET", f"/_sim/candles?{q}", timeout=120)]

    def export(self, ex: str, sym: str, kind: str, since: int, until: int) -> list[dict[str, Any]]:
        """The stored rows, through ``ohlcv-export``; a store that fails (exit 1) is retried a few times."""
        for attempt in range(EXPORT_ATTEMPTS):
            proc = self._cmd("ohlcv-export", ex, sym, "--kind", kind, "--since", str(since), "--until", str(until),
                             "--format", "json", timeout=300)
            if proc.returncode != 0 and "no stored data" in proc.stderr:
                return []  # nothing was ever stored for it: the audit counts every true row as missing
            if proc.returncode == 0:
                return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
            why = f"ohlcv-export {ex} {sym} --kind {kind} exited {proc.returncode}: {proc.stderr.strip()[:300]}"
            if proc.returncode != 1 or attempt == EXPORT_ATTEMPTS - 1:
                raise RunAborted(why)
            self.notes.append(f"retried after a store error: {why}")
            time.sleep(5.0)
        raise AssertionError("unreachable")

    def _audit(self) -> list[SymbolResult]:
        results: list[SymbolResult] = []
        targets = self.audit_targets()
        for s, first in targets:
            since, until = audit.trade_window(first, self.opts.backtest_days, self.stop_ms,
                                              slack_ms=self.opts.slack_ms, margin_ms=self.opts.margin_ms)
            truth = self._truth_trades(s.exchange, s.symbol, since, until)
            stored = [audit.export_trade(d) for d in self.export(s.exchange, s.symbol, "trades", since, until)]
            c_until = audit.candle_window_end(since, until, truth)
            truth_c = self._truth_candles(s.exchange, s.symbol, since, c_until) if c_until > since else []
            stored_c = ([audit.export_candle(d) for d in self.export(s.exchange, s.symbol, "candles", since, c_until)]
                        if c_until > since else [])
            res = SymbolResult(s.exchange, s.symbol, audit.Window(since, until, c_until),
                               audit.audit_trades(truth, stored), audit.audit_candles(truth_c, stored_c),
                               self._audit_poison(s.exchange, s.symbol, since, until, truth, stored))
            results.append(res)
            self.say(f"audit {s.exchange} {s.symbol}: {res.trades.stored}/{res.trades.expected} trades, "
                     f"missing {res.trades.missing}, duplicated {res.trades.duplicated}, "
                     f"wrong candles {res.candles.wrong}/{res.candles.expected}, "
                     f"poisoned rejected {res.poison.rejected}/{res.poison.expected}")
        return results

    def _audit_poison(self, ex: str, sym: str, since: int, until: int, truth: Sequence[Trade],
                      stored: Sequence[Trade]) -> audit.PoisonAudit:
        """The poisoned rows served with a slot in [since, until) against the reject store and the tables."""
        q = urllib.parse.urlencode({"exchange": ex, "symbol": sym, "since": since, "until": until})
        poisoned = self._http("GET", f"/_sim/poison?{q}", timeout=60)
        minutes = sorted({int(p["ts"]) for p in poisoned if p["kind"] == "candle"})
        rejects, odd, candles = self._store_rows(ex, sym, minutes)
        return audit.audit_poison(poisoned, rejects, [*stored, *odd], candles, (t.id for t in truth))

    def _store_rows(self, ex: str, sym: str, minutes: Sequence[int]) -> tuple[list[Reject], list[Trade], list[Candle]]:
        """Through the store API: the symbol's rejects, its trades stamped before 2009 or more than a day
        after the stop (outside every export window), and its candles of ``minutes``."""
        from fullon_ohlcv_service.adapters.stores import open_ohlcv_store

        url = parse_store_url("ohlcv-db", self.env["OHLCV_DB"], ("sqlite", "postgresql"))

        async def read() -> tuple[list[Reject], list[Trade], list[Candle]]:
            if url.kind == "sqlite" and not (url.path / f"{ex}.sqlite").is_file():
                return [], [], []
            async with open_ohlcv_store(url, ex) as store:
                if not await store.has_symbol(sym):
                    return [], [], []
                odd = [t async for t in store.iter_trades(sym, None, audit.TS_2009)]
                odd += [t async for t in store.iter_trades(sym, self.stop_ms + DAY_MS, None)]
                candles = [c for m in minutes async for c in store.iter_candles(sym, m, m + 60_000)]
                return await store.load_rejects(sym), odd, candles

        return asyncio.run(read())

    # ------------------------------------------------------------------ the run

    def run(self) -> Report:
        self.started_ms = now_ms()
        results: list[SymbolResult] = []
        self.say(f"seed {self.opts.seed}: {len(self.schedule)} faults planned: "
                 + ", ".join(f.kind for f in self.schedule))
        try:
            self.availability.start()
            self._setup()
            self.watch.start()
            self._sampler = threading.Thread(target=self._sample, name="chaos-sampler", daemon=True)
            self._sampler.start()
            self.fault_master = self._start_supervisor("supervisor").proc.pid
            self._wait_ready(self.opts.ready_timeout)
            for ev in self.watch.events():
                self.first_seen.setdefault(ev.exchange, ev.wall_ms)
            self._phase_faults()
            self._measure_detection()
            self._phase_catchup()
            self.feeds.audit(self)
            if self.feeds.enabled:
                self.say(feed_audit.summary(self.feeds.to_json()))
            results = self._audit()
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                self.sim_stats = self._http("GET", "/_sim/stats", timeout=10)
        except (RunAborted, OhlcvError, OSError, subprocess.SubprocessError, urllib.error.URLError) as exc:
            self.errors.append(f"run aborted: {type(exc).__name__}: {exc}")
            self.say(f"ABORTED: {type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            self.errors.append("run interrupted")
        finally:
            if self.phase_mono and not self.phase_end_mono:
                self.phase_end_mono = time.monotonic()
                self._measure_detection()
            restarts = self._restarts() if self.phase_mono else {}
            self._cleanup()
        report = Report(seed=self.opts.seed, minutes=self.opts.minutes, store=self.opts.store,
                        cache=self.opts.cache, planned=self.schedule, applied=self.applied, results=results,
                        restarts=restarts, orphans=self.orphans, errors=self.errors, notes=self.notes,
                        started_ms=self.started_ms, ended_ms=now_ms())
        report.context["simulator_stats"] = self.sim_stats
        report.context["feeds"] = self.feeds.to_json()
        report.context["workers"] = [
            {"exchange": e.exchange, "pid": e.pid, "at": ms_to_iso(e.wall_ms),
             "t": round(e.mono - self.phase_mono, 3) if self.phase_mono else None} for e in self.watch.events()]
        report.context["run_dir"] = str(self.dir) if self.dir else None
        if report.failures() or self.opts.keep:
            report.context["kept"] = True
        elif self.dir is not None and self.notes:
            shutil.rmtree(self.dir / "home", ignore_errors=True)  # keep the logs that explain the notes
            report.context["kept"] = "logs"
        elif self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            report.context["run_dir"] = None
        return report

    def _note_unserved(self, stats: Mapping[str, Any], why: str) -> None:
        """Simulator faults requested but never served (no request came while they were pending)."""
        for ex, info in (stats.get("exchanges") or {}).items():
            pending = {k: v for k, v in ((info.get("faults") or {}).get("pending") or {}).items() if v}
            if pending:
                self.notes.append(f"{ex}: simulator faults {why}: {pending}")

    def _note_interference(self) -> None:
        """Outages of the run's servers that no fault of the run caused (a crash, or another process)."""
        base = self.phase_mono or time.monotonic()
        for name, a, b in services.unplanned(self.availability.stop(), self.planned_down):
            self.notes.append(f"{name} was down from t={a - base:.1f}s to t={b - base:.1f}s without a fault of this "
                              "run (it died, or another process stopped it): anything that failed then may not be "
                              "ours to fix")

    def _cleanup(self) -> None:
        self._note_interference()
        self._sampler_stop.set()
        sup = self.sup
        if sup is not None and sup.proc.poll() is None:
            sup.proc.send_signal(signal.SIGTERM)
            try:
                sup.proc.wait(timeout=self.opts.graceful_timeout + self.opts.kill_grace + 10)
            except subprocess.TimeoutExpired:
                _killpg(sup.proc.pid)
                sup.proc.wait(timeout=10)
        if sup is not None:
            sup.log.close()
            _killpg(sup.proc.pid)  # anything left in the master's session
        self.watch.stop()
        if self.sim is not None:
            if self.sim.poll() is None:
                self.sim.send_signal(signal.SIGTERM)
                try:
                    self.sim.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.errors.append("ohlcv-simulator ignored SIGTERM for 10s; killed")
                    _killpg(self.sim.pid)
                    self.sim.wait(timeout=10)
        self._check_orphans("at the end")
        self.feeds.cleanup(self.opts.keep)
        for server in (self.redis, self.pg):  # the run's own servers go, whatever happened, with their files
            if server is not None:
                server.close()
        if self._sampler is not None:
            self._sampler.join(timeout=10)


def _killpg(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _readline(stream: IO[bytes], timeout: float) -> str:
    """The first line of a child's stdout, or '' after ``timeout`` seconds."""
    box: list[bytes] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0].decode(errors="replace").strip() if box else ""


def _drain(stream: IO[bytes], sink: IO[bytes]) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        sink.write(chunk)
        sink.flush()
