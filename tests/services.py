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


def redis_db(variable: str, default: int) -> int:
    """The shared Redis logical db a test family uses, apart per xdist worker (``scripts/test`` runs two).

    Worker gwN takes ``base - 3 * N``, so the families (13, 11, ...) of two workers never meet.
    """
    base = int(os.environ.get(variable, str(default)))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    db = base - 3 * index
    if not 0 <= db <= 15:
        raise RuntimeError(f"{variable}={base} leaves no Redis db for xdist worker {worker}: use fewer workers")
    return db

