"""The simulated market is a pure function of (seed, exchange, symbol, window), with candles derived from trades."""

from __future__ import annotations

import itertools

import pytest

from fullon_ohlcv_service.adapters.ccxt_local import iter_urls, local_overrides, rewrite_url
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.simulator.faults import FaultState, parse_fault_flag, validate_faults
from fullon_ohlcv_service.simulator.kraken import pair_ids, trade_time
from fullon_ohlcv_service.simulator.market import BUCKET_MS, ID_STRIDE, Market, SymbolConfig, pack_history

T0 = 1_790_000_000_000 - 1_790_000_000_000 % BUCKET_MS  # a fixed minute in 2026


def _m(seed: int = 7, symbol: str = "BTC/USD", rate: float = 4.0, exchange: str = "kraken",
       genesis: int = 0) -> Market:
    return Market(seed, exchange, SymbolConfig(symbol, rate=rate), genesis_ms=genesis)


def test_same_seed_byte_identical_and_seed_matters() -> None:
    window = (T0, T0 + 10 * BUCKET_MS)
    a = pack_history(_m(), *window)
    assert a == pack_history(_m(), *window)
    assert len(a) > 100 * 40
    assert a != pack_history(_m(seed=8), *window)
    assert a != pack_history(_m(exchange="binance"), *window)
    assert a != pack_history(_m(symbol="ETH/USD"), *window)


def test_window_is_independent_of_what_was_generated_before() -> None:
    # a market that generated the whole hour and one that only generated a late sub-window agree
    full = _m().trades(T0, T0 + 60 * BUCKET_MS)
    late = _m().trades(T0 + 37 * BUCKET_MS + 123, T0 + 41 * BUCKET_MS)
    expected = [t for t in full if T0 + 37 * BUCKET_MS + 123 <= t.ts < T0 + 41 * BUCKET_MS]
    assert [(t.id, t.ts, t.price, t.amount, t.buy) for t in late] == \
        [(t.id, t.ts, t.price, t.amount, t.buy) for t in expected]
    # genesis only hides what came before it: the overlap is identical
    later_start = _m(genesis=T0 + 20 * BUCKET_MS).trades(T0, T0 + 60 * BUCKET_MS)
    assert [t.id for t in later_start] == [t.id for t in full if t.ts >= T0 + 20 * BUCKET_MS]


def test_ids_and_timestamps_strictly_increase_and_values_are_exact() -> None:
    trades = _m().trades(T0, T0 + 20 * BUCKET_MS)
    assert all(a.id < b.id and a.ts < b.ts for a, b in itertools.pairwise(trades))
    for t in trades[:500]:
        assert t.id // ID_STRIDE == t.ts // BUCKET_MS
        assert float(t.price) > 0 and float(t.amount) > 0
        assert t.price == f"{float(t.price):.1f}"  # BTC/USD ~60k: one decimal
        assert len(t.amount.split(".")[1]) == 8
        # Kraken REST time survives ccxt's int(float(x) * 1000)
        assert int(float(trade_time(t.ts)) * 1000) == t.ts


def test_price_walk_is_continuous_across_minutes() -> None:
    trades = _m(rate=3).trades(T0, T0 + 90 * BUCKET_MS)
    jumps = [abs(float(b.price) / float(a.price) - 1) for a, b in itertools.pairwise(trades)]
    assert max(jumps) < 0.01
    assert len({t.price for t in trades}) > 100


