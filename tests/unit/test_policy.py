"""Unit tests of the supervisor's pure restart rules, with an injected clock and jitter source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fullon_ohlcv_service.errors import EXIT_CONFIG
from fullon_ohlcv_service.supervisor.policy import (
    Backoff,
    ExitKind,
    RestartBudget,
    classify_code,
    describe_exit,
    is_stale,
)


class TestIsStale:
    def test_fresh_heartbeat_is_not_stale(self) -> None:
        assert not is_stale(100.0, 110.0, boot_grace=5, timeout=30, started=0.0)

    def test_heartbeat_older_than_timeout_is_stale(self) -> None:
        assert is_stale(100.0, 130.01, boot_grace=5, timeout=30, started=0.0)
        assert not is_stale(100.0, 130.0, boot_grace=5, timeout=30, started=0.0)

    def test_no_beat_within_boot_grace_is_not_stale(self) -> None:
        assert not is_stale(None, 59.0, boot_grace=60, timeout=30, started=0.0)
        assert is_stale(None, 60.5, boot_grace=60, timeout=30, started=0.0)

    def test_boot_grace_covers_an_early_beat_then_silence(self) -> None:
        # beat at 1 s, then silence: the deadline is max(grace end 60, 1 + 30)
        assert not is_stale(1.0, 45.0, boot_grace=60, timeout=30, started=0.0)
        assert is_stale(1.0, 61.0, boot_grace=60, timeout=30, started=0.0)

    def test_zero_grace_still_allows_timeout_for_the_first_beat(self) -> None:
        assert not is_stale(None, 2.9, boot_grace=0, timeout=3, started=0.0)
        assert is_stale(None, 3.1, boot_grace=0, timeout=3, started=0.0)

    def test_beat_from_before_the_start_counts_as_the_start(self) -> None:
        # a reference older than the start (e.g. an outage baseline) never shortens the deadline
        assert not is_stale(-100.0, 20.0, boot_grace=5, timeout=30, started=0.0)
        assert is_stale(-100.0, 31.0, boot_grace=5, timeout=30, started=0.0)


class TestBackoff:
    def test_first_failure_restarts_at_once_then_doubles_to_the_cap(self) -> None:
        b = Backoff(initial=1.0, maximum=60.0, jitter=0.0, reset_after=30.0)
        delays = [b.on_exit(uptime=1.0) for _ in range(10)]
        assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]

    def test_jitter_stays_within_bounds_and_under_the_cap(self) -> None:
        lo = Backoff(initial=1.0, maximum=60.0, jitter=0.2, rng=lambda: 0.0)
        hi = Backoff(initial=1.0, maximum=60.0, jitter=0.2, rng=lambda: 1.0)
        assert lo.delay(3) == pytest.approx(4.0 * 0.8)
        assert hi.delay(3) == pytest.approx(4.0 * 1.2)
        assert hi.delay(20) == 60.0  # jitter never exceeds the cap
        assert lo.delay(20) == pytest.approx(48.0)

    def test_healthy_run_resets_the_failure_count(self) -> None:
        b = Backoff(initial=1.0, maximum=60.0, jitter=0.0, reset_after=30.0)
        for _ in range(5):
            b.on_exit(uptime=2.0)
        assert b.on_exit(uptime=2.0) == 16.0
        assert b.on_exit(uptime=31.0) == 0.0  # it had stayed healthy: immediate restart
        assert b.on_exit(uptime=2.0) == 1.0

    def test_huge_failure_counts_do_not_overflow(self) -> None:
        b = Backoff(initial=1.0, maximum=60.0, jitter=0.0)
        assert b.delay(10_000) == 60.0


class TestRestartBudget:
    def test_budget_exhausts_then_recovers_after_the_window(self) -> None:
        budget = RestartBudget(limit=3, window=3600.0)
        assert [budget.take(t) for t in (0.0, 10.0, 20.0)] == [True, True, True]
        assert not budget.take(30.0)
        assert budget.used(30.0) == 3
        assert not budget.take(3599.0)
        assert budget.take(3600.0)  # the restart at t=0 left the window
        assert budget.used(3600.0) == 3

    def test_reset_clears(self) -> None:
        budget = RestartBudget(limit=1)
        assert budget.take(0.0)
        assert not budget.take(1.0)
        budget.reset()
        assert budget.take(2.0)


class TestExitClassification:
    def test_codes(self) -> None:
        assert classify_code(0) is ExitKind.STOPPED
        assert classify_code(EXIT_CONFIG) is ExitKind.CONFIG
        assert classify_code(1) is ExitKind.CRASH
        assert classify_code(3) is ExitKind.CRASH

    @pytest.mark.parametrize(
        ("code", "kind", "text"),
        [(0, ExitKind.STOPPED, "exit 0"), (78, ExitKind.CONFIG, "exit 78"), (1, ExitKind.CRASH, "exit 1")],
    )
    def test_real_exit_statuses(self, code: int, kind: ExitKind, text: str) -> None:
        proc = subprocess.Popen([sys.executable, "-c", f"import os; os._exit({code})"])
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = code  # already reaped here
        assert describe_exit(status) == (kind, text)

    def test_real_death_by_signal_is_a_crash(self) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        os.kill(proc.pid, signal.SIGKILL)
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = -9
        assert describe_exit(status) == (ExitKind.CRASH, "killed by SIGKILL")
