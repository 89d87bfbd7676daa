"""The pure rules both SQL stores share: batch dedup, id checks, reject rows, minute arithmetic and gaps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fullon_ohlcv_service.errors import StoreDataError
from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.timeutil import MINUTE_MS
from fullon_ohlcv_service.validation import storable_text

# How many rows a streamed read fetches per round trip.
FETCH_ROWS = 5_000


def dedupe_candles(candles: Sequence[Candle]) -> list[Candle]:
    """One candle per minute, in time order, applying the upsert rule within the batch itself.

    A later candle for the same minute replaces an earlier one, except that a provisional candle
    never replaces a final one (the same rule the database applies against stored rows).
    """
    by_ts: dict[int, Candle] = {}
    for c in candles:
        old = by_ts.get(c.ts)
        if old is not None and old.final and not c.final:
            continue
        by_ts[c.ts] = c
    return [by_ts[ts] for ts in sorted(by_ts)]


def require_ids(symbol: str, trades: Sequence[Trade]) -> None:
    """Refuse a batch holding a trade without an id: dedup on the id would silently drop it."""
    for t in trades:
        if not t.id:
            raise StoreDataError(f"{symbol}: trade at {t.ts} has no trade id; the batch was not stored")


def reject_rows(rejects: Sequence[Reject]) -> list[tuple[str, str, str, str, int]]:
    """(kind, ref, reason, raw, seen_ms) rows of ``rejects``, their text made storable."""
    return [(r.kind, storable_text(r.ref), storable_text(r.reason), storable_text(r.raw), int(r.seen_ms))
            for r in rejects]


def first_minute(since: int) -> int:
    """The first minute open at or after ``since``."""
    return -((-since) // MINUTE_MS) * MINUTE_MS


def compute_gaps(
    since: int, until: int, candle_ts: Iterable[int], coverage: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Minute ranges [start, end) in [since, until) with no candle and not inside a coverage interval.

    ``candle_ts`` must be sorted minute opens within the range; ``coverage`` sorted, merged
    [start, end) intervals. A minute counts as covered only if one interval holds all of it.
    Adjacent missing minutes are joined into one range.
    """
    gaps: list[tuple[int, int]] = []
    cov = list(coverage)
    ci = 0

    def add_missing(lo: int, hi: int) -> None:
        # minutes m with lo <= m < hi (all minute-aligned) lack a candle; drop covered ones
        nonlocal ci
        m = lo
        while m < hi:
            while ci < len(cov) and cov[ci][1] < m + MINUTE_MS:
                ci += 1
            if ci < len(cov) and cov[ci][0] <= m:
                # covered from m up to the last whole minute inside this interval
                m = max(m + MINUTE_MS, min(hi, cov[ci][1] - cov[ci][1] % MINUTE_MS))
                continue
            nxt = hi if ci >= len(cov) else min(hi, first_minute(cov[ci][0]))
            nxt = max(nxt, m + MINUTE_MS)
            if gaps and gaps[-1][1] == m:
                gaps[-1] = (gaps[-1][0], nxt)
            else:
                gaps.append((m, nxt))
            m = nxt

    cursor = first_minute(since)
    end = first_minute(until)
    for ts in candle_ts:
        if ts < cursor or ts >= end:
            continue
        if ts > cursor:
            add_missing(cursor, ts)
        cursor = ts + MINUTE_MS
    if cursor < end:
        add_missing(cursor, end)
    return gaps
