"""The run's backing services: a fresh PostgreSQL database and a private Redis db, stopped, started, restored."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence

from fullon_ohlcv_service.errors import StoreUnavailable

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run(cmd: list[str], timeout: float = 60.0) -> tuple[bool, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{cmd[0]}: {exc}"
    out = (proc.stdout + proc.stderr).strip().replace("\n", " | ")
    return proc.returncode == 0, out[:300]


# Redis

def redis_up() -> bool:
    ok, out = _run(["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "ping"], timeout=5)
    return ok and "PONG" in out


def redis_stop() -> tuple[bool, str]:
    """``redis-cli shutdown nosave``; True once Redis no longer answers."""
    _run(["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "shutdown", "nosave"], timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not reachable(REDIS_HOST, REDIS_PORT, 0.3):
            return True, "redis stopped"
        time.sleep(0.1)
    return False, "redis still answers after shutdown"


def redis_start() -> tuple[bool, str]:
    """Start the server (as CI does) unless it already answers; True once PING answers PONG."""
    if redis_up():
        return True, "redis already up"
    _, out = _run(REDIS_START, timeout=15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if redis_up():
            return True, "redis started"
        time.sleep(0.1)
    return False, f"redis did not come back ({out})"


def redis_flush(db: int) -> None:
    _run(["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "-n", str(db), "flushdb"], timeout=10)


# PostgreSQL

def pg_up() -> bool:
    return reachable(PG_HOST, PG_PORT, 1.0) and _pg_ready()


def _pg_ready() -> bool:
    ok, _ = _run(["pg_isready", "-h", PG_HOST, "-p", str(PG_PORT)], timeout=5)
    return ok


def _pg_clusters() -> list[list[str]]:
    """``pg_lsclusters -h`` rows: version, name, port, status, owner, data directory, log file."""
    try:
        out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise StoreUnavailable(f"pg_lsclusters failed: {exc}") from exc
    return [line.split() for line in out.splitlines() if line.strip()]


def _pg_row(port: int) -> list[str]:
    for row in _pg_clusters():
        if len(row) >= 4 and row[2] == str(port):
            return row
    raise StoreUnavailable(f"no PostgreSQL cluster listens on port {port} (pg_lsclusters)")


def pg_cluster(port: int = PG_PORT) -> tuple[str, str]:
    """The Debian cluster (version, name) that listens on ``port``."""
    row = _pg_row(port)
    return row[0], row[1]


def pg_cluster_online(port: int = PG_PORT) -> bool:
    return _pg_row(port)[3] == "online"


def _pg_ctl(action: str) -> tuple[bool, str]:
    """``pg_ctlcluster ACTION`` on the cluster of ``PG_PORT``."""
    try:
        cluster = pg_cluster()
    except StoreUnavailable as exc:
        return False, str(exc)
    return _run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action], timeout=60)


def pg_stop() -> tuple[bool, str]:
    ok, out = _pg_ctl("stop")
    if not ok:
        return False, f"pg_ctlcluster stop failed: {out}"
    if reachable(PG_HOST, PG_PORT, 0.5):
        return False, "postgresql still answers after stop"
    return True, "postgresql stopped"


def pg_start() -> tuple[bool, str]:
    if pg_up():
        return True, "postgresql already up"
    _, out = _pg_ctl("start")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pg_up():
            return True, "postgresql started"
        time.sleep(0.2)
    return False, f"postgresql did not come back ({out})"


def _admin_url() -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def create_database(prefix: str) -> str:
    """A fresh, empty database; its URL (no password: trust authentication on loopback)."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def _create() -> None:
        conn = await asyncpg.connect(_admin_url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        asyncio.run(_create())
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot create database {name}: {exc}") from exc
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def _drop() -> None:
        conn = await asyncpg.connect(_admin_url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(_drop())
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot drop database {name}: {exc}") from exc


class Availability:
    """Polls the servers a run depends on and records when each was down (monotonic intervals).

    The machine's Redis and PostgreSQL are shared: another process stopping them during a run would
    look like a fault of ours. The runner compares these intervals with its own planned outages.
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


ENDPOINTS = {"redis": (REDIS_HOST, REDIS_PORT), "postgresql": (PG_HOST, PG_PORT)}


def unplanned(observed: Sequence[tuple[str, float, float]], planned: Sequence[tuple[str, float, float]],
              slack: float = 2.0) -> list[tuple[str, float, float]]:
    """Observed down intervals that no planned outage of the same server explains."""
    return [(name, a, b) for name, a, b in observed
            if not any(p == name and a < pb + slack and pa - slack < b for p, pa, pb in planned)]
