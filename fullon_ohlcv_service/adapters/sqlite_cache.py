"""ProcessCache in one SQLite file shared by processes (WAL, one IMMEDIATE transaction per write)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fullon_ohlcv_service.adapters.cache_layout import (
    DATA_TTL_S,
    active_types,
    check_status,
    check_type,
    decode_doc,
    is_fresh,
    merge_document,
    ms_iso,
    new_document,
    new_process_id,
    now_iso,
    sort_docs,
    split_process_id,
)
from fullon_ohlcv_service.adapters.sqlite_files import check_file, corrupt, is_corrupt, probe, uri
from fullon_ohlcv_service.adapters.sqlite_wal import enable_wal, end_failed_transaction
from fullon_ohlcv_service.errors import PermanentError, StoreUnavailable
from fullon_ohlcv_service.redaction import redact_text
from fullon_ohlcv_service.settings import StoreURL

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
PURGE_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS process_data (
    process_id TEXT PRIMARY KEY,
    process_type TEXT NOT NULL,
    component TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS process_data_expires ON process_data (expires_ms);
CREATE TABLE IF NOT EXISTS process_active (
    process_type TEXT NOT NULL,
    process_id TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (process_type, process_id)
);
CREATE TABLE IF NOT EXISTS process_components (
    component TEXT PRIMARY KEY,
    process_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trade_status (
    exchange TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
"""

