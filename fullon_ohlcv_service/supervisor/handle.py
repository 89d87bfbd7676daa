"""One worker's record in the master: a state machine with named transitions, its spec, timers, backoff and budget.

The phases (``Phase``) and the transitions between them::

    BACKOFF                              --started-->             STARTING --beat--> RUNNING
    BACKOFF                              --start_failed-->        BACKOFF  (the fork was refused)
    STARTING, RUNNING                    --hang | stop-->         STOPPING --sigkill--> KILLED
    STARTING, RUNNING, STOPPING, KILLED  --exited-->              EXITED
    EXITED                               --restart_after-->       BACKOFF  (a failure, within the budget)
    EXITED, BACKOFF, FATAL, STOPPED      --respawn-->             BACKOFF  (a new spec; a SIGHUP's retry)
    EXITED, BACKOFF                      --park-->                FATAL
    EXITED, BACKOFF, STOPPED             --retire-->              STOPPED
    EXITED                               --forget-->              (the record is dropped)

A process exists in STARTING, RUNNING, STOPPING and KILLED. The master only ever stops a worker
through STOPPING, with an ``Intent`` that says what its exit means (recover from a hang, restart
with a new spec, retire, remove); EXITED lasts while the master applies it. FATAL and STOPPED wait
for a SIGHUP (``respawn``). Every transition names the phases it may leave and raises
``TransitionError`` from any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from fullon_ohlcv_service.contract import SupervisedState, WorkerEntry, worker_component
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.supervisor.policy import Backoff, RestartBudget


class TransitionError(RuntimeError):
    """A transition asked of a worker record in a phase it may not leave that way (a defect)."""


class Phase(Enum):
    """Where one worker's record is in its life (the master's machine; ``state`` is what it reports)."""

    BACKOFF = "backoff"  # no process: starts at ``due_at`` (None: not scheduled)
    STARTING = "starting"  # forked; no heartbeat of this pid yet
    RUNNING = "running"  # this pid heartbeats
    STOPPING = "stopping"  # the master sent SIGTERM; SIGKILL at ``kill_at``; the exit follows ``intent``
    KILLED = "killed"  # the master sent SIGKILL; it gives up on the process at ``kill_at``
    EXITED = "exited"  # reaped; the master is applying the intent (never published)
    FATAL = "fatal"  # parked: a configuration error or the restart budget is spent (a SIGHUP retries)
    STOPPED = "stopped"  # stopped for good (a SIGHUP starts it again)


ALIVE = frozenset({Phase.STARTING, Phase.RUNNING, Phase.STOPPING, Phase.KILLED})
TERMINATING = frozenset({Phase.STOPPING, Phase.KILLED})
# Phases whose reported state is the phase itself; the others show the state they were entered from.
_SHOWN = {Phase.BACKOFF: SupervisedState.BACKOFF, Phase.STARTING: SupervisedState.STARTING,
          Phase.RUNNING: SupervisedState.RUNNING, Phase.FATAL: SupervisedState.FATAL,
          Phase.STOPPED: SupervisedState.STOPPED}


class IntentKind(Enum):
    """What the master does once a worker it asked to stop has exited."""

    RECOVER = "recover"  # it was hung: the exit is a failure (backoff, restart budget)
    RESPEC = "respec"  # its configuration changed: start it again at once with the new spec
    RETIRE = "retire"  # the master is stopping: stopped for good
    REMOVE = "remove"  # its exchange left the configuration: forget the record


@dataclass(frozen=True, slots=True)
class Intent:
    kind: IntentKind
    spec: ExchangeSpec | None = None  # RESPEC: the spec to start with

    @classmethod
    def recover(cls) -> Intent:
        return cls(IntentKind.RECOVER)

    @classmethod
    def respec(cls, spec: ExchangeSpec) -> Intent:
        return cls(IntentKind.RESPEC, spec)

    @classmethod
    def retire(cls) -> Intent:
        return cls(IntentKind.RETIRE)

    @classmethod
    def remove(cls) -> Intent:
        return cls(IntentKind.REMOVE)

    def then(self, new: Intent) -> Intent:
        """The intent once ``new`` is asked on top of this one: a removal survives the master's own stop
        (the record is forgotten either way); anything else is replaced."""
        if self.kind is IntentKind.REMOVE and new.kind is IntentKind.RETIRE:
            return self
        return new


@dataclass(slots=True)
class WorkerHandle:
    """What the master knows and intends about one exchange's worker process.

    Times named ``*_at`` are monotonic seconds; ``*_ms`` are wall-clock epoch ms for reports.
    ``state``, ``since_ms`` and ``reason`` are what the master reports (the contract's
    SupervisedState); ``phase`` is the machine. Fields change only through the transitions below.
    """

    spec: ExchangeSpec
    backoff: Backoff
    budget: RestartBudget
    phase: Phase = Phase.BACKOFF
    state: SupervisedState = SupervisedState.BACKOFF
    since_ms: int = 0
    reason: str | None = None
    pid: int | None = None
    started_at: float = 0.0
    started_ms: int | None = None
    beat_at: float | None = None  # newest heartbeat of THIS pid (or a liveness baseline), monotonic
    beats: int = 0  # heartbeats of this pid seen so far
    due_at: float | None = 0.0  # BACKOFF: when to start next; None: not scheduled
    kill_at: float | None = None  # STOPPING: when to SIGKILL; KILLED: when to give up
    intent: Intent | None = None  # STOPPING, KILLED: what the exit means
    restarts: int = 0
    last_exit: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def component(self) -> str:
        """The worker's ProcessCache component (the contract: ``ohlcv-worker:<exchange>``)."""
        return worker_component(self.spec.name)

    @property
    def alive(self) -> bool:
        """A process exists for this record (forked and not yet reaped)."""
        return self.phase in ALIVE

    # ------------------------------------------------------------------ machinery

    def _leave(self, what: str, *allowed: Phase) -> None:
        if self.phase not in allowed:
            raise TransitionError(f"{self.name}: cannot {what} a worker record in phase {self.phase.value} "
                                  f"(only from {', '.join(p.value for p in allowed)})")

    def _enter(self, phase: Phase, now_ms: int, reason: str | None, shown: SupervisedState | None = None) -> bool:
        """Move to ``phase`` and report ``shown`` (by default the phase's own state) with ``reason``.

        ``since_ms`` moves only when the reported state changes; returns True when anything reported did.
        """
        state = _SHOWN.get(phase, shown)
        if state is None:
            raise TransitionError(f"{self.name}: phase {phase.value} needs the state it shows")
        changed = state != self.state or reason != self.reason
        if state != self.state:
            self.since_ms = now_ms
        self.phase, self.state, self.reason = phase, state, reason
        return changed

    # ------------------------------------------------------------------ transitions

    def started(self, pid: int, now: float, now_ms: int) -> None:
        """BACKOFF -> STARTING: a process was forked for this record."""
        self._leave("start", Phase.BACKOFF)
        self.pid, self.started_at, self.started_ms = pid, now, now_ms
        self.beat_at, self.beats, self.due_at, self.kill_at, self.intent = None, 0, None, None, None
        self._enter(Phase.STARTING, now_ms, None)

    def start_failed(self, due_at: float, now_ms: int, reason: str) -> None:
        """BACKOFF -> BACKOFF: the fork was refused; try again at ``due_at``."""
        self._leave("retry the start of", Phase.BACKOFF)
        self.due_at = due_at
        self._enter(Phase.BACKOFF, now_ms, reason)

    def beat(self, beat_at: float, now_ms: int) -> bool:
        """A heartbeat of this pid at ``beat_at``: the first makes STARTING -> RUNNING.

        Returns True when the reported state changed. An older beat than the newest seen changes nothing.
        """
        self._leave("note a heartbeat of", Phase.STARTING, Phase.RUNNING)
        if self.beat_at is not None and beat_at <= self.beat_at:
            return False
        self.beat_at = beat_at
        self.beats += 1
        if self.phase is Phase.STARTING:
            return self._enter(Phase.RUNNING, now_ms, None)
        return False

    def excuse(self, now: float) -> None:
        """The heartbeats could not be read until ``now`` (a cache outage): judge liveness from now on."""
        self._leave("excuse", *ALIVE)
        self.beat_at = now if self.beat_at is None else max(self.beat_at, now)

    def hang(self, deadline: float, now_ms: int, reason: str) -> None:
        """STARTING|RUNNING -> STOPPING (shown ``hung``): its heartbeat went stale; its exit is a failure."""
        self._leave("declare hung", Phase.STARTING, Phase.RUNNING)
        self.intent = Intent.recover()
        self.kill_at = deadline
        self._enter(Phase.STOPPING, now_ms, reason, shown=SupervisedState.HUNG)

    def stop(self, intent: Intent, deadline: float) -> None:
        """STARTING|RUNNING|STOPPING|KILLED -> STOPPING (KILLED stays KILLED): the master asks it to exit.

        The reported state and reason do not change; ``deadline`` only ever brings the SIGKILL closer.
        """
        self._leave("stop", *ALIVE)
        self.intent = intent if self.intent is None else self.intent.then(intent)
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)
        if self.phase not in TERMINATING:
            self._enter(Phase.STOPPING, self.since_ms, self.reason, shown=self.state)

    def sigkill(self, give_up_at: float) -> None:
        """STOPPING -> KILLED: it did not exit by its deadline and got SIGKILL."""
        self._leave("SIGKILL", Phase.STOPPING)
        self.kill_at = give_up_at
        self._enter(Phase.KILLED, self.since_ms, self.reason, shown=self.state)

    def hurry(self, now: float) -> None:
        """STOPPING|KILLED: the next step (SIGKILL, or giving up) is due now (a second stop signal)."""
        self._leave("hurry", *TERMINATING)
        self.kill_at = now

    def exited(self, now: float, text: str) -> tuple[Intent | None, float]:
        """Any phase with a process -> EXITED: it was reaped. Returns the intent and the process's uptime."""
        self._leave("reap", *ALIVE)
        intent, self.intent = self.intent, None
        self.pid, self.kill_at, self.last_exit = None, None, text
        self.phase = Phase.EXITED  # the reported state stays until the next transition, in the same turn
        return intent, now - self.started_at

    def respawn(self, due_at: float, now_ms: int, reason: str) -> None:
        """EXITED|BACKOFF|FATAL|STOPPED -> BACKOFF due at ``due_at``: a new configuration (or a SIGHUP retry)."""
        self._leave("respawn", Phase.EXITED, Phase.BACKOFF, Phase.FATAL, Phase.STOPPED)
        self.due_at = due_at
        self._enter(Phase.BACKOFF, now_ms, reason)

    def restart_after(self, due_at: float, now_ms: int, reason: str) -> None:
        """EXITED -> BACKOFF: it failed; counted as a restart, started again at ``due_at``."""
        self._leave("restart", Phase.EXITED)
        self.restarts += 1
        self.due_at = due_at
        self._enter(Phase.BACKOFF, now_ms, reason)

    def park(self, now_ms: int, reason: str) -> None:
        """EXITED|BACKOFF -> FATAL: never started again until a SIGHUP."""
        self._leave("park", Phase.EXITED, Phase.BACKOFF)
        self.due_at = None
        self._enter(Phase.FATAL, now_ms, reason)

    def retire(self, now_ms: int, reason: str | None) -> None:
        """EXITED|BACKOFF|STOPPED -> STOPPED: stopped for good."""
        self._leave("retire", Phase.EXITED, Phase.BACKOFF, Phase.STOPPED)
        self.due_at = None
        self._enter(Phase.STOPPED, now_ms, reason)

    def forget(self) -> None:
        """EXITED: the record is dropped (its exchange left the configuration); nothing may follow."""
        self._leave("forget", Phase.EXITED)
        self.due_at = None

    # ------------------------------------------------------------------ report

    def entry(self) -> WorkerEntry:
        """This worker's entry in the master's ProcessCache params."""
        return WorkerEntry(pid=self.pid, state=self.state, restarts=self.restarts, last_exit=self.last_exit,
                           since_ms=self.since_ms, reason=self.reason, started_ms=self.started_ms)
