"""Open the candle/trade store named by a URL (the drivers never import this module: no import cycle)."""

from __future__ import annotations

from typing import Protocol

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.identifiers import validate_exchange
from fullon_ohlcv_service.ports import OhlcvStore
from fullon_ohlcv_service.settings import StoreURL


class SqlOhlcvStore(OhlcvStore, Protocol):
    """An OhlcvStore that can also say whether a symbol's tables exist (used by ohlcv-export)."""

    async def has_symbol(self, symbol: str) -> bool: ...

    async def __aenter__(self) -> SqlOhlcvStore: ...


def open_ohlcv_store(url: StoreURL, exchange: str, *, readonly: bool = False) -> SqlOhlcvStore:
    """The store for ``exchange`` at ``url``, not yet opened: use ``async with open_ohlcv_store(...) as s``.

    ``sqlite:///dir`` -> one file per exchange ``dir/<exchange>.sqlite``; ``postgresql://...`` ->
    one schema per exchange. Raises ConfigError for an unsupported URL or an invalid exchange name.
    ``readonly`` (a command that only reads) opens an embedded file read-only and creates nothing; on
    open, a file that is not a database is StoreCorrupt (exit 78), never a retried outage.
    """
    validate_exchange(exchange)
    if url.kind == "sqlite":
        from fullon_ohlcv_service.adapters.sqlite_store import SqliteOhlcvStore

        return SqliteOhlcvStore(url.path, exchange, readonly=readonly)
    if url.kind == "postgresql":
        from fullon_ohlcv_service.adapters.postgres_store import PostgresOhlcvStore

        return PostgresOhlcvStore(url.url, exchange)
    raise ConfigError(f"--ohlcv-db: {url.redacted} is not a sqlite:// or postgresql:// URL")
