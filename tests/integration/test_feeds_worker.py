"""Live feeds from a real `ohlcv-worker` on the simulator: fullon_cache's OHLCVCache read, and a trade-stream consumer
followed through a kill -9, a websocket drop and a Redis restart."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fullon_ohlcv_service.feed_layout import Gap, parse_entry
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.settings import Settings
from tests.integration.test_feed_redis import get_latest_ohlcv_bars
from tests.integration.test_worker_sim import (
    SYMBOLS,
    Sim,
    configure,
    live_and_synced,
    make_worker,
    sim,
    wait_for,
    worker_settings,
)

__all__ = ["sim"]  # the fixture, re-exported for pytest


async def _stored(settings: Settings, exchange: str, symbol: str) -> tuple[list[Trade], list[Candle]]:
    from fullon_ohlcv_service.adapters.stores import open_ohlcv_store

    async with open_ohlcv_store(settings.ohlcv_db, exchange) as store:
        return ([t async for t in store.iter_trades(symbol)],
                [c async for c in store.iter_candles(symbol) if c.final])


def stored(settings: Settings, exchange: str, symbol: str) -> tuple[list[Trade], list[Candle]]:
    return asyncio.run(_stored(settings, exchange, symbol))


def fullon_bars(r: redis.Redis, key_symbol: str) -> list[list[Any]]:
    return get_latest_ohlcv_bars(r, key_symbol, "1m", 10_000)


def as_bars(candles: list[Candle]) -> list[list[Any]]:
    return [[c.ts // 1000, c.open, c.high, c.low, c.close, c.volume] for c in candles]


def test_ohlcv_cache_reads_every_final_candle_of_a_run(tmp_path: Path, home: Path, sim: Sim, redis_url: str) -> None:
    """Default settings with a Redis cache publish candles: the OHLCVCache list holds exactly the stored finals."""
    settings = worker_settings(home, cache=redis_url)
    assert settings.publish_mode == "candles"
    configure(settings, "kraken", SYMBOLS["kraken"])
    w = make_worker(tmp_path, sim, "kraken", settings)
    w.start()
    try:
        assert w.proc is not None
        wait_for(lambda: live_and_synced(settings, "kraken", 3, w.proc.pid if w.proc else None), 60, "live", w)
        time.sleep(2.0)
        assert w.stop() == 0
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
    r = redis.Redis.from_url(redis_url)
    try:
        for spec in SYMBOLS["kraken"]:
            symbol = spec.split("@")[0]
            _, finals = stored(settings, "kraken", symbol)
            assert len(finals) > 30  # the simulator's hour of history, then live
            assert fullon_bars(r, "kraken:" + symbol.replace("/", "")) == as_bars(finals), symbol
        assert not r.exists("ohlcv:stream:kraken:trades")  # --publish candles: no trade stream
        candles = [parse_entry(f) for _, f in r.xrange("ohlcv:stream:kraken:candles")]
        last: dict[tuple[str, int], Candle] = {}
        for e in candles:
            assert not isinstance(e, Gap), e
            assert isinstance(e[1], Candle)
            last[(e[0], e[1].ts)] = e[1]
        _, btc = stored(settings, "kraken", "BTC/USD")
        assert all(last[("BTC/USD", c.ts)] == c for c in btc)  # the stream's last word on each minute is the store's
    finally:
        r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test only, with an append-only file, so a restart keeps the streams."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis-server flushes the AOF and exits
            self.proc.wait(10)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    d = tmp_path / "redis"
    d.mkdir()
    server = PrivateRedis(d)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Consumer(threading.Thread):
    """Follows a stream by entry id (XREAD BLOCK), reconnecting through outages, keeping every entry."""

    def __init__(self, port: int, key: str) -> None:
        super().__init__(daemon=True)
        self.port, self.key = port, key
        self.entries: list[tuple[str, Any]] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self) -> None:
        last = "0-0"
        client = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)
        while not self.done.is_set():
            try:
                got = client.xread({self.key: last}, count=1000, block=200)
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.2)
                continue
            for _, rows in got or []:
                for entry_id, fields in rows:
                    last = entry_id.decode()
                    self.entries.append((last, parse_entry(fields)))
        client.close()

    def finish(self, idle_s: float = 1.0) -> None:
        """Stop once nothing new arrived for ``idle_s``."""
        n = -1
        while n != len(self.entries):
            n = len(self.entries)
            time.sleep(idle_s)
        self.done.set()
        self.join(10)


def test_trade_stream_consumer_through_kill9_ws_drop_and_redis_restart(
        tmp_path: Path, home: Path, sim: Sim, aof_redis: PrivateRedis) -> None:
    """Every stored trade is in the stream or inside a gap marker's range; no entry twice; nothing unstored.

    The OHLCVCache list still holds every stored final candle exactly once, in order.
    """
    settings = worker_settings(home)
    configure(settings, "kraken", SYMBOLS["kraken"])
    w = make_worker(tmp_path, sim, "kraken", settings, "--publish", "all", "--feed-redis", aof_redis.url)
    consumer = Consumer(aof_redis.port, "ohlcv:stream:kraken:trades")
    consumer.start()
    w.start()
    try:
        assert w.proc is not None
        wait_for(lambda: live_and_synced(settings, "kraken", 3, w.proc.pid if w.proc else None), 60, "live", w)
        time.sleep(2.0)
        w.kill9()
        time.sleep(2.0)
        w.start()
        wait_for(lambda: live_and_synced(settings, "kraken", 3, w.proc.pid if w.proc else None), 60, "live again", w)
        sim.faults(ws_drop=True, exchange="kraken")
        time.sleep(2.0)
        aof_redis.stop()
        time.sleep(3.0)  # BTC/USD trades ~4/s: committed, not publishable
        aof_redis.start()
        wait_for(lambda: "feed recovered" in w.logs(), 20, "the feed to recover", w)
        time.sleep(1.0)
        assert w.stop() == 0
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
        consumer.finish()
    r = redis.Redis(port=aof_redis.port)
    try:
        gaps = [e for _, e in consumer.entries if isinstance(e, Gap)]
        trades = [e for _, e in consumer.entries if not isinstance(e, Gap)]
        assert any(g.reason == "redis unavailable" and g.count > 0 for g in gaps), gaps
        assert "websocket lost" in w.logs()
        for spec in SYMBOLS["kraken"]:
            symbol = spec.split("@")[0]
            rows, finals = stored(settings, "kraken", symbol)
            mine = [t for s, t in trades if s == symbol]
            twice = [i for i, n in Counter(t.id for t in mine).items() if n > 1]
            assert not twice, f"{symbol}: entries published twice: {twice[:5]}"
            by_id = {t.id: (t.ts, t.price, t.amount, t.side) for t in rows}  # the stream has no `type`
            unstored = [t for t in mine if by_id.get(t.id) != (t.ts, t.price, t.amount, t.side)]
            assert not unstored, f"{symbol}: published but not stored (or different): {unstored[:3]}"
            published = {t.id for t in mine}
            ranges = [g for g in gaps if g.symbol == symbol]
            lost = [t for t in rows if t.id not in published and not any(g.covers(t.ts) for g in ranges)]
            assert not lost, f"{symbol}: {len(lost)} stored trades neither published nor marked, first {lost[:3]}"
            assert len(rows) > 1000 if symbol == "BTC/USD" else rows
            assert fullon_bars(r, "kraken:" + symbol.replace("/", "")) == as_bars(finals), symbol
        print(f"consumer: {len(trades)} trade entries, {len(gaps)} gap markers "
              f"({[(g.symbol, g.reason, g.count) for g in gaps]}), {consumer.errors} read errors")
    finally:
        r.close()
