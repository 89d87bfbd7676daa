"""Shared fixtures: fresh PostgreSQL databases, a private Redis db, and private servers for outage tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.servers import PrivatePostgres, PrivateRedis
from tests.services import need, private, redis_db

PG_HOST = os.environ.get("OHLCV_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("OHLCV_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("OHLCV_TEST_PG_USER", "postgres")
REDIS_HOST = os.environ.get("OHLCV_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("OHLCV_TEST_REDIS_PORT", "6379"))
_need = need  # skips, or fails under OHLCV_REQUIRE_SERVICES=1 (tests/services.py)


def _pg_admin() -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def create_pg_database(prefix: str = "ohlcv_test") -> str:
    """Create an empty database and return its URL (used by fixtures and process tests)."""
    import asyncio

    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def _create() -> None:
        conn = await asyncpg.connect(_pg_admin())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(_create())
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_pg_database(url: str) -> None:
    import asyncio

    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def _drop() -> None:
        conn = await asyncpg.connect(_pg_admin())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(_drop())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a brand-new PostgreSQL database, dropped after the test."""
    _need(PG_HOST, PG_PORT, "PostgreSQL")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def pg_url2() -> Iterator[str]:
    """A second fresh database (for the OHLCV store next to a config database)."""
    _need(PG_HOST, PG_PORT, "PostgreSQL")
    url = create_pg_database("ohlcv_test_data")
    try:
        yield url
    finally:
        drop_pg_database(url)


_REDIS_DB = redis_db("OHLCV_TEST_REDIS_DB", 13)  # apart per xdist worker


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of a private Redis db (flushed before and after). Tests of one xdist worker run serially: one db each."""
    _need(REDIS_HOST, REDIS_PORT, "Redis")
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=_REDIS_DB)
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{_REDIS_DB}"
    finally:
        try:
            client.flushdb()
        except redis.RedisError:
            pass  # the shared server went away during the test; nothing is left to flush
        client.close()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own on a free port (initdb, about a second): stop it at will."""
    yield from private(PrivatePostgres())


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of the test's own on a free port, no password: stop it at will."""
    yield from private(PrivateRedis())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty OHLCV_HOME for embedded SQLite files."""
    d = tmp_path / "home"
    d.mkdir()
    return d
