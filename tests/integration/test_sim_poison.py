"""The poison fault through real ccxt: poisoned trades and candles reach the client among valid ones, REST and
websocket, on Kraken and Binance; a client that skips them pages through every valid trade exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest

from fullon_ohlcv_service.adapters.ccxt_exchange import build_config
from fullon_ohlcv_service.simulator.market import BUCKET_MS
from fullon_ohlcv_service.simulator.poison import LAST_ISO_MS, TS_2009
from fullon_ohlcv_service.simulator.server import ScaledClock, Simulator
from fullon_ohlcv_service.timeutil import now_ms

SYMBOL = {"kraken": "BTC/USD", "binance": "BTC/USDT"}
POISON = 7  # every kind once


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    # 20x clock: the poisoned slots (200 ms of exchange time apart) pass within a tenth of a second; it
    # starts 40 s into a minute, so the minute of the poison soon ends (Binance's fromId order lists a
    # minute's poison after its valid trades)
    start = now_ms() - now_ms() % BUCKET_MS + 40_000
    async with Simulator(seed=21, symbols={"kraken": ["BTC/USD@20"], "binance": ["BTC/USDT@20"]},
                         history_days=0.02, tick_s=0.02, clock=ScaledClock(20.0, start_ms=start)) as s:
        yield s


def _truth(trade: dict[str, Any]) -> dict[str, Any]:
    return {k: trade[k] for k in ("id", "timestamp", "price", "amount", "side")}


def _valid(t: dict[str, Any], now: int) -> bool:
    """What a correct client keeps: every field present and sane (and, for Kraken's REST rows, whose side
    ccxt reads as "buy" unless it is "s", a side on the wire that is "b" or "s")."""
    ts, price, amount, info = t.get("timestamp"), t.get("price"), t.get("amount"), t.get("info")
    if isinstance(info, list) and info[3] not in ("b", "s"):
        return False
    return (bool(t.get("id")) and t.get("side") in ("buy", "sell") and isinstance(ts, int)
            and TS_2009 <= ts <= now + 86_400_000 and isinstance(price, float) and math.isfinite(price)
            and price > 0 and isinstance(amount, float) and math.isfinite(amount) and amount >= 0)


def _same(text: str, value: Any) -> bool:
    x = float(text)
    return isinstance(value, float | int) and ((math.isnan(x) and math.isnan(value)) or x == value)


def _matches(p: dict[str, Any], t: dict[str, Any]) -> bool:
    """A parsed ccxt trade is the poisoned entry ``p`` (by id, or by its values when it has none)."""
    if p["id"]:
        return t.get("id") == p["id"]
    return not t.get("id") and _same(p["price"], t.get("price")) and _same(p["amount"], t.get("amount"))


async def _poison_passed(sim: Simulator, exchange: str, symbol: str) -> list[dict[str, Any]]:
    """Plant the poison, then wait until the minute of its last slot has ended; the truth of what was served."""
    sim.set_faults({"poison": POISON, "exchange": exchange})
    planted = sim.market(exchange, symbol)  # the truth endpoint answers only what has been served
    book = sim.venues[exchange].book(planted)
    last = max(p.slot for p in book.trades_in(0, 2**63))
    end = last - last % BUCKET_MS + BUCKET_MS + 1_000
    await asyncio.sleep(max(0.0, (end - sim.now()) / 20_000))  # ms of a clock that runs 20x
    return sim.poisoned(exchange, symbol, 0, sim.now())


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_rest_pages_carry_the_poison_among_valid_trades(sim: Simulator, exchange: str) -> None:
    symbol = SYMBOL[exchange]
    poisoned = await _poison_passed(sim, exchange, symbol)
    trades = [p for p in poisoned if p["kind"] == "trade"]
    assert len(trades) == POISON and len(poisoned) == POISON + 1
    since, until = trades[0]["slot"] - 3_000, trades[-1]["slot"] + 600
    page_until = until - until % BUCKET_MS + BUCKET_MS  # past the end of the poison's minute
    truth = sim.trades(exchange, symbol, since, until)
    ex = getattr(ccxt_async, exchange)(build_config(exchange, {}, sim.url))
    rows: list[tuple[Any, dict[str, Any] | Exception]] = []  # each raw row as served, and what ccxt made of it
    try:
        await ex.load_markets()
        market = ex.market(symbol)
        now = sim.now()
        if exchange == "kraken":  # Kraken's own cursor: `since` in ns, then each page's `last`
            cursor: Any = str(since * 1_000_000 - 1)
            while True:
                res = (await ex.publicGetTrades({"pair": market["id"], "since": cursor, "count": 40}))["result"]
                page = res[market["id"]]
                rows += [(r, _parse(ex, r, market)) for r in page]
                cursor = res["last"]
                if not page or int(cursor) // 1_000_000 >= page_until:
                    break
        else:  # Binance: the first page by time, then fromId = the last valid id + 1 (poison skipped)
            page = await ex.publicGetAggTrades({"symbol": market["id"], "startTime": since, "limit": 40})
            while page:
                parsed = [(r, _parse(ex, r, market)) for r in page]
                rows += parsed
                valid = [t for _, t in parsed if isinstance(t, dict) and _valid(t, now)]
                if not valid or valid[-1]["timestamp"] >= page_until:
                    break
                page = await ex.publicGetAggTrades({"symbol": market["id"], "fromId": int(valid[-1]["id"]) + 1,
                                                    "limit": 40})
        candles = await ex.fetch_ohlcv(symbol, "1m", since - since % BUCKET_MS - BUCKET_MS)
    finally:
        await ex.close()

    parsed_ok = [t for _, t in rows if isinstance(t, dict)]
    kept = [_truth(t) for t in parsed_ok if _valid(t, now) and since <= t["timestamp"] < until]
    assert kept == truth  # every valid trade exactly once, in order, whatever the poison around it
    for p in trades:
        hits = [i for i, (_, t) in enumerate(rows) if isinstance(t, dict) and _matches(p, t)]
        if p["poison"] == "nan_price":  # ccxt 4.5 cannot parse it: Precise("nan") raises
            hits = [i for i, (r, t) in enumerate(rows) if isinstance(t, ValueError) and "nan" in str(r)]
        # once by time; Binance's fromId order may list it again at the end of its minute (a re-fetch)
        assert len(hits) == 1 or (exchange == "binance" and len(hits) == 2), (p, hits)
        assert all(rows[i][0] == rows[hits[0]][0] for i in hits)
        i = hits[0]
        assert 0 < i < len(rows) - 1, p  # among valid trades: rows before and after it
        t = rows[i][1]
        if isinstance(t, dict):
            assert not _valid(t, now), (p, t)  # ccxt hands it over with the poisoned value
            if p["poison"] == "ts_overflow":
                assert t["timestamp"] == p["timestamp"] == 2**63
            if p["poison"] == "inf_amount":
                assert t["amount"] == math.inf
    # REST OHLC: the poisoned candle after its minute's valid row, as ccxt parses it
    (pc,) = (p for p in poisoned if p["kind"] == "candle")
    same_minute = [c for c in candles if c[0] == pc["ts"]]
    assert 1 <= len(same_minute) <= 2
    assert all(_same(pc[k], v) for k, v in zip(("open", "high", "low", "close", "volume"), same_minute[-1][1:],
                                               strict=True))
    if len(same_minute) == 2:  # the valid row first
        _, o, h, lo, c, v = same_minute[0]
        assert h >= max(o, c) >= min(o, c) >= lo > 0 and v > 0


def _parse(ex: Any, row: Any, market: Any) -> dict[str, Any] | Exception:
    try:
        return dict(ex.parse_trade(row, market))
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_websocket_frames_carry_the_poison_among_valid_trades(sim: Simulator, exchange: str) -> None:
    symbol = SYMBOL[exchange]
    ex = getattr(ccxt_pro, exchange)(build_config(exchange, {}, sim.url))
    frames: list[Any] = []
    failed: list[Any] = []
    original = ex.handle_message

    def tap(client: Any, message: Any) -> Any:  # every frame ccxt receives, and those it fails to parse
        frames.append(message)
        try:
            return original(client, message)
        except ValueError:
            failed.append(message)
            return None

    ex.handle_message = tap
    got: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            got.extend(await ex.watch_trades(symbol))

    async def watch_candles() -> None:
        while True:
            await ex.watch_ohlcv(symbol, "1m")

    try:
        got.extend(await asyncio.wait_for(ex.watch_trades(symbol), 10))
        await asyncio.wait_for(ex.watch_ohlcv(symbol, "1m"), 10)
        tasks = [asyncio.ensure_future(watch()), asyncio.ensure_future(watch_candles())]
        poisoned = await _poison_passed(sim, exchange, symbol)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await ex.close()

    now = sim.now()
    items = _trade_items(exchange, frames)
    valid_ids = {t["id"] for t in sim.trades(exchange, symbol, 0, now + 1)}
    for p in (p for p in poisoned if p["kind"] == "trade"):
        hits = [i for i, (_, item) in enumerate(items) if _raw_is(exchange, p, item)]
        assert len(hits) == 1, p
        i = hits[0]
        assert any(_raw_id(exchange, x) in valid_ids for _, x in items[:i]), p  # valid trades before it ...
        assert any(_raw_id(exchange, x) in valid_ids for _, x in items[i + 1:]), p  # ... and after it
        frame = frames[items[i][0]]
        if any(f is frame for f in failed):  # ccxt raises on a whole frame with a "nan" price (Precise("nan"))
            assert any(_raw_is(exchange, q, x) for q in poisoned if q.get("poison") == "nan_price"
                       for j, x in items if frames[j] is frame)
        else:
            assert p["poison"] != "nan_price"
            parsed = [t for t in got if _matches(p, t)]
            assert len(parsed) == 1 and not _valid(parsed[0], now), (p, parsed)
            if p["poison"] == "ts_overflow":  # Kraken's websocket speaks ISO: the last ISO millisecond
                assert parsed[0]["timestamp"] == (LAST_ISO_MS if exchange == "kraken" else 2**63)
    (pc,) = (p for p in poisoned if p["kind"] == "candle")
    candle_frames = [f for f in frames if _is_poisoned_candle(exchange, pc, f)]
    assert len(candle_frames) == 1 and not any(f is candle_frames[0] for f in failed)  # ccxt took it


def _trade_items(exchange: str, frames: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    """(frame index, raw trade item) of every trade frame, in arrival order."""
    out: list[tuple[int, dict[str, Any]]] = []
    for i, f in enumerate(frames):
        if not isinstance(f, dict):
            continue
        if exchange == "kraken" and f.get("channel") == "trade":
            out += [(i, item) for item in f.get("data", [])]
        elif exchange == "binance" and f.get("e") in ("aggTrade", "trade"):
            out.append((i, f))
    return out


def _raw_id(exchange: str, item: dict[str, Any]) -> str:
    return str(item.get("trade_id") if exchange == "kraken" else item.get("a", item.get("t")))


def _raw_is(exchange: str, p: dict[str, Any], item: dict[str, Any]) -> bool:
    if p["id"]:
        return _raw_id(exchange, item) == p["id"]
    price, qty = (item.get("price"), item.get("qty")) if exchange == "kraken" else (item.get("p"), item.get("q"))
    return _raw_id(exchange, item) == "" and str(price) in (p["price"], str(float(p["price"]))) \
        and str(qty) in (p["amount"], str(float(p["amount"])))


def _is_poisoned_candle(exchange: str, pc: dict[str, Any], frame: Any) -> bool:
    if not isinstance(frame, dict):
        return False
    if exchange == "binance":
        k = frame.get("k") or {}
        return frame.get("e") == "kline" and k.get("t") == pc["ts"] and k.get("o") == pc["open"] \
            and k.get("v") == pc["volume"]
    if frame.get("channel") != "ohlc":
        return False
    return any(_same(pc["volume"], float(item["volume"])) and _same(pc["open"], float(item["open"]))
               for item in frame.get("data", []))
