"""The poison fault's entries: extra, deterministic, placed so that paging a correct client loses no valid trade."""

from __future__ import annotations

import itertools
import math

import pytest

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.simulator.faults import parse_fault_flag, validate_faults
from fullon_ohlcv_service.simulator.market import BUCKET_MS, ID_STRIDE, Market, SimTrade, SymbolConfig, pack_history
from fullon_ohlcv_service.simulator.poison import (
    CANDLE_KINDS,
    POISON_ID_BASE,
    TRADE_KINDS,
    TS_2009,
    TS_OVERFLOW,
    PoisonBook,
    PoisonCandle,
    PoisonTrade,
    at,
    candle_entries,
    entries_from_id,
    iter_entries,
    latest_entries,
)

T0 = 1_790_000_000_000 - 1_790_000_000_000 % BUCKET_MS  # a fixed minute in 2026


def _book(exchange: str = "binance", rate: float = 40.0, seed: int = 7) -> tuple[Market, PoisonBook]:
    m = Market(seed, exchange, SymbolConfig("BTC/USD", rate=rate))
    return m, PoisonBook(m, exchange)


def _valid(entries: object) -> list[SimTrade]:
    return [e for e in entries if isinstance(e, SimTrade)]  # type: ignore[attr-defined]


def test_every_kind_in_turn_with_the_values_it_names() -> None:
    _, book = _book("binance")
    trades, candles = book.plant(T0 + 5_000, 14, 4)
    assert sorted(p.kind for p in trades[:7]) == sorted(TRADE_KINDS)
    assert [p.kind for p in trades[7:]] == [p.kind for p in trades[:7]]  # the cycle goes on
    assert sorted(c.kind for c in candles) == sorted(CANDLE_KINDS)
    for p in trades:
        price, amount = float(p.price), float(p.amount)
        bad = {
            "nan_price": math.isnan(price),
            "inf_amount": math.isinf(amount) and amount > 0,
            "negative_amount": amount < 0,
            "ts_overflow": p.ts == TS_OVERFLOW,
            "ts_before_2009": 0 < p.ts < TS_2009,
            "empty_id": p.id == "",
            "bad_side": p.side is None,
        }
        assert [k for k, v in bad.items() if v] == [p.kind], p  # exactly its own defect
    for c in candles:
        o, h, lo, cl, v = (float(x) for x in (c.open, c.high, c.low, c.close, c.volume))
        bad = {"high_below_low": h < lo, "nan_open": math.isnan(o), "negative_low": lo < 0,
               "negative_volume": v < 0}
        assert [k for k, v in bad.items() if v] == [c.kind], c
        assert min(h, cl) >= 0 or c.kind == "negative_low"
    _, kbook = _book("kraken")
    kt, _ = kbook.plant(T0 + 5_000, 7, 0)
    assert sorted(p.kind for p in kt) == sorted(TRADE_KINDS)


