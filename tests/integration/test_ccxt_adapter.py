"""CcxtExchange against the in-process simulator: real ccxt REST and ccxt.pro clients on loopback."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from fullon_ohlcv_service.adapters.ccxt_exchange import CcxtExchange, check_exchange_supported
from fullon_ohlcv_service.errors import ExchangeUnsupported, RateLimited, SymbolUnknown, TransientError
from fullon_ohlcv_service.models import Candle, ExchangeSpec, Trade
from fullon_ohlcv_service.simulator.server import ScaledClock, Simulator

EXCHANGES = ("kraken", "binance")
SYMBOLS = {
    "kraken": ("BTC/USD@10", "ETH/USD@10", "SOL/USD@4"),
    "binance": ("BTC/USDT@10", "ETH/USDT@10", "SOL/USDT@4"),
}
MINUTE = 60_000


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    # steady: tests here count the trades of a few live seconds, which a quiet stretch would starve
    async with Simulator(seed=7, symbols=SYMBOLS, history_days=0.012, tick_s=0.02, steady=True) as s:
        yield s


Row = tuple[int, str, float, float, str]


def _truth(sim: Simulator, name: str, symbol: str, since: int, until: int) -> list[Row]:
    return [(t["timestamp"], t["id"], t["price"], t["amount"], t["side"])
            for t in sim.trades(name, symbol, since, until)]


def _rows(trades: list[Trade]) -> list[Row]:
    return [(t.ts, t.id, t.price, t.amount, t.side) for t in trades]


async def _page_all_trades(ex: CcxtExchange, symbol: str, since: int, until: int) -> tuple[list[Trade], int]:
    """Page like the collector: cursor = last ts (inclusive), dedup by id, stop at no progress or ``until``."""
    seen: dict[str, Trade] = {}
    cursor, pages = since, 0
    while True:
        page = await ex.fetch_trades(symbol, cursor)
        pages += 1
        assert page == sorted(page, key=lambda t: (t.ts, int(t.id)))
        assert all(t.ts >= cursor for t in page)
        new = [t for t in page if t.id not in seen]
        seen.update((t.id, t) for t in new)
        if not new or page[-1].ts >= until:
            break
        cursor = page[-1].ts
    trades = sorted((t for t in seen.values() if since <= t.ts < until), key=lambda t: (t.ts, int(t.id)))
    return trades, pages


async def test_unsupported_exchange_and_unknown_symbol(sim: Simulator) -> None:
    with pytest.raises(ExchangeUnsupported, match="bitmex"):
        check_exchange_supported("bitmex")
    with pytest.raises(ExchangeUnsupported):
        CcxtExchange(ExchangeSpec(name="bitmex"), simulator=sim.url)
    async with CcxtExchange(ExchangeSpec(name="kraken"), simulator=sim.url) as ex:
        with pytest.raises(SymbolUnknown):
            await ex.fetch_trades("DOGE/USD", sim.genesis_ms)
        with pytest.raises(SymbolUnknown):
            await ex.watch_trades(["BTC/USD", "DOGE/USD"])


@pytest.mark.parametrize("name", EXCHANGES)
async def test_exchange_rejecting_a_listed_symbol_gives_symbol_unknown(sim: Simulator, name: str) -> None:
    """A market ccxt knows but the exchange rejects (delisted): the exchange's own error -> SymbolUnknown."""
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        first = sorted(await ex.load_markets())[0]
        rest = ex._rest
        market = dict(rest.markets[first])
        market.update(symbol=f"DOGE/{market['quote']}", id=f"DOGE{market['quoteId']}", base="DOGE", baseId="DOGE")
        rest.set_markets([*rest.markets.values(), market], rest.currencies)
        assert ex._markets is not None
        ex._markets.add(market["symbol"])
        with pytest.raises(SymbolUnknown):
            await ex.fetch_trades(market["symbol"], sim.genesis_ms)
        with pytest.raises(SymbolUnknown):
            await ex.fetch_ohlcv(market["symbol"], sim.genesis_ms)
        assert await ex.fetch_trades(first, sim.genesis_ms)  # the others keep working


