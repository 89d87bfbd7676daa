"""Audit a chaos run's live feeds: the trade stream and gap markers against the store, the OHLCVCache lists exactly.

The run publishes everything (``--publish all``) to a Redis db of its own. After the catch-up, for each
audited symbol and window:

- every stored trade is in the trade stream or inside a gap marker's [from_ts, to_ts] for its symbol;
- no trade id is published twice, and every published trade is stored with the same values;
- the OHLCVCache list (fullon_cache's ``ohlcv:{exchange}:{SYMBOL}:1m``, as ``get_latest_ohlcv_bars``
  reads it) holds exactly the stored final candles of the window, each once, in time order.

A Redis stopped by the run without saving (the ``redis_restart`` fault) loses the streams: trades
before the end of its last outage are then exempt (the report says so); the lists are re-filled from
the store by the worker, so they are checked in full.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chaos import audit
from chaos.servers import PrivateRedis
from fullon_ohlcv_service.feed_layout import TRADES, Gap, list_key, parse_entry, stream_key
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.timeutil import now_ms

SAMPLES = 5
MAXLEN = 5_000_000  # the run must keep every entry it published (about 60 bytes each in Redis)


@dataclass(slots=True)
class FeedResult:
    """One symbol's feeds against its stored rows."""

    exchange: str
    symbol: str
    since: int
    stored: int = 0  # stored trades audited
    published: int = 0  # trade entries in the window
    marked: int = 0  # stored trades not published but inside a gap marker
    missing: int = 0  # stored trades neither published nor marked
    duplicated: int = 0  # trade entries beyond the first for one id
    unstored: int = 0  # trade entries that the store does not hold (or holds with other values)
    bars: int = 0  # stored final candles
    bars_wrong: int = 0  # list elements missing, extra, different or out of order
    exempt_before: int | None = None  # trades before this (a Redis restart lost the stream) are not required
    samples: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unstored or self.bars_wrong)

    def failures(self) -> list[str]:
        name = f"feeds {self.exchange} {self.symbol}"
        out = []
        if self.missing:
            out.append(f"{name}: {self.missing} stored trades neither in the trade stream nor in a gap marker")
        if self.duplicated:
            out.append(f"{name}: {self.duplicated} trades published twice")
        if self.unstored:
            out.append(f"{name}: {self.unstored} published trades not stored as published")
        if self.bars_wrong:
            out.append(f"{name}: OHLCVCache list differs from the stored final candles at {self.bars_wrong} minutes")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "symbol": self.symbol, "since": self.since, "stored": self.stored,
                "published": self.published, "marked": self.marked, "missing": self.missing,
                "duplicated": self.duplicated, "unstored": self.unstored, "bars": self.bars,
                "bars_wrong": self.bars_wrong, "exempt_before": self.exempt_before, "samples": self.samples}


def _key(t: Trade) -> tuple[int, float, float, str]:
    return t.ts, t.price, t.amount, t.side  # the stream carries no `type`


def audit_trades(result: FeedResult, stored: Sequence[Trade], published: Sequence[Trade], gaps: Sequence[Gap],
                 until: int) -> None:
    """Fill ``result``'s trade counts: ``stored`` are the window's rows, ``published`` the symbol's entries."""
    lo = result.since if result.exempt_before is None else max(result.since, result.exempt_before)
    mine = [t for t in published if result.since <= t.ts < until]
    result.stored, result.published = len(stored), len(mine)
    counts = Counter(t.id for t in mine)
    dups = [i for i, n in counts.items() if n > 1]
    result.duplicated = sum(counts[i] - 1 for i in dups)
    by_id = {t.id: _key(t) for t in stored}
    unstored = [t.id for t in mine if by_id.get(t.id) != _key(t)]
    result.unstored = len(unstored)
    seen = set(counts)
    missing: list[str] = []
    for t in stored:
        if t.id in seen:
            continue
        if any(g.covers(t.ts) for g in gaps):
            result.marked += 1
        elif t.ts >= lo:
            missing.append(t.id)
    result.missing = len(missing)
    for name, ids in (("missing", missing), ("duplicated", dups), ("unstored", unstored)):
        if ids:
            result.samples[name] = ids[:SAMPLES]


