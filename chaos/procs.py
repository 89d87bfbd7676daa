"""Watch the supervisor's worker processes from /proc (titles, pids, births) and find our leftover processes."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

WORKER_TITLE = "ohlcv-worker:"
MARKER = "OHLCV_CHAOS_RUN"  # environment variable every process the run starts inherits


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """A worker process seen for the first time under its title."""

    exchange: str
    pid: int
    mono: float  # time.monotonic() when first seen
    wall_ms: int


def worker_exchange(cmdline: list[str]) -> str | None:
    """``["ohlcv-worker: kraken"]`` (setproctitle) -> ``kraken``; None for any other process."""
    title = " ".join(cmdline).strip()
    if not title.startswith(WORKER_TITLE):
        return None
    rest = title[len(WORKER_TITLE):].strip()
    return rest.split()[0] if rest else None


class WorkerWatch:
    """Polls the master's children every ``period`` seconds in a thread and records each new worker.

    Liveness is read from /proc, not from the cache, so it still works while Redis is down.
    """

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._master: int | None = None
        self._current: dict[str, int] = {}
        self._events: list[WorkerSeen] = []
        self._known: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-worker-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def set_master(self, pid: int | None) -> None:
        with self._lock:
            self._master = pid
            self._current = {}

    def current(self, exchange: str) -> int | None:
        with self._lock:
            return self._current.get(exchange)

    def currents(self) -> dict[str, int]:
        with self._lock:
            return dict(self._current)

    def events(self) -> list[WorkerSeen]:
        with self._lock:
            return list(self._events)

    def first_after(self, exchange: str, mono: float, not_pid: int | None = None) -> WorkerSeen | None:
        """The first worker of ``exchange`` seen at or after ``mono`` other than ``not_pid``."""
        with self._lock:
            for ev in self._events:
                if ev.exchange == exchange and ev.mono >= mono and ev.pid != not_pid:
                    return ev
        return None

    def wait_worker(self, exchange: str, timeout: float, not_pid: int | None = None) -> int | None:
        """Block until a live worker of ``exchange`` (other than ``not_pid``) exists; its pid or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.current(exchange)
            if pid is not None and pid != not_pid:
                return pid
            time.sleep(self.period)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(self.period)

    def scan(self) -> None:
        """One look at the master's children (also callable directly, for tests)."""
        with self._lock:
            master = self._master
        if master is None:
            return
        live: dict[str, int] = {}
        try:
            children = psutil.Process(master).children(recursive=False)
        except psutil.NoSuchProcess:
            children = []
        now = time.monotonic()
        wall = time.time_ns() // 1_000_000
        new: list[WorkerSeen] = []
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                exchange = worker_exchange(child.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if exchange is None:
                continue  # forked, not yet titled
            if exchange in live and live[exchange] != child.pid:
                # Two workers for one exchange: keep the newest as current (the old one is dying).
                live[exchange] = max(live[exchange], child.pid)
            else:
                live[exchange] = child.pid
            if child.pid not in self._known:
                self._known.add(child.pid)
                new.append(WorkerSeen(exchange, child.pid, now, wall))
        with self._lock:
            if self._master == master:
                self._current = live
                self._events.extend(new)


def marked_processes(
    token: str, exclude: set[int] | None = None, sessions: set[int] | None = None
) -> list[psutil.Process]:
    """Every live (non-zombie) process of the run: in one of ``sessions`` or carrying ``OHLCV_CHAOS_RUN=token``.

    The session is what finds retitled workers: setproctitle reuses the environment's memory for the
    title, so /proc/PID/environ of a worker no longer shows the marker. Every process the run starts
    is a session leader (start_new_session) whose forks stay in its session.
    """
    exclude = exclude or set()
    sessions = sessions or set()
    found: list[psutil.Process] = []
    needle = f"{MARKER}={token}".encode()
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        try:
            ours = os.getsid(proc.pid) in sessions
            if not ours:
                with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                    ours = needle in fh.read().split(b"\0")
            if not ours or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (OSError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found.append(proc)
    return found


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} {' '.join(proc.cmdline())[:80]!r}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {proc.pid} (gone)"


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
