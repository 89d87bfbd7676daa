"""Compare stored trades and final candles with the simulator's ground truth: missing, duplicated, wrong; and
the simulator's poisoned rows with the reject store: each refused, none stored."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.timeutil import MINUTE_MS, floor_minute

SAMPLES = 5  # how many examples of each defect a report keeps
TS_2009 = 1_230_768_000_000  # no valid trade is older (2009-01-01T00:00:00Z)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def ceil_minute(ts_ms: int) -> int:
    """The first minute open at or after ``ts_ms``."""
    return -(-ts_ms // MINUTE_MS) * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Window:
    """The audited window of one symbol: trades in [since, trades_until), final candles in [since, candles_until)."""

    since: int
    trades_until: int
    candles_until: int

    def to_json(self) -> dict[str, int]:
        return {"since": self.since, "trades_until": self.trades_until, "candles_until": self.candles_until}


def trade_window(
    first_start_ms: int, backtest_days: int, stop_ms: int, *, slack_ms: int, margin_ms: int
) -> tuple[int, int]:
    """[since, until) for trades, given when the symbol's first worker started and when the service last stopped.

    The worker backfills from (its own now - backtest days), and its now is at most ``slack_ms`` after
    ``first_start_ms``; ``since`` is the first minute after that, so it never precedes the backfill start.
    ``until`` stays ``margin_ms`` before the final stop, so trades still in flight then are not counted.
    """
    since = ceil_minute(first_start_ms + slack_ms - backtest_days * 86_400_000)
    until = stop_ms - margin_ms
    return since, max(since, until)


def candle_window_end(since: int, trades_until: int, truth_trades: Sequence[Trade]) -> int:
    """The end of the candle audit: only minutes that a later true trade (before the cut-off) proved closed.

    A quiet symbol's last candle may honestly still be provisional at the stop: no later trade has
    told the worker that its minute ended. Every earlier minute must be final and exact.
    """
    last = max((t.ts for t in truth_trades if since <= t.ts < trades_until), default=None)
    if last is None:
        return since
    return max(since, min(floor_minute(last), floor_minute(trades_until)))


@dataclass(slots=True)
class TradeAudit:
    """Stored trades against the truth for one symbol and window."""

    expected: int = 0
    stored: int = 0
    missing: int = 0
    duplicated: int = 0  # stored rows beyond the first for one trade id
    extra: int = 0  # stored ids the market never produced in the window
    altered: int = 0  # same id, different ts/price/amount/side
    missing_ranges: list[dict[str, int]] = field(default_factory=list)  # runs of consecutive missing trades
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.extra or self.altered)

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": self.expected, "stored": self.stored, "missing": self.missing,
            "duplicated": self.duplicated, "extra": self.extra, "altered": self.altered,
            "missing_ranges": self.missing_ranges, "samples": self.samples,
        }


def _same_trade(a: Trade, b: Trade) -> bool:
    return a.ts == b.ts and a.side == b.side and _close(a.price, b.price) and _close(a.amount, b.amount)


def audit_trades(truth: Iterable[Trade], stored: Iterable[Trade]) -> TradeAudit:
    """Compare by trade id. ``truth`` is the market's trades of the window, ``stored`` the store's rows of it."""
    truth_list = sorted(truth, key=lambda t: (t.ts, t.id))
    by_id: dict[str, Trade] = {}
    for t in truth_list:
        if t.id in by_id:
            raise ValueError(f"ground truth repeats trade id {t.id!r}")
        by_id[t.id] = t
    counts: Counter[str] = Counter()
    first: dict[str, Trade] = {}
    for s in stored:
        counts[s.id] += 1
        first.setdefault(s.id, s)
    audit = TradeAudit(expected=len(truth_list), stored=sum(counts.values()))
    audit.duplicated = sum(c - 1 for c in counts.values() if c > 1)
    dup_ids = [i for i, c in counts.items() if c > 1]
    extra_ids = [i for i in counts if i not in by_id]
    altered_ids = [i for i, s in first.items() if i in by_id and not _same_trade(by_id[i], s)]
    audit.extra = len(extra_ids)
    audit.altered = len(altered_ids)
    run: list[Trade] = []
    missing_ids: list[str] = []
    for t in truth_list:
        if t.id in counts:
            if run:
                audit.missing_ranges.append(_range(run))
                run = []
            continue
        missing_ids.append(t.id)
        run.append(t)
    if run:
        audit.missing_ranges.append(_range(run))
    audit.missing = len(missing_ids)
    for name, ids in (("missing", missing_ids), ("duplicated", dup_ids), ("extra", extra_ids),
                      ("altered", altered_ids)):
        if ids:
            audit.samples[name] = ids[:SAMPLES]
    return audit


def _range(run: list[Trade]) -> dict[str, int]:
    return {"from_ts": run[0].ts, "to_ts": run[-1].ts, "trades": len(run)}


@dataclass(slots=True)
class CandleAudit:
    """Stored 1m candles against the truth's closed candles for one symbol and window."""

    expected: int = 0
    stored: int = 0
    missing: int = 0  # a true candle with no stored row
    provisional: int = 0  # stored, but never marked final although a later trade proved the minute closed
    different: int = 0  # stored final, but with other values
    extra: int = 0  # a stored candle for a minute with no trade
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def wrong(self) -> int:
        return self.missing + self.provisional + self.different + self.extra

    @property
    def ok(self) -> bool:
        return self.wrong == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": self.expected, "stored": self.stored, "missing": self.missing,
            "provisional": self.provisional, "different": self.different, "extra": self.extra,
            "wrong": self.wrong, "samples": self.samples,
        }


