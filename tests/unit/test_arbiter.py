"""The master loop's mechanics with real processes and signals, driving a small real target through fork.

Each test runs a master (``drive`` below) in its own interpreter, with a tiny worker target that beats
into a real SQLite ProcessCache, and observes it only from outside: the cache, /proc and signals.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.settings import Settings, settings_from_env

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- the driven side

def fake_worker(spec: ExchangeSpec, settings: Settings, *, parent_pid: int | None = None) -> int:
    """A small real worker: behaviour chosen by ``spec.params['mode']``."""
    import setproctitle

    mode = spec.params.get("mode", "beat")
    setproctitle.setproctitle(f"fake-worker: {spec.name}")
    if mode == "config":
        return 78
    if mode == "exit0":
        return 0
    if mode == "crash":
        time.sleep(0.05)
        return 1
    if mode == "raise":
        raise RuntimeError("boom at boot")
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    if mode != "ignore-term":
        signal.signal(signal.SIGTERM, on_term)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # ForkStarter's contract: the target starts with the master's signals blocked, unblocks once ready
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
    cache = SyncSqliteProcessCache(settings.cache)
    params = {"pid": os.getpid(), "exchange": spec.name, "symbols": [s.symbol for s in spec.symbols]}
    pid = cache.register("ohlcv", f"ohlcv-worker:{spec.name}", params, status="running")
    while not stop:
        if parent_pid is not None and os.getppid() != parent_pid:
            return 0
        cache.update(pid, params=params)
        time.sleep(settings.heartbeat_interval)
    cache.stop(pid, "stopped")
    cache.close()
    return 0


def _spec(entry: dict[str, Any]) -> ExchangeSpec:
    return ExchangeSpec(
        name=entry["name"],
        symbols=tuple(SymbolSpec(symbol=s) for s in entry.get("symbols", ["BTC/USD"])),
        params=MappingProxyType({"mode": entry.get("mode", "beat")}),
    )


def _load(path: str) -> tuple[dict[str, Any], list[ExchangeSpec]]:
    try:
        cfg = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg, [_spec(e) for e in cfg["exchanges"]]


def drive() -> None:
    """Entry of the master subprocess: ``python -c 'from tests.unit.test_arbiter import drive; drive()' CFG``."""
    import setproctitle

    from fullon_ohlcv_service import log
    from fullon_ohlcv_service.supervisor.arbiter import Arbiter, ForkStarter

    path = sys.argv[1]
    cfg, specs = _load(path)
    settings = settings_from_env({}, home=cfg["home"], cache=cfg["cache"], **cfg["settings"])
    log.configure("DEBUG")
    check: Callable[[str], None] | None = None
    if cfg.get("check_supported"):
        from fullon_ohlcv_service.adapters.ccxt_exchange import check_exchange_supported

        check = check_exchange_supported
    target: Callable[..., int] = fake_worker
    if cfg.get("real_worker"):
        from fullon_ohlcv_service.worker.main import run_worker

        target = run_worker
    if cfg.get("term_first_fork"):
        real_fork, forks = os.fork, 0

        def fork_then_term() -> int:  # a SIGTERM that lands in the child right after fork()
            nonlocal forks
            forks += 1
            pid = real_fork()
            if pid == 0 and forks == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return pid

        os.fork = fork_then_term
    starter = ForkStarter(target, settings)
    refusals = int(cfg.get("fail_forks", 0))
    real_start = starter.start

    def start(spec: ExchangeSpec, parent_pid: int) -> int:  # the kernel refusing the first forks (EAGAIN)
        nonlocal refusals
        if refusals > 0:
            refusals -= 1
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_start(spec, parent_pid)

    starter.start = start  # type: ignore[method-assign]
    arbiter = Arbiter(
        specs,
        settings,
        starter=starter,
        cache=SyncSqliteProcessCache(settings.cache),
        reload=lambda: _load(path)[1],
        check_supported=check,
        set_title=setproctitle.setproctitle,
    )
    sys.exit(arbiter.run())


# ---------------------------------------------------------------------------- the observing side

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "boot_grace": 1.0,
    "kill_grace": 0.5,
    "graceful_timeout": 2.0,
    "backoff_initial": 0.2,
    "backoff_max": 1.0,
}


class Master:
    def __init__(self, tmp: Path, exchanges: list[dict[str, Any]], **extra: Any) -> None:
        self.tmp = tmp
        self.cfg_path = tmp / "arbiter.json"
        self.cache_url = f"sqlite://{tmp / 'cache.sqlite'}"
        self.cfg: dict[str, Any] = {
            "home": str(tmp), "cache": self.cache_url, "settings": {**FAST, **extra.pop("settings", {})},
            "exchanges": exchanges, **extra,
        }
        self.write()
        self.cache = SyncSqliteProcessCache(tmp / "cache.sqlite")
        self.log_path = tmp / "master.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self) -> None:
        self.cfg_path.write_text(json.dumps(self.cfg))

    def start(self) -> Master:
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.unit.test_arbiter import drive; drive()", str(self.cfg_path)],
            cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def params(self) -> dict[str, Any]:
        doc = self.cache.get_component("ohlcv-supervisor")
        if not doc or doc["params"].get("pid") != self.pid:
            return {}
        params: dict[str, Any] = doc["params"]
        return params

    def record(self) -> dict[str, Any]:
        exchanges: dict[str, Any] = self.params().get("exchanges") or {}
        return exchanges

    def state(self, name: str) -> dict[str, Any]:
        return self.record().get(name) or {}

    def wait(self, what: str, pred: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; master log:\n{self.log_path.read_text()[-4000:]}")

    def running_pid(self, name: str, other_than: int | None = None) -> int:
        def ok() -> int | None:
            st = self.state(name)
            pid = st.get("pid")
            if st.get("state") == "running" and pid and pid != other_than:
                return int(pid)
            return None

        return int(self.wait(f"{name} running", ok))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_file.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if hasattr(self, "log_file"):
            self.log_file.close()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


@pytest.fixture
def masters(tmp_path: Path) -> Iterator[Callable[..., Master]]:
    made: list[Master] = []

    def make(exchanges: list[dict[str, Any]], **extra: Any) -> Master:
        m = Master(tmp_path, exchanges, **extra)
        made.append(m)
        return m.start()

    yield make
    for m in made:
        kids = children_of(m.pid) if m.proc and m.proc.poll() is None else []
        m.kill()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------- tests

def test_forks_one_worker_each_restarts_a_killed_one_and_stops_cleanly(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}, {"name": "binance"}])
    k1 = m.running_pid("kraken")
    b1 = m.running_pid("binance")
    assert cmdline(m.pid) == "ohlcv-supervisor: master [kraken,binance]"
    assert cmdline(k1) == "fake-worker: kraken"
    assert sorted(children_of(m.pid)) == sorted([k1, b1])

    t0 = time.monotonic()
    os.kill(k1, signal.SIGKILL)
    k2 = m.running_pid("kraken", other_than=k1)
    assert time.monotonic() - t0 < 8.0  # first failure after a run: restarted at once (generous: a loaded host)
    st = m.state("kraken")
    assert st["restarts"] == 1 and st["last_exit"] == "killed by SIGKILL"
    assert m.state("binance")["pid"] == b1 and alive(b1)  # the other one is untouched

    assert m.stop() == 0
    for pid in (k2, b1):
        assert not alive(pid)
    assert not alive(k1)


def test_stopped_worker_is_detected_as_hung_and_replaced(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}, {"name": "binance"}])
    k1 = m.running_pid("kraken")
    b1 = m.running_pid("binance")
    time.sleep(1.2)  # past the boot grace
    os.kill(k1, signal.SIGSTOP)
    t0 = time.monotonic()
    k2 = m.running_pid("kraken", other_than=k1)
    replaced = time.monotonic() - t0
    assert 0.5 <= replaced <= 8.0, replaced  # through the 1 s heartbeat timeout; generous for a loaded host
    assert not alive(k1)
    log = m.log_path.read_text()
    assert "worker hung: heartbeat too old; terminating it exchange=kraken" in log
    assert "exchange=binance" not in log.split("worker hung")[1].split("\n")[0]
    assert m.state("kraken")["restarts"] == 1
    assert m.state("binance")["pid"] == b1
    assert m.stop() == 0
    assert not alive(k2) and not alive(b1)


def test_exit_codes_are_a_contract(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}, {"name": "cfgbad", "mode": "config"}, {"name": "quits", "mode": "exit0"}],
                settings={"restart_budget": 2})
    m.running_pid("kraken")
    m.wait("cfgbad fatal", lambda: m.state("cfgbad").get("state") == "fatal")
    # exit 0 that the master did not ask for is an unexpected exit: restarted, within the budget
    m.wait("quits fatal", lambda: m.state("quits").get("state") == "fatal")
    time.sleep(1.0)  # nothing restarts them now
    cfg, quits = m.state("cfgbad"), m.state("quits")
    assert cfg["restarts"] == 0 and cfg["last_exit"] == "exit 78" and "configuration or boot error" in cfg["reason"]
    assert quits["restarts"] == 2 and quits["last_exit"] == "exit 0" and quits["pid"] is None
    assert "restart budget exhausted" in quits["reason"] and "without a stop request from the master" in quits["reason"]
    doc = m.cache.get_component("ohlcv-supervisor")
    assert doc is not None and doc["status"] == "error"  # a parked exchange shows in the master's status
    assert m.stop() == 0


def test_a_worker_stopped_by_someone_else_is_restarted(masters: Callable[..., Master]) -> None:
    """SIGTERM sent to a worker directly: it exits 0, but the master did not ask for it, so it restarts it."""
    m = masters([{"name": "kraken"}, {"name": "binance"}])
    k1 = m.running_pid("kraken")
    b1 = m.running_pid("binance")
    os.kill(k1, signal.SIGTERM)
    k2 = m.running_pid("kraken", other_than=k1)
    st = m.state("kraken")
    assert st["restarts"] == 1 and st["last_exit"] == "exit 0", st
    assert "worker died; restarting exchange=kraken" in m.log_path.read_text()
    assert m.state("binance")["pid"] == b1
    assert m.stop() == 0
    assert not alive(k2) and not alive(b1)


def test_a_lone_worker_exiting_0_unasked_does_not_end_the_master_with_0(masters: Callable[..., Master]) -> None:
    """A worker that keeps exiting 0 by itself is restarted until parked; the master then exits 3, not 0,
    so supervisord (autorestart=unexpected) sees it."""
    m = masters([{"name": "quits", "mode": "exit0"}], settings={"restart_budget": 2})
    assert m.proc is not None
    code = m.proc.wait(20)
    m.log_file.close()
    log = m.log_path.read_text()
    assert code == 3, log  # errors.EXIT_ALL_FATAL
    assert log.count("worker started exchange=quits") == 3  # the first start and 2 restarts
    assert "every exchange is parked FATAL" in log


def test_crash_loop_backs_off_then_parks_and_a_lone_fatal_exchange_ends_the_master(
    masters: Callable[..., Master],
) -> None:
    m = masters([{"name": "kraken", "mode": "raise"}], settings={"restart_budget": 3})
    t0 = time.monotonic()
    assert m.proc is not None
    code = m.proc.wait(20)
    elapsed = time.monotonic() - t0
    m.log_file.close()
    log = m.log_path.read_text()
    assert code == 3, log  # errors.EXIT_ALL_FATAL
    assert "restart budget exhausted: 3 restarts in the last hour" in log
    assert log.count("RuntimeError: boom at boot") == 4  # the first start and 3 restarts
    # delays: 0, then 0.2 and 0.4 (+-20% jitter): the loop did back off
    assert elapsed >= 0.45, elapsed


def test_graceful_stop_kills_a_straggler_and_leaves_nothing(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}, {"name": "stubborn", "mode": "ignore-term"}])
    k = m.running_pid("kraken")
    s = m.running_pid("stubborn")
    t0 = time.monotonic()
    assert m.stop(signal.SIGINT) == 0
    took = time.monotonic() - t0
    assert 1.8 <= took <= 12.0, took  # waited the 2 s graceful timeout for the straggler, then SIGKILL
    assert not alive(k) and not alive(s)
    log = m.log_path.read_text()
    assert "did not exit in time: SIGKILL" in log and "exchange=stubborn" in log


def test_sighup_restarts_only_changed_workers_adds_and_removes(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}, {"name": "binance"}, {"name": "old"}])
    k1, b1, o1 = (m.running_pid(n) for n in ("kraken", "binance", "old"))
    m.cfg["exchanges"] = [
        {"name": "kraken", "symbols": ["BTC/USD", "ETH/USD"]},  # changed: restart
        {"name": "binance"},  # unchanged: same pid
        {"name": "fresh"},  # added
    ]
    m.write()
    os.kill(m.pid, signal.SIGHUP)
    k2 = m.running_pid("kraken", other_than=k1)
    m.running_pid("fresh")
    m.wait("old removed", lambda: "old" not in m.record())
    assert not alive(o1) and not alive(k1)
    assert m.state("binance")["pid"] == b1 and alive(b1)
    assert m.state("kraken")["restarts"] == 0  # a reload restart is not a failure
    doc = m.cache.get_component("ohlcv-worker:kraken")
    assert doc is not None and doc["params"]["pid"] == k2 and doc["params"]["symbols"] == ["BTC/USD", "ETH/USD"]
    m.wait("title", lambda: cmdline(m.pid) == "ohlcv-supervisor: master [kraken,binance,fresh]")

    # a broken reload keeps everything running
    m.cfg_path.write_text("{not json")
    os.kill(m.pid, signal.SIGHUP)
    time.sleep(1.0)
    assert m.proc is not None and m.proc.poll() is None
    assert m.state("binance")["pid"] == b1
    assert "configuration reload failed; keeping the running set" in m.log_path.read_text()
    assert m.stop() == 0


def test_a_failed_reload_keeps_everything_running_and_shows_until_a_reload_succeeds(
    masters: Callable[..., Master],
) -> None:
    m = masters([{"name": "kraken"}, {"name": "binance"}])
    k1, b1 = m.running_pid("kraken"), m.running_pid("binance")
    saved = m.cfg_path.read_text()
    # unreadable in a way root cannot bypass: a directory where the file was (an unclassified OSError)
    m.cfg_path.unlink()
    m.cfg_path.mkdir()
    os.kill(m.pid, signal.SIGHUP)
    err = m.wait("the reload error", lambda: m.params().get("reload_error"))
    assert err.startswith("IsADirectoryError: ") and "\n" not in err, err
    # a classified error (corrupt content) replaces it
    m.cfg_path.rmdir()
    m.cfg_path.write_text("{not json")
    os.kill(m.pid, signal.SIGHUP)
    err = m.wait("the second reload error", lambda: (e := m.params().get("reload_error")) != err and e)
    assert err.startswith(f"{m.cfg_path}: Expecting property name"), err
    assert m.proc is not None and m.proc.poll() is None
    assert (m.state("kraken")["pid"], m.state("binance")["pid"]) == (k1, b1) and alive(k1) and alive(b1)
    log = m.log_path.read_text()
    assert log.count("configuration reload failed; keeping the running set") == 2
    assert "Traceback" not in log
    # fixed: the next reload succeeds and clears the error; the unchanged workers keep running
    m.cfg_path.write_text(saved)
    os.kill(m.pid, signal.SIGHUP)
    m.wait("the reload error cleared", lambda: m.params().get("reload_error") == "")
    assert "the earlier reload error is cleared" in m.log_path.read_text()
    assert (m.state("kraken")["pid"], m.state("binance")["pid"]) == (k1, b1)
    assert m.stop() == 0


def test_unsupported_exchange_is_parked_before_forking(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}, {"name": "bitmex"}], check_supported=True)
    m.running_pid("kraken")
    st = m.wait("bitmex fatal", lambda: m.state("bitmex") if m.state("bitmex").get("state") == "fatal" else None)
    assert st["pid"] is None and st["restarts"] == 0 and st["last_exit"] is None
    assert "bitmex" in st["reason"] and "not supported" in st["reason"]
    assert m.stop() == 0


def test_a_refused_fork_is_retried_with_backoff(masters: Callable[..., Master]) -> None:
    m = masters([{"name": "kraken"}], fail_forks=2)
    m.running_pid("kraken")
    log = m.log_path.read_text()
    assert log.count("cannot start a worker") == 2
    assert m.state("kraken")["restarts"] == 0
    assert m.stop() == 0


def test_the_worker_unblocks_every_signal_the_master_blocks_around_fork() -> None:
    from fullon_ohlcv_service.supervisor.arbiter import HANDLED_SIGNALS
    from fullon_ohlcv_service.worker.main import WORKER_SIGNALS

    assert set(HANDLED_SIGNALS) <= WORKER_SIGNALS


STOP_DEADLINE_SCRIPT = r"""
import sys, time
from fullon_ohlcv_service import log
from fullon_ohlcv_service.worker.main import StopDeadline
log.configure("INFO")
deadline = StopDeadline(float(sys.argv[1]), log.Log("fullon.test"))
deadline.arm()
if sys.argv[2] == "again":
    deadline.expire("second stop signal (SIGINT)")
