"""The seeded fault schedule of a chaos run: a pure function of (seed, plan), the same seed giving the same faults."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

# Process faults (the runner sends the signal itself).
KILL9 = "kill9"  # kill -9 of a worker
SIGSTOP = "sigstop"  # SIGSTOP of a worker for longer than the heartbeat timeout, then SIGCONT if still there
SIGHUP_ADD = "sighup_add_symbol"  # ohlcv-config add-symbol, then SIGHUP of the master
SIGTERM_MASTER = "sigterm_master"  # always last
# Simulator faults (POST /_sim/faults).
WS_DROP = "ws_drop"
WS_STALL = "ws_stall"
WS_REFUSE = "ws_refuse"
REST_429 = "rest_429"
REST_5XX = "rest_5xx"
MALFORMED = "malformed"
DUPLICATES = "duplicates"
POISON = "poison"  # invalid trades and candles among the valid ones (simulator/poison.py), count per symbol
# Service outages (the runner stops the server, then starts it again in all cases).
REDIS_RESTART = "redis_restart"
PG_RESTART = "pg_restart"

PROCESS_FAULTS = frozenset({KILL9, SIGSTOP})
SIMULATOR_FAULTS = frozenset({WS_DROP, WS_STALL, WS_REFUSE, REST_429, REST_5XX, MALFORMED, DUPLICATES, POISON})
# Faults after which the supervisor must start a new worker (the runner measures fault -> new pid).
RESTARTING_FAULTS = frozenset({KILL9, SIGSTOP})

# The process track: faults whose restarts are measured, never overlapping one another.
PROCESS_TRACK = frozenset({KILL9, SIGSTOP, SIGHUP_ADD})
# Extra faults that fill each track once every required kind is placed.
_EXTRA_SERVICE = (WS_DROP, WS_STALL, REST_429, REST_5XX, MALFORMED, DUPLICATES, WS_REFUSE, WS_DROP, POISON)
_EXTRA_PROCESS = (KILL9, KILL9, KILL9, SIGSTOP)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the schedule depends on besides the seed."""

    minutes: float
    exchanges: tuple[str, ...]
    store: str = "sqlite"  # sqlite | postgres
    cache: str = "sqlite"  # sqlite | redis
    heartbeat_timeout: float = 3.0
    kill_grace: float = 1.0
    boot_grace: float = 8.0
    # (exchange, symbol) pairs the SIGHUP fault may add, in a fixed order; one is chosen per SIGHUP.
    add_symbols: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise ValueError("minutes must be > 0")
        if not self.exchanges:
            raise ValueError("at least one exchange is needed")
        if self.store not in ("sqlite", "postgres"):
            raise ValueError(f"store must be sqlite or postgres, not {self.store!r}")
        if self.cache not in ("sqlite", "redis"):
            raise ValueError(f"cache must be sqlite or redis, not {self.cache!r}")


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: when (seconds after the fault phase starts), what, and against which exchange."""

    at: float
    kind: str
    target: str | None = None  # an exchange, or None for every exchange
    duration: float = 0.0  # how long the fault lasts (stop, stall, outage, refusal), 0 for an instant one
    count: int = 0  # REST bursts, malformed frames, duplicates, poisoned trades per symbol
    symbol: str | None = None  # the symbol added before a SIGHUP
    slot: float = 0.0  # seconds reserved for the fault and its recovery before the next one starts

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [self.kind]
        if self.target:
            parts.append(f"exchange={self.target}")
        if self.symbol:
            parts.append(f"symbol={self.symbol}")
        if self.duration:
            parts.append(f"duration={self.duration:.1f}s")
        if self.count:
            parts.append(f"count={self.count}")
        return " ".join(parts)


def required_kinds(plan: Plan) -> list[str]:
    """Every kind the run must apply at least once (the final SIGTERM excluded)."""
    kinds = [KILL9, SIGSTOP, WS_DROP, WS_STALL, REST_429, REST_5XX, MALFORMED, POISON]
    if plan.add_symbols:
        kinds.append(SIGHUP_ADD)
    if plan.cache == "redis":
        kinds.append(REDIS_RESTART)
    if plan.store == "postgres":
        kinds.append(PG_RESTART)
    return kinds


def sigstop_duration(plan: Plan) -> float:
    """Long enough for the supervisor to see the hang whatever the worker's age (boot grace included)."""
    return round(max(plan.boot_grace, 2 * plan.heartbeat_timeout) + plan.kill_grace + 2.0, 2)


