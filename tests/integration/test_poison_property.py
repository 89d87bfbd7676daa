"""Property: random and mutated trades and candles through the adapter's validation and the real writer on a
real SQLite store. Every valid row is stored exactly, every invalid one is in the reject table, nothing blocks.

The rules are restated here independently (``valid_trade``/``valid_candle``), as the specification the
adapter's validation must meet. Some invalid rows also skip validation and go straight to the writer, as
a row made elsewhere would: the store refuses those and the writer must quarantine them alone.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fullon_ohlcv_service.adapters.ccxt_exchange import candle_or_reject, trade_or_reject
from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.settings import parse_store_url

NOW = 1_780_000_000_000
DAY = 86_400_000
MIN_TS = 1_230_768_000_000  # 2009-01-01T00:00:00Z
M = 60_000
SYM = "BTC/USD"

# ---- the specification ----------------------------------------------------------------------------


def _ts(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    if isinstance(v, int | float):
        return float(v) if abs(v) < 1e300 else math.inf
    return None


def _price_ok(v: Any) -> bool:
    x = _num(v)
    return x is not None and math.isfinite(x) and 0 < x <= 1e20


def _amount_ok(v: Any) -> bool:
    x = _num(v)
    return x is not None and math.isfinite(x) and 0 <= x <= 1e20


def _time_ok(v: Any) -> bool:
    t = _ts(v)
    return t is not None and MIN_TS <= t <= NOW + DAY


def valid_trade(d: dict[str, Any]) -> bool:
    tid = d["id"]
    id_ok = (isinstance(tid, int) and not isinstance(tid, bool)) or (
        isinstance(tid, str) and 0 < len(tid) <= 256 and tid.isprintable())
    return (_time_ok(d["timestamp"]) and id_ok and _price_ok(d["price"]) and _amount_ok(d["amount"])
            and d["side"] in ("buy", "sell"))


def valid_candle(row: list[Any]) -> bool:
    ts, o, h, lo, c, v = row
    if not (_time_ok(ts) and _ts(ts) % M == 0 and all(_price_ok(x) for x in (o, h, lo, c)) and _amount_ok(v)):
        return False
    o, h, lo, c = (float(x) for x in (o, h, lo, c))
    return h >= max(o, c) and min(o, c) >= lo


# ---- the strategies --------------------------------------------------------------------------------

GARBAGE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["nan", "inf", "-inf", "-1", "1e400", "0", "12.5", "", "\x00"]),
)
# values that are always invalid for their field
POISON = st.sampled_from([
    ("price", math.nan), ("price", "nan"), ("price", math.inf), ("price", -1.0), ("price", 0.0),
    ("amount", math.inf), ("amount", -0.5), ("amount", "inf"), ("amount", None),
    ("timestamp", 2**63), ("timestamp", MIN_TS - 1), ("timestamp", NOW + DAY + 1), ("timestamp", None),
    ("id", ""), ("id", None), ("side", "x"), ("side", None),
])
FIELDS = st.sampled_from(["timestamp", "id", "price", "amount", "side"])


@st.composite
def raw_trade(draw: st.DrawFn, i: int) -> tuple[dict[str, Any], bool]:
    """A ccxt trade dict (unique id), maybe mutated; and whether the mutation is a known poison."""
    d: dict[str, Any] = {
        "timestamp": draw(st.integers(min_value=MIN_TS, max_value=NOW + DAY)),
        "id": f"{draw(st.text(alphabet='abc0123456789', max_size=4))}-{i}",
        "price": draw(st.floats(min_value=1e-9, max_value=1e9)),
        "amount": draw(st.floats(min_value=0.0, max_value=1e9)),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "type": draw(st.sampled_from(["limit", "market", None])),
    }
    kind = draw(st.sampled_from(["clean", "poison", "garbage"]))
    if kind == "poison":
        field, value = draw(POISON)
        d[field] = value
    elif kind == "garbage":
        d[draw(FIELDS)] = draw(GARBAGE)
    return d, kind == "poison"


@st.composite
def raw_candle(draw: st.DrawFn, minute: int) -> tuple[list[Any], bool]:
    o, c = draw(st.floats(1.0, 1e6)), draw(st.floats(1.0, 1e6))
    h = max(o, c) + draw(st.floats(0.0, 100.0))
    lo = min(o, c) * draw(st.floats(0.01, 1.0))
    row: list[Any] = [minute, o, h, lo, c, draw(st.floats(0.0, 1e6))]
    kind = draw(st.sampled_from(["clean", "poison", "garbage"]))
    if kind == "poison":
        k, value = draw(st.sampled_from([(2, min(o, c) / 2 if lo < min(o, c) / 2 else -1.0), (3, max(o, c) * 2),
                                         (1, math.nan), (5, -1.0), (0, minute + 1), (0, 60_000)]))
        row[k] = value
    elif kind == "garbage":
        row[draw(st.integers(0, 5))] = draw(GARBAGE)
    return row, kind == "poison"


@dataclass
class Case:
    trades: list[tuple[dict[str, Any], bool]]
    candles: list[tuple[list[Any], bool]]
    unvalidated: list[Trade]  # invalid rows that skip validation: the store must refuse them


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 40))
    trades = [draw(raw_trade(i)) for i in range(n)]
    first = NOW - NOW % M - 30 * M
    candles = [draw(raw_candle(first + k * M)) for k in range(draw(st.integers(0, 12)))]
    refused = [Trade(NOW - 1, "nan-price", math.nan, 1.0, "buy"), Trade(2**63, "past-64-bits", 1.0, 1.0, "sell"),
               Trade(NOW - 2, "no-side", 1.0, 1.0, None)]  # type: ignore[arg-type]
    unvalidated = draw(st.lists(st.sampled_from(refused), max_size=3, unique_by=lambda t: t.id))
    return Case(trades, candles, unvalidated)


# ---- the property -----------------------------------------------------------------------------------


async def run_case(directory: Path, case: Case) -> None:
    url = parse_store_url("test", f"sqlite://{directory}", ("sqlite",))
    async with open_ohlcv_store(url, "kraken") as store:
        await store.init_symbol(SYM)
        w = BatchWriter(store, flush_rows=16, flush_interval=0.005, buffer_rows=64, backoff_initial=0.005,
                        backoff_max=0.01)
        task = asyncio.create_task(w.run())
        expected: dict[str, Trade] = {}
        refused: set[tuple[str, str]] = set()
        chunk: list[Trade] = []
        for d, poisoned in case.trades:
            got = trade_or_reject(d, NOW)  # the adapter's edge conversion
            assert isinstance(got, Trade) == valid_trade(d), (d, got)
            assert not (poisoned and isinstance(got, Trade)), d
            if isinstance(got, Reject):
                w.rejects.reject(SYM, [got])  # what the adapter does with it
                refused.add(("trade", got.ref))
                continue
            expected.setdefault(got.id, got)  # a garbage id may repeat one: the store keeps the first
            chunk.append(got)
            if len(chunk) >= 7:
                await w.put_trades(SYM, chunk)
                chunk = []
        # rows that skipped validation, spliced into the flow: only the store can refuse them
        await w.put_trades(SYM, [*chunk, *case.unvalidated])
        refused |= {("trade", t.id) for t in case.unvalidated}
        candles: list[Candle] = []
        for row, poisoned in case.candles:
            got_c = candle_or_reject(row, True, NOW)
            assert isinstance(got_c, Candle) == valid_candle(row), (row, got_c)
            assert not (poisoned and isinstance(got_c, Candle)), row
            if isinstance(got_c, Reject):
                w.rejects.reject(SYM, [got_c])
                refused.add(("candle", got_c.ref))
            else:
                candles.append(got_c)
        await w.put_candles(SYM, candles)
        for _ in range(3):  # what was queued, then the rejects quarantined while writing it: nothing blocks
            await asyncio.wait_for(w.wait_committed(), 10)
        task.cancel()
        stored = {t.id: t async for t in store.iter_trades(SYM)}
        assert stored == expected  # every valid trade, exactly, and nothing else
        assert [c async for c in store.iter_candles(SYM)] == candles
        assert {(r.kind, r.ref) for r in await store.load_rejects(SYM)} == refused
        assert w.rejects.counts.get(SYM, 0) == len(refused) and not w.failing and w.depth == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_valid_rows_are_stored_invalid_ones_rejected_and_nothing_blocks(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_case(Path(tmp), case))
