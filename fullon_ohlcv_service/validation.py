"""The rules every trade and candle must pass where it enters, and the Reject that records a refused one.

Pure: no I/O. The adapter that turns exchange data into models calls ``build_trade``/``build_candle``
with the values as parsed, before any model exists, so a value that would make a model (or the
store) fail is refused here with a stable, one-line reason. A refused row becomes a ``Reject``
(``trade_reject``/``candle_reject``) holding the raw values as JSON text.

Rules (each reason below is the text stored in ``<symbol>_rejects.reason``):

- timestamp: an integer epoch ms in [2009-01-01T00:00:00Z, now + 1 day];
  a candle's is a minute open;
- trade: a non-empty id of printable text (no NUL, control character or unpaired surrogate) of at
  most 256 characters, a finite price > 0, a finite amount >= 0, side ``buy`` or ``sell``;
- candle: finite prices > 0, a finite volume >= 0, high >= max(open, close) >= min(open, close) >= low;
- every number is at most 1e20 (larger is a parse error in practice, and sums of such values
  could overflow to infinity).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from fullon_ohlcv_service.models import Candle, Reject, Side, Trade
from fullon_ohlcv_service.timeutil import MINUTE_MS

MIN_TS_MS = 1_230_768_000_000  # 2009-01-01T00:00:00Z
MAX_AHEAD_MS = 86_400_000  # a timestamp may be at most one day ahead of our clock
MAX_NUMBER = 1e20
MAX_ID_LEN = 256
SIDES: tuple[Side, ...] = ("buy", "sell")
RAW_MAX_CHARS = 4000  # the raw JSON kept per reject
_STR_MAX = 512  # per string inside the raw JSON
_ITEMS_MAX = 64  # per list or mapping inside the raw JSON


# --------------------------------------------------------------------------- the rules


def _timestamp(value: object) -> int | None:
    """An integer epoch ms (an integral float counts), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def timestamp_problem(value: object, now: int) -> str | None:
    ts = _timestamp(value)
    if ts is None:
        return "timestamp missing" if value is None else "timestamp not an integer"
    if ts < MIN_TS_MS:
        return "timestamp before 2009-01-01"
    if ts > now + MAX_AHEAD_MS:
        return "timestamp more than 1 day ahead"
    return None


