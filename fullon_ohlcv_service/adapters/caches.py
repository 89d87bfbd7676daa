"""Factories that open the ProcessCache (async or sync) named by a store URL (Redis or SQLite)."""

from __future__ import annotations

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.ports import ProcessCache, SyncProcessCache
from fullon_ohlcv_service.settings import StoreURL


def open_process_cache(url: StoreURL, *, readonly: bool = False) -> ProcessCache:
    """An unopened async cache for ``url``: use it with ``async with``. ``readonly`` (for commands that
    only read) opens an embedded SQLite cache read-only and creates nothing."""
    if url.kind == "redis":
        from fullon_ohlcv_service.adapters.redis_cache import RedisProcessCache

        return RedisProcessCache(url)
    if url.kind == "sqlite":
        from fullon_ohlcv_service.adapters.sqlite_cache import SqliteProcessCache

        return SqliteProcessCache(url, readonly=readonly)
    raise ConfigError(f"cache: unsupported URL {url.redacted!r}; expected redis://... or sqlite:///...")


def open_sync_process_cache(url: StoreURL) -> SyncProcessCache:
    """A lazily connecting sync cache for ``url`` (safe to hold across forks; ``close()`` before forking)."""
    if url.kind == "redis":
        from fullon_ohlcv_service.adapters.redis_cache import SyncRedisProcessCache

        return SyncRedisProcessCache(url)
    if url.kind == "sqlite":
        from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache

        return SyncSqliteProcessCache(url)
    raise ConfigError(f"cache: unsupported URL {url.redacted!r}; expected redis://... or sqlite:///...")
