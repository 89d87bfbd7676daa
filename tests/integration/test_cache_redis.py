"""Redis ProcessCache: the raw key layout, one round trip per heartbeat, outages, forks, many processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from chaos.servers import PrivateRedis
from fullon_ohlcv_service.adapters.redis_cache import RedisProcessCache, SyncRedisProcessCache
from fullon_ohlcv_service.errors import ConfigError, StoreUnavailable
from fullon_ohlcv_service.settings import StoreURL, parse_store_url
from tests.services import private

DOC_FIELDS = {"process_id", "process_type", "component", "params", "status", "message",
              "created_at", "updated_at", "heartbeat"}


def _url(raw: str) -> StoreURL:
    return parse_store_url("cache", raw, ("redis",))


def _iso_age(text: str) -> float:
    dt = datetime.fromisoformat(text)
    assert dt.utcoffset() is not None and dt.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return time.time() - dt.timestamp()


async def test_layout_read_back_with_plain_commands(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    async with RedisProcessCache(_url(redis_url)) as cache:
        pid = await cache.register("ohlcv", "ohlcv-worker:kraken", {"symbols": ["BTC/USD"], "n": 1}, "starting", "boot")
        assert sorted(r.keys("*")) == sorted(
            [f"process:data:{pid}", "process:active:ohlcv", "process:components"])
        assert r.type(f"process:data:{pid}") == "string"
        doc = json.loads(r.get(f"process:data:{pid}"))  # type: ignore[arg-type]
        assert set(doc) == DOC_FIELDS
        assert doc["process_id"] == pid and pid.startswith("ohlcv:ohlcv-worker:kraken:")
        assert float(pid.rsplit(":", 1)[1]) == pytest.approx(time.time(), abs=5)
        assert (doc["process_type"], doc["component"], doc["status"], doc["message"]) == (
            "ohlcv", "ohlcv-worker:kraken", "starting", "boot")
        assert doc["params"] == {"symbols": ["BTC/USD"], "n": 1}
        for f in ("created_at", "updated_at", "heartbeat"):
            assert 0 <= _iso_age(doc[f]) < 5
        assert 86_390 <= r.ttl(f"process:data:{pid}") <= 86_400
        active = r.hgetall("process:active:ohlcv")
        assert list(active) == [pid] and 0 <= _iso_age(active[pid]) < 5
        assert r.hgetall("process:components") == {"ohlcv-worker:kraken": pid}

        # an update rewrites the JSON, resets the TTL and moves the active time
        r.expire(f"process:data:{pid}", 100)
        r.hset("process:active:ohlcv", pid, "2020-01-01T00:00:00+00:00")
        await cache.update(pid, status="running", message="ok", params={"n": 2, "x": [1]})
        doc2 = json.loads(r.get(f"process:data:{pid}"))  # type: ignore[arg-type]
        assert set(doc2) == DOC_FIELDS
        assert doc2["params"] == {"symbols": ["BTC/USD"], "n": 2, "x": [1]}
        assert (doc2["status"], doc2["message"], doc2["created_at"]) == ("running", "ok", doc["created_at"])
        assert doc2["heartbeat"] == doc2["updated_at"] and r.hget("process:active:ohlcv", pid) is not None
        assert 0 <= _iso_age(r.hget("process:active:ohlcv", pid)) < 5  # type: ignore[arg-type]
        assert r.ttl(f"process:data:{pid}") > 86_000

        await cache.stop(pid, "bye")
        doc3 = json.loads(r.get(f"process:data:{pid}"))  # type: ignore[arg-type]
        assert (doc3["status"], doc3["message"]) == ("stopped", "bye")
        assert r.hgetall("process:active:ohlcv") == {}
        assert r.hgetall("process:components") == {}

        await cache.set_trade_status("kraken", 1_700_000_000_000)
        assert r.get("TRADE:STATUS:kraken") == "2023-11-14T22:13:20+00:00"
        assert r.ttl("TRADE:STATUS:kraken") == -1
    r.close()


async def test_update_keeps_foreign_fields_byte_exact(redis_url: str) -> None:
    """A document written by fullon_cache (or anyone) keeps fields and params we do not touch."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    pid = "bot:bot-7:1700000000.5"
    original = ('{ "process_id" : "bot:bot-7:1700000000.5", "process_type": "bot", "component": "bot-7",\n'
                ' "params": {"ids": [], "big": 12345678901234567890, "f": 1.00000000000000001,'
                ' "s": "a,b}\\"c"}, "status": "running", "message": "", "extra": {"k": [1, {}]},'
                ' "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "x", "heartbeat": "x"}')
    r.set(f"process:data:{pid}", original)
    async with RedisProcessCache(_url(redis_url)) as cache:
        await cache.update(pid, params={"new": 1}, message="m")
    text = r.get(f"process:data:{pid}")
    assert text is not None
    for raw in ('"ids":[]', '"big":12345678901234567890', '"f":1.00000000000000001', r'"s":"a,b}\"c"',
                '"extra":{"k": [1, {}]}', '"created_at":"2026-01-01T00:00:00+00:00"'):
        assert raw in text
    doc = json.loads(text)
    assert doc["params"]["new"] == 1 and doc["message"] == "m" and doc["status"] == "running"
    r.close()


