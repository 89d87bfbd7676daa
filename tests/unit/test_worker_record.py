"""The worker record as a state machine: legal transitions, illegal ones refused, and the master's exit table."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
from fullon_ohlcv_service.errors import EXIT_CONFIG
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.settings import settings_from_env
from fullon_ohlcv_service.supervisor.arbiter import Arbiter
from fullon_ohlcv_service.supervisor.handle import Intent, IntentKind, Phase, TransitionError, WorkerHandle
from fullon_ohlcv_service.supervisor.policy import Backoff, RestartBudget


def spec(name: str = "kraken", symbol: str = "BTC/USD") -> ExchangeSpec:
    return ExchangeSpec(name=name, symbols=(SymbolSpec(symbol=symbol),), params=MappingProxyType({}))


def record(**kw: object) -> WorkerHandle:
    return WorkerHandle(spec=spec(), backoff=Backoff(rng=lambda: 0.5), budget=RestartBudget(limit=2),
                        since_ms=1, **kw)  # type: ignore[arg-type]


def running(pid: int = 101) -> WorkerHandle:
    h = record()
    h.started(pid, 10.0, 1_000)
    assert h.beat(11.0, 1_100)
    return h


def test_a_life_from_start_to_a_requested_stop() -> None:
    h = record()
    assert (h.phase, h.state, h.alive, h.due_at) == (Phase.BACKOFF, "backoff", False, 0.0)
    h.started(101, 10.0, 1_000)
    assert (h.phase, h.state, h.pid, h.since_ms, h.due_at, h.beats) == (Phase.STARTING, "starting", 101, 1_000, None, 0)
    assert h.beat(11.0, 1_100) is True  # the first beat: running, reported
    assert (h.phase, h.state, h.since_ms, h.beat_at, h.beats) == (Phase.RUNNING, "running", 1_100, 11.0, 1)
    assert h.beat(10.5, 1_200) is False and h.beat_at == 11.0  # an older beat changes nothing
    assert h.beat(12.0, 1_300) is False and (h.beat_at, h.beats) == (12.0, 2)
    h.stop(Intent.retire(), deadline=20.0)
    # asked to stop, it still reports what it was until it exits
    assert (h.phase, h.state, h.since_ms, h.kill_at, h.alive) == (Phase.STOPPING, "running", 1_100, 20.0, True)
    intent, uptime = h.exited(15.0, "exit 0")
    assert (intent, uptime, h.phase, h.pid, h.kill_at, h.last_exit) == (Intent.retire(), 5.0, Phase.EXITED, None,
                                                                        None, "exit 0")
    h.retire(1_500, None)
    assert (h.phase, h.state, h.since_ms, h.due_at) == (Phase.STOPPED, "stopped", 1_500, None)
    assert h.entry().to_params() == {"pid": None, "state": "stopped", "restarts": 0, "last_exit": "exit 0",
                                     "since_ms": 1_500, "reason": None, "started_ms": 1_000}


def test_a_hang_then_sigkill_then_a_restart() -> None:
    h = running()
    h.hang(14.0, 2_000, "no heartbeat for 5.0s (timeout 3s)")
    assert (h.phase, h.state, h.since_ms, h.intent, h.kill_at) == (Phase.STOPPING, "hung", 2_000, Intent.recover(),
                                                                   14.0)
    h.sigkill(15.0)
    assert (h.phase, h.state, h.kill_at) == (Phase.KILLED, "hung", 15.0)
    h.stop(Intent.retire(), deadline=30.0)  # a later stop neither revives it nor delays the deadline
    assert (h.phase, h.kill_at, h.intent) == (Phase.KILLED, 15.0, Intent.retire())
    h.hurry(14.5)
    assert h.kill_at == 14.5
    h.exited(16.0, "killed by SIGKILL")
    h.restart_after(17.0, 2_100, "hung, killed by SIGKILL; restart in 1.0s")
    assert (h.phase, h.state, h.restarts, h.due_at, h.reason) == (
        Phase.BACKOFF, "backoff", 1, 17.0, "hung, killed by SIGKILL; restart in 1.0s")


def test_intents_a_removal_survives_the_masters_stop_and_a_new_spec_replaces_it() -> None:
    h = running()
    h.stop(Intent.remove(), 30.0)
    h.stop(Intent.retire(), 20.0)
    assert h.intent == Intent.remove() and h.kill_at == 20.0
    new = spec(symbol="ETH/USD")
    h.stop(Intent.respec(new), 40.0)  # the exchange came back, changed
    assert h.intent == Intent.respec(new) and h.kill_at == 20.0
    h.stop(Intent.retire(), 40.0)  # then the master stops: the new spec is not started
    assert h.intent is not None and h.intent.kind is IntentKind.RETIRE
    hung = running()
    hung.hang(14.0, 2_000, "hung")
    hung.stop(Intent.respec(new), 40.0)  # a changed configuration outranks the hang: not a failure
    assert hung.intent == Intent.respec(new) and hung.state == "hung"


def test_reported_since_moves_only_with_the_reported_state() -> None:
    h = record()
    why = "cannot start a worker: EAGAIN; retry in 1.0s"
    h.start_failed(5.0, 2_000, why)
    assert (h.state, h.since_ms, h.due_at, h.reason) == ("backoff", 1, 5.0, why)  # the state did not change
    h.park(3_000, "restart budget exhausted")
    assert (h.phase, h.state, h.since_ms, h.due_at) == (Phase.FATAL, "fatal", 3_000, None)
    h.respawn(9.0, 4_000, "configuration re-read")
    assert (h.phase, h.state, h.since_ms, h.due_at, h.reason) == (Phase.BACKOFF, "backoff", 4_000, 9.0,
                                                                  "configuration re-read")


ILLEGAL: list[tuple[str, Callable[[WorkerHandle], WorkerHandle], Callable[[WorkerHandle], object]]] = [
    ("start a running worker", lambda h: running(), lambda h: h.started(202, 1.0, 1)),
    ("beat without a process", lambda h: h, lambda h: h.beat(1.0, 1)),
    ("hang a stopping worker", lambda h: _stopping(), lambda h: h.hang(1.0, 1, "x")),
    ("stop a worker that has no process", lambda h: h, lambda h: h.stop(Intent.retire(), 1.0)),
    ("SIGKILL a worker not asked to stop", lambda h: running(), lambda h: h.sigkill(1.0)),
    ("hurry a running worker", lambda h: running(), lambda h: h.hurry(1.0)),
    ("reap a worker that has no process", lambda h: h, lambda h: h.exited(1.0, "exit 0")),
    ("park a running worker", lambda h: running(), lambda h: h.park(1, "x")),
    ("retire a running worker", lambda h: running(), lambda h: h.retire(1, None)),
    ("respawn a running worker", lambda h: running(), lambda h: h.respawn(1.0, 1, "x")),
    ("count a restart of a waiting worker", lambda h: h, lambda h: h.restart_after(1.0, 1, "x")),
    ("forget a waiting worker", lambda h: h, lambda h: h.forget()),
    ("excuse a worker that has no process", lambda h: h, lambda h: h.excuse(1.0)),
    ("retry a start of a started worker", lambda h: running(), lambda h: h.start_failed(1.0, 1, "x")),
    ("retire a parked worker", lambda h: _parked(), lambda h: h.retire(1, None)),
]


def _stopping() -> WorkerHandle:
    h = running()
    h.stop(Intent.retire(), 20.0)
    return h


def _parked() -> WorkerHandle:
    h = record()
    h.park(1, "x")
    return h


@pytest.mark.parametrize(("what", "make", "act"), ILLEGAL, ids=[i[0] for i in ILLEGAL])
def test_an_illegal_transition_raises_and_changes_nothing(
        what: str, make: Callable[[WorkerHandle], WorkerHandle], act: Callable[[WorkerHandle], object]) -> None:
    h = make(record())
    before = (h.phase, h.state, h.since_ms, h.reason, h.pid, h.due_at, h.kill_at, h.intent, h.restarts, h.beats)
    with pytest.raises(TransitionError, match=f"kraken: cannot .* in phase {h.phase.value}"):
        act(h)
    assert (h.phase, h.state, h.since_ms, h.reason, h.pid, h.due_at, h.kill_at, h.intent, h.restarts,
            h.beats) == before


# ---------------------------------------------------------------------------- the master's exit table

class _NoStarter:
    def start(self, spec: ExchangeSpec, parent_pid: int) -> int:
        raise AssertionError("not started in this test")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Arbiter]:
    settings = settings_from_env({}, home=str(tmp_path), cache=f"sqlite://{tmp_path / 'cache.sqlite'}")
    cache = SyncSqliteProcessCache(tmp_path / "cache.sqlite")
    arbiter = Arbiter([spec("kraken"), spec("binance", "BTC/USDT")], settings, starter=_NoStarter(), cache=cache,
                      rng=lambda: 0.5)
    for i, h in enumerate(arbiter.handles.values()):
        h.started(101 + i, arbiter.clock(), 0)
        h.beat(arbiter.clock(), 0)
    yield arbiter
    cache.close()


EXIT_0 = 0
EXIT_1 = 1 << 8
EXIT_78 = EXIT_CONFIG << 8
KILLED = signal.SIGKILL


@pytest.mark.parametrize(("intent", "status", "pending_stop", "outcome"), [
    # no stop asked: the exit code decides (exit 0 unasked is a crash)
    (None, EXIT_0, False, ("backoff", 1, "exit 0 without a stop request from the master")),
    (None, EXIT_1, False, ("backoff", 1, "exit 1")),
    (None, KILLED, False, ("backoff", 1, "killed by SIGKILL")),
    (None, EXIT_78, False, ("fatal", 0, "configuration or boot error (exit 78)")),
    # terminated for a hang: a failure whatever its code
    (Intent.recover(), EXIT_0, False, ("backoff", 1, "hung, exit 0")),
    (Intent.recover(), EXIT_78, False, ("backoff", 1, "hung, exit 78")),
    # the master asked: its intent decides, whatever the code
    (Intent.retire(), KILLED, False, ("stopped", 0, None)),
    (Intent.respec(spec("kraken", "ETH/USD")), EXIT_1, False, ("backoff", 0, "configuration changed")),
    (Intent.remove(), EXIT_78, False, ("removed", 0, None)),
    # an exit reaped while the master's own stop signal waits belongs to that stop
    (None, EXIT_0, True, ("stopped", 0, "stopped")),
    (Intent.recover(), KILLED, True, ("stopped", 0, "stopped")),
    (Intent.remove(), EXIT_0, True, ("removed", 0, None)),
    (Intent.respec(spec("kraken", "ETH/USD")), EXIT_0, True, ("backoff", 0, "configuration changed")),
])
def test_what_follows_an_exit(master: Arbiter, intent: Intent | None, status: int, pending_stop: bool,
                              outcome: tuple[str, int, str | None]) -> None:
    h = master.handles["kraken"]
    if intent is not None and intent.kind is IntentKind.RECOVER:
        h.hang(master.clock() + 5, 0, "no heartbeat")
    elif intent is not None:
        h.stop(intent, master.clock() + 5)
    if pending_stop:
        master._signals.append(signal.SIGTERM)
    master._on_exit(h, status)
    state, restarts, reason = outcome
    if state == "removed":
        assert "kraken" not in master.handles and "kraken" not in master.title()
        return
    assert (h.state, h.restarts, h.pid) == (state, restarts, None)
    assert (h.reason or "").startswith(reason or ""), h.reason
    if intent is not None and intent.kind is IntentKind.RESPEC:
        assert h.spec == intent.spec and h.due_at is not None and h.due_at <= master.clock()
    assert master.handles["binance"].state == "running"  # the other worker is untouched
    assert os.WIFSIGNALED(KILLED) and not os.WIFSIGNALED(EXIT_1)  # the raw statuses are what waitpid returns
