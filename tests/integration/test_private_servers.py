"""Private PostgreSQL and Redis servers: stopped and started again on their own port, gone after close()
or when their owner dies, and the chaos run's outage faults stop them, never the machine's shared ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis

from chaos import schedule as sched
from chaos import services
from chaos.runner import ChaosRun, Options
from chaos.servers import PrivatePostgres, PrivateRedis, answers, sweep_leftovers
from tests.services import need, need_server, private

SHARED_PG, SHARED_REDIS = 5432, 6379


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _pg_select(url: str, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_private_postgres_stops_starts_and_leaves_nothing(private_pg: PrivatePostgres) -> None:
    need("127.0.0.1", SHARED_PG, "PostgreSQL")
    assert private_pg.port != SHARED_PG and answers(private_pg.port)
    url = services.create_database(private_pg.url(), "ohlcv_private")
    assert url.startswith(f"postgresql://postgres@127.0.0.1:{private_pg.port}/ohlcv_private_")
    assert _pg_select(url, "SELECT 1") == 1
    pid, root = private_pg.proc.pid if private_pg.proc else 0, private_pg.root
    assert root is not None and (root / "data" / "PG_VERSION").is_file()

    private_pg.stop()
    assert not answers(private_pg.port) and _gone(pid)
    assert answers(SHARED_PG), "stopping the private cluster must not touch the shared one"
    with pytest.raises(OSError):
        _pg_select(url, "SELECT 1")
    private_pg.start()  # same port, same data: the database is still there
    assert _pg_select(url, "SELECT current_database()") == url.rsplit("/", 1)[1]

    private_pg.close()
    assert private_pg.root is None and not root.exists()
    assert private_pg.proc is None and not answers(int(url.split(":")[2].split("/")[0]))


def test_private_redis_with_password() -> None:
    server = PrivateRedis(password="p@ss/w?rd#")
    for _ in private(server):
        client = redis.Redis.from_url(server.url(2))
        assert client.ping() and client.set("k", "v")
        server.stop()
        assert not answers(server.port)
        server.start()
        assert client.get("k") is None  # nothing kept on disk
        client.close()
        root = server.root
    assert root is not None and not root.exists() and not server.running


OWNER = """
import json, time
from chaos.servers import PrivatePostgres, PrivateRedis
pg, r = PrivatePostgres(), PrivateRedis()
pg.start(); r.start()
print(json.dumps({"pids": [pg.proc.pid, r.proc.pid], "dirs": [str(pg.root), str(r.root)],
                  "ports": [pg.port, r.port]}), flush=True)
time.sleep(600)
"""


def test_servers_die_with_their_owner_and_leftovers_are_swept() -> None:
    """A test run killed with SIGKILL (no finaliser runs) leaves no server behind; its directories go next time."""
    need_server(PrivatePostgres)
    need_server(PrivateRedis)
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        info = json.loads(owner.stdout.readline())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in info["pids"]), "a server outlived the process that started it"
    assert not any(answers(p) for p in info["ports"])
    dirs = [Path(d) for d in info["dirs"]]
    assert all(d.exists() for d in dirs)  # nobody removed them: the owner died at once
    swept = sweep_leftovers(PrivatePostgres.prefix) + sweep_leftovers(PrivateRedis.prefix)
    assert set(dirs) <= set(swept) and not any(d.exists() for d in dirs)


def test_chaos_outage_faults_stop_the_runs_own_servers() -> None:
    """``--store postgres --cache redis``: the run's PostgreSQL and Redis outages stop private servers only."""
    need("127.0.0.1", SHARED_PG, "PostgreSQL")
    need("127.0.0.1", SHARED_REDIS, "Redis")
    run = ChaosRun(Options(store="postgres", cache="redis", quiet=True))
    run._start_servers()
    try:
        assert run.pg is not None and run.redis is not None
        roots = [run.pg.root, run.redis.root]
        for kind, server, shared in ((sched.PG_RESTART, run.pg, SHARED_PG), (sched.REDIS_RESTART, run.redis,
                                                                           SHARED_REDIS)):
            rec, end = run._apply(sched.Fault(at=0.0, kind=kind, duration=1.0))
            assert rec.ok, rec.detail
            assert not answers(server.port) and answers(shared), f"{kind} must stop the private server only"
            assert end is not None
            end()
            assert rec.ok and answers(server.port), rec.detail
    finally:
        run._cleanup()
    assert run.pg.proc is None and run.redis.proc is None
    assert not any(r is not None and r.exists() for r in roots)


def test_a_forked_child_exiting_leaves_its_parents_server_alone(private_redis: PrivateRedis) -> None:
    """The exit hook closes only the servers of the process that started them (a forked child has copies)."""
    from chaos import servers

    child = os.fork()
    if child == 0:  # pragma: no cover - child
        code = 1
        try:
            servers._close_all()  # what the child's interpreter exit would run
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert private_redis.running and answers(private_redis.port)
    assert private_redis.root is not None and private_redis.root.is_dir()
