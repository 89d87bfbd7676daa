"""The ``poison`` fault: invalid trades and candles planted among a market's valid ones, served and told as truth.

A poisoned print is an EXTRA entry: the valid trades, their ids and the ground truth of the market are
untouched. Where each one sits, so that a client that skips it still gets every valid trade exactly once:

- Time: a poisoned trade has its own *slot*, a millisecond that no valid trade uses (the market has at
  most one trade per millisecond) and that was in the future when it was planted, so every live
  stream and every later REST page that covers the slot carries it, in slot order, among the valid
  trades. Its wire timestamp is the slot, except for the timestamp kinds. Kraken's ``last`` cursor of
  a page that ends on it is its slot: the next page starts after a millisecond that holds no valid
  trade. Slots of one market only grow, planting after planting.
- Ids: valid ids are ``bucket * ID_STRIDE + n`` with ``n < 60 000``; a poisoned trade's id is
  ``bucket * ID_STRIDE + 60 000 + j`` (its slot's bucket, the j-th poison there), so it is unique, and
  id order equals slot order inside a bucket. Binance's ``fromId`` pages list entries in id order, a
  bucket's poison after its valid trades; ``fromId = last valid id + 1`` never skips a valid trade.
- Candles: at most one poisoned candle per market and minute, served from its slot on: on REST right
  after the minute's valid row (same timestamp; an empty minute gets the poisoned row alone), on the
  websocket as an extra update of that minute. A page cut between the two rows loses no valid row.

What each wire can carry (ccxt 4.5 parses it that way): ``nan_price`` ("nan"), ``inf_amount`` ("1e400",
which overflows to inf), ``negative_amount``, ``ts_overflow`` (2^63 ms; on Kraken's websocket, whose
times are ISO texts, the last ISO millisecond, 9999-12-31T23:59:59.999Z), ``ts_before_2009``,
``empty_id`` and ``bad_side`` (Binance: a null maker flag; Kraken: side "x" in a REST row, which ccxt
reads as "buy", so only a client that checks the wire sees it, and a null side on the websocket).
Candles: ``high_below_low``, ``nan_open``, ``negative_low`` and ``negative_volume``.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator
from typing import Any

from fullon_ohlcv_service.simulator.market import BUCKET_MS, ID_STRIDE, CandleText, Market, SimTrade, _fixed, _h64

TRADE_KINDS = ("nan_price", "inf_amount", "negative_amount", "ts_overflow", "ts_before_2009", "empty_id",
               "bad_side")
CANDLE_KINDS = ("high_below_low", "nan_open", "negative_low", "negative_volume")
# kinds a venue plants none of (none today: every wire carries every kind, see the module docstring)
UNSUPPORTED: dict[str, frozenset[str]] = {}
POISON_ID_BASE = 60_000  # n of a valid id stays below 60 000 (at most one trade per ms in a minute)
TS_OVERFLOW = 2**63  # ms: past a signed 64-bit column
TS_2009 = 1_230_768_000_000  # 2009-01-01T00:00:00Z
LAST_ISO_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
LEAD_MS = 1  # a slot is after the clock when planted: no live cursor has passed it
SPACING_MS = 200  # slots of one planting, apart (Binance sends one frame per trade)
NAN = "nan"
INF = "1e400"  # a decimal text beyond the largest double: float() and ccxt give inf


class PoisonTrade:
    """One poisoned trade: where it sits (slot, key) and the raw values it is served with."""

    __slots__ = ("amount", "buy", "id", "key", "kind", "price", "side", "slot", "ts")

    def __init__(self, slot: int, key: int, kind: str, price: str, amount: str, ts: int, side: str | None,
                 tid: str) -> None:
        self.slot = slot  # the ms it sits at among the valid trades (no valid trade has it)
        self.key = key  # its place in the id order (the wire id unless empty)
        self.kind = kind
        self.price = price
        self.amount = amount
        self.ts = ts  # wire timestamp, ms
        self.side = side  # "buy", "sell", or None (no side)
        self.buy = side != "sell"
        self.id = tid  # wire id: str(key), or "" for empty_id

    @property
    def price_json(self) -> float | str:
        """Kraken websocket style: a JSON number when it is one, else the text ("nan", "1e400")."""
        return json_number(self.price)

    @property
    def amount_json(self) -> float | str:
        return json_number(self.amount)

    def truth(self) -> dict[str, Any]:
        return {"kind": "trade", "poison": self.kind, "slot": self.slot, "id": self.id, "timestamp": self.ts,
                "price": self.price, "amount": self.amount, "side": self.side}

    def __repr__(self) -> str:
        return f"PoisonTrade({self.kind}, slot={self.slot}, id={self.id!r})"


class PoisonCandle:
    """One poisoned 1m candle of minute ``ts``, served from ``slot`` on."""

    __slots__ = ("close", "high", "kind", "low", "open", "slot", "ts", "volume")

    def __init__(self, slot: int, ts: int, kind: str, values: tuple[str, str, str, str, str]) -> None:
        self.slot = slot
        self.ts = ts
        self.kind = kind
        self.open, self.high, self.low, self.close, self.volume = values

    # the fields CandleText has, so venues render both alike
    @property
    def vwap(self) -> str:
        return self.close

    @property
    def count(self) -> int:
        return 1

    @property
    def quote_volume(self) -> str:
        return self.volume

    @property
    def first_id(self) -> int:
        return -1

    @property
    def last_id(self) -> int:
        return -1

    def truth(self) -> dict[str, Any]:
        return {"kind": "candle", "poison": self.kind, "slot": self.slot, "ts": self.ts, "open": self.open,
                "high": self.high, "low": self.low, "close": self.close, "volume": self.volume}

    def __repr__(self) -> str:
        return f"PoisonCandle({self.kind}, ts={self.ts})"


Entry = SimTrade | PoisonTrade
CandleEntry = CandleText | PoisonCandle


def at(e: Entry) -> int:
    """Where an entry sits in time order: a valid trade's timestamp, a poisoned one's slot."""
    return e.slot if isinstance(e, PoisonTrade) else e.ts


def json_number(text: str) -> float | str:
    """A JSON number when the text is a finite one, else the text itself ("nan", "1e400")."""
    value = float(text)
    return value if math.isfinite(value) else text


def kraken_iso_ms(ts: int) -> int:
    """The millisecond a Kraken ISO time can say for ``ts`` (ISO years end at 9999)."""
    return min(ts, LAST_ISO_MS)


class PoisonBook:
    """The poisoned entries of one market, planted by the ``poison`` fault; empty until then."""

    def __init__(self, market: Market, exchange: str) -> None:
        self.market = market
        self.kinds = tuple(k for k in TRADE_KINDS if k not in UNSUPPORTED.get(exchange, frozenset()))
        self._key = f"{market.seed}|{market.exchange}|{market.symbol}|poison"
        self._trades: dict[int, list[PoisonTrade]] = {}  # bucket -> by slot (= by key)
        self._candles: dict[int, PoisonCandle] = {}  # minute -> the one poisoned candle
        self._slots: list[int] = []  # every trade slot, sorted
        self._by_slot: dict[int, PoisonTrade] = {}
        self._candle_slots: list[tuple[int, int]] = []  # (slot, minute), sorted
        self.trades_planted = 0
        self.candles_planted = 0

    def __bool__(self) -> bool:
        return bool(self._slots or self._candle_slots)

    # -- planting ---------------------------------------------------------------------------------------
    def plant(self, now: int, trades: int, candles: int) -> tuple[list[PoisonTrade], list[PoisonCandle]]:
        """``trades`` poisoned trades from ``now`` on (kinds in turn), and ``candles`` poisoned candles."""
        out_t: list[PoisonTrade] = []
        t = max(now + LEAD_MS, (self._slots[-1] + SPACING_MS) if self._slots else 0)
        for _ in range(trades):
            slot = self._free_ms(t)
            out_t.append(self._plant_trade(slot))
            t = slot + SPACING_MS
        out_c: list[PoisonCandle] = []
        c = now + LEAD_MS
        for _ in range(candles):
            minute = c - c % BUCKET_MS
            while minute in self._candles:
                minute += BUCKET_MS
            slot = max(c, minute)
            out_c.append(self._plant_candle(slot, minute))
            c = minute + BUCKET_MS
        return out_t, out_c

    def _free_ms(self, t: int) -> int:
        """The first millisecond at or after ``t`` that no valid trade uses."""
        b, used = -1, set[int]()
        while True:
            if t // BUCKET_MS != b:
                b = t // BUCKET_MS
                used = {x.ts for x in self.market.bucket(b)}
            if t not in used:
                return t
            t += 1

    def _plant_trade(self, slot: int) -> PoisonTrade:
        n = self.trades_planted
        self.trades_planted += 1
        offset = _h64(self._key, "trade-kinds") % len(self.kinds)
        kind = self.kinds[(offset + n) % len(self.kinds)]
        rng = random.Random(_h64(self._key, "trade", n))
        b = slot // BUCKET_MS
        in_bucket = self._trades.setdefault(b, [])
        key = b * ID_STRIDE + POISON_ID_BASE + len(in_bucket)
        m = self.market
        pd, ad = m.config.price_decimals, m.config.amount_decimals
        price = _fixed(self._ticks(b, rng), pd)
        amount = _fixed(max(1, int(rng.uniform(0.001, 2.0) * 10**ad)), ad)
        ts, tid = slot, str(key)
        side: str | None = "buy" if rng.random() < 0.5 else "sell"
        if kind == "nan_price":
            price = NAN
        elif kind == "inf_amount":
            amount = INF
        elif kind == "negative_amount":
            amount = "-" + amount
        elif kind == "ts_overflow":
            ts = TS_OVERFLOW
        elif kind == "ts_before_2009":
            ts = TS_2009 - 1 - rng.randrange(365 * 86_400_000)
        elif kind == "empty_id":
            tid = ""
        elif kind == "bad_side":
            side = None
        p = PoisonTrade(slot, key, kind, price, amount, ts, side, tid)
        in_bucket.append(p)
        bisect.insort(self._slots, slot)
        self._by_slot[slot] = p
        return p

    def _plant_candle(self, slot: int, minute: int) -> PoisonCandle:
        n = self.candles_planted
        self.candles_planted += 1
        offset = _h64(self._key, "candle-kinds") % len(CANDLE_KINDS)
        kind = CANDLE_KINDS[(offset + n) % len(CANDLE_KINDS)]
        rng = random.Random(_h64(self._key, "candle", n))
        pd, ad = self.market.config.price_decimals, self.market.config.amount_decimals
        p = self._ticks(minute // BUCKET_MS, rng)
        d = max(1, p // 500)
        o, h, lo, c = p, p + d, p - d, p + d // 2
        vol = _fixed(max(1, int(rng.uniform(0.01, 5.0) * 10**ad)), ad)
        texts = [_fixed(o, pd), _fixed(h, pd), _fixed(lo, pd), _fixed(c, pd), vol]
        if kind == "high_below_low":
            texts[1], texts[2] = _fixed(lo, pd), _fixed(h, pd)
        elif kind == "nan_open":
            texts[0] = NAN
        elif kind == "negative_low":
            texts[2] = "-" + texts[2]
        elif kind == "negative_volume":
            texts[4] = "-" + vol
        pc = PoisonCandle(slot, minute, kind, (texts[0], texts[1], texts[2], texts[3], texts[4]))
        self._candles[minute] = pc
        bisect.insort(self._candle_slots, (slot, minute))
        return pc

    def _ticks(self, bucket: int, rng: random.Random) -> int:
        m = self.market
        x = m.anchor_log_price(bucket)
        return max(2, round(math.exp(x) * (1 + rng.uniform(-0.001, 0.001)) * float(10**m.config.price_decimals)))

    # -- reading ------------------------------------------------------------------------------------------
    def bucket(self, b: int) -> list[PoisonTrade]:
        return self._trades.get(b, [])

    def trades_in(self, since: int, until: int) -> list[PoisonTrade]:
        """Poisoned trades with ``since <= slot < until``, by slot."""
        lo = bisect.bisect_left(self._slots, since)
        hi = bisect.bisect_left(self._slots, until)
        return [self._by_slot[s] for s in self._slots[lo:hi]]

    def candles_in(self, since: int, until: int) -> list[PoisonCandle]:
        """Poisoned candles whose slot is in ``[since, until)``, by slot."""
        i = bisect.bisect_left(self._candle_slots, (since, -1))
        out: list[PoisonCandle] = []
        while i < len(self._candle_slots) and self._candle_slots[i][0] < until:
            out.append(self._candles[self._candle_slots[i][1]])
            i += 1
        return out

    def candle(self, minute: int, now: int) -> PoisonCandle | None:
        """The poisoned candle of ``minute`` if it is served by ``now``."""
        pc = self._candles.get(minute)
        return pc if pc is not None and pc.slot <= now else None

    def truth(self, since: int, until: int) -> list[dict[str, Any]]:
        """Every poisoned trade and candle whose slot is in ``[since, until)``, trades first, by slot."""
        return [p.truth() for p in self.trades_in(since, until)] + [c.truth() for c in self.candles_in(since, until)]


# -- a market's entries with its poison: the order every venue serves them in ------------------------------

def merged_bucket(market: Market, book: PoisonBook | None, b: int) -> list[Entry]:
    """Bucket ``b``'s valid trades and poisoned trades, in time (slot) order."""
    valid = market.bucket(b)
    poison = book.bucket(b) if book else []
    if not poison:
        return list(valid)
    out: list[Entry] = []
    i = 0
    for p in poison:
        while i < len(valid) and valid[i].ts < p.slot:
            out.append(valid[i])
            i += 1
        out.append(p)
    out.extend(valid[i:])
    return out


