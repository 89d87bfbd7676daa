"""Service checks for the tests: a missing service skips a test, or fails it under OHLCV_REQUIRE_SERVICES=1.

Every test that needs PostgreSQL, Redis or a private server of either goes through ``need``/``private``,
so CI (which sets OHLCV_REQUIRE_SERVICES=1) never passes with a test silently skipped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import NoReturn, TypeVar

import pytest

from chaos.servers import PrivateServer

REQUIRE = os.environ.get("OHLCV_REQUIRE_SERVICES") == "1"
S = TypeVar("S", bound=PrivateServer)


def unavailable(msg: str) -> NoReturn:
    """Skip the test, or fail it when services are required."""
    if REQUIRE:
        pytest.fail(msg + " (OHLCV_REQUIRE_SERVICES=1)")
    pytest.skip(msg)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def need(host: str, port: int, what: str) -> None:
    """The shared ``what`` server answers at host:port (or the test skips / fails)."""
    if not reachable(host, port):
        unavailable(f"{what} is not reachable at {host}:{port}")


def need_server(cls: type[PrivateServer]) -> None:
    """The programs of a private server are installed here (or the test skips / fails)."""
    why = cls.missing()
    if why is not None:
        unavailable(f"no private {cls.kind}: {why}")


def private(server: S) -> Iterator[S]:
    """Body of a fixture: ``server`` started, then closed (process gone, directory removed) after the test."""
    need_server(type(server))
    try:
        server.start()
        yield server
    finally:
        server.close()