time.sleep(30)  # the main thread is stuck (a store thread the exit would wait for)
sys.exit(5)
"""


@pytest.mark.parametrize(("seconds", "how", "line"), [
    (0.5, "wait", "stop: graceful timeout reached; exiting now"),
    (30.0, "again", "stop: second stop signal (SIGINT); exiting now"),
])
def test_the_stop_deadline_ends_a_stuck_worker(seconds: float, how: str, line: str) -> None:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STOP_DEADLINE_SCRIPT, str(seconds), how], cwd=ROOT,
                          capture_output=True, text=True, timeout=25)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert line in proc.stderr and "re-fetched from REST on the next start" in proc.stderr
    assert took < 15.0  # far from the 30 s the main thread would have slept


def test_sigterm_right_after_fork_reaches_the_worker_and_workers_ignore_sighup(
    masters: Callable[..., Master], tmp_path: Path,
) -> None:
    """The real ForkStarter and the real run_worker. The first child gets SIGTERM at once, before it has
    replaced the master's handlers: blocked across the fork, it stays pending until the worker's own
    handler is installed, which stops the worker (exit 0; lost, the worker would run on; delivered to the
    default action, it would die 'killed by SIGTERM'). Then ``kill -HUP -PGID``: the master reloads and
    the worker ignores it."""
    m = masters([{"name": "kraken"}], real_worker=True, term_first_fork=True,
                settings={"boot_grace": 60.0, "heartbeat_timeout": 30.0, "heartbeat_interval": 0.2,
                          "simulator": "http://127.0.0.1:9", "ohlcv_db": f"sqlite://{tmp_path / 'ohlcv'}"})
    st = m.wait("the first worker's exit", lambda: m.state("kraken") if m.state("kraken").get("last_exit") else None,
                timeout=30.0)
    assert st["last_exit"] == "exit 0", st  # the worker's handler ran: a graceful stop
    pid = m.running_pid("kraken")
    assert m.state("kraken")["restarts"] == 1  # nobody asked it to stop: restarted
    os.killpg(os.getpgid(m.pid), signal.SIGHUP)  # a terminal hang-up reaches the whole process group
    m.wait("the master's reload", lambda: "SIGHUP: re-reading the configuration" in m.log_path.read_text())
    time.sleep(1.0)
    assert alive(pid) and m.state("kraken")["pid"] == pid and m.state("kraken")["restarts"] == 1
    assert m.stop() == 0
    assert not alive(pid)


class _NoStarter:
    def start(self, spec: ExchangeSpec, parent_pid: int) -> int:
        raise AssertionError("not started in this test")


def test_an_exit_0_while_the_masters_own_stop_signal_is_pending_belongs_to_that_stop(tmp_path: Path) -> None:
    """supervisord's stopasgroup (or Ctrl-C in a terminal) signals the workers together with the master:
    a worker's exit 0 reaped before the master handled its own SIGTERM is part of that requested stop."""
    from fullon_ohlcv_service.supervisor.arbiter import Arbiter

    settings = settings_from_env({}, home=str(tmp_path), cache=f"sqlite://{tmp_path / 'cache.sqlite'}", **FAST)
    cache = SyncSqliteProcessCache(tmp_path / "cache.sqlite")
    arbiter = Arbiter([_spec({"name": "kraken"}), _spec({"name": "binance"})], settings,
                      starter=_NoStarter(), cache=cache)
    kraken, binance = arbiter.handles["kraken"], arbiter.handles["binance"]
    for pid, h in ((101, kraken), (102, binance)):
        h.started(pid, 0.0, 0)
        h.beat(1.0, 0)
        assert h.state == "running"
    arbiter._on_exit(binance, 0)  # no stop signal anywhere: someone else stopped it
    assert (binance.state, binance.restarts) == ("backoff", 1)
    arbiter._signals.append(signal.SIGTERM)  # recorded by the handler, not handled yet
    arbiter._on_exit(kraken, 0)
    assert (kraken.state, kraken.restarts, kraken.due_at) == ("stopped", 0, None)
    cache.close()
