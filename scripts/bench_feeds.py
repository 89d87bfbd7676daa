#!/usr/bin/env python3
"""Live feed benchmark: ingest throughput with publishing off vs all, publish latency, Redis bytes per entry.

Measured side by side in one run, against the simulator (Kraken wire format) and PostgreSQL, with the
worker's live path of scripts/bench_ingest.py (adapter -> TradeCollector -> BatchWriter -> store):
  1. rate:      bench_ingest's method with publishing off: the highest offered real-time rate, as a
                fraction of ccxt's parse ceiling, that is stored completely;
  2. ratio:     at that rate, committed trades/s with ``--publish all`` (trade + candle streams and the
                OHLCVCache lists on Redis) over the same with publishing off, alternated twice;
  3. latency:   at a steady 1,000 trades/s with ``--publish all``: commit returned -> XADD returned (p50, p99);
  4. bytes:     Redis MEMORY USAGE of the streams and lists divided by their entries.
Last line: RESULT rate_s=... off_s=... all_s=... ratio=... pub_p50_ms=... pub_p99_ms=... trade_entry_b=...
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
REDIS = os.environ.get("OHLCV_BENCH_REDIS", "redis://127.0.0.1:6379/12")


def _ingest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ingest", HERE / "bench_ingest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bi = _ingest()


def flush_redis(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    r.flushdb()
    r.close()


class FedPipeline:
    """bench_ingest's live path, with the FeedPublisher on the writer's commit hook when ``publish`` is set."""

    def __init__(self, url: str, db: str, symbols: list[str], publish: bool, redis_url: str) -> None:
        self.url, self.db, self.symbols, self.publish, self.redis_url = url, db, symbols, publish, redis_url
        self.received = 0.0
        self.depth = 0
        self.per_cpu = 0.0
        self.latencies: list[float] = []
        self.published = 0
        self.dropped = 0
        self.committed = 0.0
        self.write_errors = 0

    async def run(self, seconds: float, warm: float = 2.0) -> float:
        from contextlib import AsyncExitStack

        from fullon_ohlcv_service.adapters.ccxt_exchange import CcxtExchange
        from fullon_ohlcv_service.adapters.redis_feed import RedisFeedSink
        from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
        from fullon_ohlcv_service.collectors.feed import FeedPublisher
        from fullon_ohlcv_service.collectors.trades import TradeCollector
        from fullon_ohlcv_service.collectors.writer import BatchWriter
        from fullon_ohlcv_service.log import Log
        from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
        from fullon_ohlcv_service.settings import parse_store_url

        spec = ExchangeSpec("kraken", tuple(SymbolSpec(s, backtest_days=0) for s in self.symbols))
        import signal

        def dump() -> None:
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump)  # where a stuck run waits
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                open_ohlcv_store(parse_store_url("bench", self.db, ("postgresql",)), "kraken"))
            client = await stack.enter_async_context(CcxtExchange(spec, simulator=self.url))
            await client.load_markets()
            pub: FeedPublisher | None = None
            if self.publish:
                sink = RedisFeedSink(parse_store_url("feed", self.redis_url, ("redis",)), "kraken")
                pub = await stack.enter_async_context(FeedPublisher(sink, "kraken", store, trades=True,
                                                                    log=Log("bench.feed")))
            writer = BatchWriter(store, on_commit=pub.committed if pub is not None else None)
            col = TradeCollector(client, store, writer, spec.symbols, log=Log("bench"))
            await col.prepare()
            if pub is not None:
                await pub.start(self.symbols)
            for run in col.runs.values():  # history is "already stored": the live path only
                run.synced = run.ever_synced = True
                run.need_sync.clear()
            col._all_unsynced = lambda: None  # type: ignore[method-assign]  # as bench_ingest does
            tasks = [asyncio.create_task(writer.run()), asyncio.create_task(col.live_loop()),
                     asyncio.create_task(col.housekeeping())]
            try:
                await asyncio.sleep(warm)
                if pub is not None:
                    pub.latencies.clear()
                c0 = sum(st.trades_stored for st in writer.stats.values())
                r0 = col.live_trades
                t0 = time.monotonic()
                cpu0 = time.process_time()
                await asyncio.sleep(seconds)
                c1 = sum(st.trades_stored for st in writer.stats.values())
                t1 = time.monotonic()
                self.per_cpu = (c1 - c0) / max(1e-9, time.process_time() - cpu0)
                self.received = (col.live_trades - r0) / (t1 - t0)
                self.depth = writer.depth
                self.write_errors = writer.write_errors
                if pub is not None:
                    self.latencies = list(pub.latencies)
                    self.published, self.dropped = pub.published_trades, pub.dropped_trades
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return (c1 - c0) / (t1 - t0)


def run_at(rate: float, publish: bool, seconds: float, redis_url: str, attempts: int = 3) -> FedPipeline:
    """One measurement; a window in which a store write failed (someone restarted the shared PostgreSQL)
    measures that outage, not the feed: it is discarded and measured again."""
    pipe = _run_once(rate, publish, seconds, redis_url)
    for _ in range(attempts - 1):
        if pipe.write_errors == 0:
            break
        print(f"    (store writes failed {pipe.write_errors} times in that window: measured again)")
        pipe = _run_once(rate, publish, seconds, redis_url)
    return pipe


def _run_once(rate: float, publish: bool, seconds: float, redis_url: str) -> FedPipeline:
    import uvloop

    n_sym = max(3, math.ceil(rate / 400))  # the simulator emits at most 1,000 trades/s per symbol
    offered = [f"S{i:02d}/USD" for i in range(n_sym)]
    per_symbol = max(1.0, rate / n_sym)
    sim, url = bi.start_sim([f"{s}@{per_symbol:.0f}" for s in offered], "--history-days", "0", "--steady")
    db = asyncio.run(bi.create_db())
    flush_redis(redis_url)
    try:
        pipe = FedPipeline(url, db, offered, publish, redis_url)
        pipe.committed = uvloop.run(pipe.run(seconds))
    finally:
        bi.stop(sim)
        asyncio.run(bi.drop_db(db))
    return pipe


def kept_up(p: FedPipeline, committed: float) -> bool:
    """bench_ingest's rule: >= 95 % of what was received committed, at most ~1 s of rows queued."""
    return committed >= 0.95 * p.received and p.depth <= max(2000, p.received)


