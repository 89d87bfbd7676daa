"""Poison rows through the real ccxt adapter: the simulator's real responses and frames with bad values spliced in.

Every poisoned row is refused with its reason (and handed to the reject sink), every valid row around it
still arrives, and REST paging moves past pages whose every row was refused.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fullon_ohlcv_service.adapters.ccxt_exchange import CcxtExchange
from fullon_ohlcv_service.collectors.backfill import Cursor, Retry, page_trades
from fullon_ohlcv_service.models import Candle, ExchangeSpec, Reject, Trade
from fullon_ohlcv_service.simulator.server import Simulator

SYMBOLS = {"kraken": ("BTC/USD@20",), "binance": ("BTC/USDT@20",)}
SYMBOL = {"kraken": "BTC/USD", "binance": "BTC/USDT"}
MINUTE = 60_000

# (reason, Kraken REST row [price, volume, time s, side, type, misc, id] change, Binance aggTrade change,
#  Kraken websocket trade change, Binance websocket aggTrade change)
TRADE_POISONS: list[tuple[str, Callable[[list[Any]], None], dict[str, Any], dict[str, Any]]] = [
    ("price not finite", lambda r: r.__setitem__(0, "nan"), {"p": "nan"}, {"price": "nan"}),
    ("amount not finite", lambda r: r.__setitem__(1, "inf"), {"q": "inf"}, {"qty": "inf"}),
    ("amount negative", lambda r: r.__setitem__(1, "-1.5"), {"q": "-1.5"}, {"qty": -1.5}),
    ("timestamp more than 1 day ahead", lambda r: r.__setitem__(2, 2**63 / 1000), {"T": 2**63},
     {"timestamp": "2262-04-12T00:00:00.000000Z"}),
    ("timestamp before 2009-01-01", lambda r: r.__setitem__(2, 1_000_000.5), {"T": 1_000_000_500},
     {"timestamp": "2001-01-01T00:00:00.000000Z"}),
    ("id missing or empty", lambda r: r.__setitem__(6, ""), {"a": ""}, {"trade_id": ""}),
    ("side unknown", lambda r: r.__setitem__(3, "x"), {"m": "x"}, {"side": "x"}),
]


class Sink:
    """The reject sink the worker would pass (ports.RejectSink)."""

    def __init__(self) -> None:
        self.rejects: list[tuple[str, Reject]] = []

    def reject(self, symbol: str, rejects: list[Reject]) -> None:
        self.rejects.extend((symbol, r) for r in rejects)

    def reasons(self) -> list[str]:
        return sorted(r.reason for _, r in self.rejects)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=7, symbols=SYMBOLS, history_days=0.012, tick_s=0.02, steady=True) as s:
        yield s


def rest_rows(resp: Any) -> list[Any]:
    """The trade or candle rows of a Kraken (``{"result": {pair: rows, "last": ...}}``) or Binance (list) answer."""
    if isinstance(resp, list):
        return resp
    return next(v for k, v in resp["result"].items() if k != "last")


def tamper_rest(ex: CcxtExchange, path: str, change: Callable[[list[Any]], None], times: int = 1) -> list[int]:
    """Apply ``change`` to the rows of the next ``times`` answers whose URL contains ``path``."""
    orig = ex._rest.fetch
    left = [times]

    async def fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        resp = await orig(url, method, headers, body)
        if path in url and left[0] > 0:
            left[0] -= 1
            change(rest_rows(resp))
        return resp

    ex._rest.fetch = fetch
    return left


def splice_trade_poisons(name: str) -> Callable[[list[Any]], None]:
    """After rows 10, 20, ...: a copy of that row with one poisoned value, one copy per kind of poison."""

    def change(rows: list[Any]) -> None:
        for k, (_, kraken, binance, _ws) in reversed(list(enumerate(TRADE_POISONS))):
            bad = copy.deepcopy(rows[10 * (k + 1)])
            if name == "kraken":
                kraken(bad)
            else:
                bad.update(binance)
            rows.insert(10 * (k + 1) + 1, bad)

    return change


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_rest_page_keeps_every_valid_trade_and_refuses_each_poison(sim: Simulator, name: str) -> None:
    sink = Sink()
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url, rejects=sink) as ex:
        symbol = SYMBOL[name]
        clean = await ex.fetch_trades(symbol, sim.genesis_ms)
        assert len(clean) == 1000 and not sink.rejects
        tamper_rest(ex, "Trades" if name == "kraken" else "aggTrades", splice_trade_poisons(name))
        page = await ex.fetch_trades(symbol, sim.genesis_ms)  # raised (or kept bad rows) before
        assert page == clean
        assert sink.reasons() == sorted(p[0] for p in TRADE_POISONS)
        assert {s for s, _ in sink.rejects} == {symbol} and ex.rejected == len(TRADE_POISONS)
        by_reason = {r.reason: r for _, r in sink.rejects}
        assert by_reason["price not finite"].ref == clean[10].id  # the poisoned copy of trade 10
        assert by_reason["id missing or empty"].ref.startswith("noid:")
        assert '"nan"' in by_reason["price not finite"].raw  # the values as received


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_rest_paging_moves_past_pages_whose_every_row_is_refused(sim: Simulator, name: str) -> None:
    sink = Sink()
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url, rejects=sink) as ex:
        symbol = SYMBOL[name]
        truth = sim.trades(name, symbol, sim.genesis_ms, sim.now() - 1000)
        assert len(truth) > 3000

        def all_nan(rows: list[Any]) -> None:
            for r in rows:
                if isinstance(r, list):
                    r[0] = "nan"
                else:
                    r["p"] = "nan"

        tamper_rest(ex, "Trades" if name == "kraken" else "aggTrades", all_nan, times=2)
        got: list[Trade] = []

        async def on_page(trades: list[Trade], watermark: int) -> None:
            got.extend(trades)

        target = truth[2500]["timestamp"]
        res = await asyncio.wait_for(
            page_trades(ex, symbol, Cursor(sim.genesis_ms - 1), lambda: target, on_page, retry=Retry(0.01, 0.05)), 60)
        # the first two full pages were refused whole; paging went on and stopped only past the target
        assert res.reached and sink.reasons() == ["price not finite"] * 2000
        assert [t.id for t in got] == [t["id"] for t in truth[2000 : 2000 + len(got)]]
        assert got[-1].ts > target


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_rest_candles_refuse_bad_rows_and_page_past_them(sim: Simulator, name: str) -> None:
    sink = Sink()
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url, rejects=sink) as ex:
        symbol = SYMBOL[name]
        start = sim.genesis_ms
        clean = await ex.fetch_ohlcv(symbol, start)
        assert len(clean) >= 10
        o, h, lo, v = (1, 2, 3, 6) if name == "kraken" else (1, 2, 3, 5)  # column of each value

        def poison(rows: list[Any]) -> None:
            rows[1][h] = str(float(rows[1][lo]) / 2)  # high below low
            rows[2][o] = "nan"
            rows[3][v] = "-1"

        tamper_rest(ex, "OHLC" if name == "kraken" else "klines", poison)
        got = await ex.fetch_ohlcv(symbol, start)
        poisoned = (clean[1].ts, clean[2].ts, clean[3].ts)
        cut = max(c.ts for c in clean if c.final)  # closed minutes (the forming one moves on: not compared)
        assert [c for c in got if c.ts <= cut] == [c for c in clean if c.ts <= cut and c.ts not in poisoned]
        assert sorted((r.ref, r.reason) for _, r in sink.rejects) == sorted([
            (str(clean[1].ts), "high below open or close"), (str(clean[2].ts), "open not finite"),
            (str(clean[3].ts), "volume negative")])
        if name == "binance":  # a page whose every candle is refused is followed by the next page
            sink.rejects.clear()

            def all_bad(rows: list[Any]) -> None:
                for r in rows:
                    r[2] = "0.000001"

            tamper_rest(ex, "klines", all_bad)
            assert await ex.fetch_ohlcv(symbol, start, 5) == clean[5:10]
            assert len(sink.rejects) == 5


def tamper_ws(ex: CcxtExchange, change: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
    """Each decoded websocket message goes through ``change``, which returns the messages to hand on."""
    orig = ex._pro.handle_message

    def handle(client: Any, message: Any) -> Any:
        if not isinstance(message, dict):
            return orig(client, message)
        for m in change(message):
            orig(client, m)
        return None

    ex._pro.handle_message = handle  # before the first socket: ccxt binds it when the client is made


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_websocket_poison_is_refused_and_the_stream_goes_on(sim: Simulator, name: str) -> None:
    sink = Sink()
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url, rejects=sink) as ex:
        symbol = SYMBOL[name]
        await ex.load_markets()
        todo = list(TRADE_POISONS)

        def change(m: dict[str, Any]) -> list[dict[str, Any]]:
            if not todo:
                return [m]
            if name == "kraken" and m.get("channel") == "trade" and m.get("type") == "update":
                bad = copy.deepcopy(m["data"][0])
                bad.update(todo.pop(0)[3])
                m["data"].insert(1, bad)
                return [m]
            if name == "binance" and m.get("e") == "aggTrade":
                bad = {**m, **todo.pop(0)[2]}
                return [m, bad]
            return [m]

        tamper_ws(ex, change)
        got: list[Trade] = []
        deadline = time.monotonic() + 20
        while (todo or len(sink.rejects) < len(TRADE_POISONS) or len(got) < 50) and time.monotonic() < deadline:
            got += [t for _, t in await asyncio.wait_for(ex.watch_trades([symbol]), 10)]  # raised before
        assert sink.reasons() == sorted(p[0] for p in TRADE_POISONS)
        assert ex.malformed_frames == 0  # refused rows, not lost frames: no catch-up is needed
        truth = sim.trades(name, symbol, got[0].ts, got[-1].ts + 1)
        assert [t.id for t in got] == [t["id"] for t in truth]  # every valid trade, nothing else


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_websocket_candle_without_a_time_is_refused_and_live_candles_go_on(name: str) -> None:
    async with Simulator(seed=7, symbols=SYMBOLS, history_days=0.01, tick_s=0.02, steady=True) as sim:
        sink = Sink()
        async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url, rejects=sink) as ex:
            symbol = SYMBOL[name]
            await ex.load_markets()
            updates = [0]

            def change(m: dict[str, Any]) -> list[dict[str, Any]]:
                if name == "kraken" and m.get("channel") == "ohlc" and m.get("type") == "update":
                    updates[0] += 1
                    if updates[0] == 3:
                        m["data"][0]["interval_begin"] = "garbage"
                elif name == "binance" and m.get("e") == "kline":
                    updates[0] += 1
                    if updates[0] == 3:
                        m["k"]["t"] = "nan"
                return [m]

            tamper_ws(ex, change)
            before: list[Candle] = []
            while not sink.rejects:
                before += await asyncio.wait_for(ex.watch_ohlcv(symbol), 10)
            assert [r.reason for _, r in sink.rejects] == ["timestamp missing"]
            # ccxt would hand the row without a time back, alone, until the next minute: it is evicted
            after = await asyncio.wait_for(ex.watch_ohlcv(symbol), 5)
            while not after:
                after = await asyncio.wait_for(ex.watch_ohlcv(symbol), 5)
            assert after[-1].ts % MINUTE == 0 and len(sink.rejects) == 1
