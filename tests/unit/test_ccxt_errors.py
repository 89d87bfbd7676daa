"""Unit tests of the ccxt adapter's pure parts: error mapping, support check, config, conversions, hooks."""

from __future__ import annotations

import asyncio
import json

import ccxt
import pytest

from fullon_ohlcv_service.adapters import ccxt_exchange as cx
from fullon_ohlcv_service.errors import (
    ConfigError,
    ExchangeUnsupported,
    PermanentError,
    RateLimited,
    SymbolUnknown,
    TransientError,
)
from fullon_ohlcv_service.models import Candle, ExchangeSpec, Trade

# ---------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ccxt.NetworkError("socket closed"), TransientError),
        (ccxt.RequestTimeout("slow"), TransientError),
        (ccxt.ExchangeNotAvailable("503"), TransientError),
        (ccxt.OnMaintenance("later"), TransientError),
        (ccxt.InvalidNonce("nonce"), TransientError),
        (ccxt.DDoSProtection("418"), RateLimited),
        (ccxt.RateLimitExceeded("429"), RateLimited),
        (ccxt.BadSymbol("binance {\"code\":-1121}"), SymbolUnknown),
        (ccxt.ExchangeError('kraken {"error":["EQuery:Unknown asset pair"]}'), SymbolUnknown),
        (ccxt.NotSupported("no"), PermanentError),
        (ccxt.AuthenticationError("key"), PermanentError),
        (ccxt.PermissionDenied("forbidden"), PermanentError),
        (ccxt.BadRequest("bad"), PermanentError),
        (ccxt.ExchangeError("odd"), TransientError),
        (ccxt.BadResponse("garbage"), TransientError),
        (ConnectionResetError("reset"), TransientError),
        (TimeoutError(), TransientError),
        (KeyError("price"), TransientError),
        (json.JSONDecodeError("x", "{", 0), TransientError),
    ],
)
def test_classify_maps_each_ccxt_class(exc: BaseException, expected: type) -> None:
    out = cx.classify(exc)
    assert type(out) is expected
    assert type(exc).__name__ in str(out)
    assert "\n" not in str(out)


def test_classify_exact_classes_not_just_bases() -> None:
    # BadSymbol is a BadRequest: it must come out as SymbolUnknown, not as a plain PermanentError
    assert type(cx.classify(ccxt.BadSymbol("x"))) is SymbolUnknown
    # rate limiting is transient, and its own class
    assert isinstance(cx.classify(ccxt.DDoSProtection("x")), TransientError)
    # DDoSProtection is a NetworkError: it must still be RateLimited
    assert not isinstance(cx.classify(ccxt.NetworkError("x")), RateLimited)


def test_classify_passes_our_errors_through_and_keeps_messages_short() -> None:
    ours = SymbolUnknown("nope")
    assert cx.classify(ours) is ours
    leaky = cx.classify(ccxt.NetworkError("binance GET http://bob:s3cret@proxy:8080/api/v3/aggTrades failed"))
    assert "s3cret" not in str(leaky) and "bob:***@proxy" in str(leaky)
    long = cx.classify(ccxt.ExchangeError("x" * 5000 + "\nline two"))
    assert len(str(long)) <= 300
    assert "\n" not in str(long)


# ---------------------------------------------------------------- support


def test_bitmex_is_unsupported_with_a_reason() -> None:
    with pytest.raises(ExchangeUnsupported, match=r"bitmex.*4\.5\.84") as info:
        cx.check_exchange_supported("bitmex")
    assert isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value)


def test_unknown_exchange_is_unsupported_and_constructor_raises_at_once() -> None:
    with pytest.raises(ExchangeUnsupported, match="nosuchexchange"):
        cx.check_exchange_supported("nosuchexchange")
    with pytest.raises(ExchangeUnsupported):
        cx.CcxtExchange(ExchangeSpec(name="bitmex"))


def test_kraken_and_binance_are_supported() -> None:
    cx.check_exchange_supported("kraken")
    cx.check_exchange_supported("binance")
    ex = cx.CcxtExchange(ExchangeSpec(name="kraken"))
    assert ex.ohlcv_depth == 720 and ex.name == "kraken"
    assert cx.CcxtExchange(ExchangeSpec(name="binance")).ohlcv_depth is None


# ---------------------------------------------------------------- config


