"""The master's ledger for /metrics: restarts by reason, and the counters of ended worker lives (the carry)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fullon_ohlcv_service.errors import EXIT_CRASH
from fullon_ohlcv_service.metrics.tally import Tally

# Why a worker was started again (the ``reason`` label of ohlcv_worker_restarts_total):
# killed: died by a signal the master did not send (kill -9 from outside, the OOM killer);
# crashed: exited 1 (an unexpected failure); exited: any other unexpected exit code;
# hung: terminated by the master for a stale heartbeat; start_failed: fork refused (EAGAIN/ENOMEM);
# config_changed: restarted by SIGHUP for a changed configuration (not a failure).
FAILURE_REASONS: tuple[str, ...] = ("killed", "crashed", "exited", "hung")
RESTART_REASONS: tuple[str, ...] = (*FAILURE_REASONS, "start_failed", "config_changed")


def restart_reason(status: int, hung: bool) -> str:
    """The restart reason of a worker that ended with raw ``waitpid`` status ``status`` and is restarted."""
    if hung:
        return "hung"
    if os.WIFSIGNALED(status):
        return "killed"
    return "crashed" if os.waitstatus_to_exitcode(status) == EXIT_CRASH else "exited"


class Ledger:
    """What the master alone knows, published in its ProcessCache params for the /metrics exporter.

    ``carried`` adds up the final counters of every ended worker life of an exchange (within this
    master's life), so an exported counter is ``carried + the current life's value`` and never goes
    back when a worker restarts. The final counters are the newest heartbeat of that pid: the one
    the master read last, or the one read from the cache right after the reap (newer, when the
    cache answers), whichever is newer.
    """

    def __init__(self) -> None:
        self.restarts: dict[str, Counter[str]] = {}
        self.carried: dict[str, Tally] = {}
        self._last: dict[str, tuple[int, Mapping[str, Any]]] = {}

    def seen(self, exchange: str, pid: int, params: Mapping[str, Any]) -> None:
        """A heartbeat of the current worker ``pid`` (kept by reference; folded in when the life ends)."""
        self._last[exchange] = (pid, params)

    def life_ended(self, exchange: str, pid: int | None, final: Mapping[str, Any] | None = None) -> None:
        """Fold the ended life ``pid``'s counters into the carry. ``final``: its record read after the reap."""
        last = self._last.pop(exchange, None)
        params: Mapping[str, Any] | None = None
        if final is not None and pid is not None and final.get("pid") == pid:
            params = final
        elif last is not None and last[0] == pid:
            params = last[1]
        if params is None:
            return
        self.carried.setdefault(exchange, Tally()).add(Tally.from_params(params))

    def restarted(self, exchange: str, reason: str) -> None:
        self.restarts.setdefault(exchange, Counter())[reason] += 1

    def params(self) -> dict[str, Any]:
        return {
            "restarts": {ex: dict(c) for ex, c in self.restarts.items() if c},
            "carried": {ex: t.as_params() for ex, t in self.carried.items() if not t.empty()},
        }