def test_heartbeat_is_one_evalsha_round_trip(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SyncRedisProcessCache(_url(redis_url))
    pid = cache.register("ohlcv", "w")
    cache.update(pid)  # warm-up: the first call may load the script (NOSCRIPT fallback)
    sent: list[bytes] = []
    reads = 0
    original_send = redis.connection.Connection.send_packed_command
    original_read = redis.connection.Connection.read_response

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, (bytes, str)) else list(command)
        sent.append(b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks))
        original_send(self, command, check_health)

    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return original_read(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", send)
    monkeypatch.setattr(redis.connection.Connection, "read_response", read)
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        cache.update(pid, status="running", params={"i": i})
    per_beat_ms = (time.perf_counter() - t0) / n * 1000
    monkeypatch.undo()
    assert len(sent) == n and reads == n
    assert all(b"EVALSHA" in s.split(b"\r\n")[2].upper() for s in sent)
    assert cache.get(pid)["params"] == {"i": n - 1}  # type: ignore[index]
    print(f"heartbeat: 1 round trip (EVALSHA), {per_beat_ms:.3f} ms each")
    cache.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_is_store_unavailable_without_password() -> None:
    port = _free_port()
    url = _url(f"redis://:s3cr%21tPW@127.0.0.1:{port}/3")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        async with RedisProcessCache(url):
            pass
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "s3cr" not in msg and "***" in msg
    sync = SyncRedisProcessCache(url)
    with pytest.raises(StoreUnavailable) as info2:
        sync.update(f"ohlcv:w:{time.time()}")
    assert f"127.0.0.1:{port}" in str(info2.value) and "s3cr" not in str(info2.value)
    with pytest.raises(StoreUnavailable):
        sync.list_active()
    assert time.monotonic() - t0 < 10
    sync.close()


def test_no_password_reaches_the_cache(redis_url: str) -> None:
    """A URL's password in a message or params (a store error a worker reports) is stored as ***."""
    leaky = "PostgreSQL store postgresql://u:SE/CRET@db:5432/x unavailable"
    cache = SyncRedisProcessCache(_url(redis_url))
    pid = cache.register("ohlcv", "w", {"error": leaky}, message=leaky)
    cache.update(pid, message=leaky, params={"symbols": {"BTC/USD": {"last_rest_error": "GET https://k:SECRET@x/y"}}})
    cache.stop(cache.register("ohlcv", "w2"), message="redis://:SE#CRET@h:6379/0 gone")
    raw = redis.Redis.from_url(redis_url)
    stored = " ".join(raw.get(k).decode() for k in raw.keys("*") if raw.type(k) == b"string")
    raw.close()
    cache.close()
    assert "CRET" not in stored and stored.count("***") == 4


PRIVATE_PW = "s3cr!t pw"


@pytest.fixture
def redis_with_password() -> Iterator[PrivateRedis]:
    """A throw-away redis-server with ``requirepass`` on a free port (gone after the test)."""
    yield from private(PrivateRedis(password=PRIVATE_PW))


async def test_outage_then_recovery(redis_with_password: PrivateRedis) -> None:
    """A server that dies mid-run gives StoreUnavailable quickly; the same objects work once it is back."""
    server = redis_with_password
    port = server.port
    url = _url(f"redis://:s3cr%21t%20pw@127.0.0.1:{port}/1")
    sync = SyncRedisProcessCache(url)
    try:
        async with RedisProcessCache(url) as cache:
            pid = await cache.register("ohlcv", "w")
            sync.update(pid)
            server.stop()
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await cache.update(pid, status="running")
            with pytest.raises(StoreUnavailable):
                sync.update(pid, status="running")
            assert time.monotonic() - t0 < 15  # refused at once: no long retry loop (tight figures: benchmarks)
            assert "s3cr" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
            server.start()  # the same port, empty: the document is gone
            await cache.update(pid, status="running", params={"back": 1})  # the caller's retry succeeds
            sync.update(pid, params={"sync": 1})
            doc = await cache.get(pid)
            assert doc is not None and doc["status"] == "running" and doc["params"] == {"back": 1, "sync": 1}
            assert (await cache.get_component("w"))["process_id"] == pid  # type: ignore[index]
    finally:
        sync.close()


async def test_password_and_db_are_honoured(redis_with_password: PrivateRedis) -> None:
    """REDIS_PASSWORD/REDIS_DB reach the server through the URL; a wrong password is a ConfigError
    that never prints it."""
    from fullon_ohlcv_service.settings import settings_from_env

    private_redis = redis_with_password.port
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(private_redis), "REDIS_DB": "5",
           "REDIS_PASSWORD": PRIVATE_PW, "OHLCV_HOME": "/nonexistent"}
    url = settings_from_env(env).cache
    assert url.kind == "redis"
    async with RedisProcessCache(url) as cache:
        pid = await cache.register("ohlcv", "dbcheck")
    sync = SyncRedisProcessCache(url)
    sync.update(pid, status="running")
    sync.close()
    r = redis.Redis(host="127.0.0.1", port=private_redis, db=5, password=PRIVATE_PW, decode_responses=True)
    assert json.loads(r.get(f"process:data:{pid}"))["status"] == "running"  # type: ignore[arg-type]
    assert redis.Redis(host="127.0.0.1", port=private_redis, db=0, password=PRIVATE_PW).dbsize() == 0
    r.close()

    bad = _url(f"redis://:wr0ngpw@127.0.0.1:{private_redis}/5")
    with pytest.raises(ConfigError) as info:
        async with RedisProcessCache(bad):
            pass
    assert "wr0ngpw" not in str(info.value) and f"127.0.0.1:{private_redis}" in str(info.value)
    with pytest.raises(ConfigError) as info2:
        SyncRedisProcessCache(bad).get(pid)
    assert "wr0ngpw" not in str(info2.value)
    with pytest.raises(ConfigError):  # REDIS_PASSWORD missing while the server wants one
        SyncRedisProcessCache(_url(f"redis://127.0.0.1:{private_redis}/5")).get(pid)


