"""The seeded fault schedule: deterministic, complete, non-overlapping, and ending with the master's SIGTERM."""

from __future__ import annotations

import itertools

import pytest

from chaos import schedule as s

PLAN = s.Plan(minutes=3, exchanges=("kraken", "binance"), store="postgres", cache="redis",
              heartbeat_timeout=3.0, kill_grace=1.0, boot_grace=8.0,
              add_symbols=(("kraken", "SOL/USD"), ("binance", "SOL/USDT")))


def test_same_seed_same_schedule_and_other_seed_differs() -> None:
    a = s.build_schedule(1, PLAN)
    assert a == s.build_schedule(1, PLAN)
    assert a != s.build_schedule(2, PLAN)


def test_every_required_kind_once_and_sigterm_last() -> None:
    faults = s.build_schedule(7, PLAN)
    kinds = [f.kind for f in faults]
    for kind in (s.KILL9, s.SIGSTOP, s.WS_DROP, s.WS_STALL, s.REST_429, s.REST_5XX, s.MALFORMED, s.POISON,
                 s.SIGHUP_ADD, s.REDIS_RESTART, s.PG_RESTART):
        assert kind in kinds, kind
    assert kinds[-1] == s.SIGTERM_MASTER
    assert kinds.count(s.SIGTERM_MASTER) == 1
    assert faults[-1].at >= PLAN.minutes * 60


def test_outages_only_for_the_backends_in_use() -> None:
    plan = s.Plan(minutes=3, exchanges=("kraken",), store="sqlite", cache="sqlite")
    for seed in range(20):
        kinds = {f.kind for f in s.build_schedule(seed, plan)}
        assert s.REDIS_RESTART not in kinds and s.PG_RESTART not in kinds
        assert s.SIGHUP_ADD not in kinds  # nothing to add


def _track(faults: tuple[s.Fault, ...], process: bool) -> list[s.Fault]:
    return [f for f in faults if f.kind != s.SIGTERM_MASTER and (f.kind in s.PROCESS_TRACK) == process]


def test_each_track_is_sequential_and_everything_ends_before_the_sigterm() -> None:
    for seed in range(30):
        faults = s.build_schedule(seed, PLAN)
        assert [f.at for f in faults] == sorted(f.at for f in faults)
        for process in (True, False):
            for prev, nxt in itertools.pairwise(_track(faults, process)):
                assert nxt.at >= prev.at + prev.slot, (seed, prev, nxt)
        body = faults[:-1]
        assert max(f.at + f.slot for f in body) <= faults[-1].at
        # extras fill a 3-minute run beyond the required kinds, on both tracks
        assert len(body) > len(s.required_kinds(PLAN))
        assert len(_track(faults, True)) > 3 and len(_track(faults, False)) > 7


def test_tracks_overlap() -> None:
    overlaps = 0
    for seed in range(10):
        faults = s.build_schedule(seed, PLAN)
        for p in _track(faults, True):
            overlaps += sum(1 for q in _track(faults, False) if q.at < p.at + p.slot and p.at < q.at + q.slot)
    assert overlaps > 10


def test_no_sigstop_during_a_redis_outage_and_no_sighup_during_a_pg_outage() -> None:
    for seed in range(60):
        faults = s.build_schedule(seed, PLAN)
        for outage in faults:
            for kinds, lo, hi in s.blocked_windows(PLAN, outage):
                for f in faults:
                    if f.kind in kinds:
                        assert f.at + f.slot <= lo or f.at >= hi, (seed, outage, f)
    redis = next(f for f in s.build_schedule(1, PLAN) if f.kind == s.REDIS_RESTART)
    (kinds, lo, hi), = s.blocked_windows(PLAN, redis)
    assert kinds == {s.SIGSTOP} and lo < redis.at and hi > redis.at + redis.duration + PLAN.heartbeat_timeout
    sqlite_plan = s.Plan(minutes=3, exchanges=("kraken",), store="sqlite", cache="redis")
    pg = s.Fault(at=10, kind=s.PG_RESTART, duration=5)
    assert s.blocked_windows(sqlite_plan, pg) == []  # the configuration is not on PostgreSQL then


def test_short_run_is_stretched_not_cut() -> None:
    plan = s.Plan(minutes=0.2, exchanges=("kraken", "binance"), store="postgres", cache="redis")
    faults = s.build_schedule(3, plan)
    assert len(faults) == len(s.required_kinds(plan)) + 1
    assert faults[-1].at > 12


def test_targets_and_parameters() -> None:
    faults = s.build_schedule(11, PLAN)
    for f in faults:
        if f.kind in (s.KILL9, s.SIGSTOP):
            assert f.target in PLAN.exchanges
        if f.kind == s.SIGSTOP:
            assert f.duration > PLAN.heartbeat_timeout + PLAN.kill_grace
            assert f.duration >= PLAN.boot_grace
        if f.kind in (s.REST_429, s.REST_5XX, s.MALFORMED, s.POISON):
            assert f.count > 0
        if f.kind == s.POISON:
            assert f.target in (None, *PLAN.exchanges) and f.count <= 7 and f.duration == 0
        if f.kind == s.SIGHUP_ADD:
            assert (f.target, f.symbol) in PLAN.add_symbols
        if f.kind in (s.WS_STALL, s.REDIS_RESTART, s.PG_RESTART):
            assert f.duration > 0


def test_poison_is_in_every_schedule_and_among_the_extras() -> None:
    plan = s.Plan(minutes=1, exchanges=("kraken", "binance"))
    for seed in range(20):
        assert s.POISON in {f.kind for f in s.build_schedule(seed, plan)}
    extra = sum(1 for seed in range(20) for f in s.build_schedule(seed, PLAN) if f.kind == s.POISON)
    assert extra > 20  # 3-minute runs: the required one, and more as extras
    counts = {f.count for seed in range(20) for f in s.build_schedule(seed, PLAN) if f.kind == s.POISON}
    assert min(counts) >= 2 and max(counts) == 7  # some runs plant every trade kind at once


def test_symbols_are_added_at_most_once() -> None:
    plan = s.Plan(minutes=3, exchanges=("kraken",), add_symbols=(("kraken", "SOL/USD"),))
    faults = s.build_schedule(5, plan)
    assert [f.symbol for f in faults if f.kind == s.SIGHUP_ADD] == ["SOL/USD"]


@pytest.mark.parametrize("kwargs", [{"minutes": 0}, {"exchanges": ()}, {"store": "mysql"}, {"cache": "memcached"}])
def test_bad_plan(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"minutes": 1, "exchanges": ("kraken",)}
    base.update(kwargs)
    with pytest.raises(ValueError):
        s.Plan(**base)  # type: ignore[arg-type]