def test_slots_are_free_future_increasing_and_ids_sit_in_the_bucket_gap() -> None:
    m, book = _book(rate=400.0)  # busy: many milliseconds of a minute are taken
    now = T0 + 30_000
    first, _ = book.plant(now, 7, 0)
    second, _ = book.plant(now - 1_000, 7, 0)  # a later planting with an earlier clock: still after the first
    planted = first + second
    slots = [p.slot for p in planted]
    assert slots == sorted(slots) and len(set(slots)) == len(slots) and slots[0] > now
    used = {t.ts for b in {s // BUCKET_MS for s in slots} for t in m.bucket(b)}
    assert not used & set(slots)  # no valid trade shares a poisoned millisecond
    for p in planted:
        b = p.slot // BUCKET_MS
        assert b * ID_STRIDE + POISON_ID_BASE <= p.key < (b + 1) * ID_STRIDE
        assert max(t.id for t in m.bucket(b)) < p.key
    assert [p.key for p in planted] == sorted(p.key for p in planted)
    assert len({p.key for p in planted}) == len(planted)


def test_planting_is_deterministic_and_leaves_the_valid_market_untouched() -> None:
    window = (T0, T0 + 5 * BUCKET_MS)
    before = pack_history(Market(7, "binance", SymbolConfig("BTC/USD", rate=40.0)), *window)
    m1, b1 = _book()
    _, b2 = _book()
    for book in (b1, b2):
        book.plant(T0 + 10_000, 7, 1)
        book.plant(T0 + 70_000, 3, 1)
    assert b1.truth(*window) == b2.truth(*window) and len(b1.truth(*window)) == 12
    assert pack_history(m1, *window) == before
    assert _valid(iter_entries(m1, b1, *window)) == m1.trades(*window)
    _, other = _book(seed=8)
    other.plant(T0 + 10_000, 7, 1)
    assert other.truth(*window) != b1.truth(*window)


def test_merged_order_and_time_paging_skipping_the_poison() -> None:
    m, book = _book()
    book.plant(T0 + 20_000, 7, 0)
    book.plant(T0 + 59_900, 3, 0)  # across the minute boundary
    window = (T0, T0 + 3 * BUCKET_MS)
    merged = list(iter_entries(m, book, *window))
    assert [at(e) for e in merged] == sorted(at(e) for e in merged)
    assert len([e for e in merged if isinstance(e, PoisonTrade)]) == 10
    assert _valid(merged) == m.trades(*window)
    # Kraken's paging: `since` = the last entry's ms + 1 (its `last` cursor), small pages
    got: list[SimTrade] = []
    since = window[0]
    while True:
        page = list(itertools.islice(iter_entries(m, book, since, window[1]), 25))
        if not page:
            break
        got.extend(_valid(page))
        since = at(page[-1]) + 1
    assert got == m.trades(*window)
    # the most recent entries, poison included, oldest first
    recent = latest_entries(m, book, T0 + 21_000, 30)
    assert [at(e) for e in recent] == sorted(at(e) for e in recent) and at(recent[-1]) <= T0 + 21_000
    assert any(isinstance(e, PoisonTrade) for e in recent)


@pytest.mark.parametrize("cursor_on_poison", [False, True])
def test_from_id_paging_gets_every_valid_trade_once(cursor_on_poison: bool) -> None:
    m, book = _book()
    book.plant(T0 + 20_000, 7, 0)
    book.plant(T0 + 80_000, 7, 0)
    until = T0 + 3 * BUCKET_MS
    truth = m.trades(T0, until)
    got: list[SimTrade] = []
    from_id = truth[0].id
    seen_poison = 0
    while True:
        page = entries_from_id(m, book, from_id, until, 17)
        if not page:
            break
        got.extend(_valid(page))
        seen_poison += len(page) - len(_valid(page))
        keys = [e.key if isinstance(e, PoisonTrade) else e.id for e in page]
        assert keys == sorted(keys)  # id order, poison after its bucket's valid trades
        valid = _valid(page)
        # a correct client skips the poison and goes on from its last valid id; a naive one from any id
        last = keys[-1] if cursor_on_poison or not valid else valid[-1].id
        from_id = last + 1
    assert got == truth
    assert seen_poison >= 14


def test_candles_come_after_the_valid_row_of_their_minute_from_their_slot_on() -> None:
    m, book = _book(rate=0.03)  # quiet: the second minute has no trade
    _, candles = book.plant(T0 + 1_000, 0, 3)
    assert [c.ts for c in candles] == [T0, T0 + BUCKET_MS, T0 + 2 * BUCKET_MS]  # one per minute
    assert candles[0].slot == T0 + 1_001 and candles[1].slot == T0 + BUCKET_MS
    rows = candle_entries(m, book, T0, T0 + 3 * BUCKET_MS, now=T0 + 3 * BUCKET_MS)
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)
    shared = 0
    for c in candles:
        same = [r for r in rows if r.ts == c.ts]
        assert same[-1] is c and all(not isinstance(r, PoisonCandle) for r in same[:-1])
        shared += len(same) - 1
    assert shared == 2  # the first and third minutes have a valid candle, the second only the poisoned one
    # before its slot a poisoned candle is not served
    early = candle_entries(m, book, T0, T0 + 3 * BUCKET_MS, now=T0 + 500)
    assert not any(isinstance(r, PoisonCandle) for r in early)
    assert book.candles_in(T0, T0 + BUCKET_MS) == [candles[0]]


def test_poison_fault_flag() -> None:
    assert parse_fault_flag("poison=7,exchange=binance") == {"poison": 7, "exchange": "binance"}
    for bad in ({"poison": 1.5}, {"poison": -1}, {"poison": True}, {"poison": 10_000}):
        with pytest.raises(ConfigError, match="poison"):
            validate_faults(bad)
