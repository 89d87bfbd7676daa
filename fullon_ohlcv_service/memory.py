"""The worker's memory bound: estimated bytes of each buffered object, and how one budget is shared.

The estimates are what CPython 3.11 allocates (measured with tracemalloc by
``tests/unit/test_memory_budget.py``, which fails if they fall short): a Trade with its own id, time,
price and amount objects plus the list slot that holds it; a RecentIds entry once its trade is gone;
a candle builder's minute. One budget (``--buffer-mb``) covers every buffer that grows with market
activity, across all the symbols of a worker:

- the BatchWriter queue: at most ``--buffer-rows`` rows (validated to fit in a quarter of the budget);
- the adapter's live-trade queue between two reads: capped at a quarter of the budget;
- each symbol's recent trade ids (dedup window): sized so all symbols together fit in a quarter;
- the candle builders (a few hundred bytes per held minute, two hours per symbol);
- the live buffers of symbols catching up over REST: whatever the rest leaves. At the bound the
  largest live buffer drops its oldest half; REST catch-up fetches those trades again (the same path
  as a reconnect), so nothing is lost, only the merge point moves later.
"""

from __future__ import annotations

MIB = 1 << 20
TRADE_BYTES = 256  # one Trade held in a list (its id text ~19 digits, ts, price, amount)
ROW_BYTES = 256  # one row queued in the BatchWriter (a Trade or a Candle)
RECENT_ID_BYTES = 288  # one RecentIds entry (id text, ts, tuple, deque slot; its set slots at their sparsest)
MINUTE_BYTES = 1024  # one candle builder minute (MinuteAgg, its keys, exact-sum partials, dict slot)
DEFAULT_BUFFER_MB = 128
MIN_BUFFER_MB = 16
RECENT_IDS_MAX = 20_000  # per symbol, when the budget allows
RECENT_IDS_MIN = 1_000  # per symbol, however many symbols share the budget
PENDING_TRADES_MAX = 200_000  # the adapter's queue between two reads, when the budget allows
# The stated RSS bound of a worker (README; scripts/bench_memory.py measures it): the process itself
# (CPython, ccxt with its markets, uvloop, drivers: ~126 MB measured), the SQLite store's page cache
# (32 MB of pages once warm, ~35 MB with its headers) and the allocator's overhead: 181 MB measured
# at the plateau of a 10-minute run at 1,200 trades/s; 200 with a margin. Then ccxt's own per-symbol
# cache of the last 1000 raw trades, and the buffer budget.
RSS_BASE_MB = 200
RSS_PER_SYMBOL_MB = 2


def writer_rows_fit(buffer_rows: int, budget_bytes: int) -> bool:
    """The writer's queue fits in a quarter of the budget."""
    return buffer_rows * ROW_BYTES <= budget_bytes // 4


def recent_ids_per_symbol(budget_bytes: int, symbols: int) -> int:
    """Each symbol's dedup window: all symbols together in a quarter of the budget (within the limits)."""
    share = budget_bytes // 4 // max(1, symbols) // RECENT_ID_BYTES
    return max(RECENT_IDS_MIN, min(RECENT_IDS_MAX, share))


def pending_trades_max(budget_bytes: int) -> int:
    """The adapter's live-trade queue between two reads: a quarter of the budget."""
    return max(1_000, min(PENDING_TRADES_MAX, budget_bytes // 4 // TRADE_BYTES))


def rss_bound_mb(buffer_mb: int, symbols: int) -> int:
    """The RSS a worker stays under with ``symbols`` symbols and ``--buffer-mb buffer_mb``."""
    return RSS_BASE_MB + RSS_PER_SYMBOL_MB * symbols + buffer_mb