def _same_candle(a: Candle, b: Candle) -> bool:
    return all(_close(x, y) for x, y in ((a.open, b.open), (a.high, b.high), (a.low, b.low),
                                         (a.close, b.close), (a.volume, b.volume)))


def _candle_json(c: Candle) -> dict[str, Any]:
    return {"ts": c.ts, "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
            "final": c.final}


def audit_candles(truth: Iterable[Candle], stored: Iterable[Candle]) -> CandleAudit:
    """Compare by minute. A stored row counts once per minute; a second row for a minute is ``extra``."""
    truth_by_ts = {c.ts: c for c in truth}
    stored_by_ts: dict[int, Candle] = {}
    audit = CandleAudit(expected=len(truth_by_ts))
    samples: dict[str, list[dict[str, Any]]] = {}

    def note(kind: str, doc: dict[str, Any]) -> None:
        bucket = samples.setdefault(kind, [])
        if len(bucket) < SAMPLES:
            bucket.append(doc)

    for c in stored:
        audit.stored += 1
        if c.ts in stored_by_ts:
            audit.extra += 1
            note("extra", _candle_json(c))
            continue
        stored_by_ts[c.ts] = c
    for ts, t in sorted(truth_by_ts.items()):
        s = stored_by_ts.get(ts)
        if s is None:
            audit.missing += 1
            note("missing", _candle_json(t))
        elif not s.final:
            audit.provisional += 1
            note("provisional", {"stored": _candle_json(s), "truth": _candle_json(t)})
        elif not _same_candle(s, t):
            audit.different += 1
            note("different", {"stored": _candle_json(s), "truth": _candle_json(t)})
    for ts, s in stored_by_ts.items():
        if ts not in truth_by_ts:
            audit.extra += 1
            note("extra", _candle_json(s))
    audit.samples = samples
    return audit


@dataclass(slots=True)
class PoisonAudit:
    """The simulator's poisoned rows (``GET /_sim/poison``) of one symbol's window against its store."""

    expected: int = 0  # poisoned trades and candles served with a slot in the window
    rejected: int = 0  # found in the reject store
    stored: int = 0  # found in the trades or candles table (with the poisoned values)
    unrejected: int = 0  # not in the reject store
    valid_rejected: int = 0  # rejects naming a true trade of the window (validation refused a good row)
    kinds: dict[str, int] = field(default_factory=dict)  # expected, per poison kind
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.stored or self.unrejected or self.valid_rejected)

    def to_json(self) -> dict[str, Any]:
        return {"expected": self.expected, "rejected": self.rejected, "stored": self.stored,
                "unrejected": self.unrejected, "valid_rejected": self.valid_rejected, "kinds": self.kinds,
                "samples": self.samples}


def _text_number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _equal(want: Any, got: Any) -> bool:
    """A poisoned wire text (``"nan"``, ``"1e400"``, ``"-0.5"``) against a value as stored or as kept in a
    reject's raw JSON (non-finite floats there are text: ``"nan"``, ``"inf"``)."""
    a, b = _text_number(want), _text_number(got)
    if a is None or b is None:
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or _close(a, b)


