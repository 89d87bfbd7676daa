"""The interfaces collectors, workers and the supervisor depend on; adapters implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from fullon_ohlcv_service.feed_layout import FeedBatch, FeedEntry
from fullon_ohlcv_service.models import Candle, ExchangeSpec, Reject, Trade


class ConfigSource(Protocol):
    """Reads the fullon_orm configuration tables."""

    async def load_exchanges(self, names: Sequence[str] | None) -> list[ExchangeSpec]:
        """One ExchangeSpec per exchange asked for (all the admin's if ``names`` is None).

        Raises ConfigError naming any exchange asked for but not configured, with the
        ``ohlcv-config add-exchange`` command that would add it.
        """
        ...


@runtime_checkable
class TradeStore(Protocol):
    """Trade storage for ONE exchange. Every write is idempotent (dedup on trade id)."""

    async def init_symbol(self, symbol: str) -> None: ...

    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        """Store the batch; return how many rows were new. Raises StoreUnavailable (transient)."""
        ...

    async def latest_trade(self, symbol: str) -> tuple[int, str] | None:
        """(ts ms, trade id) of the newest stored trade, or None."""
        ...

    def iter_trades(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Trade]:
        """Stored trades in [since, until) in (ts, id) order, streamed (never all in memory)."""
        ...


@runtime_checkable
class CandleStore(Protocol):
    """1m candle storage for ONE exchange. Upsert on minute; final never overwritten by provisional."""

    async def init_symbol(self, symbol: str) -> None: ...

    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        """Upsert; return rows inserted or changed."""
        ...

    async def latest_candle(self, symbol: str, final_only: bool = False) -> Candle | None:
        """The newest stored candle (only final ones with ``final_only``), or None."""
        ...

    def iter_candles(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Candle]: ...

    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        """Record that every trade in [start, end) is stored, so empty minutes there are not gaps."""
        ...

    async def candle_gaps(self, symbol: str, since: int, until: int) -> list[tuple[int, int]]:
        """Minute ranges [start, end) in [since, until) with no candle and not known to be empty."""
        ...


@runtime_checkable
class RejectStore(Protocol):
    """Rows refused by validation or quarantined by the writer, per symbol (``<symbol>_rejects``)."""

    async def save_rejects(self, symbol: str, rejects: Sequence[Reject]) -> int:
        """Store the rejects; return how many were new. Idempotent on (kind, ref, reason): the first kept."""
        ...

    async def load_rejects(self, symbol: str) -> list[Reject]:
        """Every stored reject of ``symbol`` in (seen_ms, kind, ref, reason) order."""
        ...


class OhlcvStore(TradeStore, CandleStore, RejectStore, Protocol):
    """Both stores for one exchange, opened with ``async with`` and closed on exit."""

    exchange: str

    async def __aenter__(self) -> OhlcvStore: ...

    async def __aexit__(self, *exc: object) -> None: ...


class ProcessCache(Protocol):
    """fullon_cache's ProcessCache (async side, used inside event loops)."""

    async def register(
        self,
        process_type: str,
        component: str,
        params: Mapping[str, Any] | None = None,
        status: str = "starting",
        message: str = "",
    ) -> str:
        """Create ``{type}:{component}:{epoch float}``; return that id."""
        ...

    async def update(
        self,
        process_id: str,
        status: str | None = None,
        message: str | None = None,
        params: Mapping[str, Any] | None = None,
        heartbeat: bool = True,
    ) -> None:
        """Atomic merge-update in one round trip; refreshes TTL and the active-set time."""
        ...

    async def get(self, process_id: str) -> dict[str, Any] | None: ...

    async def get_component(self, component: str) -> dict[str, Any] | None:
        """The latest registration's data for a component (via ``process:components``)."""
        ...

    async def list_active(
        self, process_type: str | None = None, within_s: float = 300.0
    ) -> list[dict[str, Any]]: ...

    async def stop(self, process_id: str, message: str = "") -> None: ...

    async def set_trade_status(self, exchange: str, ts_ms: int) -> None:
        """fullon's legacy ``TRADE:STATUS:{exchange}`` beacon (ISO time, no TTL)."""
        ...

    async def __aenter__(self) -> ProcessCache: ...

    async def __aexit__(self, *exc: object) -> None: ...


class SyncProcessCache(Protocol):
    """The same cache, synchronous, for the supervisor's master loop (which has no event loop).

    Connections are opened lazily and ``close()`` drops them before every fork.
    """

    def register(
        self,
        process_type: str,
        component: str,
        params: Mapping[str, Any] | None = None,
        status: str = "starting",
        message: str = "",
    ) -> str: ...

    def update(
        self,
        process_id: str,
        status: str | None = None,
        message: str | None = None,
        params: Mapping[str, Any] | None = None,
        heartbeat: bool = True,
    ) -> None: ...

    def get(self, process_id: str) -> dict[str, Any] | None: ...

    def get_component(self, component: str) -> dict[str, Any] | None: ...

    def list_active(self, process_type: str | None = None, within_s: float = 300.0) -> list[dict[str, Any]]: ...

    def stop(self, process_id: str, message: str = "") -> None: ...

    def close(self) -> None: ...


class RejectSink(Protocol):
    """Where rows refused by validation go (the worker's reject book): counted, logged, stored.

    Called from inside parsing (synchronously, on the event loop); it never blocks.
    """

    def reject(self, symbol: str, rejects: Sequence[Reject]) -> None: ...


class ExchangeClient(Protocol):
    """What collectors need from an exchange; the ccxt adapter implements it. Returns our models.

    Every trade and candle is validated where it enters (``validation.py``): a row that breaks a rule
    is never returned; it goes to the RejectSink the client was built with, and paging moves past it.
    """

    name: str
    ohlcv_depth: int | None  # how many recent 1m bars REST serves at most (Kraken ~720), None = deep

    async def load_markets(self) -> set[str]:
        """Load markets once; return the unified symbols the exchange lists."""
        ...

    async def fetch_trades(self, symbol: str, since: int, limit: int | None = None) -> list[Trade]:
        """One REST page of trades at or after ``since`` (ms), in (ts, id) order."""
        ...

    async def fetch_ohlcv(self, symbol: str, since: int, limit: int | None = None) -> list[Candle]:
        """One REST page of 1m candles from ``since``; the forming minute comes back provisional."""
        ...

    async def watch_trades(self, symbols: Sequence[str]) -> list[tuple[str, Trade]]:
        """Next batch of live trades for any of ``symbols`` as (symbol, trade).

        Raises TransientError on a dropped socket; the next call reconnects.
        """
        ...

    async def watch_ohlcv(self, symbol: str) -> list[Candle]:
        """Next live 1m candle updates for ``symbol``, provisional only (``final=False``)."""
        ...

    async def close(self) -> None: ...


class FeedSink(Protocol):
    """Where committed rows are published for consumers (Redis: adapters/redis_feed.py; collectors/feed.py drives it).

    Every method raises StoreUnavailable when the sink cannot be reached.
    """

    async def ping(self) -> None: ...

    async def publish(self, batch: FeedBatch) -> None:
        """Write the whole batch atomically (all of it or none of it)."""
        ...

    async def published(self) -> dict[str, tuple[int, str]]:
        """The newest point published per ``kind:symbol`` field: (ts ms, trade id or "")."""
        ...

    async def recent(self, kind: str, count: int) -> list[FeedEntry]:
        """The newest ``count`` entries of a stream, newest first."""
        ...

    async def list_last_ts(self, symbol: str) -> int | None:
        """The minute (ms) of the last element of ``symbol``'s OHLCVCache list, or None when empty."""
        ...

    async def close(self) -> None: ...
