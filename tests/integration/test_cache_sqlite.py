"""SQLite ProcessCache: shared across processes, TTL on read, fork-safe, classified errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import pytest

from fullon_ohlcv_service.adapters.sqlite_cache import SqliteProcessCache, SyncSqliteProcessCache
from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.settings import parse_store_url


def _beat(path: str, pid: str, proc: int, n: int) -> None:
    cache = SyncSqliteProcessCache(path)
    for i in range(n):
        cache.update(pid, status="running", params={f"p{proc}_{i}": i})
    cache.close()


def test_many_processes_lose_no_update(home: Path) -> None:
    path = home / "cache.sqlite"
    cache = SyncSqliteProcessCache(parse_store_url("cache", f"sqlite://{path}", ("sqlite",)))
    pid = cache.register("ohlcv", "shared")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_beat, args=(str(path), pid, p, 50)) for p in range(3)]
    for p in procs:
        p.start()
    seen = reads = 0
    while any(p.is_alive() for p in procs):
        doc = cache.get(pid)
        assert doc is not None
        assert len(doc["params"]) >= seen
        seen = len(doc["params"])
        assert [d["process_id"] for d in cache.list_active("ohlcv")] == [pid]
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert cache.get(pid)["params"] == {f"p{p}_{i}": i for p in range(3) for i in range(50)}  # type: ignore[index]
    assert reads > 0
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cache.close()


def test_expired_rows_are_invisible_and_purged(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fullon_ohlcv_service.adapters.sqlite_cache as mod

    path = home / "c.sqlite"
    cache = SyncSqliteProcessCache(path)
    old = cache.register("ohlcv", "w:old")
    live = cache.register("ohlcv", "w:live")
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE process_data SET expires_ms = ? WHERE process_id = ?", (int(time.time() * 1000) - 1, old))
    assert cache.get(old) is None
    assert cache.get_component("w:old") is None
    assert [d["process_id"] for d in cache.list_active()] == [live]
    monkeypatch.setattr(mod, "PURGE_EVERY_S", 0.0)
    cache.register("tick", "t")  # purges opportunistically
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM process_data WHERE process_id = ?", (old,)).fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM process_active WHERE process_id = ?", (old,)).fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM process_components WHERE process_id = ?",
                           (old,)).fetchone()[0] == 0
        expires = raw.execute("SELECT expires_ms - updated_ms FROM process_data WHERE process_id = ?",
                              (live,)).fetchone()[0]
    assert expires == 86_400_000
    cache.close()


def test_sync_client_survives_fork(home: Path) -> None:
    cache = SyncSqliteProcessCache(home / "c.sqlite")
    pid = cache.register("ohlcv", "parent")
    parent_conn = cache._connection()
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(rfd)
            cache.update(pid, params={"child": os.getpid()})
            os.write(wfd, json.dumps({"same": cache._connection() is parent_conn}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    _, status = os.waitpid(child, 0)
    report = json.loads(os.read(rfd, 1000))
    os.close(rfd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"same": False}
    assert cache._connection() is parent_conn
    assert cache.get(pid)["params"] == {"child": child}  # type: ignore[index]
    cache.close()
    assert cache.get(pid) is not None  # reopened lazily
    cache.close()


async def test_unopenable_file_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = SqliteProcessCache(blocker / "sub" / "cache.sqlite")
    with pytest.raises(StoreUnavailable, match=r"cache\.sqlite"):
        async with cache:
            pass
    with pytest.raises(StoreUnavailable):
        SyncSqliteProcessCache(blocker / "cache.sqlite").register("ohlcv", "w")


def test_locked_file_is_transient(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fullon_ohlcv_service.adapters.sqlite_cache as mod

    monkeypatch.setattr(mod, "BUSY_TIMEOUT_MS", 100)
    path = home / "c.sqlite"
    cache = SyncSqliteProcessCache(path)
    pid = cache.register("ohlcv", "w")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            cache.update(pid)
        assert cache.get(pid) is not None  # WAL: readers are not blocked by the writer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    cache.update(pid, status="running")  # the failed transaction left nothing behind
    assert cache.get(pid)["status"] == "running"  # type: ignore[index]
    cache.close()


def test_heartbeat_cost(home: Path) -> None:
    cache = SyncSqliteProcessCache(home / "c.sqlite")
    pid = cache.register("ohlcv", "w")
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        cache.update(pid, status="running", params={"i": i})
    per_beat_ms = (time.perf_counter() - t0) / n * 1000
    assert cache.get(pid)["params"] == {"i": n - 1}  # type: ignore[index]
    print(f"sqlite heartbeat: one IMMEDIATE transaction, {per_beat_ms:.3f} ms each")
    cache.close()


def test_a_commit_locked_past_the_busy_timeout_leaves_no_transaction_open(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite keeps the transaction open when COMMIT gets SQLITE_BUSY; every later beat then failed with
    'cannot start a transaction within a transaction' until the worker restarted.

    The file is switched to a rollback journal, where COMMIT needs every reader gone: a reader that
    holds its lock past the busy timeout makes the COMMIT itself fail.
    """
    import fullon_ohlcv_service.adapters.sqlite_cache as mod

    monkeypatch.setattr(mod, "BUSY_TIMEOUT_MS", 100)
    path = home / "c.sqlite"
    cache = SyncSqliteProcessCache(path)
    pid = cache.register("ohlcv", "w")
    conn = cache._connection()
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM process_data").fetchall()  # holds a SHARED lock
        with pytest.raises(StoreUnavailable, match="locked"):
            cache.update(pid, status="running", params={"beat": 1})
        assert seen[-2:] == ["COMMIT", "ROLLBACK"], seen[-3:]  # the COMMIT failed, and was rolled back
        assert not conn.in_transaction
    finally:
        reader.execute("COMMIT")
        reader.close()
    cache.update(pid, status="running", params={"beat": 2})  # the cause is gone: the next beat lands
    assert cache.get(pid)["params"] == {"beat": 2}  # type: ignore[index]
    cache.close()


