"""A worker (in-process WorkerRuntime, real SQLite store and cache) fed poison rows among the simulator's valid ones.

The real ccxt adapter gets poisoned copies spliced into REST trade pages, websocket trade frames and a REST
candle page. The exchange is never wedged: every valid trade is stored, every poisoned row is in the
reject table, and the count shows in the heartbeat.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from pathlib import Path
from typing import Any

from fullon_ohlcv_service.adapters.caches import open_process_cache
from fullon_ohlcv_service.adapters.ccxt_exchange import CcxtExchange
from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.ports import ExchangeClient
from fullon_ohlcv_service.settings import settings_from_env
from fullon_ohlcv_service.simulator.server import Simulator
from fullon_ohlcv_service.worker.runtime import Tuning, WorkerRuntime

SYM = "BTC/USD"
# Kraken REST row [price, volume, time s, side, type, misc, id] and websocket trade changes, by reason
KRAKEN_REST = [("price not finite", 0, "nan"), ("amount not finite", 1, "inf"), ("amount negative", 1, "-2"),
               ("timestamp more than 1 day ahead", 2, 2**63 / 1000), ("timestamp before 2009-01-01", 2, 5.0),
               ("id missing or empty", 6, ""), ("side unknown", 3, "x")]
KRAKEN_WS = [("price not finite", "price", "nan"), ("amount negative", "qty", -2),
             ("timestamp before 2009-01-01", "timestamp", "2001-01-01T00:00:00.000000Z"),
             ("id missing or empty", "trade_id", ""), ("side unknown", "side", "x")]


class PoisonedKraken(CcxtExchange):
    """The real adapter, with poisoned copies spliced into what the simulator sends."""

    spliced: list[tuple[str, str]]  # (reason, id of the valid trade it copies; "" for an empty id)

    async def __aenter__(self) -> PoisonedKraken:
        await super().__aenter__()
        self.spliced = []
        rest_kinds, ws_kinds = itertools.cycle(KRAKEN_REST), itertools.cycle(KRAKEN_WS)
        fetch, handle = self._rest.fetch, self._pro.handle_message
        candles_poisoned = [False]

        async def poisoned_fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
            resp = await fetch(url, method, headers, body)
            if "/Trades" in url or "/OHLC" in url:
                rows = next(v for k, v in resp["result"].items() if k != "last")
                if "/OHLC" in url and not candles_poisoned[0] and len(rows) > 3:
                    candles_poisoned[0] = True
                    rows[1][2] = "0.5"  # high below everything: refused, the trades still make that candle
                for i in range(len(rows) - 2, 0, -97) if "/Trades" in url else ():
                    reason, col, value = next(rest_kinds)
                    bad = copy.deepcopy(rows[i])
                    bad[col] = value
                    rows.insert(i + 1, bad)
                    self.spliced.append((reason, "" if col == 6 else str(bad[6])))
            return resp

        frames = itertools.count()

        def poisoned_handle(client: Any, message: Any) -> Any:
            if (isinstance(message, dict) and message.get("channel") == "trade" and message.get("type") == "update"
                    and next(frames) % 4 == 0):
                reason, key, value = next(ws_kinds)
                bad = copy.deepcopy(message["data"][0])
                bad[key] = value
                message["data"].insert(1, bad)
                self.spliced.append((reason, "" if key == "trade_id" else str(bad["trade_id"])))
            return handle(client, message)

        self._rest.fetch = poisoned_fetch
        self._pro.handle_message = poisoned_handle
        return self


async def test_poison_rows_never_wedge_the_exchange(tmp_path: Path) -> None:
    async with Simulator(seed=11, symbols={"kraken": ("BTC/USD@8",)}, history_days=0.02, tick_s=0.02,
                         steady=True) as sim:
        settings = settings_from_env({"OHLCV_HOME": str(tmp_path)}).with_overrides(
            simulator=sim.url, heartbeat_interval=0.3, flush_interval=0.05)
        spec = ExchangeSpec("kraken", (SymbolSpec(SYM, backtest_days=1),))
        clients: list[PoisonedKraken] = []

        def open_client(s: ExchangeSpec, url: str | None) -> ExchangeClient:
            clients.append(PoisonedKraken(s, simulator=url, rejects=rt.rejects))
            return clients[-1]

        rt = WorkerRuntime(spec, settings, tuning=Tuning(reconcile_every=600, gap_every=600), open_client=open_client)
        task = asyncio.create_task(rt.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # before: the first poisoned REST page was retried forever
            sb = rt.trades.beats().symbols.get(SYM) if rt.trades else None
            if sb is not None and sb.ever_synced and len({r for r, _ in clients[0].spliced}) == 7:
                break
            assert not task.done(), task
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the worker never caught up with the live stream")
        await asyncio.sleep(1.5)  # a little live trading, poison included
        async with open_process_cache(settings.cache) as cache:  # what ohlcv-status reads
            doc = await cache.get_component("ohlcv-worker:kraken")
        assert doc is not None and doc["params"]["symbols"][SYM]["rejected"] >= 7
        rt.stop.set()
        assert await asyncio.wait_for(task, 30) == 0
        beat = rt.snapshot().symbols[SYM]

    async with open_ohlcv_store(settings.ohlcv_db, "kraken") as store:
        stored = [t async for t in store.iter_trades(SYM)]
        rejects = await store.load_rejects(SYM)
    truth = sim.trades("kraken", SYM, sim.genesis_ms, stored[-1].ts + 1)
    assert [t.id for t in stored] == [t["id"] for t in truth]  # every valid trade and only those
    assert [(t.price, t.amount) for t in stored] == [(float(t["price"]), float(t["amount"])) for t in truth]
    spliced = set(clients[0].spliced)
    kept = {(r.reason, "" if r.ref.startswith("noid:") else r.ref) for r in rejects if r.kind == "trade"}
    assert kept <= spliced and len(kept) >= 7  # each poisoned copy refused (some spliced after the last commit)
    assert [r.reason for r in rejects if r.kind == "candle"] == ["high below open or close"]
    assert beat.rejected == len(rejects) > 7  # the heartbeat's per-symbol count: every one stored