# Connections inherited across a fork are parked here, never used nor closed by the child.
_INHERITED: list[sqlite3.Connection] = []


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SyncSqliteProcessCache:
    """ports.SyncProcessCache on SQLite: lazy connection, reopened after a fork, thread-safe.

    ``readonly`` (ohlcv-status) opens an existing file ``mode=ro`` and creates nothing: no directory,
    no file, no table; its writes fail.
    """

    def __init__(self, url: StoreURL | Path | str, *, readonly: bool = False) -> None:
        if isinstance(url, StoreURL):
            self.path = url.path
        else:
            self.path = Path(url)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._last_purge = 0.0

    # -- connection -------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is None:
            check_file("the process cache", self.path)
            try:
                if self.readonly:
                    conn = sqlite3.connect(uri(self.path, "ro"), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                           check_same_thread=False, uri=True)
                else:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    conn = sqlite3.connect(
                        self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
                    )
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"SQLite cache {self.path} unavailable: {exc}") from None
            try:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                probe(conn)
                if not self.readonly:
                    enable_wal(conn, BUSY_TIMEOUT_MS)
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                conn.close()
                if is_corrupt(exc):
                    raise corrupt("the process cache", self.path, exc) from None
                raise StoreUnavailable(f"SQLite cache {self.path} unavailable: {exc}") from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def _session(self, write: bool) -> Iterator[sqlite3.Connection]:
        """The connection under the thread lock; a write runs in one BEGIN IMMEDIATE transaction.

        Any failure, the COMMIT's included (disk full, I/O error, a lock past the busy timeout),
        rolls the transaction back, so the next call starts clean; the original error is raised.
        """
        with self._lock:
            conn = self._connection()
            try:
                end_failed_transaction(conn)  # a transaction left open by an earlier failure
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    if write:
                        conn.execute("COMMIT")
                except BaseException as exc:
                    end_failed_transaction(conn, exc)
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite cache {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                if is_corrupt(exc):
                    raise corrupt("the process cache", self.path, exc) from None
                raise PermanentError(f"SQLite cache {self.path}: {exc}") from None

    def open(self) -> None:
        """Connect now (otherwise the first call does); raises StoreUnavailable."""
        with self._lock:
            self._connection()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                if self._pid == os.getpid():
                    conn.close()
                else:
                    _INHERITED.append(conn)

    def __enter__(self) -> SyncSqliteProcessCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------
    def _purge(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Drop expired documents and the active/component rows that point at them."""
        if time.monotonic() - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = time.monotonic()
        conn.execute("DELETE FROM process_data WHERE expires_ms <= ?", (now_ms,))
        conn.execute("DELETE FROM process_active WHERE process_id NOT IN (SELECT process_id FROM process_data)")
        conn.execute("DELETE FROM process_components WHERE process_id NOT IN (SELECT process_id FROM process_data)")

    @staticmethod
    def _read(conn: sqlite3.Connection, process_id: str, now_ms: int) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT data FROM process_data WHERE process_id = ? AND expires_ms > ?", (process_id, now_ms)
        ).fetchone()
        return None if row is None else decode_doc(row[0])

    @staticmethod
    def _write(conn: sqlite3.Connection, doc: dict[str, Any], now_ms: int) -> None:
        conn.execute(
            "INSERT INTO process_data (process_id, process_type, component, data, updated_ms, expires_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (process_id) DO UPDATE SET"
            " data = excluded.data, updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms",
            (doc["process_id"], doc["process_type"], doc["component"], json.dumps(doc), now_ms,
             now_ms + DATA_TTL_S * 1000),
        )

    # -- the interface ----------------------------------------------------------------------
    def register(
        self, process_type: str, component: str, params: Mapping[str, Any] | None = None,
        status: str = "starting", message: str = "",
    ) -> str:
        check_status(status)
        process_id = new_process_id(process_type, component)
        now = now_iso()
        doc = new_document(process_id, process_type, component, params, status, message, now)
        with self._session(write=True) as conn:
            now_ms = _now_ms()
            self._purge(conn, now_ms)
            self._write(conn, doc, now_ms)
            conn.execute("INSERT OR REPLACE INTO process_active VALUES (?, ?, ?)", (process_type, process_id, now))
            conn.execute("INSERT OR REPLACE INTO process_components VALUES (?, ?)", (component, process_id))
        return process_id

    def update(
        self, process_id: str, status: str | None = None, message: str | None = None,
        params: Mapping[str, Any] | None = None, heartbeat: bool = True,
    ) -> None:
        """Read-merge-write in one IMMEDIATE transaction; a vanished (expired) document is
        recreated from the given fields (status ``running`` unless given), like the Redis cache."""
        ptype, component = split_process_id(process_id)
        if status is not None:
            check_status(status)
        with self._session(write=True) as conn:
            now, now_ms = now_iso(), _now_ms()
            self._purge(conn, now_ms)
            doc, recreated = merge_document(
                self._read(conn, process_id, now_ms), process_id, status, message, params, heartbeat, now
            )
            self._write(conn, doc, now_ms)
            conn.execute("INSERT OR REPLACE INTO process_active VALUES (?, ?, ?)", (ptype, process_id, now))
            if recreated:
                conn.execute(
                    "INSERT INTO process_components VALUES (?, ?) ON CONFLICT (component) DO UPDATE"
                    " SET process_id = excluded.process_id WHERE process_components.process_id NOT IN"
                    " (SELECT process_id FROM process_data WHERE expires_ms > ?)",
                    (component, process_id, now_ms),
                )

    def get(self, process_id: str) -> dict[str, Any] | None:
        with self._session(write=False) as conn:
            return self._read(conn, process_id, _now_ms())

    def get_component(self, component: str) -> dict[str, Any] | None:
        with self._session(write=False) as conn:
            row = conn.execute(
                "SELECT d.data FROM process_components c JOIN process_data d USING (process_id)"
                " WHERE c.component = ? AND d.expires_ms > ?", (component, _now_ms()),
            ).fetchone()
        return None if row is None else decode_doc(row[0])

    def list_active(self, process_type: str | None = None, within_s: float = 300.0) -> list[dict[str, Any]]:
        types = list(active_types(process_type))
        marks = ",".join("?" * len(types))
        with self._session(write=False) as conn:
            now_ms = _now_ms()
            rows = conn.execute(
                "SELECT a.at, d.data FROM process_active a JOIN process_data d USING (process_id)"
                f" WHERE a.process_type IN ({marks}) AND d.expires_ms > ?", (*types, now_ms),
            ).fetchall()
        docs = [decode_doc(data) for at, data in rows if is_fresh(at, now_ms, within_s)]
        return sort_docs([d for d in docs if d is not None])

    def stop(self, process_id: str, message: str = "") -> None:
        ptype, component = split_process_id(process_id)
        with self._session(write=True) as conn:
            now_ms = _now_ms()
            doc = self._read(conn, process_id, now_ms)
            if doc is not None:
                doc.update(status="stopped", message=redact_text(message), updated_at=now_iso())
                self._write(conn, doc, now_ms)
            conn.execute("DELETE FROM process_active WHERE process_type = ? AND process_id = ?", (ptype, process_id))
            conn.execute("DELETE FROM process_components WHERE component = ? AND process_id = ?",
                         (component, process_id))

    def set_trade_status(self, exchange: str, ts_ms: int) -> None:
        with self._session(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO trade_status VALUES (?, ?)", (exchange, ms_iso(ts_ms)))

    def trade_status(self, exchange: str) -> str | None:
        """The ISO time stored by set_trade_status (Redis: ``GET TRADE:STATUS:{exchange}``)."""
        with self._session(write=False) as conn:
            row = conn.execute("SELECT at FROM trade_status WHERE exchange = ?", (exchange,)).fetchone()
        return None if row is None else str(row[0])


class SqliteProcessCache:
    """ports.ProcessCache on SQLite: a thin asyncio.to_thread wrapper over SyncSqliteProcessCache."""

    def __init__(self, url: StoreURL | Path | str, *, readonly: bool = False) -> None:
        self.sync = SyncSqliteProcessCache(url, readonly=readonly)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def __aenter__(self) -> SqliteProcessCache:
        await self._run(self.sync.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._run(self.sync.close)

    async def register(
        self, process_type: str, component: str, params: Mapping[str, Any] | None = None,
        status: str = "starting", message: str = "",
    ) -> str:
        check_type(process_type)
        return await self._run(self.sync.register, process_type, component, params, status, message)

    async def update(
        self, process_id: str, status: str | None = None, message: str | None = None,
        params: Mapping[str, Any] | None = None, heartbeat: bool = True,
    ) -> None:
        await self._run(self.sync.update, process_id, status, message, params, heartbeat)

    async def get(self, process_id: str) -> dict[str, Any] | None:
        return await self._run(self.sync.get, process_id)

    async def get_component(self, component: str) -> dict[str, Any] | None:
        return await self._run(self.sync.get_component, component)

    async def list_active(self, process_type: str | None = None, within_s: float = 300.0) -> list[dict[str, Any]]:
        return await self._run(self.sync.list_active, process_type, within_s)

    async def stop(self, process_id: str, message: str = "") -> None:
        await self._run(self.sync.stop, process_id, message)

    async def set_trade_status(self, exchange: str, ts_ms: int) -> None:
        await self._run(self.sync.set_trade_status, exchange, ts_ms)

    async def trade_status(self, exchange: str) -> str | None:
        return await self._run(self.sync.trade_status, exchange)
