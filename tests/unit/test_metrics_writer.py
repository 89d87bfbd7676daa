"""BatchWriter's histograms for /metrics: one commit-time observation per committed batch, and the
emit-to-commit latency of live trades only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.models import Trade
from fullon_ohlcv_service.timeutil import now_ms
from tests.unit.test_writer import MemStore


class SlowStore(MemStore):
    """Commits take 30 ms; the first ``fail`` trade writes fail."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.fail = fail

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        await asyncio.sleep(0.03)
        if self.fail:
            self.fail -= 1
            self.down = True
            try:
                return await super().save_trades(symbol, trades)
            finally:
                self.down = False
        return await super().save_trades(symbol, trades)


def _trades(ts: int, n: int, start: int = 0) -> list[Trade]:
    return [Trade(ts, str(start + i), 1.0, 1.0, "buy") for i in range(n)]


def le(h: list[tuple[str, int]], bound: str) -> int:
    return dict(h)[bound]


async def test_commit_and_emit_to_commit_histograms() -> None:
    store = SlowStore(fail=1)
    w = BatchWriter(store, flush_rows=10, flush_interval=0.01, backoff_initial=0.01)
    task = asyncio.create_task(w.run())
    try:
        await w.put_trades("BTC/USD", _trades(now_ms() - 2_000, 3), live=True)  # from the websocket
        await w.wait_committed()
        await w.put_trades("BTC/USD", _trades(now_ms() - 86_400_000, 4, start=100))  # REST history: not live
        await w.wait_committed()
    finally:
        task.cancel()
    assert w.write_errors == 1  # the first attempt failed and was retried
    commit = w.commit_seconds.cumulative()
    assert w.commit_seconds.count == 2  # one per committed batch, not per attempt
    assert le(commit, "0.025") == 0 and le(commit, "+Inf") == 2  # each took >= 30 ms
    emit = w.emit_to_commit_seconds
    assert emit.count == 3  # the live trades only; a day-old backfill would swamp the histogram
    assert le(emit.cumulative(), "1.0") == 0 and le(emit.cumulative(), "5.0") == 3
    assert 6.0 <= emit.total < 15.0
