"""The real ccxt classes (REST and pro) against the simulator: markets, history, live streams, faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest

from fullon_ohlcv_service.simulator.market import BUCKET_MS
from fullon_ohlcv_service.simulator.server import ScaledClock, Simulator

# busy symbols: even a quiet stretch (0.1x) still has 3 trades/s; ETH is the quiet symbol
SYMBOLS = {"kraken": ["BTC/USD@30", "ETH/USD@0.2"], "binance": ["BTC/USDT@30", "ETH/USDT@0.2"]}
BUSY = {"kraken": "BTC/USD", "binance": "BTC/USDT"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=11, symbols=SYMBOLS, history_days=0.6, tick_s=0.02, steady=True) as s:
        yield s


@pytest.fixture
async def fast_sim() -> AsyncIterator[Simulator]:
    # 40x clock: a minute passes in 1.5 s, so candles close during the test
    async with Simulator(seed=12, symbols={"kraken": ["BTC/USD@0.5"], "binance": ["BTC/USDT@0.5"]},
                         history_days=0.01, tick_s=0.02, clock=ScaledClock(40.0)) as s:
        yield s


def _rest(sim: Simulator, exchange: str) -> Any:
    return getattr(ccxt_async, exchange)(sim.overrides(exchange))


def _pro(sim: Simulator, exchange: str) -> Any:
    return getattr(ccxt_pro, exchange)(sim.overrides(exchange))


def _as_truth(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": t["id"], "timestamp": t["timestamp"], "price": t["price"], "amount": t["amount"],
             "side": t["side"]} for t in trades]


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_load_markets(sim: Simulator, exchange: str) -> None:
    ex = _rest(sim, exchange)
    try:
        markets = await ex.load_markets()
    finally:
        await ex.close()
    busy = markets[BUSY[exchange]]
    assert busy["spot"] and busy["active"]
    assert busy["precision"]["price"] == 0.1 and busy["precision"]["amount"] == 1e-8
    if exchange == "kraken":
        assert busy["id"] == "XXBTZUSD" and busy["info"]["wsname"] == "XBT/USD"
    assert set(markets) == {s.split("@")[0] for s in SYMBOLS[exchange]}


async def test_kraken_trades_paginated_by_cursor_equal_truth(sim: Simulator) -> None:
    ex = _rest(sim, "kraken")
    now = sim.now()
    since, until = now - 11 * BUCKET_MS, now - BUCKET_MS
    got: list[dict[str, Any]] = []
    try:
        page = await ex.fetch_trades("BTC/USD", since=since)
        pages = 1
        while page:
            got.extend(t for t in page if t["timestamp"] < until)
            if page[-1]["timestamp"] >= until:
                break
            cursor = page[-1]["info"][7]  # Kraken's `last`: a nanosecond cursor
            page = await ex.fetch_trades("BTC/USD", params={"since": cursor})
            pages += 1
    finally:
        await ex.close()
    truth = sim.trades("kraken", "BTC/USD", since, until)
    assert len(truth) > 1000 and pages >= 3  # really paginated (1000 a page)
    assert _as_truth(got) == truth


async def test_kraken_ohlc_with_since_capped_at_720(sim: Simulator) -> None:
    ex = _rest(sim, "kraken")
    now = sim.now()
    current = now - now % BUCKET_MS
    try:
        recent = await ex.fetch_ohlcv("BTC/USD", since=current - 40 * BUCKET_MS)
        deep = await ex.fetch_ohlcv("ETH/USD", since=current - 800 * BUCKET_MS)
        raw = await ex.publicGetOHLC({"pair": "XETHZUSD", "interval": 1})
    finally:
        await ex.close()
    assert [c for c in recent if c[0] < current] == sim.candles("kraken", "BTC/USD", current - 40 * BUCKET_MS, current)
    assert recent[-1][0] == current  # the forming bar is served too
    # whatever `since` says, only the latest 720 minutes are served (empty minutes have no bar)
    assert deep[0][0] >= current - 719 * BUCKET_MS
    assert [c for c in deep if c[0] < current] == sim.candles("kraken", "ETH/USD", current - 719 * BUCKET_MS,
                                                              current)
    assert 100 < len(deep) <= 720
    assert raw["result"]["last"] == (current - BUCKET_MS) // 1000


async def test_binance_trades_and_klines_paginated_equal_truth(sim: Simulator) -> None:
    ex = _rest(sim, "binance")
    now = sim.now()
    current = now - now % BUCKET_MS
    since, until = now - 9 * BUCKET_MS, now - BUCKET_MS
    trades: list[dict[str, Any]] = []
    candles: list[list[float]] = []
    try:
        cursor = since
        while cursor < until:
            page = await ex.fetch_trades("BTC/USDT", since=cursor, limit=1000, params={"until": until - 1})
            if not page:
                break
            trades.extend(page)
            cursor = page[-1]["timestamp"] + 1
        start = current - 1500 * BUCKET_MS  # before genesis: klines start where history starts
        while start < current:
            page = await ex.fetch_ohlcv("ETH/USDT", since=start, limit=1000)
            if not page:
                break
            candles.extend(c for c in page if c[0] < current)
            start = page[-1][0] + BUCKET_MS
    finally:
        await ex.close()
    assert len(trades) > 1000
    assert _as_truth(trades) == sim.trades("binance", "BTC/USDT", since, until)
    assert all(t["id"] == str(t["info"]["a"]) == str(t["info"]["f"]) for t in trades)
    truth_candles = sim.candles("binance", "ETH/USDT", 0, current)
    assert len(truth_candles) > 200 and candles == truth_candles


async def _collect_trades(ex: Any, symbol: str, seconds: float, at_least: int = 0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end or (len(got) < at_least and loop.time() < end + 5):
        got.extend(await asyncio.wait_for(ex.watch_trades(symbol), 5))
    return got


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_watch_trades_equals_truth(sim: Simulator, exchange: str) -> None:
    ex = _pro(sim, exchange)
    symbol = BUSY[exchange]
    try:
        got = await _collect_trades(ex, symbol, 1.0, at_least=11)
    finally:
        await ex.close()
    first, last = got[0]["timestamp"], got[-1]["timestamp"]
    assert len(got) > 10
    assert _as_truth(got) == sim.trades(exchange, symbol, first, last + 1)


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_watch_ohlcv_last_update_of_each_minute_equals_truth(fast_sim: Simulator, exchange: str) -> None:
    ex = _pro(fast_sim, exchange)
    symbol = BUSY[exchange]
    latest: dict[int, list[float]] = {}
    loop = asyncio.get_running_loop()
    start = fast_sim.now()
    try:
        end = loop.time() + 3.6
        while loop.time() < end:
            for c in await asyncio.wait_for(ex.watch_ohlcv(symbol), 5):
                latest[c[0]] = c
    finally:
        await ex.close()
    # raw ccxt against the simulator: updates go out in trade order, so the last update of a minute a later
    # minute followed holds every trade of it
    closed = [latest[ts] for ts in sorted(latest) if start - start % BUCKET_MS < ts < max(latest)]
    first = closed[0][0]
    assert len(closed) >= 1
    assert closed == fast_sim.candles(exchange, symbol, first, closed[-1][0] + BUCKET_MS)


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_forced_drop_then_next_watch_reconnects(sim: Simulator, exchange: str) -> None:
    ex = _pro(sim, exchange)
    symbol = BUSY[exchange]
    try:
        await asyncio.wait_for(ex.watch_trades(symbol), 5)
        pending = asyncio.ensure_future(ex.watch_trades(symbol))
        await asyncio.sleep(0)
        sim.set_faults({"ws_drop": True, "exchange": exchange})
        with pytest.raises(ccxt.NetworkError):
            while True:  # trades may still arrive before the close frame
                await asyncio.wait_for(pending, 5)
                pending = asyncio.ensure_future(ex.watch_trades(symbol))
        again = await asyncio.wait_for(ex.watch_trades(symbol), 5)
        assert again
    finally:
        await ex.close()
    stats = sim.stats()["exchanges"][exchange]
    assert stats["connections_total"] == 2
    assert stats["faults"]["counts"]["ws_drop"] == 1


async def test_rest_faults_surface_as_ccxt_errors(sim: Simulator) -> None:
    kr, bn = _rest(sim, "kraken"), _rest(sim, "binance")
    try:
        await kr.load_markets()
        await bn.load_markets()
        sim.set_faults({"rest_429": 1})
        with pytest.raises(ccxt.DDoSProtection):
            await kr.fetch_trades("BTC/USD")
        with pytest.raises(ccxt.DDoSProtection):
            await bn.fetch_trades("BTC/USDT")
        sim.set_faults({"rest_418": 1, "exchange": "binance"})
        with pytest.raises(ccxt.DDoSProtection):
            await bn.fetch_ohlcv("BTC/USDT")
        sim.set_faults({"rest_5xx": 1, "exchange": "kraken"})
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await kr.fetch_ohlcv("BTC/USD")
        # Kraken's real message; ccxt 4.5.90 maps it to a plain ExchangeError (not BadSymbol)
        with pytest.raises(ccxt.ExchangeError, match="EQuery:Unknown asset pair"):
            await kr.publicGetOHLC({"pair": "NOPEUSD"})
        with pytest.raises(ccxt.BadSymbol):
            await bn.publicGetKlines({"symbol": "NOPEUSDT", "interval": "1m"})
        assert await kr.fetch_trades("BTC/USD")  # faults were counts: the next request is served
    finally:
        await kr.close()
        await bn.close()
    counts = {n: e["faults"]["counts"] for n, e in sim.stats()["exchanges"].items()}
    assert counts["kraken"] == {"rest_429": 1, "rest_5xx": 1}
    assert counts["binance"] == {"rest_429": 1, "rest_418": 1}
    async with aiohttp.ClientSession() as http:
        sim.set_faults({"rest_429": 1, "exchange": "binance"})
        async with http.get(f"{sim.url}/binance/api.binance.com/api/v3/trades?symbol=BTCUSDT") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1"
            assert (await r.json())["code"] == -1003


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_malformed_and_duplicate_frames_do_not_kill_the_client(sim: Simulator, exchange: str) -> None:
    ex = _pro(sim, exchange)
    symbol = BUSY[exchange]
    try:
        got = list(await asyncio.wait_for(ex.watch_trades(symbol), 5))
        sim.set_faults({"malformed": 5, "duplicates": 4, "exchange": exchange})
        got += await _collect_trades(ex, symbol, 1.0)
    finally:
        await ex.close()
    counts = sim.stats()["exchanges"][exchange]["faults"]["counts"]
    assert counts["malformed"] == 5 and counts["duplicates"] == 4
    ids = [t["id"] for t in got]
    assert len(ids) - len(set(ids)) >= 1  # duplicates arrived
    assert max(t["timestamp"] for t in got) > sim.now() - 1500  # the stream kept flowing after the junk
    stamps = [t["timestamp"] for t in got]
    truth = {t["id"]: t for t in sim.trades(exchange, symbol, min(stamps), max(stamps) + 1)}
    assert all(_as_truth([t])[0] == truth[t["id"]] for t in got)  # re-sends of real trades only


async def test_ws_refuse_and_stall(sim: Simulator) -> None:
    sim.set_faults({"ws_refuse_s": 0.5, "exchange": "kraken"})
    ex = _pro(sim, "kraken")
    try:
        with pytest.raises(ccxt.NetworkError):
            await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5)
        await asyncio.sleep(0.6)
        assert await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5)
        sim.set_faults({"ws_stall_s": 0.8, "exchange": "kraken"})
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5)
        assert loop.time() - t0 > 0.5  # nothing was sent during the stall
    finally:
        await ex.close()
    counts = sim.stats()["exchanges"]["kraken"]["faults"]["counts"]
    assert counts["ws_refused"] >= 1 and counts["ws_stall"] == 1


async def test_raw_protocol_ping_pong_and_http_ground_truth(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.url}/kraken/ws.kraken.com/v2") as ws:
            status = await ws.receive_json()
            assert status["channel"] == "status" and status["data"][0]["system"] == "online"
            await ws.send_json({"method": "ping", "req_id": 42})
            pong = await ws.receive_json(timeout=2)
            assert pong["method"] == "pong" and pong["req_id"] == 42
            await ws.send_json({"method": "subscribe", "params": {"channel": "trade", "symbol": ["NOPE/USD"]},
                                "req_id": 7})
            err = await ws.receive_json(timeout=2)
            assert err["success"] is False and "Currency pair not supported" in err["error"]
        now = sim.now()
        q = f"exchange=kraken&symbol=BTC/USD&since={now - 120_000}&until={now - 60_000}"
        async with http.get(f"{sim.url}/_sim/trades?{q}") as r:
            assert await r.json() == sim.trades("kraken", "BTC/USD", now - 120_000, now - 60_000)
        async with http.get(f"{sim.url}/_sim/candles?{q}") as r:
            assert await r.json() == sim.candles("kraken", "BTC/USD", now - 120_000, now - 60_000)
        async with http.post(f"{sim.url}/_sim/faults", json={"bogus": 1}) as r:
            assert r.status == 400
        async with http.get(f"{sim.url}/_sim/stats") as r:
            assert (await r.json())["exchanges"]["kraken"]["connections_total"] == 1


async def test_binance_server_pings_are_sent() -> None:
    async with Simulator(seed=1, symbols={"binance": ["BTC/USDT@1"]}, ping_interval_s=0.1) as s, \
            aiohttp.ClientSession() as http, \
            http.ws_connect(f"{s.url}/binance/stream.binance.com/ws/0", autoping=False) as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 3})
        kinds = set()
        for _ in range(20):
            msg = await ws.receive(timeout=2)
            kinds.add(msg.type)
            if msg.type == aiohttp.WSMsgType.TEXT and msg.json().get("id") == 3:
                assert msg.json() == {"result": None, "id": 3}
            if aiohttp.WSMsgType.PING in kinds:
                break
        assert aiohttp.WSMsgType.PING in kinds


async def test_truncated_json_frame_silences_ccxt_receive_loop(sim: Simulator) -> None:
    # documents a ccxt weakness the service must survive: after a truncated JSON frame ccxt stops reading
    # that socket (no error is raised) until its keepalive gives up, so only silence detection notices it
    ex = _pro(sim, "binance")
    try:
        await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 5)
        sim.set_faults({"malformed_json": 1, "exchange": "binance"})
        with pytest.raises(asyncio.TimeoutError):
            for _ in range(1000):
                await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 1.0)
    finally:
        await ex.close()
    assert sim.stats()["exchanges"]["binance"]["faults"]["counts"]["malformed_json"] == 1


async def test_periodic_drop_and_latency(sim: Simulator) -> None:
    ex = _pro(sim, "kraken")
    rest = _rest(sim, "kraken")
    try:
        await rest.load_markets()
        sim.set_faults({"latency_ms": 300, "exchange": "kraken"})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await rest.fetch_trades("BTC/USD")
        assert loop.time() - t0 >= 0.3
        sim.set_faults({"latency_ms": 0, "ws_drop_every_s": 0.4, "exchange": "kraken"})
        await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5)
        with pytest.raises(ccxt.NetworkError):
            for _ in range(1000):
                await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5)
        sim.set_faults({"ws_drop_every_s": 0, "exchange": "kraken"})
        assert await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5)
    finally:
        await ex.close()
        await rest.close()
    assert sim.stats()["exchanges"]["kraken"]["faults"]["counts"]["ws_drop"] >= 1


async def test_two_simulators_same_seed_agree_on_overlap() -> None:
    t = 1_795_000_000_000
    a = Simulator(seed=3, symbols={"kraken": ["BTC/USD@5"]}, history_days=0.02, clock=lambda: t)
    b = Simulator(seed=3, symbols={"kraken": ["BTC/USD@5"]}, history_days=0.02, clock=lambda: t + 600_000)
    c = Simulator(seed=4, symbols={"kraken": ["BTC/USD@5"]}, history_days=0.02, clock=lambda: t)
    async with a, b, c:
        lo, hi = b.genesis_ms, t
        assert a.genesis_ms < lo < hi
        overlap = a.trades("kraken", "BTC/USD", lo, hi)
        assert len(overlap) > 100 and overlap == b.trades("kraken", "BTC/USD", lo, hi)
        closed = hi - hi % BUCKET_MS  # for `a` the minute containing its now is still forming
        assert a.candles("kraken", "BTC/USD", lo, hi) == b.candles("kraken", "BTC/USD", lo, closed)
        assert len(b.candles("kraken", "BTC/USD", lo, hi + BUCKET_MS)) > len(a.candles("kraken", "BTC/USD", lo, hi))
        assert overlap != c.trades("kraken", "BTC/USD", lo, hi)
        assert a.trades("kraken", "BTC/USD", t - 60_000, t + 600_000)[-1]["timestamp"] <= t  # nothing after now


async def test_burst_mode_streams_real_future_trades_fast() -> None:
    async with Simulator(seed=2, symbols={"kraken": ["BTC/USD@200"]}, history_days=0.001, burst=True) as s:
        ex = _pro(s, "kraken")
        ex.options["tradesLimit"] = 100_000
        got: list[dict[str, Any]] = []
        try:
            while len(got) < 5000:
                got.extend(await asyncio.wait_for(ex.watch_trades("BTC/USD"), 5))
        finally:
            await ex.close()
        assert got[-1]["timestamp"] > s.now()  # ahead of the wall clock: the market runs as fast as the socket
        truth = [t.truth() for t in s.market("kraken", "BTC/USD").trades(got[0]["timestamp"],
                                                                          got[-1]["timestamp"] + 1)]
        assert _as_truth(got) == truth


async def test_binance_from_id_pages(sim: Simulator) -> None:
    ex = _rest(sim, "binance")
    now = sim.now()
    truth = sim.trades("binance", "BTC/USDT", now - 3 * BUCKET_MS, now - BUCKET_MS)
    got: list[dict[str, Any]] = []
    try:
        from_id = truth[0]["id"]
        while len(got) < len(truth):
            page = await ex.fetch_trades("BTC/USDT", limit=500, params={"fromId": from_id})
            got.extend(page)
            from_id = str(int(page[-1]["id"]) + 1)
    finally:
        await ex.close()
    assert _as_truth(got[:len(truth)]) == truth
