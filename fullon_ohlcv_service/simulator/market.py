"""Deterministic market: trades and 1m candles of any window as a pure function of (seed, exchange, symbol)."""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

BUCKET_MS = 60_000  # one bucket is one 1m candle: a minute's trades come from one seeded RNG
ID_STRIDE = 100_000  # trade id = bucket index * ID_STRIDE + n (at most one trade per ms, so n < 60_000)
REGIME_BUCKETS = 10  # bursts and quiet stretches last 10 minutes
BURST_FACTOR = 2.9  # a burst regime's rate multiplier (quiet: 0.1, normal: 1.0)
# The market has at most one trade per millisecond: a minute holds at most BUCKET_MS trades. A rate whose
# minutes could need more (its mean plus four standard deviations, at its burst peak) is refused, not cut.
MAX_STEADY_RATE = 980.0  # trades/s: 58,800 a minute + 4 sd (970) <= 60,000
SIGMA_PER_MINUTE = 0.0009  # log-price volatility per minute (about 3.4 % a day)
# value-noise octaves for the minute anchors: (lattice step in minutes, amplitude in sigma-minutes)
_OCTAVES = ((4320, 40.0), (720, 18.0), (120, 7.0), (20, 3.0), (4, 1.2))

_DEFAULT_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "XRP": 0.6, "LTC": 80.0, "ADA": 0.45,
                   "DOT": 6.0, "DOGE": 0.15, "USDT": 1.0, "USDC": 1.0}


def default_price(symbol: str) -> float:
    """A plausible starting price for ``BASE/QUOTE`` (quote currencies other than USD-likes: a ratio)."""
    base, _, quote = symbol.partition("/")
    b = _DEFAULT_PRICES.get(base, 10.0)
    q = _DEFAULT_PRICES.get(quote.split(":")[0], 1.0)
    return b / q


def default_price_decimals(price: float) -> int:
    """Enough decimals for about six significant digits."""
    if price <= 0:
        return 8
    return max(0, min(10, 5 - math.floor(math.log10(price))))


@dataclass(frozen=True, slots=True)
class SymbolConfig:
    """One simulated symbol: average rate (trades/s), start price and the decimals of its wire values."""

    symbol: str
    rate: float = 5.0
    base_price: float = 0.0  # 0 -> default_price(symbol)
    price_decimals: int = -1  # -1 -> default_price_decimals(base_price)
    amount_decimals: int = 8

    def resolved(self) -> SymbolConfig:
        price = self.base_price or default_price(self.symbol)
        decimals = self.price_decimals if self.price_decimals >= 0 else default_price_decimals(price)
        return SymbolConfig(self.symbol, float(self.rate), price, decimals, self.amount_decimals)


def max_rate(steady: bool) -> float:
    """The highest average rate (trades/s) a symbol can have without a minute ever being cut to fit."""
    return MAX_STEADY_RATE if steady else math.floor(MAX_STEADY_RATE / BURST_FACTOR)


def rate_problem(symbol: str, rate: float, steady: bool) -> str | None:
    """One line saying why ``rate`` (trades/s) cannot be served for ``symbol``, or None when it can."""
    limit = max_rate(steady)
    if rate <= limit:
        return None
    mode = "with --steady" if steady else f"without --steady (its bursts run at {BURST_FACTOR:g}x the rate)"
    return (f"rate {rate:g} trades/s for {symbol} is more than the simulator can emit: at most one trade per "
            f"millisecond per symbol allows an average of {limit:g} trades/s {mode}; spread the rate over more "
            f"symbols")


def _fixed(units: int, decimals: int) -> str:
    """Integer ``units`` of 10**-decimals as fixed-decimal text (exact, no float formatting)."""
    if decimals == 0:
        return str(units)
    scale = 10**decimals
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // scale}.{units % scale:0{decimals}d}"