def audit_bars(result: FeedResult, finals: Sequence[Candle], bars: Iterable[Sequence[Any]]) -> None:
    """Compare the list's elements at or after ``since`` with the stored final candles there, position by position."""
    want = [[c.ts // 1000, c.open, c.high, c.low, c.close, c.volume]
            for c in finals if c.final and c.ts >= result.since]
    got = [list(b) for b in bars if int(b[0]) * 1000 >= result.since]
    result.bars = len(want)
    wrong = [w for w, g in zip(want, got, strict=False) if w != g]
    result.bars_wrong = len(wrong) + abs(len(want) - len(got))
    if result.bars_wrong:
        result.samples["bars"] = (wrong[:SAMPLES] or [want[len(got):][:SAMPLES], got[len(want):][:SAMPLES]])


class _Run(Protocol):
    """What the audit reads from chaos.runner.ChaosRun."""

    opts: Any
    stop_ms: int
    errors: list[str]
    notes: list[str]
    planned_down: list[tuple[str, float, float]]
    redis: PrivateRedis | None  # the run's private Redis (the cache), when it has one

    def audit_targets(self) -> list[tuple[Any, int]]: ...

    def export(self, ex: str, sym: str, kind: str, since: int, until: int) -> list[dict[str, Any]]: ...


class FeedCheck:
    """The chaos runner's feed side: flags for the supervisor, the audit after the catch-up, the cleanup."""

    def __init__(self, redis_db: int, maxlen: int = MAXLEN) -> None:
        self.url = ""
        self.db = redis_db
        self.maxlen = maxlen
        self.enabled = False
        self.results: list[FeedResult] = []
        self.streams: dict[str, dict[str, int]] = {}
        self._own: PrivateRedis | None = None  # started for the feeds when the run has no Redis cache

    def prepare(self, run: _Run) -> None:
        """Publish to the run's private Redis (the cache's, so its outages hit the feeds too), else to one
        started for the feeds alone; never to the machine's shared Redis."""
        server = run.redis
        if server is None:
            missing = PrivateRedis.missing()
            if missing is not None:
                run.notes.append(f"live feeds not published nor audited: {missing}")
                return
            server = self._own = PrivateRedis()
            server.start()
        self.url = server.url(self.db)
        self.enabled = True

    def supervisor_args(self) -> list[str]:
        if not self.enabled:
            return []
        return ["--publish", "all", "--feed-redis", self.url, "--stream-maxlen", str(self.maxlen)]

    def audit(self, run: _Run) -> None:
        """Audit every target symbol's feeds; failures go to ``run.errors`` (the run then fails)."""
        if not self.enabled:
            return
        import redis

        exempt = self._lost_until(run)
        if exempt is not None:
            run.notes.append("feeds: Redis was stopped without saving; trades published before "
                             f"{exempt} (epoch ms) are exempt from the stream audit")
        client = redis.Redis.from_url(self.url)
        try:
            by_exchange: dict[str, tuple[dict[str, list[Trade]], dict[str, list[Gap]]]] = {}
            for plan, first in run.audit_targets():
                ex, sym = plan.exchange, plan.symbol
                if ex not in by_exchange:
                    by_exchange[ex] = self._read_trades(client, ex)
                published, gaps = by_exchange[ex]
                since, until = audit.trade_window(first, run.opts.backtest_days, run.stop_ms,
                                                  slack_ms=run.opts.slack_ms, margin_ms=run.opts.margin_ms)
                res = FeedResult(ex, sym, since, exempt_before=exempt)
                stored = [audit.export_trade(d) for d in run.export(ex, sym, "trades", since, until)]
                audit_trades(res, stored, published.get(sym, []), gaps.get(sym, []), until)
                rows = run.export(ex, sym, "candles", since, run.stop_ms + 86_400_000)
                finals = [audit.export_candle(d) for d in rows]
                raw = client.lrange(list_key(ex, sym), 0, -1)
                audit_bars(res, finals, [json.loads(b) for b in raw])  # type: ignore[union-attr]
                self.results.append(res)
                run.errors.extend(res.failures())
        finally:
            client.close()

    def _read_trades(self, client: Any, exchange: str) -> tuple[dict[str, list[Trade]], dict[str, list[Gap]]]:
        key = stream_key(exchange, TRADES)
        trades: dict[str, list[Trade]] = {}
        gaps: dict[str, list[Gap]] = {}
        last = "-"
        n = 0
        while True:
            rows = client.xrange(key, min=last, count=10_000)
            if last != "-":
                rows = rows[1:]
            if not rows:
                break
            for entry_id, fields in rows:
                last = entry_id.decode()
                entry = parse_entry(fields)
                n += 1
                if isinstance(entry, Gap):
                    gaps.setdefault(entry.symbol, []).append(entry)
                elif isinstance(entry[1], Trade):
                    trades.setdefault(entry[0], []).append(entry[1])
        self.streams[key] = {"entries": n, "gap_markers": sum(map(len, gaps.values()))}
        return trades, gaps

    @staticmethod
    def _lost_until(run: _Run) -> int | None:
        downs = [b for name, _, b in run.planned_down if name == "redis"]
        if not downs:
            return None
        return now_ms() - int((time.monotonic() - max(downs)) * 1000)

    def cleanup(self, keep: bool) -> None:
        """Close the Redis started for the feeds (whatever ``keep`` says: a server is not a file to keep)."""
        if self._own is not None:
            self._own.close()
            self._own = None

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "redis": self.url, "streams": self.streams,
                "symbols": [r.to_json() for r in self.results],
                "ok": all(r.ok for r in self.results)}


def summary(results: Mapping[str, Any]) -> str:
    """One line for the chaos log."""
    syms = results.get("symbols") or []
    return (f"feeds: {sum(s['published'] for s in syms)} trades published, {sum(s['marked'] for s in syms)} in gap "
            f"markers, {sum(s['missing'] for s in syms)} missing, {sum(s['duplicated'] for s in syms)} twice, "
            f"{sum(s['bars_wrong'] for s in syms)} wrong list minutes")