def iter_entries(market: Market, book: PoisonBook | None, since: int, until: int) -> Iterator[Entry]:
    """Valid and poisoned trades with ``since <= at(e) < until``, in time order."""
    if not book:
        yield from market.iter_trades(since, until)
        return
    since = max(since, market.genesis_ms)
    for b in range(since // BUCKET_MS, (until - 1) // BUCKET_MS + 1):
        for e in merged_bucket(market, book, b):
            if since <= at(e) < until:
                yield e


def entries_from_id(market: Market, book: PoisonBook | None, from_id: int, until: int, limit: int) -> list[Entry]:
    """Up to ``limit`` entries with id (key) ``>= from_id`` and time ``< until``, in id order."""
    if not book:
        return list(market.trades_from_id(from_id, until, limit))
    out: list[Entry] = []
    b = max(from_id // ID_STRIDE, market.genesis_ms // BUCKET_MS)
    last_b = (until - 1) // BUCKET_MS
    while b <= last_b and len(out) < limit:
        ordered: list[Entry] = [*market.bucket(b), *book.bucket(b)]  # ids then poison keys: ascending
        for e in ordered:
            key = e.key if isinstance(e, PoisonTrade) else e.id
            if key >= from_id and at(e) < until:
                out.append(e)
                if len(out) >= limit:
                    break
        b += 1
    return out


def latest_entries(market: Market, book: PoisonBook | None, now: int, limit: int) -> list[Entry]:
    """The ``limit`` most recent entries with time ``<= now``, oldest first."""
    if not book:
        return list(market.latest_trades(now, limit))
    out: list[Entry] = []
    b = now // BUCKET_MS
    first = market.genesis_ms // BUCKET_MS
    while b >= first and len(out) < limit:
        chunk = [e for e in merged_bucket(market, book, b) if at(e) <= now]
        out[:0] = chunk[-(limit - len(out)):] if chunk else []
        b -= 1
    return out


def minute_candles(market: Market, book: PoisonBook | None, minute: int, now: int) -> list[CandleEntry]:
    """Minute ``minute``'s rows as served at ``now``: the valid candle (partial while forming), then any poison."""
    out: list[CandleEntry] = []
    c = market.candle(minute, now if minute + BUCKET_MS > now else None)
    if c is not None:
        out.append(c)
    pc = book.candle(minute, now) if book else None
    if pc is not None:
        out.append(pc)
    return out


def candle_entries(market: Market, book: PoisonBook | None, since: int, until: int, now: int) -> list[CandleEntry]:
    """Like ``Market.candles(since, until, now)`` with each minute's poisoned candle after its valid one."""
    if not book:
        return list(market.candles(since, until, now=now))
    since = max(since, market.genesis_ms)
    start = since + (-since) % BUCKET_MS
    out: list[CandleEntry] = []
    for m in range(start, until, BUCKET_MS):
        if m > now:
            break
        out.extend(minute_candles(market, book, m, now))
    return out