def test_a_full_database_keeps_its_error_and_the_next_write_succeeds(home: Path) -> None:
    """SQLITE_FULL (the database's page limit): the error says so, and a write after it is raised lands."""
    cache = SyncSqliteProcessCache(home / "c.sqlite")
    pid = cache.register("ohlcv", "w")
    conn = cache._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        cache.update(pid, params={"big": "x" * 200_000})
    assert not conn.in_transaction
    conn.execute("PRAGMA max_page_count=1073741823")
    cache.update(pid, params={"big": "y" * 200_000})
    assert cache.get(pid)["params"]["big"] == "y" * 200_000  # type: ignore[index]
    cache.close()


LEAKY = "PostgreSQL store postgresql://u:SE/CRET@db:5432/x unavailable"


def test_no_password_reaches_the_cache(home: Path) -> None:
    """Whatever a worker puts in its message or params, a URL's password is stored as ***."""
    path = home / "c.sqlite"
    cache = SyncSqliteProcessCache(path)
    pid = cache.register("ohlcv", "w", {"error": LEAKY}, message=LEAKY)
    cache.update(pid, message=LEAKY, params={"symbols": {"BTC/USD": {"last_rest_error": "GET https://k:SECRET@x/y"}}})
    cache.stop(cache.register("ohlcv", "w2"), message="redis://:SE#CRET@h:6379/0 gone")
    cache.close()
    with sqlite3.connect(path) as raw:
        stored = " ".join(row[0] for row in raw.execute("SELECT data FROM process_data"))
    assert "CRET" not in stored and stored.count("***") == 4


def test_damaged_file_is_store_corrupt_and_untouched(home: Path) -> None:
    from fullon_ohlcv_service.errors import StoreCorrupt

    path = home / "cache.sqlite"
    path.write_bytes(b"not a database at all\n" * 100)
    for readonly in (False, True):
        with pytest.raises(StoreCorrupt, match=r"the process cache .*cache\.sqlite is not a usable SQLite database"):
            SyncSqliteProcessCache(path, readonly=readonly).get_component("ohlcv-supervisor")
    assert path.read_bytes() == b"not a database at all\n" * 100


def test_read_only_cache_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none" / "cache.sqlite"
    with pytest.raises(StoreUnavailable):
        SyncSqliteProcessCache(path, readonly=True).get_component("ohlcv-supervisor")
    assert not (tmp_path / "none").exists()
