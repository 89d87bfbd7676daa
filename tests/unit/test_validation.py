"""The trade and candle rules (validation.py), the Reject they make, and the RejectBook that counts them."""

from __future__ import annotations

import json
import math

import pytest

from fullon_ohlcv_service.collectors.rejects import RejectBook
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.validation import (
    MIN_TS_MS,
    build_candle,
    build_trade,
    candle_reject,
    check_trade,
    raw_json,
    trade_reject,
)

NOW = 1_780_000_000_000
TS = NOW - 5_000
M = NOW - NOW % 60_000 - 60_000  # a closed minute


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"price": math.nan}, "price not finite"),
        ({"price": "nan"}, "price not finite"),  # decimal text as ccxt may leave it
        ({"price": math.inf}, "price not finite"),
        ({"price": 0.0}, "price not positive"),
        ({"price": -1.0}, "price not positive"),
        ({"price": None}, "price missing or unparseable"),
        ({"price": "abc"}, "price not a number"),
        ({"price": 2e20}, "price too large"),
        ({"amount": math.inf}, "amount not finite"),
        ({"amount": -math.inf}, "amount not finite"),
        ({"amount": -0.5}, "amount negative"),
        ({"amount": 10**400}, "amount not finite"),  # an int no float can hold
        ({"amount": 0.0}, None),  # zero is a valid amount
        ({"ts": 2**63}, "timestamp more than 1 day ahead"),
        ({"ts": NOW + 86_400_001}, "timestamp more than 1 day ahead"),
        ({"ts": NOW + 86_400_000}, None),
        ({"ts": MIN_TS_MS - 1}, "timestamp before 2009-01-01"),
        ({"ts": MIN_TS_MS}, None),
        ({"ts": -1}, "timestamp before 2009-01-01"),
        ({"ts": None}, "timestamp missing"),
        ({"ts": float(TS)}, None),  # an integral float is a timestamp
        ({"ts": TS + 0.5}, "timestamp not an integer"),
        ({"ts": True}, "timestamp not an integer"),
        ({"ts": "1780000000000"}, "timestamp not an integer"),
        ({"id": ""}, "id missing or empty"),
        ({"id": None}, "id missing or empty"),
        ({"id": 42}, None),  # a numeric id is kept as text
        ({"id": "a\x00b"}, "id has unprintable characters"),
        ({"id": "a\ud800"}, "id has unprintable characters"),
        ({"id": "x" * 257}, "id too long"),
        ({"side": "BUY"}, "side unknown"),
        ({"side": None}, "side unknown"),
    ],
)
def test_trade_rules(change: dict[str, object], reason: str | None) -> None:
    v: dict[str, object] = {"ts": TS, "id": "7", "price": 101.5, "amount": 0.25, "side": "sell", **change}
    got = build_trade(v["ts"], v["id"], v["price"], v["amount"], v["side"], "limit", NOW)
    if reason is None:
        assert isinstance(got, Trade) and check_trade(got, NOW) is None
        assert got.id == str(v["id"]) and got.price == float(v["price"])  # type: ignore[arg-type]
    else:
        assert got == reason


@pytest.mark.parametrize(
    ("ohlcv", "reason"),
    [
        ((M, 10, 12, 9, 11, 5), None),
        ((M, 10, 10, 10, 10, 0), None),  # a flat, empty minute
        ((M, 10, 10.5, 9, 11, 5), "high below open or close"),
        ((M, 10, 12, 10.5, 11, 5), "low above open or close"),
        ((M, 10, 9, 12, 11, 5), "high below open or close"),  # high under low
        ((M, math.nan, 12, 9, 11, 5), "open not finite"),
        ((M, 10, math.inf, 9, 11, 5), "high not finite"),
        ((M, 10, 12, 0, 11, 5), "low not positive"),
        ((M, 10, 12, 9, 11, -5), "volume negative"),
        ((M, 10, 12, 9, 11, math.nan), "volume not finite"),
        ((M + 1, 10, 12, 9, 11, 5), "timestamp not on a minute"),
        ((2**63 - 2**63 % 60_000, 10, 12, 9, 11, 5), "timestamp more than 1 day ahead"),
        ((60_000, 10, 12, 9, 11, 5), "timestamp before 2009-01-01"),
        ((None, 10, 12, 9, 11, 5), "timestamp missing"),
    ],
)
def test_candle_rules(ohlcv: tuple[object, ...], reason: str | None) -> None:
    got = build_candle(*ohlcv, final=True, now=NOW)
    if reason is None:
        assert got == Candle(M, *(float(x) for x in ohlcv[1:]), final=True)  # type: ignore[arg-type]
    else:
        assert got == reason