def test_production_config_keeps_rate_limit_and_reads_params() -> None:
    cfg = cx.build_config("kraken", {}, None)
    assert cfg["enableRateLimit"] is True
    assert "urls" not in cfg
    cfg = cx.build_config("kraken", {"rate_limit_ms": "250", "timeout_ms": "5000", "other_service_key": "x"}, None)
    assert cfg["rateLimit"] == 250 and cfg["timeout"] == 5000 and cfg["enableRateLimit"] is True
    assert cx.build_config("kraken", {"enable_rate_limit": "false"}, None)["enableRateLimit"] is False


@pytest.mark.parametrize(
    "params",
    [{"rate_limit_ms": "fast"}, {"timeout_ms": "-1"}, {"timeout_ms": "0"}, {"enable_rate_limit": "maybe"},
     {"base_url": "ftp://proxy"}],
)
def test_bad_params_are_config_errors(params: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        cx.build_config("kraken", params, None)
    with pytest.raises(ConfigError):
        cx.CcxtExchange(ExchangeSpec(name="kraken", params=params))


def test_binance_options_give_one_trade_id_space_and_spot_only() -> None:
    opts = cx.build_config("binance", {}, None)["options"]
    assert opts["watchTrades"] == {"name": "aggTrade"}
    assert opts["watchTradesForSymbols"] == {"name": "aggTrade"}
    assert opts["fetchMarkets"] == {"types": ["spot"]}
    assert "fetchTradesMethod" not in opts  # REST stays on aggTrades: the same ids as the stream


def test_deep_merge_keeps_both_sides() -> None:
    merged = cx._deep_merge({"options": {"a": 1, "n": {"x": 1}}, "k": 1}, {"options": {"b": 2, "n": {"y": 2}}})
    assert merged == {"options": {"a": 1, "b": 2, "n": {"x": 1, "y": 2}}, "k": 1}


# ---------------------------------------------------------------- conversions


def test_to_trade_and_sort() -> None:
    raw = {"timestamp": 1_700_000_000_123, "id": "42", "price": "101.5", "amount": 0.25, "side": "sell",
           "type": "limit", "info": {}}
    assert cx.to_trade(raw) == Trade(1_700_000_000_123, "42", 101.5, 0.25, "sell", "limit")
    assert cx.to_trade({**raw, "type": None}).type == ""
    for broken in ({**raw, "id": None}, {**raw, "price": None}, {**raw, "side": "up"}, {**raw, "timestamp": None}):
        with pytest.raises(ValueError):
            cx.to_trade(broken)
    trades = [Trade(2, "10", 1, 1, "buy"), Trade(1, "9", 1, 1, "buy"), Trade(2, "9", 1, 1, "buy")]
    assert [(t.ts, t.id) for t in cx.sort_trades(trades)] == [(1, "9"), (2, "9"), (2, "10")]


def test_to_candle_finality_from_the_clock() -> None:
    row = [1_700_000_040_000, 1, 2, 0.5, 1.5, 10]
    assert cx.to_candle(row, 1_700_000_100_000).final is True  # minute closed exactly at now
    assert cx.to_candle(row, 1_700_000_099_999).final is False
    with pytest.raises(ValueError):
        cx.to_candle([1, 1, 1, None, 1, 1], 0)


def test_live_candle_is_always_provisional() -> None:
    ex = cx.CcxtExchange(ExchangeSpec(name="kraken"))
    m0, m1 = 1_700_000_040_000, 1_700_000_100_000
    assert ex._live_candle("BTC/USD", [m0, 1, 2, 1, 2, 5]) == Candle(m0, 1, 2, 1, 2, 5, final=False)
    # a later minute does not make the earlier one final, nor does a late update of a minute already passed
    assert ex._live_candle("BTC/USD", [m1, 3, 3, 3, 3, 1]) == Candle(m1, 3, 3, 3, 3, 1, final=False)
    assert ex._live_candle("BTC/USD", [m0, 1, 3, 1, 3, 6]) == Candle(m0, 1, 3, 1, 3, 6, final=False)
    old = m0 - 600 * 60_000  # a minute long closed: still provisional
    assert ex._live_candle("BTC/USD", [old, 1, 1, 1, 1, 1]) == Candle(old, 1, 1, 1, 1, 1, final=False)
    assert ex._live_candle("BTC/USD", [m1, 1, 1, 2, 1, 1]) is None  # low above high: refused
    assert ex.rejected == 1


# ---------------------------------------------------------------- ccxt.pro hooks (real ccxt objects, no network)


async def test_frame_guard_keeps_ccxt_reading_and_reports_once() -> None:
    async with cx.CcxtExchange(ExchangeSpec(name="kraken"), simulator=None) as ex:
        client = ex._pro.client("ws://127.0.0.1:9/v2")
        ex._check_events("trades")  # both watchers exist before the bad frame
        ex._check_events("ohlcv:BTC/USD")
        fut = client.future("trade:BTC/USD")
        client.handle_text_or_binary_message('{"channel": "trade", "data": [')  # invalid JSON
        assert ex.malformed_frames == 1
        with pytest.raises(ccxt.BadResponse):
            await asyncio.wait_for(fut, 1)
        with pytest.raises(TransientError, match="malformed"):
            ex._check_events("trades")
        ex._check_events("trades")  # reported once per kind
        with pytest.raises(TransientError):
            ex._check_events("ohlcv:BTC/USD")
        ex._check_events("ohlcv:ETH/USD")  # a watcher that starts later is not told about old frames


async def test_binance_closed_kline_is_parsed_and_stays_provisional() -> None:
    async with cx.CcxtExchange(ExchangeSpec(name="binance")) as ex:
        ex._pro.set_markets([{
            "id": "BTCUSDT", "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT", "baseId": "BTC",
            "quoteId": "USDT", "type": "spot", "spot": True, "active": True, "lowercaseId": "btcusdt",
        }])
        client = ex._pro.client("ws://127.0.0.1:9/ws/0")
        frame = {"e": "kline", "E": 1, "s": "BTCUSDT", "k": {
            "t": 1_700_000_040_000, "T": 1_700_000_099_999, "s": "BTCUSDT", "i": "1m", "o": "1", "c": "2",
            "h": "2", "l": "1", "v": "3", "n": 2, "x": True}}
        client.handle_text_or_binary_message(json.dumps(frame))
        assert ex.malformed_frames == 0
        rows = list(ex._pro.ohlcvs["BTC/USDT"]["1m"])
        assert [ex._live_candle("BTC/USDT", row) for row in rows] == [
            Candle(1_700_000_040_000, 1, 2, 1, 2, 3, final=False)]  # closed by `x`: final comes from trades


async def test_methods_raise_only_our_errors_when_not_open() -> None:
    ex = cx.CcxtExchange(ExchangeSpec(name="kraken"))
    with pytest.raises(PermanentError, match="not open"):
        await ex.load_markets()
    with pytest.raises(PermanentError, match="not open"):
        await ex.watch_trades(["BTC/USD"])
    await ex.close()  # closing an unopened client is fine


async def test_live_buffer_overflow_is_a_transient_error() -> None:
    async with cx.CcxtExchange(ExchangeSpec(name="kraken"), pending_max=5) as ex:  # the worker's memory share
        ex._markets = {"BTC/USD"}
        sink = ex._sink("BTC/USD")
        for i in range(8):
            sink({"timestamp": 1_700_000_000_000 + i, "id": str(i), "price": 1.0, "amount": 1.0, "side": "buy"})
        assert len(ex._pending) == 5 and ex.pending_trades == 5
        with pytest.raises(TransientError, match="overflowed, 3 trade"):
            await ex.watch_trades(["BTC/USD"])
        assert not ex._pending  # the caller catches up over REST from its own cursor
        sink({"timestamp": 1, "id": "x", "price": None, "amount": 1.0, "side": "buy"})  # bad data: refused
        assert ex.rejected == 1 and ex.malformed_frames == 0 and not ex._pending  # refused, not a lost frame


async def test_tapped_cache_feeds_watch_trades_for_every_symbol() -> None:
    async with cx.CcxtExchange(ExchangeSpec(name="kraken")) as ex:
        ex._markets = {"BTC/USD", "ETH/USD"}
        ex._tap(["BTC/USD", "ETH/USD"])
        for sym, tid in (("BTC/USD", "1"), ("ETH/USD", "2"), ("BTC/USD", "3")):
            ex._pro.trades[sym].append({"symbol": sym, "timestamp": 1_700_000_000_005, "id": tid, "price": 2.0,
                                        "amount": 1.0, "side": "sell", "type": "market"})
        ex._watched = frozenset({"BTC/USD", "ETH/USD"})
        got = await ex.watch_trades(["BTC/USD", "ETH/USD"])  # buffered: returns without waiting
        assert [(s, t.id) for s, t in got] == [("BTC/USD", "1"), ("ETH/USD", "2"), ("BTC/USD", "3")]
        assert len(ex._pro.trades["BTC/USD"]) == 2  # ccxt's own cache still works