def test_rate_bursts_and_quiet_stretches() -> None:
    m = _m(rate=1)
    counts = [len(m.bucket(T0 // BUCKET_MS + i)) for i in range(600)]
    avg = sum(counts) / len(counts) / 60
    assert 0.5 < avg < 1.6  # average near the configured rate
    assert min(counts) < 15 < 120 < max(counts)  # quiet minutes and burst minutes
    quiet = _m(rate=0.05).trades(T0, T0 + 60 * BUCKET_MS)
    assert len(quiet) < 400


def test_candles_are_derived_from_trades_and_empty_minutes_have_none() -> None:
    m = _m(rate=0.02)  # about one trade a minute: many empty minutes
    since, until = T0, T0 + 120 * BUCKET_MS
    trades = m.trades(since, until)
    candles = m.candles(since, until)
    minutes = sorted({t.ts - t.ts % BUCKET_MS for t in trades})
    assert [c.ts for c in candles] == minutes
    assert len(minutes) < 120
    for c in candles:
        ts = [t for t in trades if c.ts <= t.ts < c.ts + BUCKET_MS]
        prices = [float(t.price) for t in ts]
        row = c.row()
        assert row[1:5] == [prices[0], max(prices), min(prices), prices[-1]]
        assert row[5] == pytest.approx(sum(float(t.amount) for t in ts), abs=1e-9)
        assert c.count == len(ts)


def test_partial_candle_and_latest_trades() -> None:
    m = _m()
    minute = T0 + 5 * BUCKET_MS
    trades = m.trades(minute, minute + BUCKET_MS)
    cut = trades[len(trades) // 2]
    c = m.candle(minute, cut.ts)
    assert c is not None and c.count == len(trades) // 2 + 1 and c.close == cut.price
    latest = m.latest_trades(cut.ts, 30)
    assert [t.id for t in latest] == [t.id for t in m.trades(T0, cut.ts + 1)][-30:]
    assert [t.id for t in m.trades_from_id(cut.id, minute + BUCKET_MS, 5)] == [t.id for t in trades][
        len(trades) // 2:len(trades) // 2 + 5]


def test_kraken_pair_ids() -> None:
    assert pair_ids("BTC/USD") == ("XXBTZUSD", "XBTUSD", "XBT/USD")
    assert pair_ids("ETH/USD") == ("XETHZUSD", "ETHUSD", "ETH/USD")
    assert pair_ids("SOL/USD") == ("SOLUSD", "SOLUSD", "SOL/USD")


def test_local_overrides_never_leave_loopback() -> None:
    for exchange in ("kraken", "binance"):
        frag = local_overrides(exchange, "http://127.0.0.1:4321")
        urls = iter_urls(frag)
        assert len(urls) >= 4
        for u in urls:
            assert u.split("://")[0] in ("http", "ws")
            assert u.split("://")[1].startswith(f"127.0.0.1:4321/{exchange}/"), u
        assert frag["enableRateLimit"] is False
    b = local_overrides("binance", "http://127.0.0.1:4321")
    assert b["options"] == {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}
    assert b["urls"]["api"]["ws"]["spot"] == "ws://127.0.0.1:4321/binance/stream.binance.com/ws"
    assert b["urls"]["api"]["public"] == "http://127.0.0.1:4321/binance/api.binance.com/api/v3"
    assert rewrite_url("wss://ws.kraken.com/v2", "kraken", "http://127.0.0.1:9") == \
        "ws://127.0.0.1:9/kraken/ws.kraken.com/v2"
    with pytest.raises(ConfigError):
        local_overrides("bitmex", "http://127.0.0.1:1")
    with pytest.raises(ConfigError):
        local_overrides("kraken", "127.0.0.1:1")


def test_fault_parsing_and_counting() -> None:
    assert parse_fault_flag("rest_429=3,exchange=kraken") == {"rest_429": 3, "exchange": "kraken"}
    assert parse_fault_flag("ws_drop") == {"ws_drop": True}
    assert parse_fault_flag("ws_stall_s=1.5") == {"ws_stall_s": 1.5}
    for bad in ({"nope": 1}, {"rest_429": -1}, {"ws_drop": 1}, {"latency_ms": "x"}):
        with pytest.raises(ConfigError):
            validate_faults(bad)
    f = FaultState()
    f.apply({"rest_429": 2})
    assert [f.take("rest_429") for _ in range(3)] == [True, True, False]
    assert f.counts["rest_429"] == 2


def test_steady_market_has_no_quiet_stretches_or_bursts() -> None:
    buckets = range(T0 // BUCKET_MS, T0 // BUCKET_MS + 600)  # 60 ten-minute regimes
    regimes = {_m().activity(b) for b in buckets}
    assert regimes == {0.1, 1.0, 2.9}  # the default market has quiet stretches and bursts
    steady = Market(7, "kraken", SymbolConfig("BTC/USD", rate=4.0), steady=True)
    assert {steady.activity(b) for b in buckets} == {1.0}
    # every minute trades near the average rate (Poisson around 240): none is quiet
    counts = [len(steady.bucket(b)) for b in buckets]
    assert min(counts) > 150 and max(counts) < 330
