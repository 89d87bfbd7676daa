"""A symbol's sync as a state machine: each transition's phases, its guards, and what it does to the buffer."""

from __future__ import annotations

import pytest

from fullon_ohlcv_service.collectors.backfill import Cursor
from fullon_ohlcv_service.collectors.sync import InvalidTransition, Phase, RecentIds, SymbolSync
from fullon_ohlcv_service.models import SymbolSpec, Trade

MS = 60_000


def tr(ts: int, tid: str) -> Trade:
    return Trade(ts, tid, 1.0, 1.0, "buy")


def fresh() -> SymbolSync:
    return SymbolSync(SymbolSpec("X/USD", backtest_days=0), 0, Cursor(0), RecentIds(100, 0))


def live() -> SymbolSync:
    s = fresh()
    s.start_pass()
    s.proved_quiet()
    return s


def test_a_symbol_starts_in_backfill_wanting_a_catch_up() -> None:
    s = fresh()
    assert s.phase is Phase.BACKFILL and s.interrupted_in_pass and not s.ever_synced and not s.synced
    s.start_pass()
    assert not s.interrupted_in_pass


def test_met_live_merges_the_buffer_once_rest_passed_its_first_trade() -> None:
    s = fresh()
    s.start_pass()
    s.buffer([tr(5_000, "b"), tr(6_000, "c")], most=100)
    with pytest.raises(InvalidTransition, match="before REST passed the first buffered live trade"):
        s.met_live(5_000)  # REST is complete before 5 000 only: the buffer's first trade may be missing
    with pytest.raises(InvalidTransition):
        s.met_live(None)
    assert s.phase is Phase.BACKFILL and len(s.live_buf) == 2
    buf = s.met_live(5_001)
    assert [t.id for t in buf] == ["b", "c"] and s.live_buf == []
    assert s.phase is Phase.LIVE and s.synced and s.ever_synced and s.backfill_pct == 100.0


def test_proved_quiet_needs_an_empty_buffer() -> None:
    s = fresh()
    s.start_pass()
    s.buffer([tr(5_000, "b")], most=100)
    with pytest.raises(InvalidTransition, match="with live trades buffered"):
        s.proved_quiet()
    s.interrupted()  # drops the buffer
    s.start_pass()
    s.proved_quiet()
    assert s.phase is Phase.LIVE


def test_an_interruption_during_a_pass_forbids_going_live_from_it() -> None:
    s = fresh()
    s.start_pass()
    s.buffer([tr(5_000, "b")], most=100)
    s.interrupted()  # a reconnect while REST was paging: the buffer is dropped, the pass must start again
    assert s.live_buf == [] and s.interrupted_in_pass
    with pytest.raises(InvalidTransition, match="after an interruption"):
        s.proved_quiet()
    s.buffer([tr(7_000, "d")], most=100)
    with pytest.raises(InvalidTransition, match="after an interruption"):
        s.met_live(8_000)
    s.start_pass()
    assert [t.id for t in s.met_live(8_000)] == ["d"]


def test_interrupted_sends_live_to_catching_up_and_keeps_the_others() -> None:
    s = live()
    s.interrupted()
    assert s.phase is Phase.CATCHING_UP and s.ever_synced and not s.synced and s.interrupted_in_pass
    s.interrupted()
    assert s.phase is Phase.CATCHING_UP
    b = fresh()
    b.interrupted()
    assert b.phase is Phase.BACKFILL  # not live yet: still the first backfill
    s.start_pass()
    s.proved_quiet()
    assert s.phase is Phase.LIVE


def test_transitions_assert_the_phase_they_leave() -> None:
    s = live()
    for bad in (s.start_pass, s.proved_quiet, lambda: s.met_live(10**12), lambda: s.buffer([tr(1, "a")], 10)):
        with pytest.raises(InvalidTransition, match="from live"):
            bad()
    s.fail("PermanentError: delisted")
    assert s.phase is Phase.FAILED and s.failed and s.error == "PermanentError: delisted"
    assert s.ever_synced  # a fact of its past: it stays
    for bad in (s.interrupted, s.start_pass, s.proved_quiet, lambda: s.fail("again")):
        with pytest.raises(InvalidTransition, match="from failed"):
            bad()


def test_failing_from_every_running_phase() -> None:
    for s in (fresh(), live()):
        s.fail("x")
        assert s.phase is Phase.FAILED
    c = live()
    c.interrupted()
    c.fail("x")
    assert c.phase is Phase.FAILED


def test_the_buffer_keeps_its_newest_half_beyond_its_limit_and_shed_keeps_the_newest() -> None:
    s = fresh()
    s.buffer([tr(i, str(i)) for i in range(11)], most=10)
    assert [t.id for t in s.live_buf] == [str(i) for i in range(6, 11)]
    s.shed(100)
    assert [t.id for t in s.live_buf] == ["10"]


def test_the_beat_reflects_the_phase() -> None:
    s = fresh()
    b = s.beat()
    assert (b.phase, b.synced, b.ever_synced, b.error, b.rest_holding_back) == (Phase.BACKFILL, False, False, None,
                                                                               False)
    s.start_pass()
    s.proved_quiet()
    assert s.beat().synced and s.beat().ever_synced and s.beat().backfill_pct == 100.0
    s.fail("boom")
    b = s.beat()
    assert not b.synced and b.ever_synced and b.error == "boom"


def test_accept_deduplicates_and_feeds_cursor_and_candles() -> None:
    s = live()
    assert [t.id for t in s.accept([tr(MS + 1, "1"), tr(MS + 2, "2"), tr(MS + 1, "1")])] == ["1", "2"]
    assert s.accept([tr(MS + 2, "2")]) == []
    assert s.cursor.ts == MS + 2 and s.cursor.ids == {"2"}
    c = s.candle(MS)
    assert c is not None and c.volume == 2.0
    finals, span = s.finalize(2 * MS)
    assert [c.ts for c in finals] == [MS] and span is None  # no coverage mark to extend from
    s.cov_to = 0
    _, span = s.finalize(3 * MS)
    assert span == (0, 3 * MS) and s.cov_to == 3 * MS