def memory_per_entry(redis_url: str) -> dict[str, float]:
    import redis

    r = redis.Redis.from_url(redis_url)
    out: dict[str, float] = {}
    try:
        for name, key in (("trade", "ohlcv:stream:kraken:trades"), ("candle", "ohlcv:stream:kraken:candles")):
            n = int(r.xlen(key))
            if n:
                out[name] = int(r.memory_usage(key, samples=0) or 0) / n
        sizes = [(int(r.memory_usage(k, samples=0) or 0), int(r.llen(k))) for k in r.scan_iter("ohlcv:kraken:*:1m")]
        bars = sum(n for _, n in sizes)
        if bars:
            out["bar"] = sum(b for b, _ in sizes) / bars
    finally:
        r.close()
    return out


def fill_for_memory(redis_url: str, n: int) -> dict[str, float]:
    """Bytes per entry with a realistically full stream (n trade entries, 1,000 bars per list)."""
    from fullon_ohlcv_service.adapters.redis_feed import RedisFeedSink
    from fullon_ohlcv_service.feed_layout import FeedBatch
    from fullon_ohlcv_service.models import Candle, Trade
    from fullon_ohlcv_service.settings import parse_store_url

    async def go() -> None:
        sink = RedisFeedSink(parse_store_url("feed", redis_url, ("redis",)), "kraken", maxlen=n)
        t0 = 1_800_000_000_000
        try:
            for i in range(0, n, 5000):
                b = FeedBatch.empty()
                b.trades = [("BTC/USD", Trade(t0 + j * 37, str(2_993_864_700_000 + j), 63_383.5 + j % 97 / 10,
                                              0.01110559 + j % 13 / 1e4, "buy" if j % 3 else "sell"))
                            for j in range(i, min(n, i + 5000))]
                b.candles = [("BTC/USD", Candle(t0 + j * 60_000, 63_380.1, 63_390.2, 63_370.3, 63_385.4, 12.3456789,
                                                final=bool(j % 2))) for j in range(i // 5, i // 5 + 1000)]
                b.bars = {"BTC/USD": [c for _, c in b.candles if c.final]}
                await sink.publish(b)
        finally:
            await sink.close()

    flush_redis(redis_url)
    asyncio.run(go())
    sizes = memory_per_entry(redis_url)
    flush_redis(redis_url)
    return sizes


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="measurement window of each phase")
    p.add_argument("--steps", type=float, nargs="+", default=[0.5, 0.8, 1.1, 1.5, 2.0],
                   help="offered rates to try with publishing off, as fractions of the measured ceiling")
    p.add_argument("--rate", type=float, help="skip the search: offer this many trades/s")
    p.add_argument("--redis", default=REDIS, help=f"Redis URL for the feeds, flushed (default {REDIS})")
    args = p.parse_args(argv)
    import faulthandler
    import signal

    import uvloop

    faulthandler.register(signal.SIGUSR1)  # a stuck run can be asked where it is: kill -USR1 PID

    rate = args.rate
    if rate is None:
        symbols = ["BTC/USD", "ETH/USD", "SOL/USD"]
        sim, url = bi.start_sim([s + "@1000" for s in symbols], "--burst", "--history-days", "0")
        try:
            ceil, _ = uvloop.run(bi.ceiling(url, symbols, args.seconds))
        finally:
            bi.stop(sim)
        print(f"ccxt parse ceiling: {ceil:,.0f} trades/s")
        rate = 0.0
        for frac in args.steps:
            off = run_at(frac * ceil, False, args.seconds, args.redis)
            ok = kept_up(off, off.committed)
            print(f"  publishing off, offered {off.received:,.0f}/s ({frac:.1f}x): committed "
                  f"{off.committed:,.0f}/s -> {'kept up' if ok else 'fell behind'}")
            if not ok:
                break
            rate = frac * ceil
        if rate == 0.0:
            rate = args.steps[0] * ceil
    print(f"rate (bench_ingest's method, publishing off): {rate:,.0f} trades/s offered")
    offs: list[float] = []
    alls: list[float] = []
    cpu: dict[str, list[float]] = {"off": [], "all": []}
    for _ in range(2):
        for publish in (False, True):
            pipe = run_at(rate, publish, args.seconds, args.redis)
            c = pipe.committed
            (alls if publish else offs).append(c)
            cpu["all" if publish else "off"].append(pipe.per_cpu)
            extra = (f", published {pipe.published:,}, dropped {pipe.dropped:,}, "
                     f"commit->XADD p99 {pct(pipe.latencies, 0.99) * 1000:.0f} ms" if publish else "")
            print(f"  publish {'all' if publish else 'off'}: offered {pipe.received:,.0f}/s, committed {c:,.0f}/s, "
                  f"{pipe.per_cpu:,.0f} per CPU second, backlog {pipe.depth:,}{extra}")
    off_s, all_s = statistics.mean(offs), statistics.mean(alls)
    ratio = all_s / off_s if off_s else float("nan")
    print(f"ingest with --publish all: {all_s:,.0f}/s vs off {off_s:,.0f}/s: ratio {ratio:.2f} (target >= 0.8); "
          f"CPU per trade x{statistics.mean(cpu['off']) / max(1e-9, statistics.mean(cpu['all'])):.2f}")

    sim, url = bi.start_sim([f"L{i:02d}/USD@100" for i in range(10)], "--history-days", "0", "--steady")
    db = asyncio.run(bi.create_db())
    flush_redis(args.redis)
    try:
        steady = FedPipeline(url, db, [f"L{i:02d}/USD" for i in range(10)], True, args.redis)
        steady_rate = uvloop.run(steady.run(args.seconds))
        sizes_live = memory_per_entry(args.redis)
    finally:
        bi.stop(sim)
        asyncio.run(bi.drop_db(db))
    p50, p99 = pct(steady.latencies, 0.5) * 1000, pct(steady.latencies, 0.99) * 1000
    print(f"steady {steady_rate:,.0f} trades/s, --publish all: commit->XADD p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"({len(steady.latencies):,} batches); live Redis bytes/entry {sizes_live}")
    sizes = fill_for_memory(args.redis, 100_000)
    print("Redis bytes per entry, 100,000 trade entries and 1,000-bar lists: " +
          ", ".join(f"{k} {v:.0f} B" for k, v in sizes.items()))
    print(f"RESULT rate_s={rate:.0f} off_s={off_s:.0f} all_s={all_s:.0f} ratio={ratio:.2f} pub_p50_ms={p50:.1f} "
          f"pub_p99_ms={p99:.1f} trade_entry_b={sizes.get('trade', 0):.0f} candle_entry_b={sizes.get('candle', 0):.0f} "
          f"bar_b={sizes.get('bar', 0):.0f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())

