#!/usr/bin/env python3
"""Benchmark: trades/s the simulator (burst mode) delivers to one ccxt.pro watch_trades client, vs a bare send loop.

Both servers run in a child process, one after the other, and feed the same ccxt.pro client code in this
process: (1) the simulator in burst mode (trades generated, serialised and sent as fast as the socket
takes them), (2) a bare aiohttp websocket server that only replays pre-built frames of the same trades.
The ratio sim/bare tells how much the simulator itself costs on top of ccxt's own parsing.
Last line: ``RESULT trades_s=... vs_bare=... bare_trades_s=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import sys
import time
from typing import Any

SYMBOL = "BTC/USD"


def _serve_sim(q: Any, seed: int, rate: float) -> None:
    from fullon_ohlcv_service.simulator.server import Simulator

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Simulator(seed=seed, symbols={"kraken": [f"{SYMBOL}@{rate}"]}, history_days=0.001,
                             burst=True, steady=True) as sim:
            q.put(sim.url)
            await stop.wait()

    asyncio.run(main())


def _serve_bare(q: Any, seed: int, rate: float, n_trades: int) -> None:
    from aiohttp import WSMsgType, web

    from fullon_ohlcv_service.simulator.kraken import FRAME_TRADES, Kraken
    from fullon_ohlcv_service.simulator.market import BUCKET_MS, Market, SymbolConfig
    from fullon_ohlcv_service.simulator.venue import dumps
    from fullon_ohlcv_service.timeutil import now_ms

    market = Market(seed, "kraken", SymbolConfig(SYMBOL, rate=rate), steady=True)
    k = Kraken({SYMBOL: market}, clock=now_ms)
    trades = []
    b = now_ms() // BUCKET_MS
    while len(trades) < n_trades:
        trades.extend(market.bucket(b))
        b += 1
    frames = [k._trade_frame(SYMBOL, trades[i:i + FRAME_TRADES]) for i in range(0, len(trades), FRAME_TRADES)]

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str(dumps({"channel": "status", "type": "update", "data": [{"system": "online"}]}))
        msg = await ws.receive()
        if msg.type == WSMsgType.TEXT:
            req = msg.json()
            await ws.send_str(dumps({"method": "subscribe", "req_id": req.get("req_id"), "success": True,
                                     "result": {"channel": "trade", "symbol": SYMBOL}}))

            async def reader() -> None:  # answers the client's close frame (and drains its pings)
                async for _ in ws:
                    pass

            read_task = asyncio.get_running_loop().create_task(reader())
            i = 0
            try:
                while not ws.closed and not read_task.done():
                    await ws.send_str(frames[i % len(frames)])
                    i += 1
            except ConnectionError:
                pass  # the client went away: the measurement is over
            await read_task
        return ws

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        app = web.Application()
        app.router.add_get("/v2", ws_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        q.put(f"ws://127.0.0.1:{runner.addresses[0][1]}/v2")
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


async def _measure(config: dict[str, Any], seconds: float, warmup: float) -> tuple[int, float]:
    import ccxt.pro as ccxt_pro

    ex = ccxt_pro.kraken({**config, "options": {**config.get("options", {}), "tradesLimit": 1_000_000}})
    try:
        await ex.load_markets()
        loop = asyncio.get_running_loop()
        t_warm = loop.time() + warmup
        while loop.time() < t_warm:
            await ex.watch_trades(SYMBOL)
        count = 0
        t0 = loop.time()
        end = t0 + seconds
        while loop.time() < end:
            count += len(await asyncio.wait_for(ex.watch_trades(SYMBOL), 10))
        return count, loop.time() - t0
    finally:
        await ex.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=900.0,
                   help="market rate (trades per simulated second, steady; at most 980)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    from fullon_ohlcv_service.adapters.ccxt_local import local_overrides

    ctx = mp.get_context("fork")
    results: dict[str, float] = {}
    sim_url = ""
    for kind in ("sim", "bare"):
        q: Any = ctx.Queue()
        if kind == "sim":
            proc = ctx.Process(target=_serve_sim, args=(q, args.seed, args.rate), daemon=True)
        else:
            proc = ctx.Process(target=_serve_bare, args=(q, args.seed, args.rate, 200_000), daemon=True)
        proc.start()
        try:
            url = q.get(timeout=60)
            if kind == "sim":
                sim_url = url
                config = local_overrides("kraken", url)
            else:
                # REST (load_markets) from a plain simulator, websocket from the bare replay server
                rest = ctx.Process(target=_serve_sim, args=(q, args.seed, 1.0), daemon=True)
                rest.start()
                rest_url = q.get(timeout=60)
                config = local_overrides("kraken", rest_url)
                config["urls"]["api"]["ws"]["publicV2"] = url
            count, elapsed = asyncio.run(_measure(config, args.seconds, args.warmup))
            results[kind] = count / elapsed
            print(f"{kind:>4}: {count} trades in {elapsed:.2f} s = {count / elapsed:,.0f} trades/s", flush=True)
            if kind == "bare":
                os.kill(rest.pid or 0, signal.SIGTERM)
                rest.join(10)
        finally:
            if proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(10)
    del sim_url
    ratio = results["sim"] / results["bare"] if results.get("bare") else 0.0
    print(f"simulator delivers {ratio:.2f}x of a bare send loop of the same frames (cpu count {os.cpu_count()})")
    print(f"RESULT trades_s={results['sim']:.0f} vs_bare={ratio:.3f} bare_trades_s={results['bare']:.0f}")
    return 0


if __name__ == "__main__":
    t = time.time()
    rc = main()
    sys.exit(rc)