@pytest.mark.parametrize("name", EXCHANGES)
async def test_load_markets_and_paginated_trades_equal_ground_truth(sim: Simulator, name: str) -> None:
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        assert await ex.load_markets() == set(sim.symbols(name))
        until = sim.now() - 1000
        symbol = sim.symbols(name)[0]
        got, pages = await _page_all_trades(ex, symbol, sim.genesis_ms, until)
        truth_all = _truth(sim, name, symbol, sim.genesis_ms, until)
        # a steady 10 trades/s over ~17 minutes: about 10000 trades, several pages
        assert len(truth_all) > 5000 and pages > 1
        assert _rows(got) == truth_all
        # a page from any since starts exactly at that ms
        mid = truth_all[len(truth_all) // 2][0]
        page = await ex.fetch_trades(symbol, mid, limit=50)
        assert _rows(page) == [r for r in truth_all if r[0] >= mid][:50]


@pytest.mark.parametrize("name", EXCHANGES)
async def test_full_page_inside_one_millisecond_is_extended(sim: Simulator, name: str) -> None:
    """limit=1 makes every page 'full inside the since ms': the adapter must still move past that ms."""
    symbol = sim.symbols(name)[0]
    truth = _truth(sim, name, symbol, sim.genesis_ms, sim.now() - 1000)
    counts = collections.Counter(r[0] for r in truth)
    # a millisecond with one trade: the simulator's Kraken cursor cannot address trades inside a ms
    since = next(r[0] for r in truth[100:] if counts[r[0]] == 1)
    at = [r for r in truth if r[0] == since]
    after = next(r for r in truth if r[0] > since)
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        page = await ex.fetch_trades(symbol, since, limit=1)
        assert _rows(page) == [*at, after]
        before = since - 1
        if not any(r[0] == before for r in truth):  # a page that does not start inside its ms: no extension
            assert _rows(await ex.fetch_trades(symbol, before, limit=1)) == [at[0]]


async def test_binance_steps_over_quiet_hours() -> None:
    symbols = {"binance": ("BTC/USDT@0.0002", "ETH/USDT@0")}
    async with Simulator(seed=11, symbols=symbols, history_days=1.0) as s, \
            CcxtExchange(ExchangeSpec(name="binance"), simulator=s.url) as ex:
        until = s.now() - 1000
        truth = _truth(s, "binance", "BTC/USDT", s.genesis_ms, until)
        points = [s.genesis_ms] + [r[0] for r in truth]
        assert len(truth) >= 2 and max(b - a for a, b in itertools.pairwise(points)) > 3_600_000
        got, _ = await _page_all_trades(ex, "BTC/USDT", s.genesis_ms, until)
        assert _rows(got) == truth
        # from a trade followed by an hour or more of silence, the page still reaches the next trade
        lonely = next((a, b) for a, b in itertools.pairwise(truth) if b[0] - a[0] > 3_600_000 and a[0] != b[0])
        page = _rows(await ex.fetch_trades("BTC/USDT", lonely[0][0]))
        assert page[0] == lonely[0] and lonely[1] in page
        t0 = time.monotonic()
        assert await ex.fetch_trades("ETH/USDT", s.genesis_ms) == []  # no trade at all until now
        assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("name", EXCHANGES)
async def test_fetch_ohlcv_pages_equal_ground_truth(sim: Simulator, name: str) -> None:
    symbol = sim.symbols(name)[0]
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        got: dict[int, Candle] = {}
        since = sim.genesis_ms
        for _ in range(100):
            page = await ex.fetch_ohlcv(symbol, since, limit=5)
            if not page or page[-1].ts < since:
                break
            got.update((c.ts, c) for c in page)
            if page[-1].ts == since:
                break
            since = page[-1].ts
        now = sim.now()
        truth = sim.candles(name, symbol, sim.genesis_ms, now)
        final = [c for c in got.values() if c.final]
        assert len(final) >= len(truth) - 1 >= 12
        by_ts = {c.ts: c for c in final}
        for row in truth:
            if row[0] in by_ts:
                c = by_ts[row[0]]
                assert [c.ts, c.open, c.high, c.low, c.close, c.volume] == pytest.approx(row)
        newest = max(got)
        assert got[newest].final is (newest + MINUTE <= time.time() * 1000)
        assert all(c.final for c in got.values() if c.ts + MINUTE <= now - 1000)


async def _collect_live(ex: CcxtExchange, symbols: list[str], seconds: float) -> list[tuple[str, Trade]]:
    out: list[tuple[str, Trade]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.extend(await asyncio.wait_for(ex.watch_trades(symbols), 10))
    return out


def _check_live(sim: Simulator, name: str, got: list[tuple[str, Trade]], since: int) -> int:
    """Every symbol's live trades in [since, newest received - 300 ms) equal the ground truth.

    One socket carries all symbols in time order, so once a trade arrived, every trade of any symbol
    300 ms older has arrived too. Returns how many trades were compared.
    """
    until = max(t.ts for _, t in got) - 300
    assert until > since
    checked = 0
    for symbol in sim.symbols(name):
        mine = {t.id: t for s, t in got if s == symbol and since <= t.ts < until}
        rows = sorted(_rows(list(mine.values())), key=lambda r: (r[0], int(r[1])))
        assert rows == _truth(sim, name, symbol, since, until), symbol
        checked += len(rows)
    return checked


@pytest.mark.parametrize("name", EXCHANGES)
async def test_watch_trades_all_symbols_equal_ground_truth(sim: Simulator, name: str) -> None:
    symbols = sim.symbols(name)
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        first = await asyncio.wait_for(ex.watch_trades(symbols), 10)
        assert first
        since = sim.now()
        got = await _collect_live(ex, symbols, 2.5)
        assert _check_live(sim, name, got, since) > 30


@pytest.mark.parametrize("name", EXCHANGES)
async def test_ws_drop_gives_transient_error_then_reconnects(sim: Simulator, name: str) -> None:
    symbols = sim.symbols(name)
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        await asyncio.wait_for(ex.watch_trades(symbols), 10)
        # a drop while a watch is pending
        await asyncio.wait_for(ex.watch_trades(symbols), 10)  # drain
        pending = asyncio.ensure_future(ex.watch_trades(symbols))
        await asyncio.sleep(0)
        sim.set_faults({"ws_drop": True, "exchange": name})
        with pytest.raises(TransientError):
            for _ in range(50):  # trades already buffered may come first
                await asyncio.wait_for(pending, 10)
                pending = asyncio.ensure_future(ex.watch_trades(symbols))
        assert await asyncio.wait_for(ex.watch_trades(symbols), 10)  # reconnected and resubscribed
        since = sim.now()
        got = await _collect_live(ex, symbols, 1.5)
        assert _check_live(sim, name, got, since) > 10
        # a drop while nobody is watching is still reported, once
        sim.set_faults({"ws_drop": True, "exchange": name})
        await asyncio.sleep(0.3)
        with pytest.raises(TransientError, match="disconnect"):
            for _ in range(50):
                await asyncio.wait_for(ex.watch_trades(symbols), 10)
        await _collect_live(ex, symbols, 0.5)  # buffered trades first, then a reconnect
        since = sim.now()
        got = await _collect_live(ex, symbols, 1.5)
        assert _check_live(sim, name, got, since) > 10
        assert sim.stats()["exchanges"][name]["connections_total"] >= 3
        assert ex.disconnects >= 2


@pytest.mark.parametrize("name", EXCHANGES)
async def test_rest_429_is_rate_limited(sim: Simulator, name: str) -> None:
    symbol = sim.symbols(name)[0]
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        await ex.load_markets()
        sim.set_faults({"rest_429": 1, "exchange": name})
        with pytest.raises(RateLimited):
            await ex.fetch_trades(symbol, sim.genesis_ms)
        assert await ex.fetch_trades(symbol, sim.genesis_ms)
        sim.set_faults({"rest_5xx": 1, "exchange": name})
        with pytest.raises(TransientError):
            await ex.fetch_ohlcv(symbol, sim.genesis_ms)
        assert await ex.fetch_ohlcv(symbol, sim.genesis_ms)


@pytest.mark.parametrize("name", EXCHANGES)
async def test_malformed_frames_do_not_kill_the_stream(sim: Simulator, name: str) -> None:
    symbols = sim.symbols(name)
    async with CcxtExchange(ExchangeSpec(name=name), simulator=sim.url) as ex:
        await asyncio.wait_for(ex.watch_trades(symbols), 10)
        sim.set_faults({"malformed": 5, "exchange": name})
        errors = 0
        received = 0
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            try:
                received += len(await asyncio.wait_for(ex.watch_trades(symbols), 5))
            except TransientError:
                errors += 1
        assert sim.stats()["exchanges"][name]["faults"]["counts"].get("malformed", 0) == 5
        assert received > 10
        assert errors <= ex.malformed_frames
        assert ex.disconnects == 0  # the socket stayed up
        since = sim.now()
        got = await _collect_live(ex, symbols, 1.0)
        assert _check_live(sim, name, got, since) > 5


def _prefix_of(c: Candle, truth: list[float]) -> bool:
    """A live update is what the minute held so far: its open, within its range, no more volume."""
    ts, o, h, lo, _, v = truth
    return c.ts == ts and c.open == pytest.approx(o) and lo - 1e-9 <= c.low <= c.high <= h + 1e-9 \
        and lo - 1e-9 <= c.close <= h + 1e-9 and 0 < c.volume <= v + 1e-9


@pytest.mark.parametrize("name", EXCHANGES)
async def test_watch_ohlcv_is_provisional_and_equals_truth(name: str) -> None:
    """Live candles are provisional only (final ones come from trades and REST, even on Binance's closed
    kline); each update is the forming minute's truth so far, and a minute's last update is its truth."""
    clock = ScaledClock(40.0)  # a minute every 1.5 s
    symbols = {name: SYMBOLS[name][:1]}
    async with Simulator(seed=5, symbols=symbols, history_days=0.01, clock=clock, tick_s=0.02) as s, \
            CcxtExchange(ExchangeSpec(name=name), simulator=s.url) as ex:
        symbol = s.symbols(name)[0]
        start = s.now()
        updates: list[Candle] = []
        end = time.monotonic() + 5
        while time.monotonic() < end:
            got = await asyncio.wait_for(ex.watch_ohlcv(symbol), 10)
            assert [c.ts for c in got] == sorted({c.ts for c in got})  # one version per minute, oldest first
            updates += got
        newest = max(c.ts for c in updates)
        await asyncio.sleep(max(0, newest + MINUTE - s.now()) / 40_000 + 0.2)  # every minute seen has closed
        assert s.now() >= newest + MINUTE  # so its truth is known
        truth = {row[0]: row for row in s.candles(name, symbol, min(c.ts for c in updates), s.now())}
    assert updates and not any(c.final for c in updates)
    assert all(_prefix_of(c, truth[c.ts]) for c in updates), [c for c in updates if not _prefix_of(c, truth[c.ts])]
    last = {c.ts: c for c in updates}
    closed = [ts for ts in sorted(last) if start < ts < newest]  # opened while we watched, and a later one came
    assert len(closed) >= 1 and len(updates) >= 3
    for ts in closed:
        c = last[ts]
        assert [c.ts, c.open, c.high, c.low, c.close, c.volume] == pytest.approx(truth[ts])
