"""Process ids, document merge and freshness rules shared by the Redis and SQLite caches."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from fullon_ohlcv_service.adapters.cache_layout import is_fresh, merge_document, new_process_id, split_process_id
from fullon_ohlcv_service.adapters.caches import open_process_cache, open_sync_process_cache
from fullon_ohlcv_service.adapters.redis_cache import RedisProcessCache, SyncRedisProcessCache, update_plan
from fullon_ohlcv_service.adapters.sqlite_cache import SqliteProcessCache, SyncSqliteProcessCache
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.settings import StoreURL, parse_store_url


def test_process_id_round_trip_with_colons_in_component() -> None:
    pid = new_process_id("ohlcv", "ohlcv-worker:kraken")
    assert split_process_id(pid) == ("ohlcv", "ohlcv-worker:kraken")
    assert float(pid.rsplit(":", 1)[1]) == pytest.approx(time.time(), abs=5)
    assert split_process_id("bot:a:b:c:1.5") == ("bot", "a:b:c")


@pytest.mark.parametrize("bad", ["", "ohlcv", "ohlcv:1.0", "ohlcv::1.0", "nope:w:1.0", "ohlcv:w:abc", "ohlcv:w:"])
def test_malformed_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        split_process_id(bad)


def test_enum_checks() -> None:
    with pytest.raises(ValueError):
        new_process_id("OHLCV", "w")
    with pytest.raises(ValueError):
        new_process_id("ohlcv", "")
    with pytest.raises(ValueError):
        update_plan(new_process_id("ohlcv", "w"), "dead", None, None, True)


def test_merge_document_recreates_and_merges() -> None:
    doc, recreated = merge_document(None, "tick:t:x:1.0", None, "m", {"a": 1}, False, "NOW")
    assert recreated
    assert doc == {"process_id": "tick:t:x:1.0", "process_type": "tick", "component": "t:x", "params": {"a": 1},
                   "status": "running", "message": "m", "created_at": "NOW", "updated_at": "NOW",
                   "heartbeat": "NOW"}
    doc2, recreated2 = merge_document(dict(doc, params="junk"), "tick:t:x:1.0", "idle", None, {"b": 2}, False, "LATER")
    assert not recreated2
    assert (doc2["params"], doc2["status"], doc2["message"], doc2["updated_at"], doc2["heartbeat"]) == (
        {"b": 2}, "idle", "m", "LATER", "NOW")


def test_is_fresh() -> None:
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    assert is_fresh(now.isoformat(), now_ms, 300)
    assert is_fresh((now - timedelta(seconds=299)).isoformat().encode(), now_ms, 300)
    assert not is_fresh((now - timedelta(seconds=301)).isoformat(), now_ms, 300)
    assert is_fresh(now.replace(tzinfo=None).isoformat(), now_ms, 1)  # naive ISO is UTC
    assert not is_fresh("garbage", now_ms, 300)
    assert not is_fresh(b"\xff", now_ms, 300)


def test_factories_pick_the_backend() -> None:
    r = parse_store_url("c", "redis://:pw@127.0.0.1:6379/2", ("redis",))
    s = parse_store_url("c", "sqlite:///tmp/x.sqlite", ("sqlite",))
    assert isinstance(open_process_cache(r), RedisProcessCache)
    assert isinstance(open_sync_process_cache(r), SyncRedisProcessCache)
    assert isinstance(open_process_cache(s), SqliteProcessCache)
    assert isinstance(open_sync_process_cache(s), SyncSqliteProcessCache)
    pg = StoreURL("postgresql://u:secret@h/db", "postgresql")
    with pytest.raises(ConfigError) as info:
        open_process_cache(pg)
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError):
        open_sync_process_cache(pg)