def test_trade_kind_is_kept_only_as_short_clean_text() -> None:
    assert build_trade(TS, "1", 1.0, 1.0, "buy", "market", NOW) == Trade(TS, "1", 1.0, 1.0, "buy", "market")
    for odd in (None, 5, "x\x00", "y" * 40):
        got = build_trade(TS, "1", 1.0, 1.0, "buy", odd, NOW)
        assert isinstance(got, Trade) and got.type == ""


def test_rejects_hold_raw_values_as_json_and_refs_are_stable() -> None:
    values = {"ts": TS, "id": "7", "price": math.nan, "amount": math.inf, "side": "buy",
              "info": {"p": "nan", "deep": [[[[["x"]]]]], "big": 2**64}}
    r = trade_reject(values, "price not finite", NOW)
    assert (r.kind, r.ref, r.reason, r.seen_ms) == ("trade", "7", "price not finite", NOW)
    raw = json.loads(r.raw)  # strict JSON: NaN and infinity are kept as text
    assert raw["price"] == "nan" and raw["amount"] == "inf" and raw["info"]["p"] == "nan"
    assert raw["info"]["big"] == 2**64
    # no id: a digest of the values, the same whichever path (REST or websocket) delivered it
    a = trade_reject({**values, "id": "", "info": {"rest": 1}}, "id missing or empty", NOW)
    b = trade_reject({**values, "id": None, "info": {"ws": 2}}, "id missing or empty", NOW + 9)
    assert a.ref == b.ref and a.ref.startswith("noid:")
    assert trade_reject({**values, "id": "", "price": 1.0}, "id missing or empty", NOW).ref != a.ref
    c = candle_reject({"ts": M, "open": 1, "high": 0.5, "low": 1, "close": 1, "volume": 1}, "high below open or close",
                      NOW)
    assert (c.kind, c.ref) == ("candle", str(M))
    assert candle_reject({"ts": "nan", "open": 1}, "timestamp not an integer", NOW).ref.startswith("nots:")
    huge = raw_json({"info": "x" * 100_000, "list": list(range(10_000))})
    assert len(huge) <= 4000 and json.loads(huge)


def test_reject_book_counts_each_row_once_and_logs_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    # a logger outside "fullon" (whose handler may not propagate to caplog once configured)
    book = RejectBook(Log("test.rejects"), clock=lambda: clock[0])
    stored: list[tuple[str, Reject]] = []

    def r(ref: str, reason: str = "price not finite") -> Reject:
        return Reject("trade", ref, reason, "{}", NOW)

    book.reject("BTC/USD", [r("1"), r("2")])  # before a writer is attached: held, not lost
    book.attach(lambda sym, rs: stored.extend((sym, x) for x in rs))
    book.reject("BTC/USD", [r("1"), r("3")])  # "1" again (a REST re-fetch): not counted twice
    book.reject("BTC/USD", [r("1", "amount negative")])  # another reason is another reject
    book.reject("ETH/USD", [r("1")])  # per symbol
    assert book.counts == {"BTC/USD": 4, "ETH/USD": 1}
    assert (book.count("BTC/USD"), book.count("ETH/USD"), book.count("SOL/USD")) == (4, 1, 0)
    assert [(s, x.ref, x.reason) for s, x in stored] == [
        ("BTC/USD", "1", "price not finite"), ("BTC/USD", "2", "price not finite"),
        ("BTC/USD", "3", "price not finite"), ("BTC/USD", "1", "amount negative"), ("ETH/USD", "1", "price not finite"),
    ]
    lines = [rec for rec in caplog.records if rec.getMessage() == "rows rejected"]
    assert len(lines) == 2  # one per symbol within the minute
    clock[0] += 61
    book.reject("BTC/USD", [r("4")])
    lines = [rec for rec in caplog.records if rec.getMessage() == "rows rejected"]
    assert len(lines) == 3
    fields = lines[-1].ohlcv_fields  # type: ignore[attr-defined]
    assert fields["rejected"] == 3 and fields["total"] == 5 and fields["raw"] == "{}"  # 2 unlogged + this one
