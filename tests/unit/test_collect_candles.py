"""Trades -> 1m candles: order independence, finality by watermark, late trades, pruning."""

from __future__ import annotations

import random

from fullon_ohlcv_service.collectors.candles import CandleBuilder, candles_from_trades, trade_key
from fullon_ohlcv_service.models import Trade

M = 60_000


def tr(ts: int, tid: int, price: float, amount: float = 1.0) -> Trade:
    return Trade(ts, str(tid), price, amount, "buy")


def test_candle_fields_and_order_independence() -> None:
    ts = [tr(1_000, 1, 10.0, 0.1), tr(1_000, 2, 12.0, 0.2), tr(30_000, 3, 8.0, 0.3), tr(59_999, 4, 11.0, 0.4),
          tr(M, 5, 20.0, 1.0)]
    c0, c1 = candles_from_trades(ts)
    assert (c0.ts, c0.open, c0.high, c0.low, c0.close) == (0, 10.0, 12.0, 8.0, 11.0)
    assert abs(c0.volume - 1.0) < 1e-12 and c0.final
    assert (c1.ts, c1.open, c1.close, c1.volume) == (M, 20.0, 20.0, 1.0)
    shuffled = ts[:]
    random.Random(4).shuffle(shuffled)
    assert candles_from_trades(shuffled) == [c0, c1]


def test_numeric_ids_order_as_numbers() -> None:
    assert trade_key(tr(5, 9, 1)) < trade_key(tr(5, 10, 1))
    c = candles_from_trades([tr(5, 10, 2.0), tr(5, 9, 1.0)])[0]
    assert c.open == 1.0 and c.close == 2.0


def test_finality_follows_watermark() -> None:
    b = CandleBuilder()
    b.add(tr(1_000, 1, 10.0))
    b.add(tr(M + 1_000, 2, 11.0))
    assert [c.ts for c in b.provisional()] == [0, M]
    assert b.provisional() == []
    assert b.advance(M - 1) == []  # minute 0 not closed yet
    out = b.advance(M + 500)
    assert [(c.ts, c.final) for c in out] == [(0, True)]
    assert b.advance(M + 900) == []  # nothing new
    b.add(tr(M + 2_000, 3, 12.0))
    assert [(c.ts, c.close, c.final) for c in b.provisional()] == [(M, 12.0, False)]
    out = b.advance(3 * M)
    assert [(c.ts, c.close) for c in out] == [(M, 12.0)]


def test_late_trade_reemits_final_candle() -> None:
    b = CandleBuilder()
    b.add(tr(1_000, 1, 10.0))
    b.advance(2 * M)
    assert b.add(tr(2_000, 2, 15.0))
    out = b.advance(2 * M)
    assert [(c.ts, c.high, c.volume) for c in out] == [(0, 15.0, 2.0)]


def test_too_old_trade_is_refused_and_pruned() -> None:
    b = CandleBuilder(keep_minutes=2)
    b.add(tr(1_000, 1, 10.0))
    b.advance(10 * M)
    assert not b.holds(0)
    assert not b.add(tr(2_000, 2, 15.0))


def test_seed_and_reset_minute() -> None:
    b = CandleBuilder()
    b.seed([tr(1_000, 1, 10.0)])
    assert b.provisional() == []
    b.add(tr(2_000, 2, 9.0))
    b.reset_minute(0, [tr(1_000, 1, 10.0), tr(2_000, 2, 9.0), tr(3_000, 3, 8.0)])
    c = b.candle(0)
    assert c is not None and c.low == 8.0 and c.volume == 3.0


def test_exact_sum_is_fsum_of_every_amount_in_any_order_with_bounded_partials() -> None:
    """The running volume equals math.fsum of the minute's amounts bit for bit (what the audit compares),
    whatever the order, while holding a few partials instead of every amount."""
    import math

    from fullon_ohlcv_service.collectors.candles import ExactSum

    rng = random.Random(13)
    for case in range(200):
        n = rng.choice([1, 2, 3, 10, 1000, 20_000]) if case % 10 == 0 else rng.randint(1, 300)
        amounts = [rng.choice([rng.random(), rng.uniform(0, 1e-8), rng.uniform(0, 1e6),
                               round(rng.uniform(0, 10), 8), 0.1, 1e-300, 1e15]) for _ in range(n)]
        for order in range(2):
            if order:
                rng.shuffle(amounts)
            acc = ExactSum()
            most = 0
            for a in amounts:
                acc.add(a)
                most = max(most, len(acc))
            assert acc.value() == math.fsum(amounts), (case, n)
            assert most <= 40
    # exactness where a naive sum drifts
    acc = ExactSum()
    for a in [1e16, 1.0, -1e16] * 1000:
        acc.add(a)
    assert acc.value() == 1000.0 and len(acc) <= 2
    inf = ExactSum(1.0)
    inf.add(math.inf)
    inf.add(5.0)
    assert inf.value() == math.inf


def test_a_minute_holds_constant_memory_however_many_trades() -> None:
    """50,000 trades in one minute: the builder keeps one small aggregate, not 50,000 amounts."""
    import math
    import sys

    rng = random.Random(5)
    b = CandleBuilder()
    amounts = [round(rng.uniform(0.0001, 3.0), 8) for _ in range(50_000)]
    for i, a in enumerate(amounts):
        b.add(tr(i, i, 100.0 + rng.random(), a))
    agg = b._aggs[0]
    held = sys.getsizeof(agg) + sys.getsizeof(agg.volume._partials) + 8 * len(agg.volume)
    assert held < 1000
    c = b.candle(0)
    assert c is not None and c.volume == math.fsum(amounts)
    assert candles_from_trades(tr(i, i, 1.0, a) for i, a in enumerate(amounts))[0].volume == math.fsum(amounts)
