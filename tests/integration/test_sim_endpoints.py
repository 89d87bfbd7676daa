"""The simulator as plain clients connect to real venues: Binance raw and combined streams, Kraken websocket v1,
TLS with a CA file, a refused rate instead of a hidden cap, and history aligned on a minute or a UTC day.

Every new frame is checked against the venue's documented example (tests/wire_docs.py) and every trade
against the simulator's ground truth.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.simulator.market import BUCKET_MS, MAX_STEADY_RATE, max_rate
from fullon_ohlcv_service.simulator.server import DAY_MS, Simulator
from tests import wire_docs as docs

SYMBOLS = {"kraken": ["BTC/USD@40", "ETH/USD@20"], "binance": ["BTC/USDT@40", "ETH/USDT@20"]}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=31, symbols=SYMBOLS, history_days=0.01, tick_s=0.02, steady=True) as s:
        yield s


def ws_url(sim: Simulator, path: str) -> str:
    return sim.url.replace("http", "ws", 1) + path


async def frames(ws: aiohttp.ClientWebSocketResponse, n: int, wait_s: float = 10.0) -> list[Any]:
    """The next ``n`` JSON frames (text), failing after ``wait_s`` seconds."""
    out: list[Any] = []

    async def read() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
                if len(out) >= n:
                    return
        raise AssertionError(f"socket closed after {len(out)} frames")

    await asyncio.wait_for(read(), wait_s)
    return out


def truth_by_id(sim: Simulator, exchange: str, symbol: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in sim.trades(exchange, symbol, 0, sim.now() + 1)}


def check_binance_trade(sim: Simulator, event: dict[str, Any], symbol: str) -> None:
    tid = str(event["a"] if event["e"] == "aggTrade" else event["t"])
    want = truth_by_id(sim, "binance", symbol)[tid]
    assert (event["T"], float(event["p"]), float(event["q"])) == (want["timestamp"], want["price"], want["amount"])
    assert ("sell" if event["m"] else "buy") == want["side"]


# ---- Binance -----------------------------------------------------------------------------------------


async def test_binance_raw_stream_in_the_url_starts_at_once(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(ws_url(sim, "/binance/stream.binance.com/ws/btcusdt@aggTrade")) as ws:
        got = await frames(ws, 5)  # nothing sent: the stream named in the URL runs at once
    for event in got:
        assert docs.same_shape(docs.BINANCE_AGG_TRADE, event), event
        assert event["s"] == "BTCUSDT"
        check_binance_trade(sim, event, "BTC/USDT")
    assert [e["a"] for e in got] == sorted(e["a"] for e in got)


async def test_binance_raw_path_with_several_streams_and_trade_payload(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(ws_url(sim, "/binance/stream.binance.com/ws/btcusdt@trade/ethusdt@trade")) as ws:
        got = await frames(ws, 12)
    assert {e["s"] for e in got} == {"BTCUSDT", "ETHUSDT"}
    for event in got:
        assert set(event) == set(docs.BINANCE_TRADE) - {"b", "a"}, event  # no order ids: the sim has no orders
        assert all(docs.same_shape(docs.BINANCE_TRADE[k], event[k]) for k in event)
        check_binance_trade(sim, event, "BTC/USDT" if event["s"] == "BTCUSDT" else "ETH/USDT")


async def test_binance_combined_endpoint_wraps_every_event(sim: Simulator) -> None:
    streams = "btcusdt@aggTrade/ethusdt@aggTrade/btcusdt@kline_1m"
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(ws_url(sim, f"/binance/stream.binance.com/stream?streams={streams}")) as ws:
        got = await frames(ws, 30)
        await ws.send_json({"method": "GET_PROPERTY", "params": ["combined"], "id": 7})
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 8})
        replies = [f for f in await frames(ws, 40) if "id" in f]
    assert {"result": True, "id": 7} in replies
    assert {"result": sorted(streams.split("/")), "id": 8} in replies
    seen = set()
    for frame in got:
        assert set(frame) == {"stream", "data"}, frame
        event, stream = frame["data"], frame["stream"]
        seen.add(stream)
        if stream.endswith("@kline_1m"):
            assert docs.same_shape(docs.BINANCE_KLINE, event), event
            assert event["k"]["t"] % BUCKET_MS == 0 and event["k"]["i"] == "1m"
        else:
            assert docs.same_shape(docs.BINANCE_COMBINED, frame), frame
            assert stream == event["s"].lower() + "@aggTrade"
            check_binance_trade(sim, event, "BTC/USDT" if event["s"] == "BTCUSDT" else "ETH/USDT")
    assert seen == set(streams.split("/"))


async def test_binance_set_property_combined_on_a_raw_socket(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(ws_url(sim, "/binance/stream.binance.com/ws")) as ws:
        await ws.send_json({"method": "SET_PROPERTY", "params": ["combined", True], "id": 1})
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 2})
        await ws.send_json({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 3})
        got = await frames(ws, 8)
    assert got[0] == {"result": None, "id": 1} and docs.same_shape(docs.BINANCE_SUBSCRIBED, got[1])
    assert {"code": 1, "msg": "Invalid value type: expected Boolean", "id": 3} in got
    events = [f for f in got if "stream" in f]
    assert events and all(f["stream"] == "btcusdt@aggTrade" for f in events)


async def test_ccxt_still_uses_the_numbered_raw_endpoint(sim: Simulator) -> None:
    ex = ccxt_pro.binance(sim.overrides("binance"))
    try:
        trades = await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 10)
        urls = list(ex.clients)
    finally:
        await ex.close()
    assert trades and urls and all(u.endswith("/ws/0") for u in urls)  # /ws/<n> names no stream: ccxt subscribes


# ---- Kraken websocket v1 -----------------------------------------------------------------------------


async def test_kraken_v1_status_ping_subscribe_trades_and_ohlc(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(sim, "/kraken/ws.kraken.com")) as ws:
        (status,) = await frames(ws, 1)
        assert docs.same_shape(docs.KRAKEN_V1_SYSTEM_STATUS, status) and status["status"] == "online"
        await ws.send_json({"event": "ping", "reqid": 42})
        assert (await frames(ws, 1))[0] == docs.KRAKEN_V1_PONG
        await ws.send_json({"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "trade"},
                            "reqid": 42})
        await ws.send_json({"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "ohlc",
                                                                                      "interval": 1}, "reqid": 43})
        await ws.send_json({"event": "subscribe", "pair": ["XBT/FOO"], "subscription": {"name": "trade"},
                            "reqid": 44})
        got = await frames(ws, 40)
    statuses = [f for f in got if isinstance(f, dict) and f.get("event") == "subscriptionStatus"]
    ok = [s for s in statuses if s["status"] == "subscribed"]
    assert len(ok) == 2 and all(docs.same_shape({**docs.KRAKEN_V1_SUBSCRIBED, "subscription": s["subscription"]},
                                                s) for s in ok)
    channels = {s["channelName"]: s["channelID"] for s in ok}
    assert set(channels) == {"trade", "ohlc-1"}
    (err,) = [s for s in statuses if s["status"] == "error"]
    assert docs.same_shape(docs.KRAKEN_V1_SUBSCRIBE_ERROR, err) and "XBT/FOO" in err["errorMessage"]
    truth = {(t["timestamp"], t["price"], t["amount"], t["side"])
             for t in sim.trades("kraken", "BTC/USD", 0, sim.now() + 1)}
    trades = [f for f in got if isinstance(f, list) and f[2] == "trade"]
    ohlc = [f for f in got if isinstance(f, list) and f[2] == "ohlc-1"]
    assert trades and ohlc
    rows = 0
    for frame in trades:
        assert docs.same_shape(docs.KRAKEN_V1_TRADE, frame), frame
        assert frame[0] == channels["trade"] and frame[3] == "XBT/USD"
        for price, volume, when, side, _kind, _misc in frame[1]:
            ts = int(float(when) * 1000)
            assert (ts, float(price), float(volume), "buy" if side == "b" else "sell") in truth
            rows += 1
    assert rows >= 50  # the snapshot of the last 50 trades, then the live ones
    for frame in ohlc:
        assert docs.same_shape(docs.KRAKEN_V1_OHLC, frame), frame
        last, end = float(frame[1][0]), float(frame[1][1])
        minute = int(end * 1000) - BUCKET_MS
        assert minute % BUCKET_MS == 0 and minute / 1000 <= last < end
        candle = sim.market("kraken", "BTC/USD").candle(minute, int(last * 1000))
        assert candle is not None and frame[1][2:8] == [candle.open, candle.high, candle.low, candle.close,
                                                          candle.vwap, candle.volume]


async def test_kraken_v1_heartbeat_and_unsubscribe() -> None:
    async with Simulator(seed=8, symbols={"kraken": ["BTC/USD@0.1"]}, history_days=0.01, tick_s=0.02) as quiet, \
            aiohttp.ClientSession() as http, http.ws_connect(ws_url(quiet, "/kraken/ws.kraken.com/")) as ws:
        await frames(ws, 1)
        await ws.send_json({"event": "subscribe", "pair": ["BTC/USD"], "subscription": {"name": "trade"}})
        got = await frames(ws, 1)
        while got[-1] != docs.KRAKEN_V1_HEARTBEAT:  # a quiet second: Kraken's sign of life
            got += await frames(ws, 1, wait_s=5)
        await ws.send_json({"event": "unsubscribe", "pair": ["BTC/USD"], "subscription": {"name": "trade"}})
        while not (isinstance(got[-1], dict) and got[-1].get("status") == "unsubscribed"):
            got += await frames(ws, 1, wait_s=5)
    statuses = [f["status"] for f in got if isinstance(f, dict) and f.get("event") == "subscriptionStatus"]
    assert statuses == ["subscribed", "unsubscribed"]
    assert got[-1]["channelName"] == "trade" and got[-1]["pair"] == "BTC/USD"


async def test_kraken_v2_is_unchanged_beside_v1(sim: Simulator) -> None:
    ex = ccxt_pro.kraken(sim.overrides("kraken"))
    try:
        trades = await asyncio.wait_for(ex.watch_trades("BTC/USD"), 10)
    finally:
        await ex.close()
    assert trades and trades[-1]["id"] in truth_by_id(sim, "kraken", "BTC/USD")


# ---- TLS ---------------------------------------------------------------------------------------------


async def test_tls_serves_wss_and_https_to_clients_that_trust_the_ca_file(tmp_path: Any) -> None:
    async with Simulator(seed=3, symbols={"binance": ["BTC/USDT@40"]}, history_days=0.01, tick_s=0.02,
                         steady=True, tls=True, tls_dir=tmp_path) as s:
        assert s.url.startswith("https://127.0.0.1:") and s.ca_file == str(tmp_path / "ca.pem")
        assert s.startup_line()["ca_file"] == s.ca_file
        ctx = ssl.create_default_context(cafile=s.ca_file)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{s.url}/binance/api.binance.com/api/v3/time", ssl=ctx) as r:
                assert (await r.json())["serverTime"] > 0
            async with http.ws_connect(s.url.replace("https", "wss") + "/binance/stream.binance.com/ws/"
                                       "btcusdt@aggTrade", ssl=ctx) as ws:
                assert docs.same_shape(docs.BINANCE_AGG_TRADE, (await frames(ws, 1))[0])
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not trusted without the CA file
                await http.get(f"{s.url}/binance/api.binance.com/api/v3/time")
        rest = ccxt_async.binance(s.overrides("binance"))  # ccxt: the overrides carry its `cafile`
        pro = ccxt_pro.binance(s.overrides("binance"))
        try:
            assert "BTC/USDT" in await rest.load_markets()
            assert await asyncio.wait_for(pro.watch_trades("BTC/USDT"), 10)
        finally:
            await rest.close()
            await pro.close()
    assert not (tmp_path / "ca.pem").exists() or (tmp_path / "ca.pem").read_bytes().startswith(b"-----BEGIN")


def test_tls_cli_prints_the_ca_file_and_removes_its_temporary_directory() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fullon_ohlcv_service", "simulator", "--tls", "--exchanges",
                             "kraken", "--history-days", "0.001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["url"].startswith("https://") and line["ca_file"].endswith("ca.pem")
        assert line["exchanges"]["kraken"]["cafile"] == line["ca_file"]
        ctx = ssl.create_default_context(cafile=line["ca_file"])
        import urllib.request

        with urllib.request.urlopen(f"{line['url']}/kraken/api.kraken.com/0/public/Time", context=ctx,
                                    timeout=5) as r:
            assert json.load(r)["error"] == []
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    import pathlib

    assert not pathlib.Path(line["ca_file"]).exists()


# ---- rate and history ----------------------------------------------------------------------------------


def test_a_rate_above_what_the_market_can_emit_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        Simulator(symbols={"binance": ["BTC/USDT@1000"]}, steady=True)
    msg = str(info.value)
    assert "\n" not in msg and "1000" in msg and f"{MAX_STEADY_RATE:g}" in msg
    with pytest.raises(ConfigError, match="bursts"):
        Simulator(symbols={"binance": [f"BTC/USDT@{max_rate(False) + 1:g}"]})
    Simulator(symbols={"binance": [f"BTC/USDT@{MAX_STEADY_RATE:g}"]}, steady=True)  # the limit itself is served
    res = subprocess.run([sys.executable, "-m", "fullon_ohlcv_service", "simulator", "--rate", "5000"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 78 and len(res.stderr.strip().splitlines()) == 1 and "5000" in res.stderr


async def test_the_limit_rate_is_served_in_full() -> None:
    sim = Simulator(seed=4, symbols={"binance": [f"BTC/USDT@{MAX_STEADY_RATE:g}"]}, steady=True,
                    history_days=0.05)
    async with sim:
        minute = sim.genesis_ms + 10 * BUCKET_MS
        counts = [len(sim.trades("binance", "BTC/USDT", m, m + BUCKET_MS))
                  for m in range(minute, minute + 5 * BUCKET_MS, BUCKET_MS)]
    assert sum(counts) / len(counts) == pytest.approx(MAX_STEADY_RATE * 60, rel=0.01)
    assert max(counts) < BUCKET_MS  # never cut to one trade per millisecond


@pytest.mark.parametrize(("start", "unit"), [("minute", BUCKET_MS), ("day", DAY_MS)])
async def test_history_start_aligns_genesis(start: str, unit: int) -> None:
    async with Simulator(seed=5, symbols={"binance": ["BTC/USDT@5"]}, history_days=0.5,
                         history_start=start) as sim:
        assert sim.genesis_ms % unit == 0
        assert sim.now() - sim.genesis_ms >= 0.5 * DAY_MS
        if start == "day":
            assert sim.now() - sim.genesis_ms < 1.5 * DAY_MS
        first = sim.trades("binance", "BTC/USDT", 0, sim.genesis_ms + BUCKET_MS)
        assert first and first[0]["timestamp"] >= sim.genesis_ms  # trades from the very first minute
        assert sim.stats()["genesis_ms"] == sim.genesis_ms


async def test_history_start_at_an_instant_and_bad_values() -> None:
    t = 1_780_000_000_000
    start = t - 3_600_000 - 1234
    async with Simulator(seed=5, symbols={"binance": ["BTC/USDT@5"]}, history_start=start,
                         clock=lambda: t) as sim:
        assert sim.genesis_ms == start - start % BUCKET_MS
    with pytest.raises(ConfigError):
        Simulator(symbols={"binance": ["BTC/USDT@5"]}, history_start="week")
    with pytest.raises(ConfigError):
        Simulator(symbols={"binance": ["BTC/USDT@5"]}, history_start=t, clock=lambda: t - 1)


def test_history_start_cli_refuses_a_bad_value_in_one_line() -> None:
    res = subprocess.run([sys.executable, "-m", "fullon_ohlcv_service", "simulator", "--history-start", "soon"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 78 and "--history-start" in res.stderr and len(res.stderr.strip().splitlines()) == 1
