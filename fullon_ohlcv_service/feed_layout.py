"""Live feed layout: Redis key names and entry encodings shared by the publisher, `ohlcv-export --follow` and audits.

Two kinds of feed, both written only after the store committed the rows (collectors/feed.py):

- fullon_cache's ``OHLCVCache`` list (src/fullon_cache/ohlcv_cache.py in ingmarAvocado/fullon_cache):
  key ``ohlcv:{symbol}:{timeframe}``, one JSON array ``[ts, open, high, low, close, volume]`` per
  element (``json.dumps`` of the list, so ``", "`` separators), appended with RPUSH and trimmed with
  ``LTRIM key -10000 -1``; ``get_latest_ohlcv_bars`` reads ``LRANGE key -count -1`` and ``json.loads``
  each element. fullon_cache's own examples pass ``ts`` as int epoch SECONDS
  (``int(timestamp.timestamp())``), so that is what the list holds. Our symbol argument is
  exchange-qualified by default (``kraken:BTCUSD``), or bare (``BTCUSD``) for one-exchange deployments.
- Redis Streams ``ohlcv:stream:{exchange}:trades`` and ``ohlcv:stream:{exchange}:candles`` (epoch MS,
  our internal unit), with gap markers for what could not be published.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fullon_ohlcv_service.models import Candle, Trade

PUBLISH_MODES = ("off", "candles", "all")
SYMBOL_FORMS = ("qualified", "bare")
TIMEFRAME = "1m"
LIST_KEEP = 10_000  # fullon_cache: ``ltrim(key, -10000, -1)``
DEFAULT_MAXLEN = 100_000  # stream entries kept per exchange and kind (XADD MAXLEN ~)
Kind = Literal["trades", "candles"]
TRADES: Kind = "trades"
CANDLES: Kind = "candles"


# ---------------------------------------------------------------- keys

def cache_symbol(exchange: str, symbol: str, qualified: bool = True) -> str:
    """The symbol argument of OHLCVCache: ``kraken:BTCUSD`` (default) or ``BTCUSD`` (bare)."""
    bare = symbol.replace("/", "")
    return f"{exchange}:{bare}" if qualified else bare


def list_key(exchange: str, symbol: str, qualified: bool = True, timeframe: str = TIMEFRAME) -> str:
    """``ohlcv:{symbol}:{timeframe}``: the list ``OHLCVCache.get_latest_ohlcv_bars`` reads."""
    return f"ohlcv:{cache_symbol(exchange, symbol, qualified)}:{timeframe}"


def stream_key(exchange: str, kind: str) -> str:
    """``ohlcv:stream:{exchange}:trades`` or ``...:candles``."""
    return f"ohlcv:stream:{exchange}:{kind}"


def published_key(exchange: str) -> str:
    """A hash of the newest point published per stream and symbol (``trades:BTC/USD`` -> ``ts id``).

    Written in the same MULTI as the entries, so after a crash the next worker compares it with the
    store and publishes a gap marker for what was committed but never published.
    """
    return f"ohlcv:stream:{exchange}:published"


def published_field(kind: str, symbol: str) -> str:
    return f"{kind}:{symbol}"


# ---------------------------------------------------------------- encodings

def bar_json(c: Candle) -> str:
    """One OHLCVCache element, encoded as fullon_cache encodes it (``json.dumps(bar)``)."""
    return json.dumps([c.ts // 1000, c.open, c.high, c.low, c.close, c.volume])


def bar_ts_ms(element: str | bytes) -> int:
    """The minute (epoch ms) of one list element."""
    return int(json.loads(element)[0]) * 1000


TRADE_FIELDS = ("type", "symbol", "ts", "id", "price", "amount", "side")
CANDLE_FIELDS = ("type", "symbol", "ts", "open", "high", "low", "close", "volume", "final")


def trade_values(symbol: str, t: Trade) -> tuple[str, ...]:
    """A trade entry's values, in TRADE_FIELDS order (numbers as Python's shortest round-trip repr)."""
    return ("trade", symbol, str(t.ts), t.id, repr(float(t.price)), repr(float(t.amount)), t.side)


def candle_values(symbol: str, c: Candle) -> tuple[str, ...]:
    """A candle entry's values, in CANDLE_FIELDS order."""
    return ("candle", symbol, str(c.ts), repr(float(c.open)), repr(float(c.high)), repr(float(c.low)),
            repr(float(c.close)), repr(float(c.volume)), "true" if c.final else "false")


def trade_fields(symbol: str, t: Trade) -> dict[str, str]:
    return dict(zip(TRADE_FIELDS, trade_values(symbol, t), strict=True))


def candle_fields(symbol: str, c: Candle) -> dict[str, str]:
    return dict(zip(CANDLE_FIELDS, candle_values(symbol, c), strict=True))


def gap_fields(symbol: str, from_ts: int, to_ts: int, count: int, reason: str) -> dict[str, str]:
    """A gap marker: rows of ``symbol`` with ``from_ts <= ts <= to_ts`` may be missing here: read them from the store.

    ``count`` is how many entries were not published (0 when unknown, e.g. after a crash).
    """
    return {"type": "gap", "symbol": symbol, "from_ts": str(from_ts), "to_ts": str(to_ts), "count": str(count),
            "reason": reason}


@dataclass(frozen=True, slots=True)
class Gap:
    """A parsed gap marker: [from_ts, to_ts] inclusive, epoch ms."""

    symbol: str
    from_ts: int
    to_ts: int
    count: int
    reason: str

    def covers(self, ts: int) -> bool:
        return self.from_ts <= ts <= self.to_ts


FeedEntry = tuple[str, Trade] | tuple[str, Candle] | Gap


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_entry(fields: Mapping[Any, Any]) -> FeedEntry:
    """One stream entry as (symbol, Trade), (symbol, Candle) or Gap. Raises ValueError on a foreign entry."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    try:
        kind = f["type"]
        if kind == "trade":
            side = f["side"]
            if side not in ("buy", "sell"):
                raise ValueError(f"bad side {side!r}")
            return f["symbol"], Trade(ts=int(f["ts"]), id=f["id"], price=float(f["price"]),
                                      amount=float(f["amount"]), side="buy" if side == "buy" else "sell")
        if kind == "candle":
            return f["symbol"], Candle(ts=int(f["ts"]), open=float(f["open"]), high=float(f["high"]),
                                       low=float(f["low"]), close=float(f["close"]), volume=float(f["volume"]),
                                       final=f["final"] == "true")
        if kind == "gap":
            return Gap(f["symbol"], int(f["from_ts"]), int(f["to_ts"]), int(f["count"]), f["reason"])
    except KeyError as exc:
        raise ValueError(f"stream entry without field {exc.args[0]!r}") from None
    raise ValueError(f"unknown stream entry type {kind!r}")


# ---------------------------------------------------------------- what one publish round writes

@dataclass(slots=True)
class FeedBatch:
    """Everything one publish round writes, in one MULTI/EXEC (all of it or none of it)."""

    trades: list[tuple[str, Trade]]
    candles: list[tuple[str, Candle]]
    bars: dict[str, list[Candle]]  # symbol -> final candles for its OHLCVCache list, ts ascending
    gaps: list[tuple[Kind, Gap]]
    published: dict[str, str]  # published_field -> "ts id"

    @classmethod
    def empty(cls) -> FeedBatch:
        return cls([], [], {}, [], {})

    def __bool__(self) -> bool:
        return bool(self.trades or self.candles or self.bars or self.gaps or self.published)
