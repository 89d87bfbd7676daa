"""One worker's record in the master: its spec, pid, reported state, timers, backoff and budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fullon_ohlcv_service.contract import WorkerEntry, worker_component
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.supervisor.policy import Backoff, RestartBudget

State = Literal["starting", "running", "backoff", "hung", "fatal", "stopped"]


@dataclass(slots=True)
class WorkerHandle:
    """What the master knows and intends about one exchange's worker process.

    Times named ``*_at`` are monotonic seconds; ``*_ms`` are wall-clock epoch ms for reports.
    """

    spec: ExchangeSpec
    backoff: Backoff
    budget: RestartBudget
    state: State = "backoff"
    since_ms: int = 0
    pid: int | None = None
    started_at: float = 0.0
    started_ms: int | None = None
    beat_at: float | None = None  # newest heartbeat of THIS pid (or a liveness baseline), monotonic
    beats: int = 0  # heartbeats of this pid seen so far
    due_at: float | None = 0.0  # when to start next; None: not scheduled
    kill_at: float | None = None  # SIGKILL if still alive at this time
    killed: bool = False  # SIGKILL already sent to the current pid
    restarts: int = 0
    last_exit: str | None = None
    reason: str | None = None
    retire: bool = False  # stop for good once it exits (shutdown, or removed from the config)
    remove: bool = False  # forget the handle once it exits (removed from the config)
    pending_spec: ExchangeSpec | None = None  # restart with this spec once it exits (config changed)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def component(self) -> str:
        """The worker's ProcessCache component (the contract: ``ohlcv-worker:<exchange>``)."""
        return worker_component(self.spec.name)

    @property
    def alive(self) -> bool:
        """A process exists for this handle (forked and not yet reaped)."""
        return self.pid is not None

    def set_state(self, state: State, now_ms: int, reason: str | None = None) -> bool:
        """Change the reported state; return True when anything visible changed."""
        changed = state != self.state or reason != self.reason
        if state != self.state:
            self.since_ms = now_ms
        self.state = state
        self.reason = reason
        return changed

    def entry(self) -> WorkerEntry:
        """This worker's entry in the master's ProcessCache params."""
        return WorkerEntry(pid=self.pid, state=self.state, restarts=self.restarts, last_exit=self.last_exit,
                           since_ms=self.since_ms, reason=self.reason, started_ms=self.started_ms)
