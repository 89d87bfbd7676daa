"""Pure restart rules: capped backoff with jitter, hourly restart budget, staleness, exit classification."""

from __future__ import annotations

import os
import random
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from fullon_ohlcv_service.errors import EXIT_CONFIG, EXIT_OK
from fullon_ohlcv_service.retry import Backoff as Curve

BUDGET_WINDOW_S = 3600.0


def is_stale(last_beat: float | None, now: float, boot_grace: float, timeout: float, *, started: float) -> bool:
    """True when a worker started at ``started`` with its last heartbeat at ``last_beat`` is hung at ``now``.

    All times are monotonic seconds. The heartbeat deadline is ``last_beat + timeout`` (or
    ``started + timeout`` before any beat), but never earlier than the end of the boot grace
    ``started + boot_grace``: loading markets and starting backfill may be slow. Data freshness
    plays no part here, so a quiet market is never taken for a hang.
    """
    reference = started if last_beat is None else max(last_beat, started)
    deadline = max(started + boot_grace, reference + timeout)
    return now > deadline


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter; the failure count resets after a healthy run.

    The first failure after a healthy run restarts at once (a single crash or kill -9 is answered
    in milliseconds). Each further consecutive failure waits ``initial * 2**(n-1)`` seconds capped at
    ``maximum``, multiplied by a jitter factor in [1 - jitter, 1 + jitter] and capped again.
    """

    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.2
    reset_after: float = 30.0  # a worker up this long was healthy: forget its earlier failures
    rng: Callable[[], float] = random.random
    failures: int = 0

    def delay(self, failures: int) -> float:
        """Delay before the restart that follows ``failures`` earlier consecutive failures."""
        if failures <= 0:
            return 0.0
        return Curve(self.initial, self.maximum).jittered(failures - 1, self.jitter, self.rng())

    def on_exit(self, uptime: float) -> float:
        """Record one failed run of ``uptime`` seconds and return the delay before the next start."""
        if uptime >= self.reset_after:
            self.failures = 0
        wait = self.delay(self.failures)
        self.failures += 1
        return wait

    def reset(self) -> None:
        self.failures = 0


@dataclass(slots=True)
class RestartBudget:
    """At most ``limit`` restarts per ``window`` seconds (default: per hour) for one exchange."""

    limit: int = 20
    window: float = BUDGET_WINDOW_S
    _times: deque[float] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()

    def used(self, now: float) -> int:
        self._trim(now)
        return len(self._times)

    def take(self, now: float) -> bool:
        """Spend one restart if any is left in the window; False means the budget is exhausted."""
        self._trim(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def reset(self) -> None:
        self._times.clear()


class ExitKind(Enum):
    """What the master does about one worker exit."""

    STOPPED = "stopped"  # exit 0: a requested stop if the master asked for it; otherwise restarted like a crash
    CONFIG = "config"  # EXIT_CONFIG: a configuration or boot error, parked at once
    CRASH = "crash"  # anything else (including death by signal): restarted with backoff


def describe_exit(status: int) -> tuple[ExitKind, str]:
    """Classify a raw ``waitpid`` status and describe it in words (``exit 1``, ``killed by SIGKILL``)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return ExitKind.CRASH, f"killed by {name}"
    code = os.waitstatus_to_exitcode(status)
    return classify_code(code), f"exit {code}"


def classify_code(code: int) -> ExitKind:
    """The exit-code contract: 0 stopped, EXIT_CONFIG parked, anything else a crash.

    Exit 0 is a requested stop only when the master asked for it (the arbiter knows which stops it
    requested); a worker that exits 0 unasked is restarted with the usual backoff and budget.
    """
    if code == EXIT_OK:
        return ExitKind.STOPPED
    if code == EXIT_CONFIG:
        return ExitKind.CONFIG
    return ExitKind.CRASH
