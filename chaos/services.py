"""The run's backing services: databases on its private servers, their outages, and who else took them down."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from chaos.servers import PrivateServer
from fullon_ohlcv_service.errors import StoreUnavailable


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_call(server: PrivateServer) -> Callable[[], tuple[bool, str]]:
    """A fault's stop step: ``(True, what happened)``, or ``(False, why)`` with the run going on."""

    def stop() -> tuple[bool, str]:
        try:
            server.stop()
        except (StoreUnavailable, OSError, subprocess.SubprocessError) as exc:
            return False, f"{server.kind} stop failed: {exc}"
        return True, f"private {server.kind} on port {server.port} stopped"

    return stop


def start_call(server: PrivateServer) -> Callable[[], tuple[bool, str]]:
    """A fault's restore step: the same server started again on the same port."""

    def start() -> tuple[bool, str]:
        try:
            server.start()
        except (StoreUnavailable, OSError, subprocess.SubprocessError) as exc:
            return False, f"{server.kind} did not come back: {exc}"
        return True, f"private {server.kind} started again"

    return start


def create_database(server_url: str, prefix: str) -> str:
    """A fresh, empty database next to ``server_url`` (any database of the server); its URL."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base = server_url.rsplit("/", 1)[0]

    async def _create() -> None:
        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        asyncio.run(_create())
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot create database {name}: {exc}") from exc
    return f"{base}/{name}"


class Availability:
    """Polls the servers a run depends on and records when each was down (monotonic intervals).

    A run's servers are its own, but a server that dies by itself (or that someone kills) would look
    like a fault of ours. The runner compares these intervals with its own planned outages.
    """

    def __init__(self, targets: Mapping[str, tuple[str, int]], period: float = 0.5) -> None:
        self.period = period
        self._targets = dict(targets)
        self._down: dict[str, float] = {}
        self.intervals: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._targets:
            self._thread = threading.Thread(target=self._run, name="chaos-availability", daemon=True)
            self._thread.start()

    def stop(self) -> list[tuple[str, float, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            now = time.monotonic()
            for name, since in self._down.items():
                self.intervals.append((name, since, now))
            self._down.clear()
            return list(self.intervals)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for name, (host, port) in self._targets.items():
                up = reachable(host, port, 0.3)
                now = time.monotonic()
                with self._lock:
                    if not up and name not in self._down:
                        self._down[name] = now
                    elif up and name in self._down:
                        self.intervals.append((name, self._down.pop(name), now))


def unplanned(observed: Sequence[tuple[str, float, float]], planned: Sequence[tuple[str, float, float]],
              slack: float = 2.0) -> list[tuple[str, float, float]]:
    """Observed down intervals that no planned outage of the same server explains."""
    return [(name, a, b) for name, a, b in observed
            if not any(p == name and a < pb + slack and pa - slack < b for p, pa, pb in planned)]
