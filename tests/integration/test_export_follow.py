"""`ohlcv-export --follow`: rows committed before, during and after its start appear once each, in order."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import signal
import sys
from pathlib import Path

import pytest

from fullon_ohlcv_service.models import Trade
from fullon_ohlcv_service.settings import parse_store_url

BIN = Path(sys.executable).parent
T0 = 1_800_000_000_000


@pytest.mark.parametrize("source", ["stream", "poll"])
async def test_follow_prints_each_row_once_across_the_seam(tmp_path: Path, redis_url: str, source: str) -> None:
    from fullon_ohlcv_service.adapters.redis_feed import RedisFeedSink
    from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
    from fullon_ohlcv_service.collectors.feed import FeedPublisher
    from fullon_ohlcv_service.collectors.writer import BatchWriter

    db = f"sqlite://{tmp_path / 'ohlcv'}"
    store_cm = open_ohlcv_store(parse_store_url("db", db, ("sqlite",)), "kraken")
    store = await store_cm.__aenter__()
    pub = None
    if source == "stream":
        sink = RedisFeedSink(parse_store_url("feed", redis_url, ("redis",)), "kraken")
        pub = await FeedPublisher(sink, "kraken", store, trades=True).__aenter__()
    writer = BatchWriter(store, flush_interval=0.005, on_commit=pub.committed if pub else None)
    writer_task = asyncio.create_task(writer.run())
    await store.init_symbol("BTC/USD")
    if pub is not None:
        await pub.start(["BTC/USD"])
    n = 0

    async def produce(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1  # some commits carry two trades, and one re-sends a stored trade
            rows = [Trade(T0 + n * 10, f"{n:08d}", 100.0 + n, 0.5, "buy")]
            if n % 7 == 0:
                rows.append(Trade(T0 + n * 10 + 1, f"{n:08d}b", 100.5, 0.25, "sell"))
            if n % 11 == 0:
                rows.append(Trade(T0 + (n - 3) * 10, f"{n - 3:08d}", 100.0 + n - 3, 0.5, "buy"))
            await writer.put_trades("BTC/USD", rows)
            await writer.wait_committed()
            await asyncio.sleep(0.01)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHLCV_", "REDIS_", "DB_"))}
    argv = [str(BIN / "ohlcv-export"), "kraken", "BTC/USD", "--kind", "trades", "--follow", "--format", "csv",
            "--since", str(T0 - 25_000_000), "--home", str(tmp_path), "--ohlcv-db", db,
            "--cache", f"sqlite://{tmp_path / 'cache.sqlite'}"]
    if source == "stream":
        argv += ["--feed-redis", redis_url]
    out = io.StringIO()
    proc = None
    expect = 1 << 60
    try:
        # a long history (its read takes a while: rows committed meanwhile are in the store AND the stream)
        bulk = [Trade(T0 - 30_000_000 + i * 1000, f"h{i:06d}", 50.0 + i % 9, 0.1, "sell") for i in range(20_000)]
        await writer.put_trades("BTC/USD", bulk)
        await produce(60)
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)

        async def read() -> None:
            assert proc is not None and proc.stdout is not None
            async for line in proc.stdout:
                out.write(line.decode())
                if out.getvalue().count("\n") >= expect:
                    everything.set()

        reader = asyncio.create_task(read())
        everything = asyncio.Event()
        await produce(250)  # ~3 s: the export starts, reads the store and follows while rows keep coming
        stored = [t async for t in store.iter_trades("BTC/USD", T0 - 25_000_000)]
        expect = len(stored) + 1  # and the CSV header
        if out.getvalue().count("\n") >= expect:
            everything.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything.wait(), 30)
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 15)
        await asyncio.wait_for(reader, 5)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
        writer_task.cancel()
        if pub is not None:
            await pub.__aexit__(None, None, None)
        await store_cm.__aexit__(None, None, None)
    assert rc == 0, err
    assert "Traceback" not in err, err
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    got = [(int(r["ts"]), r["id"], float(r["price"]), float(r["volume"]), r["side"]) for r in rows]
    want = [(t.ts, t.id, t.price, t.amount, t.side) for t in stored]
    assert len(want) > 15_000 + 300
    assert got == want  # every stored row once, in time order, none before --since