def _number(value: object) -> float | None:
    """A float for an int, a float or decimal text (a huge int is infinite), None for anything else."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def number_problem(name: str, value: object, *, positive: bool) -> str | None:
    x = _number(value)
    if x is None:
        return f"{name} missing or unparseable" if value is None else f"{name} not a number"
    if not math.isfinite(x):
        return f"{name} not finite"
    if positive and x <= 0:
        return f"{name} not positive"
    if x < 0:
        return f"{name} negative"
    if x > MAX_NUMBER:
        return f"{name} too large"
    return None


def id_problem(value: object) -> str | None:
    if value is None or value == "":
        return "id missing or empty"
    if isinstance(value, int) and not isinstance(value, bool):
        return None  # a numeric id: kept as its decimal text
    if not isinstance(value, str):
        return "id not text"
    if len(value) > MAX_ID_LEN:
        return "id too long"
    if not value.isprintable():  # control characters (NUL...), unpaired surrogates, line separators
        return "id has unprintable characters"
    return None


def trade_problem(ts: object, tid: object, price: object, amount: object, side: object, now: int) -> str | None:
    """The first rule a trade breaks, or None when it is valid."""
    return (
        timestamp_problem(ts, now)
        or id_problem(tid)
        or number_problem("price", price, positive=True)
        or number_problem("amount", amount, positive=False)
        or (None if side in SIDES else "side unknown")
    )


def candle_problem(
    ts: object, open_: object, high: object, low: object, close: object, volume: object, now: int
) -> str | None:
    """The first rule a 1m candle breaks, or None when it is valid."""
    problem = timestamp_problem(ts, now)
    minute = _timestamp(ts)
    if problem is None and minute is not None and minute % MINUTE_MS:
        problem = "timestamp not on a minute"
    for name, value in (("open", open_), ("high", high), ("low", low), ("close", close)):
        problem = problem or number_problem(name, value, positive=True)
    problem = problem or number_problem("volume", volume, positive=False)
    if problem:
        return problem
    o, h, lo, c = (float(v) for v in (open_, high, low, close))  # type: ignore[arg-type]
    if h < max(o, c):
        return "high below open or close"
    if lo > min(o, c):
        return "low above open or close"
    return None


def build_trade(
    ts: object, tid: object, price: object, amount: object, side: object, kind: object, now: int
) -> Trade | str:
    """The Trade of these parsed values, or the reason it is refused. ``kind`` (market/limit) is kept
    only when it is short clean text; anything else becomes ""."""
    text = kind if isinstance(kind, str) and len(kind) <= 32 and kind.isprintable() else ""
    # the common case, first and cheap (a NaN or an infinity fails these comparisons too)
    if (type(ts) is int and MIN_TS_MS <= ts <= now + MAX_AHEAD_MS and type(tid) is str and 0 < len(tid) <= MAX_ID_LEN
            and tid.isprintable() and type(price) is float and 0.0 < price <= MAX_NUMBER and type(amount) is float
            and 0.0 <= amount <= MAX_NUMBER and (side == "buy" or side == "sell")):
        return Trade(ts, tid, price, amount, side, text)
    problem = trade_problem(ts, tid, price, amount, side, now)
    if problem is not None:
        return problem
    return Trade(_timestamp(ts), str(tid), float(price), float(amount), side, text)  # type: ignore[arg-type]


def build_candle(
    ts: object, open_: object, high: object, low: object, close: object, volume: object, final: bool, now: int
) -> Candle | str:
    """The Candle of these parsed values, or the reason it is refused."""
    problem = candle_problem(ts, open_, high, low, close, volume, now)
    if problem is not None:
        return problem
    o, h, lo, c, v = (float(x) for x in (open_, high, low, close, volume))  # type: ignore[arg-type]
    return Candle(_timestamp(ts), o, h, lo, c, v, final)  # type: ignore[arg-type]


def check_trade(t: Trade, now: int) -> str | None:
    """The first rule a Trade model breaks (for rows made elsewhere than an adapter), or None."""
    return trade_problem(t.ts, t.id, t.price, t.amount, t.side, now)


def check_candle(c: Candle, now: int) -> str | None:
    return candle_problem(c.ts, c.open, c.high, c.low, c.close, c.volume, now)


# --------------------------------------------------------------------------- rejects


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-safe data: non-finite floats as text, long strings and lists cut, depth bounded."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= _STR_MAX else value[:_STR_MAX] + "..."
    if depth >= 4:
        return repr(value)[:_STR_MAX]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:_ITEMS_MAX]}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value[:_ITEMS_MAX]]
    return repr(value)[:_STR_MAX]


def raw_json(values: Mapping[str, Any]) -> str:
    """JSON text of ``values`` (ASCII, keys sorted), at most RAW_MAX_CHARS."""
    text = json.dumps(_plain(values), sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    if len(text) > RAW_MAX_CHARS:
        text = json.dumps({"truncated": text[: RAW_MAX_CHARS - 20]}, ensure_ascii=True)
    return text


def storable_text(text: str) -> str:
    """``text`` as both stores can hold it: NUL and unpaired surrogates escaped (PostgreSQL refuses
    NUL in text; neither driver encodes a lone surrogate). Clean text is returned unchanged."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _digest(values: list[Any]) -> str:
    text = json.dumps(_plain(values), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def trade_ref(tid: object, ts: object, price: object, amount: object, side: object) -> str:
    """The trade's id when it has one (as storable text); otherwise a digest of its values (the same on
    every re-fetch)."""
    if isinstance(tid, str | int) and not isinstance(tid, bool) and str(tid) != "":
        return storable_text(str(tid)[:MAX_ID_LEN])
    return "noid:" + _digest([ts, price, amount, side])


def trade_reject(values: Mapping[str, Any], reason: str, seen_ms: int) -> Reject:
    """A Reject for a trade: ``values`` holds ts, id, price, amount, side (and anything else received)."""
    ref = trade_ref(values.get("id"), values.get("ts"), values.get("price"), values.get("amount"),
                    values.get("side"))
    return Reject("trade", ref, reason, raw_json(values), seen_ms)


def candle_reject(values: Mapping[str, Any], reason: str, seen_ms: int) -> Reject:
    """A Reject for a candle: its minute as ref (a digest of the values when it has no usable time)."""
    ts = _timestamp(values.get("ts"))
    ref = str(ts) if ts is not None else "nots:" + _digest([values.get(k) for k in sorted(values, key=str)])
    return Reject("candle", ref, reason, raw_json(values), seen_ms)


def trade_values(t: Trade) -> dict[str, Any]:
    return {"ts": t.ts, "id": t.id, "price": t.price, "amount": t.amount, "side": t.side, "type": t.type}


def candle_values(c: Candle) -> dict[str, Any]:
    return {"ts": c.ts, "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
            "final": c.final}
