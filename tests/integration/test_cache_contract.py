"""Contract cases run against every ProcessCache: Redis and SQLite, async and sync classes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fullon_ohlcv_service.adapters.caches import open_process_cache, open_sync_process_cache
from fullon_ohlcv_service.settings import parse_store_url

HOSTILE_PARAMS: dict[str, Any] = {
    "symbols": [],
    "empty": {},
    "big": 12345678901234567,
    "price": 0.1234567890123456,
    "text": 'quo"te \\ back, {brace} [bracket] : colon',
    "unicode": "déjà vu ✓",
    "nested": {"a": [1, [2, []], {"b": None}], "t": True, "f": False},
    "slash/key": "a/b",
}


class SyncAsAsync:
    """Runs a SyncProcessCache through the async contract (directly, in the calling thread)."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return call


@dataclass
class Backend:
    cache: Any
    vanish: Callable[[str], None]  # make a document disappear (TTL expiry / flush)
    trade_status: Callable[[str], str | None]


@pytest.fixture(params=["redis", "redis-sync", "sqlite", "sqlite-sync"])
async def backend(request: pytest.FixtureRequest, home: Path) -> AsyncIterator[Backend]:
    kind: str = request.param
    if kind.startswith("redis"):
        import redis

        url = parse_store_url("cache", request.getfixturevalue("redis_url"), ("redis", "sqlite"))
        raw = redis.Redis.from_url(url.url, decode_responses=True)

        def vanish(pid: str) -> None:
            raw.delete(f"process:data:{pid}")

        def status(ex: str) -> str | None:
            value: str | None = raw.get(f"TRADE:STATUS:{ex}")  # type: ignore[assignment]
            return value
    else:
        url = parse_store_url("cache", f"sqlite://{home / 'cache.sqlite'}", ("redis", "sqlite"))

        def vanish(pid: str) -> None:
            with sqlite3.connect(url.path) as conn:
                conn.execute("UPDATE process_data SET expires_ms = 1 WHERE process_id = ?", (pid,))

        def status(ex: str) -> str | None:
            with sqlite3.connect(url.path) as conn:
                row = conn.execute("SELECT at FROM trade_status WHERE exchange = ?", (ex,)).fetchone()
            return None if row is None else str(row[0])

    if kind.endswith("-sync"):
        sync = open_sync_process_cache(url)
        yield Backend(SyncAsAsync(sync), vanish, status)
        sync.close()
    else:
        async with open_process_cache(url) as cache:
            yield Backend(cache, vanish, status)
    if kind.startswith("redis"):
        raw.close()