def _make(rng: random.Random, plan: Plan, kind: str, at: float, added: list[tuple[str, str]]) -> Fault:
    target: str | None
    if kind in PROCESS_FAULTS:
        target = rng.choice(plan.exchanges)
    elif kind in SIMULATOR_FAULTS:
        target = rng.choice((None, *plan.exchanges))
    else:
        target = None
    duration = 0.0
    count = 0
    symbol: str | None = None
    if kind == KILL9:
        slot = 4.0
    elif kind == SIGSTOP:
        duration = sigstop_duration(plan)
        slot = duration + 3.0
    elif kind == WS_DROP:
        slot = 3.0
    elif kind == WS_STALL:
        duration = round(rng.uniform(4.0, 8.0), 2)
        slot = duration + 3.0
    elif kind == WS_REFUSE:
        duration = round(rng.uniform(2.0, 5.0), 2)
        slot = duration + 3.0
    elif kind in (REST_429, REST_5XX):
        count = rng.randint(3, 8)
        slot = 3.0
    elif kind == MALFORMED:
        count = rng.randint(2, 5)
        slot = 3.0
    elif kind == DUPLICATES:
        count = rng.randint(3, 10)
        slot = 3.0
    elif kind == POISON:
        count = rng.randint(2, 7)  # poisoned trades per symbol (the kinds take turns), and one candle
        slot = 3.0
    elif kind == REDIS_RESTART:
        duration = round(rng.uniform(5.0, 10.0), 2)
        slot = duration + 4.0
    elif kind == PG_RESTART:
        duration = round(rng.uniform(6.0, 12.0), 2)
        slot = duration + 6.0
    elif kind == SIGHUP_ADD:
        remaining = [p for p in plan.add_symbols if p not in added]
        if not remaining:
            raise ValueError("no symbol left to add")
        target, symbol = rng.choice(remaining)
        added.append((target, symbol))
        slot = 6.0
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return Fault(at=round(at, 2), kind=kind, target=target, duration=duration, count=count, symbol=symbol,
                 slot=round(slot, 2))


def blocked_windows(plan: Plan, fault: Fault) -> list[tuple[frozenset[str], float, float]]:
    """Process-track kinds a service fault forbids, and when: (kinds, from, to) in phase seconds.

    - While Redis is down the supervisor cannot read heartbeats and rightly kills nobody, so a
      SIGSTOP then would go undetected by design: none from just before the outage until the
      heartbeats have had time to come back and go stale again.
    - While PostgreSQL is down (the configuration lives there too) ``ohlcv-config add-symbol`` and
      the SIGHUP reload cannot work: no SIGHUP fault in that window.
    """
    if fault.kind == REDIS_RESTART:
        return [(frozenset({SIGSTOP}), fault.at - 2.0, fault.at + fault.duration + 2 * plan.heartbeat_timeout + 4.0)]
    if fault.kind == PG_RESTART and plan.store == "postgres":
        return [(frozenset({SIGHUP_ADD}), fault.at - 2.0, fault.at + fault.duration + 6.0)]
    return []


def build_schedule(seed: int, plan: Plan) -> tuple[Fault, ...]:
    """The faults of a run, in time order, ending with the master's SIGTERM.

    Two tracks run side by side, so faults of different kinds overlap (a kill -9 during a database
    outage, a SIGSTOP during a websocket stall):
    - the *process* track (kill -9, SIGSTOP, SIGHUP + add-symbol): its faults never overlap each
      other, so each restart is attributable to one fault and its detection time is measurable;
    - the *service* track (simulator faults, Redis and PostgreSQL outages), one after another.
    Process faults avoid the windows where a service fault makes them meaningless (blocked_windows).
    Every required kind comes once, in a seeded order; seeded extras then fill the planned minutes.
    A run too short for the required kinds is stretched rather than cut. The final SIGTERM comes
    after every fault's slot.
    """
    rng = random.Random(f"chaos:{seed}")
    total = plan.minutes * 60.0
    added: list[tuple[str, str]] = []
    required = required_kinds(plan)
    rng.shuffle(required)

    service: list[Fault] = []
    at = rng.uniform(2.0, 4.0)
    for kind in [k for k in required if k not in PROCESS_TRACK]:
        fault = _make(rng, plan, kind, at, added)
        service.append(fault)
        at += fault.slot + rng.uniform(1.0, 4.0)
    while True:
        fault = _make(rng, plan, rng.choice(_EXTRA_SERVICE), at, added)
        if at + fault.slot > total:
            break
        service.append(fault)
        at += fault.slot + rng.uniform(1.0, 4.0)

    blocked = [w for f in service for w in blocked_windows(plan, f)]

    def place(at: float, fault: Fault) -> Fault:
        moved = True
        while moved:
            moved = False
            for kinds, lo, hi in blocked:
                if fault.kind in kinds and at < hi and at + fault.slot > lo:
                    at, moved = hi + 0.5, True
        return Fault(at=round(at, 2), kind=fault.kind, target=fault.target, duration=fault.duration,
                     count=fault.count, symbol=fault.symbol, slot=fault.slot)

    process: list[Fault] = []
    at = rng.uniform(3.0, 6.0)
    for kind in [k for k in required if k in PROCESS_TRACK]:
        fault = place(at, _make(rng, plan, kind, at, added))
        process.append(fault)
        at = fault.at + fault.slot + rng.uniform(3.0, 10.0)
    while True:
        fault = place(at, _make(rng, plan, rng.choice(_EXTRA_PROCESS), at, added))
        if fault.at + fault.slot > total:
            break
        process.append(fault)
        at = fault.at + fault.slot + rng.uniform(3.0, 10.0)

    faults = sorted(service + process, key=lambda f: (f.at, f.kind))
    end = max([total, *(f.at + f.slot for f in faults)])
    faults.append(Fault(at=round(end, 2), kind=SIGTERM_MASTER))
    return tuple(faults)


def schedule_end(faults: tuple[Fault, ...]) -> float:
    """Seconds after the phase start at which the last fault (the SIGTERM) is due."""
    return faults[-1].at if faults else 0.0