def _raw(reject: Reject) -> dict[str, Any]:
    try:
        doc = json.loads(reject.raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _same_values(p: Mapping[str, Any], got: Mapping[str, Any], keys: Sequence[tuple[str, str]]) -> bool:
    return all(_equal(p[want], got.get(have)) for want, have in keys)


_TRADE_KEYS = (("price", "price"), ("amount", "amount"))
_CANDLE_KEYS = (("open", "open"), ("high", "high"), ("low", "low"), ("close", "close"), ("volume", "volume"))


def audit_poison(poisoned: Iterable[Mapping[str, Any]], rejects: Iterable[Reject], stored_trades: Iterable[Trade],
                 stored_candles: Iterable[Candle], truth_ids: Iterable[str] = ()) -> PoisonAudit:
    """Every poisoned row must be in the reject store and in no data table.

    A poisoned trade with an id is matched by ``ref == id`` (in the rejects) and by id (in the
    stored trades); one without an id by its price and amount (a reject's raw values, a stored row
    at its timestamp). A poisoned candle is matched by ``ref == its minute`` in the rejects, and is
    stored if its minute's stored row carries its values. ``truth_ids``: the window's true trade ids;
    a reject naming one is a valid trade refused.
    """
    rejects = list(rejects)
    trade_refs = {r.ref for r in rejects if r.kind == "trade"}
    candle_refs = {r.ref for r in rejects if r.kind == "candle"}
    noid = [_raw(r) for r in rejects if r.kind == "trade" and r.ref.startswith("noid:")]
    trades = list(stored_trades)
    stored_ids = {t.id for t in trades}
    candles: dict[int, list[Candle]] = {}
    for c in stored_candles:
        candles.setdefault(c.ts, []).append(c)
    audit = PoisonAudit()
    samples: dict[str, list[dict[str, Any]]] = {}

    def note(name: str, doc: Mapping[str, Any]) -> None:
        bucket = samples.setdefault(name, [])
        if len(bucket) < SAMPLES:
            bucket.append(dict(doc))

    for p in poisoned:
        audit.expected += 1
        audit.kinds[p["poison"]] = audit.kinds.get(p["poison"], 0) + 1
        if p["kind"] == "trade" and p["id"]:
            rejected = p["id"] in trade_refs
            stored = p["id"] in stored_ids
        elif p["kind"] == "trade":
            rejected = any(_same_values(p, raw, _TRADE_KEYS) for raw in noid)
            stored = any(t.ts == p["timestamp"] and _same_values(p, {"price": t.price, "amount": t.amount},
                                                                 _TRADE_KEYS) for t in trades)
        else:
            rejected = str(p["ts"]) in candle_refs
            stored = any(_same_values(p, {"open": c.open, "high": c.high, "low": c.low, "close": c.close,
                                          "volume": c.volume}, _CANDLE_KEYS) for c in candles.get(p["ts"], []))
        if rejected:
            audit.rejected += 1
        else:
            audit.unrejected += 1
            note("unrejected", p)
        if stored:
            audit.stored += 1
            note("stored", p)
    good = set(truth_ids) & trade_refs
    audit.valid_rejected = len(good)
    if good:
        samples["valid_rejected"] = [{"id": i} for i in sorted(good)[:SAMPLES]]
    audit.samples = samples
    return audit


# Parsing of the simulator's ground truth and of ohlcv-export's JSON lines.

def truth_trade(doc: Mapping[str, Any]) -> Trade:
    """One ``GET /_sim/trades`` element: {"id", "timestamp", "price", "amount", "side"}."""
    return Trade(ts=int(doc["timestamp"]), id=str(doc["id"]), price=float(doc["price"]),
                 amount=float(doc["amount"]), side=doc["side"])


def truth_candle(row: Sequence[Any]) -> Candle:
    """One ``GET /_sim/candles`` element: [ts_ms, open, high, low, close, volume] (closed)."""
    return Candle(ts=int(row[0]), open=float(row[1]), high=float(row[2]), low=float(row[3]),
                  close=float(row[4]), volume=float(row[5]), final=True)


def export_trade(doc: Mapping[str, Any]) -> Trade:
    """One ``ohlcv-export --kind trades --format json`` line: {"ts", "id", "price", "volume", "side"}."""
    return Trade(ts=int(doc["ts"]), id=str(doc["id"]), price=float(doc["price"]),
                 amount=float(doc["volume"]), side=doc["side"])


def export_candle(doc: Mapping[str, Any]) -> Candle:
    """One ``ohlcv-export --kind candles --format json`` line."""
    return Candle(ts=int(doc["ts"]), open=float(doc["open"]), high=float(doc["high"]), low=float(doc["low"]),
                  close=float(doc["close"]), volume=float(doc["volume"]), final=bool(doc["final"]))
