"""The PostgreSQL store's error classification: a lost connection asyncpg calls 'internal error', server errors."""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast

import asyncpg
import pytest

from fullon_ohlcv_service.adapters.postgres_store import PostgresOhlcvStore
from fullon_ohlcv_service.errors import PermanentError, StoreDataError, StoreUnavailable


class Conn:
    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


class Acquired:
    """``pool.acquire()``: the release (the pool's reset of the connection) may fail like asyncpg's does."""

    def __init__(self, conn: Conn, release_error: BaseException | None) -> None:
        self.conn = conn
        self.release_error = release_error

    async def __aenter__(self) -> Conn:
        return self.conn

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.release_error is not None:
            self.conn.closed = True  # asyncpg terminates a connection whose reset failed
            raise self.release_error


class Pool:
    def __init__(self, conn: Conn, release_error: BaseException | None = None) -> None:
        self.conn = conn
        self.release_error = release_error

    def acquire(self) -> Acquired:
        return Acquired(self.conn, self.release_error)


def store(pool: Pool) -> PostgresOhlcvStore:
    s = PostgresOhlcvStore("postgresql://u:secret@db.example:5432/x", "kraken")
    s._pool = cast(Any, pool)
    return s


async def ok(conn: Any) -> int:
    return 1


async def test_a_failed_reset_on_release_is_a_lost_connection() -> None:
    lost = asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    with pytest.raises(StoreUnavailable, match="connection lost on release") as info:
        await store(Pool(Conn(False), lost))._with_conn(ok)
    assert "secret" not in str(info.value)


async def test_an_internal_error_on_a_live_connection_stays_what_it_is() -> None:
    async def bug(conn: Any) -> int:
        raise asyncpg.exceptions.InternalClientError("a real asyncpg bug")

    with pytest.raises(asyncpg.exceptions.InternalClientError, match="real asyncpg bug"):
        await store(Pool(Conn(False)))._with_conn(bug)


async def test_an_internal_error_on_a_closed_connection_is_a_lost_connection() -> None:
    async def killed(conn: Any) -> int:
        conn.closed = True
        raise asyncpg.exceptions.InternalClientError("state error")

    with pytest.raises(StoreUnavailable, match="connection lost"):
        await store(Pool(Conn(False)))._with_conn(killed)
    assert await store(Pool(Conn(False)))._with_conn(ok) == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.exceptions.DiskFullError("could not extend file"), StoreUnavailable),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), StoreUnavailable),
        (asyncpg.exceptions.LockNotAvailableError("could not obtain lock"), StoreUnavailable),
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"), StoreUnavailable),
        (asyncpg.exceptions.NumericValueOutOfRangeError("value out of range"), StoreDataError),
        (asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"), StoreDataError),
        (asyncpg.exceptions.NotNullViolationError("null value in column"), StoreDataError),
        (asyncpg.exceptions.ProgramLimitExceededError("index row size exceeds maximum"), StoreDataError),
        (asyncpg.exceptions.InsufficientPrivilegeError("permission denied"), PermanentError),
    ],
)
async def test_server_errors_are_classified_for_the_writer(error: Exception, expected: type[Exception]) -> None:
    """Unavailable (retried), about the rows (isolated and quarantined), or about the store (retried, reported)."""
    async def fail(conn: Any) -> int:
        raise error

    with pytest.raises(expected) as info:
        await store(Pool(Conn(False)))._with_conn(fail)
    assert type(info.value) is expected  # a PermanentError that is not a StoreDataError stays one
    assert "secret" not in str(info.value)