def _t(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


async def test_register_and_get(backend: Backend) -> None:
    c = backend.cache
    before = time.time()
    pid = await c.register("ohlcv", "ohlcv-worker:kraken", {"symbols": ["BTC/USD"]}, message="boot")
    ptype, rest = pid.split(":", 1)
    component, stamp = rest.rsplit(":", 1)
    assert (ptype, component) == ("ohlcv", "ohlcv-worker:kraken")
    assert before <= float(stamp) <= time.time()
    doc = await c.get(pid)
    assert doc == {
        "process_id": pid, "process_type": "ohlcv", "component": "ohlcv-worker:kraken",
        "params": {"symbols": ["BTC/USD"]}, "status": "starting", "message": "boot",
        "created_at": doc["created_at"], "updated_at": doc["created_at"], "heartbeat": doc["created_at"],
    }
    assert _t(doc["created_at"]).utcoffset() is not None  # ISO-8601 UTC
    assert abs(_t(doc["created_at"]).timestamp() - time.time()) < 5
    assert await c.get("ohlcv:nothing:1.0") is None


async def test_enum_strings_are_checked(backend: Backend) -> None:
    c = backend.cache
    with pytest.raises(ValueError, match="type"):
        await c.register("ohlcvx", "w")
    with pytest.raises(ValueError, match="status"):
        await c.register("ohlcv", "w", status="alive")
    pid = await c.register("ohlcv", "w")
    with pytest.raises(ValueError, match="status"):
        await c.update(pid, status="alive")
    with pytest.raises(ValueError, match="malformed"):
        await c.update("not-an-id", status="running")
    assert (await c.get(pid))["status"] == "starting"


async def test_update_merges_and_heartbeats(backend: Backend) -> None:
    c = backend.cache
    pid = await c.register("ohlcv", "w:1", {"keep": 1, "change": "old"})
    first = await c.get(pid)
    await asyncio.sleep(0.01)
    await c.update(pid, status="running", message="hello", params={"change": "new", **HOSTILE_PARAMS})
    doc = await c.get(pid)
    assert doc["params"] == {"keep": 1, "change": "new", **HOSTILE_PARAMS}
    assert type(doc["params"]["symbols"]) is list and type(doc["params"]["empty"]) is dict
    assert (doc["status"], doc["message"]) == ("running", "hello")
    assert doc["created_at"] == first["created_at"]
    assert _t(doc["updated_at"]) > _t(first["updated_at"])
    assert doc["heartbeat"] == doc["updated_at"]
    await asyncio.sleep(0.01)
    await c.update(pid, message="no beat", heartbeat=False)
    doc2 = await c.get(pid)
    assert doc2["heartbeat"] == doc["heartbeat"]
    assert _t(doc2["updated_at"]) > _t(doc["updated_at"])
    assert (doc2["status"], doc2["message"], doc2["params"]) == ("running", "no beat", doc["params"])
    await c.update(pid)  # a bare heartbeat changes nothing else
    doc3 = await c.get(pid)
    assert {k: v for k, v in doc3.items() if k not in ("updated_at", "heartbeat")} == {
        k: v for k, v in doc2.items() if k not in ("updated_at", "heartbeat")
    }
    assert _t(doc3["heartbeat"]) > _t(doc2["heartbeat"])


async def test_concurrent_updates_lose_nothing(backend: Backend) -> None:
    c = backend.cache
    pid = await c.register("ohlcv", "w")
    await asyncio.gather(*(c.update(pid, params={f"k{i}": i}) for i in range(40)))
    assert (await c.get(pid))["params"] == {f"k{i}": i for i in range(40)}


async def test_components_point_at_latest(backend: Backend) -> None:
    c = backend.cache
    old = await c.register("ohlcv", "ohlcv-worker:kraken")
    await asyncio.sleep(0.002)
    new = await c.register("ohlcv", "ohlcv-worker:kraken", status="running")
    assert old != new
    assert (await c.get_component("ohlcv-worker:kraken"))["process_id"] == new
    await c.stop(old, "replaced")  # stopping an older id keeps the component's pointer
    assert (await c.get_component("ohlcv-worker:kraken"))["process_id"] == new
    assert (await c.get(old))["status"] == "stopped"
    await c.stop(new, "bye")
    assert await c.get_component("ohlcv-worker:kraken") is None
    assert await c.get_component("never") is None


async def test_list_active_by_type_and_age(backend: Backend) -> None:
    c = backend.cache
    a = await c.register("ohlcv", "w:a")
    b = await c.register("ohlcv", "w:b")
    t = await c.register("tick", "t:a")
    ids = lambda docs: sorted(d["process_id"] for d in docs)  # noqa: E731
    assert ids(await c.list_active("ohlcv")) == sorted([a, b])
    assert ids(await c.list_active("tick")) == [t]
    assert ids(await c.list_active()) == sorted([a, b, t])
    assert await c.list_active("bot") == []
    with pytest.raises(ValueError):
        await c.list_active("nope")
    await asyncio.sleep(0.3)
    await c.update(b)
    assert ids(await c.list_active("ohlcv", within_s=0.2)) == [b]
    await c.stop(b, "done")
    assert ids(await c.list_active("ohlcv")) == [a]
    stopped = await c.get(b)
    assert (stopped["status"], stopped["message"]) == ("stopped", "done")


async def test_update_recreates_a_vanished_document(backend: Backend) -> None:
    c = backend.cache
    pid = await c.register("ohlcv", "ohlcv-worker:bitmex", {"a": 1})
    backend.vanish(pid)
    assert await c.get(pid) is None
    assert await c.list_active("ohlcv") == []
    await c.update(pid, params={"b": 2})
    doc = await c.get(pid)
    assert doc is not None
    assert (doc["process_type"], doc["component"], doc["status"], doc["params"]) == (
        "ohlcv", "ohlcv-worker:bitmex", "running", {"b": 2})
    assert [d["process_id"] for d in await c.list_active("ohlcv")] == [pid]
    assert (await c.get_component("ohlcv-worker:bitmex"))["process_id"] == pid
    backend.vanish(pid)
    await c.update(pid, status="error", message="x", heartbeat=False)
    doc = await c.get(pid)
    assert (doc["status"], doc["message"]) == ("error", "x")


async def test_recreate_does_not_steal_a_live_component(backend: Backend) -> None:
    c = backend.cache
    old = await c.register("ohlcv", "w")
    await asyncio.sleep(0.002)
    new = await c.register("ohlcv", "w")
    backend.vanish(old)
    await c.update(old)
    assert (await c.get_component("w"))["process_id"] == new


async def test_trade_status(backend: Backend) -> None:
    c = backend.cache
    await c.set_trade_status("kraken", 1_700_000_000_123)
    value = backend.trade_status("kraken")
    assert value is not None
    assert _t(value).timestamp() == pytest.approx(1_700_000_000.123)
    assert _t(value).utcoffset() is not None