def test_sync_client_survives_fork(redis_url: str) -> None:
    cache = SyncRedisProcessCache(_url(redis_url))
    pid = cache.register("ohlcv", "parent")
    parent_id = cache.client.client_id()
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(rfd)
            mine = cache.client.client_id()
            cache.update(pid, params={"child": os.getpid()})
            os.write(wfd, json.dumps({"id": mine}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    _, status = os.waitpid(child, 0)
    report = json.loads(os.read(rfd, 1000))
    os.close(rfd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["id"] != parent_id
    assert cache.client.client_id() == parent_id  # the parent's connection was not disturbed
    assert cache.get(pid)["params"] == {"child": child}  # type: ignore[index]
    cache.close()
    assert cache.get(pid) is not None  # close() drops the pool; the next call reconnects
    cache.close()


def _beat(url: str, pid: str, proc: int, n: int) -> None:
    cache = SyncRedisProcessCache(_url(url))
    for i in range(n):
        cache.update(pid, status="running", params={f"p{proc}_{i}": i})
    cache.close()


def test_many_processes_lose_no_update(redis_url: str) -> None:
    cache = SyncRedisProcessCache(_url(redis_url))
    pid = cache.register("ohlcv", "shared")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_beat, args=(redis_url, pid, p, 50)) for p in range(3)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        doc = cache.get(pid)
        assert doc is not None and set(doc) >= {"params", "status"}
        assert len(doc["params"]) >= seen  # never goes back: no write overwrote another's merge
        seen = len(doc["params"])
        assert [d["process_id"] for d in cache.list_active("ohlcv")] == [pid]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert cache.get(pid)["params"] == {f"p{p}_{i}": i for p in range(3) for i in range(50)}  # type: ignore[index]
    cache.close()
