"""The ccxt adapter's REST request outcomes (ok, rate_limited, 5xx, error) against the in-process simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest

from fullon_ohlcv_service.adapters.ccxt_exchange import CcxtExchange
from fullon_ohlcv_service.collectors.backfill import Retry
from fullon_ohlcv_service.errors import RateLimited, SymbolUnknown, TransientError
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.simulator.server import Simulator

SYMBOLS = {"kraken": ("BTC/USD@4",), "binance": ("BTC/USDT@4",)}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=3, symbols=SYMBOLS, history_days=0.005, tick_s=0.02, steady=True) as s:
        yield s


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_every_rest_request_is_counted_by_outcome(sim: Simulator, name: str) -> None:
    symbol = sim.symbols(name)[0]
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        await ex.load_markets()
        c = ex.rest_counters
        ok0 = c.requests["ok"]
        assert ok0 >= 1  # the markets
        sim.set_faults({"rest_429": 1, "exchange": name})
        with pytest.raises(RateLimited):
            await ex.fetch_ohlcv(symbol, sim.genesis_ms)
        sim.set_faults({"rest_5xx": 2, "exchange": name})
        for _ in range(2):
            with pytest.raises(TransientError):
                await ex.fetch_ohlcv(symbol, sim.genesis_ms)
        assert await ex.fetch_ohlcv(symbol, sim.genesis_ms)
        # a market ccxt knows but the exchange rejects: an exchange error, neither 429 nor 5xx
        rest = ex._rest
        market = dict(rest.markets[symbol])
        market.update(symbol=f"DOGE/{market['quote']}", id=f"DOGE{market['quoteId']}", base="DOGE", baseId="DOGE")
        rest.set_markets([*rest.markets.values(), market], rest.currencies)
        assert ex._markets is not None
        ex._markets.add(market["symbol"])
        with pytest.raises(SymbolUnknown):
            await ex.fetch_ohlcv(market["symbol"], sim.genesis_ms)
        assert c.requests == {"ok": ok0 + 1, "rate_limited": 1, "5xx": 2, "error": 1}
        assert c.rate_limit_waits == 0  # the simulator runs with ccxt's limiter off


async def test_ccxt_limiter_waits_are_counted(sim: Simulator) -> None:
    """With ccxt's rate limiter on (a base_url rewrite keeps it on), back-to-back requests wait and are counted."""
    spec = ExchangeSpec(name="kraken", params=MappingProxyType({"base_url": sim.url, "rate_limit_ms": "200"}))
    async with CcxtExchange(spec) as ex:
        await ex.load_markets()
        for _ in range(3):
            await ex.fetch_ohlcv("BTC/USD", sim.genesis_ms)
        assert ex.rest_counters.rate_limit_waits >= 2
        assert ex.rest_counters.rate_limit_wait_s >= 0.2


async def test_retry_counts_its_backoffs_after_a_429() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimited("429")
        if calls == 2:
            raise TransientError("503")
        return 7

    retry = Retry(initial=0.01, rate_limit_floor=0.02)
    assert await retry.call(flaky) == 7
    assert retry.rate_limit_waits == 1 and retry.rate_limit_wait_s == pytest.approx(0.02)


@pytest.mark.parametrize("name", ["kraken", "binance"])
async def test_one_websocket_drop_is_one_interruption(sim: Simulator, name: str) -> None:
    """A drop closes every socket of the exchange; close events that trickle in after the trade watcher
    was told belong to that drop, so the next call reconnects instead of reporting a second interruption
    (which the collector would count as a second reconnect and answer with a second catch-up)."""
    symbols = sim.symbols(name)
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        await asyncio.wait_for(ex.watch_trades(symbols), 10)
        pending = asyncio.ensure_future(ex.watch_trades(symbols))
        await asyncio.sleep(0)
        sim.set_faults({"ws_drop": True, "exchange": name})
        with pytest.raises(TransientError):
            for _ in range(50):  # trades already buffered may come first
                await asyncio.wait_for(pending, 10)
                pending = asyncio.ensure_future(ex.watch_trades(symbols))
        ex._on_disconnect("1006: the close of another socket of the same drop, seen late")
        assert await asyncio.wait_for(ex.watch_trades(symbols), 10)  # reconnected, no second error
        # a drop while nobody watches is reported once by the next call; late events are absorbed too
        sim.set_faults({"ws_drop": True, "exchange": name})
        await asyncio.sleep(0.3)
        with pytest.raises(TransientError, match="disconnect"):
            for _ in range(50):
                await asyncio.wait_for(ex.watch_trades(symbols), 10)
        ex._on_disconnect("1006: late")
        assert await asyncio.wait_for(ex.watch_trades(symbols), 10)
