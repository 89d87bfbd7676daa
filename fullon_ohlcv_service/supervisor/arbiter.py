"""The master loop: fork one worker per exchange, reap, judge heartbeats, restart by policy, handle signals."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import FrameType, MappingProxyType
from typing import Any, NoReturn, Protocol

from fullon_ohlcv_service.contract import (
    PROCESS_TYPE,
    SUPERVISOR_COMPONENT,
    Record,
    SupervisorBeat,
    WorkerBeat,
    supervisor_cache_status,
)
from fullon_ohlcv_service.errors import (
    EXIT_ALL_FATAL,
    EXIT_CRASH,
    EXIT_OK,
    ConfigError,
    OhlcvError,
)
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.metrics.ledger import Ledger, restart_reason
from fullon_ohlcv_service.metrics.process import ExporterProcess
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.ports import SyncProcessCache
from fullon_ohlcv_service.settings import Settings
from fullon_ohlcv_service.supervisor.handle import Intent, IntentKind, Phase, WorkerHandle
from fullon_ohlcv_service.supervisor.policy import Backoff, ExitKind, RestartBudget, describe_exit, is_stale
from fullon_ohlcv_service.timeutil import now_ms

TICK_S = 0.5

WorkerTarget = Callable[..., int]  # run_worker(spec, settings, *, parent_pid=...) -> exit code
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class Starter(Protocol):
    """Starts one worker process for a spec in the calling (master) process; returns its pid."""

    def start(self, spec: ExchangeSpec, parent_pid: int) -> int: ...


def _child_reset_signals() -> None:
    """In a fresh child: drop the master's wakeup fd and handlers before the worker installs its own.

    The signals stay blocked (see ForkStarter): one that arrived since the fork is delivered when the
    worker unblocks them, to the worker's handler.
    """
    signal.set_wakeup_fd(-1)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def _child_exit(target: WorkerTarget, spec: ExchangeSpec, settings: Settings, parent_pid: int,
                close_fds: Sequence[int]) -> NoReturn:
    """Run the worker in a forked child and ``os._exit`` with its code; never returns into the master."""
    code = EXIT_CRASH
    try:
        _child_reset_signals()
        for fd in close_fds:
            os.close(fd)
        result = target(spec, settings, parent_pid=parent_pid)
        code = result if isinstance(result, int) else EXIT_CRASH
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_CRASH
    except BaseException:  # noqa: BLE001 - the child's last resort: print it, then exit 1 below
        traceback.print_exc()
        code = EXIT_CRASH
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def reload_failure(exc: BaseException) -> str:
    """One line for a failed configuration re-read: a classified error's own message, else its type too.

    The reload function (supervisor.cli.reload_specs) raises OhlcvError with the password already
    removed; anything else is a defect, named by its type, and only its first line is kept.
    """
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(exc, OhlcvError) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


class ForkStarter:
    """Forks: the child shares the master's imported modules (ccxt) copy-on-write and starts at once.

    The master's signals (``HANDLED_SIGNALS``) are blocked across the fork: a SIGTERM sent to the new
    pid before the child has replaced the master's handlers stays pending instead of running the
    master's handler in the child (where it would be lost). The target therefore starts with them
    blocked and must unblock them once its own handlers are installed, as ``run_worker`` does; the
    pending signal then reaches the worker's handler.
    """

    def __init__(self, target: WorkerTarget, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self.close_in_child: tuple[int, ...] = ()

    def start(self, spec: ExchangeSpec, parent_pid: int) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child_exit(self.target, spec, self.settings, parent_pid, self.close_in_child)
        finally:  # only the master gets here: the child never returns from _child_exit
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pid


def spec_to_plain(spec: ExchangeSpec) -> tuple[str, tuple[SymbolSpec, ...], dict[str, str]]:
    """A picklable form of an ExchangeSpec (its params mapping is a read-only proxy)."""
    return spec.name, spec.symbols, dict(spec.params)


def spec_from_plain(plain: tuple[str, tuple[SymbolSpec, ...], dict[str, str]]) -> ExchangeSpec:
    name, symbols, params = plain
    return ExchangeSpec(name=name, symbols=symbols, params=MappingProxyType(dict(params)))


def _spawn_main(target: WorkerTarget, plain: tuple[str, tuple[SymbolSpec, ...], dict[str, str]],
                settings: Settings, parent_pid: int) -> None:
    """Entry of a spawned worker (a fresh interpreter that imports everything again)."""
    sys.exit(target(spec_from_plain(plain), settings, parent_pid=parent_pid))


class SpawnStarter:
    """Starts workers with multiprocessing's spawn context (for comparison with fork in the benchmark)."""

    def __init__(self, target: WorkerTarget, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")

    def start(self, spec: ExchangeSpec, parent_pid: int) -> int:
        proc = self._ctx.Process(
            target=_spawn_main, args=(self.target, spec_to_plain(spec), self.settings, parent_pid),
            name=f"ohlcv-worker-{spec.name}",
        )
        proc.start()
        # The master reaps with waitpid(-1); multiprocessing must not reap or join it behind our back.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        assert proc.pid is not None
        return proc.pid


class Arbiter:
    """One master: a synchronous loop that wakes on a signal or every half second.

    Each turn: handle recorded signals, reap exited workers (``waitpid(-1, WNOHANG)``), check
    liveness from ProcessCache heartbeats, reconcile (start what should run and is due), and
    publish its own state on change or on a timer. Signal handlers only record.
    """

    def __init__(
        self,
        specs: Sequence[ExchangeSpec],
        settings: Settings,
        *,
        starter: Starter,
        cache: SyncProcessCache,
        reload: Callable[[], list[ExchangeSpec]] | None = None,
        check_supported: Callable[[str], None] | None = None,
        set_title: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = now_ms,
        rng: Callable[[], float] = random.random,
        tick: float = TICK_S,
        exporter: ExporterProcess | None = None,
    ) -> None:
        self.settings = settings  # the master's limits; the starter hands the same settings to every worker
        self.starter = starter
        self.cache = cache
        self.reload_fn = reload
        self.check_supported = check_supported
        self.set_title = set_title
        self.clock = clock
        self.wall_ms = wall_ms
        self.rng = rng
        self.tick = tick
        self.log = Log("fullon.supervisor")
        self.exporter = exporter  # the /metrics child process (--metrics-port), or None
        self.ledger = Ledger()  # restarts by reason and ended lives' counters, for /metrics
        self.handles: dict[str, WorkerHandle] = {}
        for spec in specs:
            self._add(spec)
        self.pid = os.getpid()
        self._signals: deque[int] = deque()
        self._rfd = -1
        self._wfd = -1
        self._old_wakeup_fd = -1
        self._old_handlers: dict[int, Any] = {}
        self._stopping = False
        self._stop_reason = ""
        self._exit_code = EXIT_OK
        self._process_id: str | None = None
        self._cache_down = False
        self._warned_threads = False
        self._dirty = True
        self._next_publish = 0.0
        self.reload_error: str | None = None  # why the last SIGHUP reload failed; None once one succeeds

    # ------------------------------------------------------------------ set-up

    def _add(self, spec: ExchangeSpec) -> WorkerHandle:
        t = self.settings
        handle = WorkerHandle(
            spec=spec,
            backoff=Backoff(initial=t.backoff_initial, maximum=t.backoff_max, reset_after=t.backoff_reset,
                            rng=self.rng),
            budget=RestartBudget(limit=t.restart_budget),
            since_ms=self.wall_ms(),
            due_at=0.0,
        )
        self.handles[spec.name] = handle
        return handle

    def title(self) -> str:
        return f"ohlcv-supervisor: master [{','.join(self.handles)}]"

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _install_signals(self) -> None:
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        if isinstance(self.starter, ForkStarter):
            self.starter.close_in_child = (self._rfd, self._wfd, *self._exporter_fds())
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._record_signal)

    def _exporter_fds(self) -> tuple[int, ...]:
        return (self.exporter.fileno(),) if self.exporter is not None else ()

    def _uninstall_signals(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Run until stopped; return the master's exit code (0, EXIT_ALL_FATAL, or EXIT_CRASH)."""
        self._install_signals()
        try:
            if self.set_title:
                self.set_title(self.title())
            self.log.info("master started", exchanges=",".join(self.handles), pid=self.pid)
            while True:
                self._handle_signals()
                self._reap()
                if self._stopping:
                    self._murder()
                    if not any(h.alive for h in self.handles.values()):
                        break
                    if self._gave_up():
                        self._exit_code = EXIT_CRASH
                        break
                else:
                    self._murder()
                    self._check_liveness()
                    self._reconcile()
                    self._check_all_parked()
                self._publish()
                self._sleep()
            return self._finish()
        except BaseException:
            self.log.exception("master loop failed: stopping every worker before exiting")
            self._emergency_stop()
            raise
        finally:
            self._uninstall_signals()

    def _emergency_stop(self) -> None:
        """After an unexpected error: SIGTERM every worker, SIGKILL what is left after the grace, reap."""
        pids = {h.pid for h in self.handles.values() if h.pid is not None}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.graceful_timeout
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if not _reaped(p)}
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if self.exporter is not None:
            self.exporter.finish()

    def _sleep(self) -> None:
        now = self.clock()
        timeout = self.tick
        for h in self.handles.values():
            for at in (h.due_at if h.pid is None else None, h.kill_at):
                if at is not None:
                    timeout = min(timeout, max(0.0, at - now))
        if self._signals:
            timeout = 0.0
        try:
            ready, _, _ = select.select([self._rfd], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            ready = []
        if ready:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except BlockingIOError:
                pass  # drained: the pipe only wakes us, the handlers queued the signals

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    self.log.warning("second stop signal: killing the workers now", signal=signal.Signals(sig).name)
                    self._kill_all_now()
                else:
                    self._begin_stop(f"{signal.Signals(sig).name} received")
            elif sig == signal.SIGHUP:
                if self._stopping:
                    self.log.info("SIGHUP ignored while stopping")
                else:
                    self._reload()
            # SIGCHLD only wakes the loop: the reap below does the work.

    # ------------------------------------------------------------------ reap

    def _by_pid(self, pid: int) -> WorkerHandle | None:
        for h in self.handles.values():
            if h.pid == pid:
                return h
        return None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.exporter is not None and self.exporter.owns(pid):
                self.exporter.on_exit(status)
                self._dirty = True
                continue
            handle = self._by_pid(pid)
            if handle is None:
                self.log.debug("reaped a process that is not a worker", child=pid)
                continue
            self._on_exit(handle, status)

    def _on_exit(self, h: WorkerHandle, status: int) -> None:
        """A worker was reaped: what follows is decided by the master's intent for it, then by its exit code."""
        now = self.clock()
        kind, text = describe_exit(status)
        pid = h.pid
        self.ledger.life_ended(h.name, pid, self._final_params(h))
        intent, uptime = h.exited(now, text)
        self._dirty = True
        log = self.log.bind(exchange=h.name, worker_pid=pid)
        if (intent is None or intent.kind is IntentKind.RECOVER) and (
                self._stopping or self._stop_signal_pending()):
            h.retire(self.wall_ms(), "stopped")  # an exit that belongs to a stop signal not handled yet
            log.info("worker stopped", exit=text)
            return
        match intent:
            case Intent(kind=IntentKind.REMOVE):
                log.info("worker stopped and removed from the configuration", exit=text)
                h.forget()
                del self.handles[h.name]
                self._retitle()
            case Intent(kind=IntentKind.RESPEC, spec=ExchangeSpec() as spec):
                h.spec = spec
                h.backoff.reset()
                h.respawn(now, self.wall_ms(), "configuration changed: restarting")
                self.ledger.restarted(h.name, "config_changed")
                log.info("worker stopped for a configuration change; starting it again", exit=text)
            case Intent(kind=IntentKind.RETIRE):
                h.retire(self.wall_ms(), h.reason)
                log.info("worker stopped", exit=text)
            case _:  # no stop was asked (it died), or it was terminated for a hang: a failure
                self._failed(h, status, kind, text, uptime, hung=intent is not None, now=now, log=log)

    def _failed(self, h: WorkerHandle, status: int, kind: ExitKind, text: str, uptime: float, *, hung: bool,
                now: float, log: Log) -> None:
        """An exit the master did not ask for: park a configuration error, else restart within the budget."""
        if hung:
            kind = ExitKind.CRASH  # it was terminated for a hang: whatever its code, it failed
        if kind is ExitKind.STOPPED:
            # Every stop the master asks for carries an intent. Exit 0 now means someone else stopped it
            # (a SIGTERM sent to the worker directly): an unexpected exit, restarted like a crash.
            kind = ExitKind.CRASH
            text = f"{text} without a stop request from the master"
        if kind is ExitKind.CONFIG:
            self._park(h, f"configuration or boot error ({text}); see the worker's log")
            return
        # a crash (or a kill after a hang): restart with backoff, within the hourly budget
        if not h.budget.take(now):
            self._park(h, f"restart budget exhausted: {h.budget.limit} restarts in the last hour (last: {text})")
            return
        delay = h.backoff.on_exit(uptime)
        self.ledger.restarted(h.name, restart_reason(status, hung))
        h.restart_after(now + delay, self.wall_ms(), f"{'hung, ' if hung else ''}{text}; restart in {delay:.1f}s")
        log.warning("worker died; restarting", exit=text, uptime_s=round(uptime, 1), delay_s=round(delay, 2),
                    restarts=h.restarts, budget_used=h.budget.used(now))

    def _stop_signal_pending(self) -> bool:
        """A SIGTERM/SIGINT recorded but not handled yet: supervisord's stopasgroup (or a terminal's
        Ctrl-C) signals the workers together with the master, so their exits belong to that stop."""
        return any(sig in (signal.SIGTERM, signal.SIGINT) for sig in self._signals)
    def _final_params(self, h: WorkerHandle) -> Mapping[str, Any] | None:
        """The reaped worker's last heartbeat params (its final counters), when the cache answers."""
        if self._cache_down:
            return None
        try:
            record = Record.from_doc(self.cache.get_component(h.component))
        except OhlcvError:
            return None  # the ledger keeps the newest beat the liveness check read
        return record.params if record is not None else None

    def _park(self, h: WorkerHandle, reason: str) -> None:
        h.park(self.wall_ms(), reason)
        self._dirty = True
        self.log.error("exchange parked FATAL", exchange=h.name, reason=reason)

    # ------------------------------------------------------------------ liveness

    def _check_liveness(self) -> None:
        watched = [h for h in self.handles.values() if h.phase in (Phase.STARTING, Phase.RUNNING)]
        if not watched:
            return
        now = self.clock()
        beats: dict[str, dict[str, Any] | None] = {}
        try:
            for h in watched:
                beats[h.name] = self.cache.get_component(h.component)
        except OhlcvError as exc:
            self._cache_outage(exc)
            return  # liveness unknown: kill nobody
        self._cache_back(now)
        wall = self.wall_ms()
        for h in watched:
            self._note_beat(h, beats.get(h.name), now, wall)
            t = self.settings
            if is_stale(h.beat_at, now, t.boot_grace, t.heartbeat_timeout, started=h.started_at):
                age = "never" if h.beats == 0 else f"{now - (h.beat_at or now):.1f}s"
                self.log.warning("worker hung: heartbeat too old; terminating it", exchange=h.name,
                                 worker_pid=h.pid, heartbeat_age=age, timeout_s=t.heartbeat_timeout)
                h.hang(self.clock() + t.kill_grace, self.wall_ms(),
                       f"no heartbeat for {age} (timeout {t.heartbeat_timeout}s)")
                self._dirty = True
                self._signal_stop(h)

    def _note_beat(self, h: WorkerHandle, doc: dict[str, Any] | None, now: float, wall: int) -> None:
        record = Record.from_doc(doc)
        if record is None:
            return
        if h.pid is None or WorkerBeat.from_params(record.params).pid != h.pid:
            return  # a previous incarnation's beat never counts
        self.ledger.seen(h.name, h.pid, record.params)
        beat_ms = record.heartbeat_ms()
        if beat_ms is None:
            return
        if h.beat(now - max(0.0, (wall - beat_ms) / 1000.0), self.wall_ms()):
            self._dirty = True

    def _cache_outage(self, exc: OhlcvError) -> None:
        if not self._cache_down:
            self._cache_down = True
            self.log.error("process cache unreadable: worker liveness unknown, nobody is killed meanwhile",
                           error=str(exc))

    def _cache_back(self, now: float) -> None:
        if self._cache_down:
            self._cache_down = False
            self._process_id = None  # the cache may have lost our registration: register again
            self._dirty = True
            self.log.info("process cache readable again: liveness checks resume")
            for h in self.handles.values():
                if h.alive:
                    h.excuse(now)

    # ------------------------------------------------------------------ stopping processes

    def _signal(self, h: WorkerHandle, sig: int) -> None:
        if h.pid is None:
            return
        try:
            os.kill(h.pid, sig)
        except ProcessLookupError:
            pass  # already gone; the reap will see it

    def _signal_stop(self, h: WorkerHandle) -> None:
        """SIGTERM (and SIGCONT, so a stopped process can act on it); the record holds the SIGKILL deadline."""
        self._signal(h, signal.SIGTERM)
        self._signal(h, signal.SIGCONT)

    def _terminate(self, h: WorkerHandle, intent: Intent, grace: float) -> None:
        """Ask the worker to exit, with what its exit will mean; SIGKILL after ``grace``."""
        h.stop(intent, self.clock() + grace)
        self._signal_stop(h)

    def _murder(self) -> None:
        now = self.clock()
        for h in self.handles.values():
            if h.phase is Phase.STOPPING and h.kill_at is not None and now >= h.kill_at:
                self.log.warning("worker did not exit in time: SIGKILL", exchange=h.name, worker_pid=h.pid)
                self._signal(h, signal.SIGKILL)
                h.sigkill(now + self.settings.kill_grace)  # reaped by then, or _gave_up()

    def _gave_up(self) -> bool:
        now = self.clock()
        stuck = [h for h in self.handles.values() if h.phase is Phase.KILLED and h.kill_at is not None
                 and now >= h.kill_at]
        for h in stuck:
            self.log.error("worker survives SIGKILL; giving up on it", exchange=h.name, worker_pid=h.pid)
        return bool(stuck) and all(h.phase is Phase.KILLED for h in self.handles.values() if h.alive)

    def _kill_all_now(self) -> None:
        now = self.clock()
        for h in self.handles.values():
            if h.alive:
                h.hurry(now)

    def _begin_stop(self, reason: str, code: int = EXIT_OK) -> None:
        self._stopping = True
        self._stop_reason = reason
        self._exit_code = code
        self._dirty = True
        self.log.info("stopping: telling the workers", reason=reason, graceful_timeout_s=self.settings.graceful_timeout)
        if self.exporter is not None:
            self.exporter.stop()
        for h in self.handles.values():
            if h.alive:
                self._terminate(h, Intent.retire(), self.settings.graceful_timeout)
            elif h.phase is not Phase.FATAL:
                h.retire(self.wall_ms(), reason)

    def _finish(self) -> int:
        left = [h.pid for h in self.handles.values() if h.alive]
        if left:
            self.log.error("master exiting with workers left", pids=left)
            self._exit_code = EXIT_CRASH
        self._publish(final=True)
        self.cache.close()
        if self.exporter is not None:
            self.exporter.finish()
        self.log.info("master stopped", exit_code=self._exit_code, reason=self._stop_reason)
        return self._exit_code

    # ------------------------------------------------------------------ reconcile

    def _reconcile(self) -> None:
        if self.exporter is not None and self.exporter.due():
            self.cache.close()  # no Redis/SQLite connection crosses a fork
            self.exporter.start(self.pid, close_fds=(self._rfd, self._wfd))
            self._dirty = True
        now = self.clock()
        for h in list(self.handles.values()):
            if h.phase is Phase.BACKOFF and h.due_at is not None and h.due_at <= now:
                self._start(h)

    def _start(self, h: WorkerHandle) -> None:
        if self.check_supported is not None:
            try:
                self.check_supported(h.name)
            except ConfigError as exc:
                self._park(h, str(exc))
                return
        self.cache.close()  # no Redis/SQLite connection crosses a fork
        if threading.active_count() > 1 and not self._warned_threads:
            self._warned_threads = True  # a thread's locks would be copied held into the child
            self.log.warning("forking with threads running", threads=threading.active_count())
        try:
            pid = self.starter.start(h.spec, self.pid)
        except OSError as exc:  # EAGAIN/ENOMEM: the system is short of processes or memory; retry later
            now = self.clock()
            if not h.budget.take(now):
                self._park(h, f"restart budget exhausted: cannot start a worker ({exc})")
                return
            delay = max(h.backoff.on_exit(0.0), self.settings.backoff_initial)
            self.ledger.restarted(h.name, "start_failed")
            h.start_failed(now + delay, self.wall_ms(), f"cannot start a worker: {exc}; retry in {delay:.1f}s")
            self._dirty = True
            self.log.error("cannot start a worker", exchange=h.name, error=str(exc), delay_s=round(delay, 2))
            return
        h.started(pid, self.clock(), self.wall_ms())
        self._dirty = True
        self.log.info("worker started", exchange=h.name, worker_pid=pid, symbols=len(h.spec.symbols),
                      restarts=h.restarts)

    def _check_all_parked(self) -> None:
        if not self.handles:
            return
        if any(h.phase not in (Phase.FATAL, Phase.STOPPED) for h in self.handles.values()):
            return
        if any(h.phase is Phase.FATAL for h in self.handles.values()):
            self.log.error("every exchange is parked FATAL or stopped: the master exits",
                           exit_code=EXIT_ALL_FATAL)
            self._begin_stop("every exchange is FATAL", EXIT_ALL_FATAL)
        else:
            self._begin_stop("every worker stopped by itself")

    # ------------------------------------------------------------------ SIGHUP

    def _retitle(self) -> None:
        if self.set_title:
            self.set_title(self.title())

    def _reload(self) -> None:
        if self.reload_fn is None:
            self.log.info("SIGHUP: no configuration source to re-read")
            return
        self.log.info("SIGHUP: re-reading the configuration")
        try:
            specs = self.reload_fn()
        except Exception as exc:  # noqa: BLE001 - a reload never stops the service: reported, kept until fixed
            self.reload_error = reload_failure(exc)
            self._dirty = True
            self.log.error("configuration reload failed; keeping the running set", error=self.reload_error)
            return
        if self.reload_error is not None:
            self.log.info("configuration reloaded; the earlier reload error is cleared")
            self.reload_error = None
        now = self.clock()
        new = {s.name: s for s in specs}
        for name, gone in list(self.handles.items()):
            if name in new:
                continue
            if gone.alive:
                self.log.info("exchange removed from the configuration: stopping its worker", exchange=name)
                self._terminate(gone, Intent.remove(), self.settings.graceful_timeout)
            else:
                del self.handles[name]
        for name, spec in new.items():
            h = self.handles.get(name)
            if h is None:
                self.log.info("exchange added to the configuration: starting a worker", exchange=name)
                self._add(spec)
                continue
            changed = spec.fingerprint() != h.spec.fingerprint()
            if h.alive:
                pending = h.intent is not None and h.intent.kind in (IntentKind.REMOVE, IntentKind.RESPEC)
                if changed or pending:  # changed, or back (removed), or changed again: restart it with this spec
                    self.log.info("configuration changed: restarting the worker", exchange=name)
                    self._terminate(h, Intent.respec(spec), self.settings.graceful_timeout)
                continue
            h.spec = spec
            if changed or h.phase in (Phase.FATAL, Phase.STOPPED):  # parked or stopped: SIGHUP is the retry
                h.budget.reset()
                h.backoff.reset()
                h.respawn(now, self.wall_ms(), "configuration re-read")
        self._dirty = True
        self._retitle()

    # ------------------------------------------------------------------ own registration

    def beat(self) -> SupervisorBeat:
        """The master's own record params (the contract's typed form)."""
        t = self.settings
        return SupervisorBeat(
            pid=self.pid, exchanges={name: h.entry() for name, h in self.handles.items()},
            heartbeat_interval=t.heartbeat_interval, heartbeat_timeout=t.heartbeat_timeout, boot_grace=t.boot_grace,
            stopping=self._stopping, reload_error=self.reload_error, metrics=self.ledger.params(),
            metrics_exporter=self.exporter.params() if self.exporter is not None else None,
        )

    def params(self) -> dict[str, Any]:
        return self.beat().to_params()

    def _summary(self) -> str:
        counts: dict[str, int] = {}
        for h in self.handles.values():
            counts[h.state] = counts.get(h.state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def _publish(self, final: bool = False) -> None:
        now = self.clock()
        if not final and not self._dirty and now < self._next_publish:
            return
        parked = any(h.phase is Phase.FATAL for h in self.handles.values())
        status = supervisor_cache_status(parked=parked, final=final)
        try:
            if self._process_id is None:
                self._process_id = self.cache.register(
                    PROCESS_TYPE, SUPERVISOR_COMPONENT, self.params(), status=status, message=self._summary())
            else:
                self.cache.update(self._process_id, status=status, message=self._summary(), params=self.params())
            if final:
                self.cache.stop(self._process_id, message=self._stop_reason or "stopped")
        except OhlcvError as exc:
            self._cache_outage(exc)
            self._next_publish = now + min(1.0, self.settings.heartbeat_interval)
            return
        if self._cache_down and not final:
            self._cache_back(now)
        self._dirty = False
        self._next_publish = now + self.settings.heartbeat_interval