class SimTrade:
    """One generated trade: integer price ticks and amount units; the exact wire texts are derived on demand."""

    __slots__ = ("ad", "amount_units", "buy", "id", "pd", "price_ticks", "ts")

    def __init__(self, ts: int, id: int, price_ticks: int, amount_units: int, buy: bool,
                 pd: int, ad: int) -> None:
        self.ts = ts
        self.id = id
        self.price_ticks = price_ticks
        self.amount_units = amount_units
        self.buy = buy
        self.pd = pd
        self.ad = ad

    @property
    def price(self) -> str:
        """Fixed-decimal text, e.g. ``"63912.4"``."""
        return _fixed(self.price_ticks, self.pd)

    @property
    def amount(self) -> str:
        return _fixed(self.amount_units, self.ad)

    @property
    def price_f(self) -> float:
        """The float ``float(self.price)`` gives (an exact int over a power of ten is correctly rounded)."""
        return self.price_ticks / float(10**self.pd)

    @property
    def amount_f(self) -> float:
        return self.amount_units / float(10**self.ad)

    @property
    def side(self) -> str:
        return "buy" if self.buy else "sell"

    def truth(self) -> dict[str, object]:
        """The ground-truth record: id as text, ms timestamp, float price/amount, side."""
        return {"id": str(self.id), "timestamp": self.ts, "price": float(self.price),
                "amount": float(self.amount), "side": self.side}

    def __repr__(self) -> str:
        return f"SimTrade(ts={self.ts}, id={self.id}, price={self.price}, amount={self.amount}, side={self.side})"


class SimCandle:
    """A 1m candle aggregated from trades (integer ticks/units inside, exact texts outside)."""

    __slots__ = ("close", "count", "first_id", "high", "last_id", "low", "open", "pv", "ts", "volume")

    def __init__(self, ts: int) -> None:
        self.ts = ts
        self.open = self.high = self.low = self.close = 0
        self.volume = 0
        self.count = 0
        self.pv = 0  # sum(price_ticks * amount_units), for vwap
        self.first_id = -1
        self.last_id = -1

    def add(self, t: SimTrade) -> None:
        p = t.price_ticks
        if self.count == 0:
            self.open = self.high = self.low = p
            self.first_id = t.id
        elif p > self.high:
            self.high = p
        elif p < self.low:
            self.low = p
        self.close = p
        self.volume += t.amount_units
        self.pv += p * t.amount_units
        self.count += 1
        self.last_id = t.id


class CandleText:
    """Wire texts of one candle (prices with the symbol's decimals, volume with the amount decimals)."""

    __slots__ = ("close", "count", "first_id", "high", "last_id", "low", "open", "quote_volume", "ts", "volume",
                 "vwap")

    def __init__(self, c: SimCandle, pd: int, ad: int) -> None:
        self.ts = c.ts
        self.open = _fixed(c.open, pd)
        self.high = _fixed(c.high, pd)
        self.low = _fixed(c.low, pd)
        self.close = _fixed(c.close, pd)
        self.volume = _fixed(c.volume, ad)
        self.vwap = _fixed(c.pv // c.volume if c.volume else c.close, pd)
        self.count = c.count
        self.first_id = c.first_id
        self.last_id = c.last_id
        self.quote_volume = _fixed(c.pv, pd + ad)

    def row(self) -> list[float]:
        """``[ts, o, h, l, c, v]`` with floats parsed from the wire texts (what ccxt returns)."""
        return [self.ts, float(self.open), float(self.high), float(self.low), float(self.close), float(self.volume)]


def _h64(*parts: object) -> int:
    data = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _gauss_from_hash(h: int) -> float:
    """A standard normal value from 64 hash bits (Box-Muller on two 32-bit uniforms)."""
    u1 = ((h >> 32) + 0.5) / 4294967296.0
    u2 = ((h & 0xFFFFFFFF) + 0.5) / 4294967296.0
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


class Market:
    """All trades of one symbol on one simulated exchange; any window is generated on demand and cached."""

    def __init__(self, seed: int, exchange: str, config: SymbolConfig, genesis_ms: int = 0,
                 cache_trades: int = 300_000, steady: bool = False) -> None:
        self.seed = seed
        self.steady = steady  # no regimes: every minute at the average rate (tests that count live trades)
        self.exchange = exchange
        self.config = config.resolved()
        self.symbol = self.config.symbol
        self.genesis_ms = genesis_ms - genesis_ms % BUCKET_MS
        self._key = f"{seed}|{exchange}|{self.symbol}"
        self._cache: OrderedDict[int, list[SimTrade]] = OrderedDict()
        self._candles: OrderedDict[int, CandleText | None] = OrderedDict()
        self._cache_trades = cache_trades  # bound on cached trades (memory), whatever the rate
        self._cached = 0
        self._log_base = math.log(self.config.base_price)
        self._pd = self.config.price_decimals
        self._ad = self.config.amount_decimals
        self._pscale = 10**self._pd
        self._ascale = 10**self._ad
        # mean trade size: about 1000 quote units' worth, at least one amount unit
        self._amount_mu = math.log(max(1000.0 / self.config.base_price, 10.0 ** -self._ad * 50))

    # -- prices -------------------------------------------------------------------------------------
    def _noise(self, step: int, minute: int) -> float:
        i, r = divmod(minute, step)
        a = _gauss_from_hash(_h64(self._key, "n", step, i))
        b = _gauss_from_hash(_h64(self._key, "n", step, i + 1))
        f = r / step
        s = f * f * (3.0 - 2.0 * f)  # smoothstep: continuous value noise
        return a + (b - a) * s

    def anchor_log_price(self, bucket: int) -> float:
        """Log-price at the start of ``bucket``: multi-octave value noise, a pure function of the bucket."""
        x = self._log_base
        for step, amp in _OCTAVES:
            x += amp * SIGMA_PER_MINUTE * self._noise(step, bucket)
        x += 0.7 * SIGMA_PER_MINUTE * _gauss_from_hash(_h64(self._key, "a", bucket))
        return x

    def activity(self, bucket: int) -> float:
        """Rate multiplier of the bucket's 10-minute regime: quiet stretches, normal, bursts (1.0 if steady)."""
        if self.steady:
            return 1.0
        u = (_h64(self._key, "regime", bucket // REGIME_BUCKETS) >> 11) / float(1 << 53)
        if u < 0.2:
            return 0.1
        if u < 0.9:
            return 1.0
        return BURST_FACTOR

    # -- trades -------------------------------------------------------------------------------------
    def bucket(self, b: int) -> list[SimTrade]:
        """The trades of bucket ``b`` (minute ``b`` since the epoch), generated once then cached."""
        cached = self._cache.get(b)
        if cached is not None:
            self._cache.move_to_end(b)
            return cached
        trades = self._generate(b)
        self._cache[b] = trades
        self._cached += len(trades)
        while self._cached > self._cache_trades and len(self._cache) > 1:
            self._cached -= len(self._cache.popitem(last=False)[1])
        return trades

    def _generate(self, b: int) -> list[SimTrade]:
        if b * BUCKET_MS < self.genesis_ms:
            return []
        rng = random.Random(_h64(self._key, "bucket", b))
        lam = self.config.rate * 60.0 * self.activity(b)
        if lam <= 0:
            return []
        if lam < 40:
            # Knuth's Poisson sampler
            limit, k, p = math.exp(-lam), 0, rng.random()
            while p > limit:
                k += 1
                p *= rng.random()
            n = k
        else:
            n = round(rng.gauss(lam, math.sqrt(lam)))
        n = max(0, min(BUCKET_MS, n))
        if n == 0:
            return []
        offsets = sorted(rng.sample(range(BUCKET_MS), n))
        x0 = self.anchor_log_price(b)
        x1 = self.anchor_log_price(b + 1)
        gauss = rng.gauss
        rnd = rng.random
        # Brownian path at the trade times, then pinned to x1 at the end of the minute (a bridge)
        walk: list[float] = []
        w = 0.0
        prev = 0.0
        for off in offsets:
            f = off / BUCKET_MS
            w += math.sqrt(f - prev) * gauss(0.0, 1.0)
            walk.append(w)
            prev = f
        w_end = w + math.sqrt(1.0 - prev) * gauss(0.0, 1.0)
        base_ts = b * BUCKET_MS
        base_id = b * ID_STRIDE
        pd, ad, pscale, ascale = self._pd, self._ad, self._pscale, self._ascale
        mu = self._amount_mu
        out: list[SimTrade] = []
        last_x = x0
        for i, off in enumerate(offsets):
            f = off / BUCKET_MS
            x = x0 + f * (x1 - x0) + SIGMA_PER_MINUTE * (walk[i] - f * w_end)
            ticks = max(1, round(math.exp(x) * pscale))
            units = max(1, int(math.exp(gauss(mu, 1.1)) * ascale))
            # more buys on upticks, more sells on downticks
            buy = rnd() < (0.65 if x >= last_x else 0.35)
            last_x = x
            out.append(SimTrade(base_ts + off, base_id + i, ticks, units, buy, pd, ad))
        return out

    def iter_trades(self, since: int, until: int) -> Iterator[SimTrade]:
        """Trades with ``since <= ts < until``, oldest first (no notion of now: callers cap at now)."""
        since = max(since, self.genesis_ms)
        if until <= since:
            return
        for b in range(since // BUCKET_MS, (until - 1) // BUCKET_MS + 1):
            trades = self.bucket(b)
            if not trades:
                continue
            if trades[0].ts >= since and trades[-1].ts < until:
                yield from trades
            else:
                for t in trades:
                    if since <= t.ts < until:
                        yield t

    def trades(self, since: int, until: int) -> list[SimTrade]:
        return list(self.iter_trades(since, until))

    def trades_from_id(self, from_id: int, until: int, limit: int) -> list[SimTrade]:
        """Up to ``limit`` trades with ``id >= from_id`` and ``ts < until``."""
        out: list[SimTrade] = []
        b = max(from_id // ID_STRIDE, self.genesis_ms // BUCKET_MS)
        last_b = (until - 1) // BUCKET_MS
        while b <= last_b and len(out) < limit:
            for t in self.bucket(b):
                if t.id >= from_id and t.ts < until:
                    out.append(t)
                    if len(out) >= limit:
                        break
            b += 1
        return out

    def latest_trades(self, now: int, limit: int) -> list[SimTrade]:
        """The ``limit`` most recent trades with ``ts <= now`` (oldest first), walking back to genesis."""
        out: list[SimTrade] = []
        b = now // BUCKET_MS
        first = self.genesis_ms // BUCKET_MS
        while b >= first and len(out) < limit:
            chunk = [t for t in self.bucket(b) if t.ts <= now]
            out[:0] = chunk[-(limit - len(out)):] if chunk else []
            b -= 1
        return out

    # -- candles ------------------------------------------------------------------------------------
    def candle(self, minute_ts: int, upto_ts: int | None = None) -> CandleText | None:
        """The 1m candle opening at ``minute_ts`` from its trades with ``ts <= upto_ts`` (None: all)."""
        minute_ts -= minute_ts % BUCKET_MS
        complete = upto_ts is None or upto_ts >= minute_ts + BUCKET_MS - 1
        if complete and minute_ts in self._candles:
            return self._candles[minute_ts]
        c = SimCandle(minute_ts)
        for t in self.bucket(minute_ts // BUCKET_MS):
            if upto_ts is not None and t.ts > upto_ts:
                break
            c.add(t)
        text = CandleText(c, self._pd, self._ad) if c.count else None
        if complete:
            self._candles[minute_ts] = text
            if len(self._candles) > 100_000:
                self._candles.popitem(last=False)
        return text

    def candles(self, since: int, until: int, now: int | None = None) -> list[CandleText]:
        """Candles opening in ``[since, until)``; with ``now``, the minute containing now is partial."""
        since = max(since, self.genesis_ms)
        start = since + (-since) % BUCKET_MS
        out: list[CandleText] = []
        for m in range(start, until, BUCKET_MS):
            if now is not None and m > now:
                break
            upto = now if now is not None and m + BUCKET_MS > now else None
            c = self.candle(m, upto)
            if c is not None:
                out.append(c)
        return out


def pack_history(market: Market, since: int, until: int) -> bytes:
    """Every trade of a window as bytes (used to prove same seed -> byte-identical history)."""
    return b"".join(struct.pack(">qq", t.ts, t.id) + t.price.encode() + b"," + t.amount.encode()
                    + (b"b;" if t.buy else b"s;") for t in market.iter_trades(since, until))
