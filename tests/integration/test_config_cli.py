"""ohlcv-config end to end on the embedded SQLite default and on PostgreSQL (DB_HOST/DB_NAME), in-process and
as a real subprocess: the console flow, every refused input with its message and exit code, and init on a
pre-existing fullon-like database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from fullon_ohlcv_service.cli import run

VENV_BIN = Path(sys.executable).parent
STORE_VARS = ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_OHLCV_NAME", "OHLCV_CONFIG_DB",
              "OHLCV_DB", "OHLCV_CACHE", "OHLCV_HOME", "REDIS_HOST", "ADMIN_MAIL", "LOG_LEVEL", "LOG_FORMAT",
              "LOG_FILE_PATH")


@dataclass
class Backend:
    """Where the config DB lives for one test, the environment that selects it, and raw SQL on it."""

    kind: str  # "sqlite" | "postgresql"
    env: dict[str, str]
    sqlite_path: Path | None = None
    pg_url: str | None = None

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement with the engine's own driver (``?`` placeholders); return the rows."""
        return asyncio.run(self.asql(statement, *args))

    async def asql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        """``sql`` for async tests."""
        if self.kind == "sqlite":
            assert self.sqlite_path is not None
            conn = sqlite3.connect(self.sqlite_path, isolation_level=None)
            try:
                return conn.execute(statement, args).fetchall()
            finally:
                conn.close()
        counter = iter(range(1, 100))
        pg_sql = re.sub(r"\?", lambda _m: f"${next(counter)}", statement)
        pg = await asyncpg.connect(self.pg_url)
        try:
            return [tuple(r) for r in await pg.fetch(pg_sql, *args)]
        finally:
            await pg.close()

    def subprocess_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in STORE_VARS}
        env.update(self.env)
        return env


def make_backend(kind: str, home: Path, pg_url: str | None) -> Backend:
    if kind == "sqlite":
        return Backend("sqlite", {"OHLCV_HOME": str(home)}, sqlite_path=home / "config.sqlite")
    assert pg_url is not None
    parts = urlsplit(pg_url)
    env = {"DB_HOST": parts.hostname or "127.0.0.1", "DB_PORT": str(parts.port or 5432),
           "DB_USER": parts.username or "postgres", "DB_NAME": parts.path.lstrip("/"), "OHLCV_HOME": str(home)}
    return Backend("postgresql", env, pg_url=pg_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """The config DB on one engine; os.environ selects it (only it) for in-process runs."""
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    b = make_backend(request.param, home, pg)
    for var in STORE_VARS:
        monkeypatch.delenv(var, raising=False)
    for k, v in b.env.items():
        monkeypatch.setenv(k, v)
    return b


def cfg(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ohlcv-config in-process through cli.run (the console entry's error mapping)."""
    capsys.readouterr()
    code = run("config", list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _out, err = cfg(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.startswith("ohlcv-config: error: ")]
    assert code == 1, (code, err)
    assert len(lines) == 1, err
    return lines[0]


def test_console_flow(backend: Backend, capsys):
    code, out, _ = cfg(capsys, "init")
    assert code == 0 and "admin admin@fullon uid=1 created" in out
    code, out, _ = cfg(capsys, "init")
    assert code == 0 and "exists" in out
    assert cfg(capsys, "add-exchange", "kraken")[0] == 0
    code, out, _ = cfg(capsys, "add-symbol", "kraken", "BTC/USD", "--backtest", "2")
    assert code == 0 and "BTC/USD added to kraken" in out
    code, out, _ = cfg(capsys, "list", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["admin"] == "admin@fullon"
    assert doc["exchanges"] == [{
        "name": "kraken", "collected": True, "params": {},
        "accounts": [{"name": "kraken1", "test": False, "active": True}],
        "symbols": [{"symbol": "BTC/USD", "backtest": 2, "updateframe": "1h", "decimals": 8,
                     "futures": False, "only_ticker": False}],
    }]
    # fullon_orm's rows, read with the engine's own driver
    assert backend.sql("SELECT mail, role FROM users") == [("admin@fullon", "admin")]
    rows = backend.sql(
        "SELECT s.symbol, s.backtest, s.updateframe, s.decimals, s.base, s.quote, c.name FROM symbols s"
        " JOIN cat_exchanges c ON c.cat_ex_id = s.cat_ex_id"
    )
    assert rows == [("BTC/USD", 2, "1h", 8, "BTC", "USD", "kraken")]
    acc = backend.sql("SELECT e.name, e.active, u.mail FROM exchanges e JOIN users u ON u.uid = e.uid")
    assert [(n, bool(a), m) for n, a, m in acc] == [("kraken1", True, "admin@fullon")]
    if backend.kind == "sqlite":
        assert backend.sqlite_path is not None and backend.sqlite_path.exists()


def test_add_exchange_params_upsert_and_text_list(backend: Backend, capsys):
    assert cfg(capsys, "init")[0] == 0
    proxy = "http://127.0.0.1:1"
    code, out, _ = cfg(capsys, "add-exchange", "kraken", "--param", "rate_limit=100", "--param", f"base_url={proxy}")
    assert code == 0 and "2 parameter(s) changed" in out
    code, out, _ = cfg(capsys, "add-exchange", "kraken", "--param", "rate_limit=250", "--param", f"base_url={proxy}")
    assert code == 0 and "account kraken1 kept; 1 parameter(s) changed" in out
    assert backend.sql("SELECT name, value FROM cat_exchanges_params ORDER BY name") == [
        ("base_url", proxy), ("rate_limit", "250"),
    ]
    assert backend.sql("SELECT count(*) FROM exchanges")[0][0] == 1
    assert cfg(capsys, "add-symbol", "kraken", "ETH/USD", "--updateframe", "1d")[0] == 0
    code, out, _ = cfg(capsys, "list")
    assert code == 0
    assert "kraken: collected; accounts: kraken1" in out
    assert "param rate_limit=250" in out and "ETH/USD backtest=30d updateframe=1d" in out
    code, out, _ = cfg(capsys, "remove-symbol", "kraken", "ETH/USD")
    assert code == 0 and backend.sql("SELECT count(*) FROM symbols")[0][0] == 0


def test_add_exchange_reactivates_the_admins_inactive_account(backend: Backend, capsys):
    assert cfg(capsys, "add-exchange", "kraken")[0] == 0  # also creates the schema and the admin
    backend.sql("UPDATE exchanges SET active = ?", False)
    code, out, _ = cfg(capsys, "add-exchange", "kraken")
    assert code == 0 and "account kraken1 activated" in out
    assert [bool(r[0]) for r in backend.sql("SELECT active FROM exchanges")] == [True]


def test_every_bad_input_has_a_message_and_exit_1(backend: Backend, capsys):
    assert cfg(capsys, "init")[0] == 0
    assert cfg(capsys, "add-exchange", "kraken")[0] == 0
    assert cfg(capsys, "add-symbol", "kraken", "BTC/USD")[0] == 0

    msg = refused(capsys, "add-symbol", "binance", "BTC/USD")
    assert msg == ("ohlcv-config: error: exchange 'binance' is not configured; "
                   "run: ohlcv-config add-exchange binance")
    assert "ohlcv-config add-exchange bitstamp" in refused(capsys, "remove-symbol", "bitstamp", "BTC/USD")

    assert "symbol 'BTCUSD' is invalid" in refused(capsys, "add-symbol", "kraken", "BTCUSD")
    smuggle = 'BTC/USD"; DROP TABLE symbols; --'
    assert f"symbol {smuggle!r} is invalid" in refused(capsys, "add-symbol", "kraken", smuggle)
    assert backend.sql("SELECT count(*) FROM symbols")[0][0] == 1  # the table is still there

    msg = refused(capsys, "add-symbol", "kraken", "BTC/USD")
    assert "symbol BTC/USD is already configured on kraken" in msg
    msg = refused(capsys, "add-symbol", "kraken", "btc/usd")  # same table name btc_usd_*
    assert "already configured on kraken (as BTC/USD, which maps to the same table)" in msg

    with pytest.raises(SystemExit) as info:  # a number outside its range is a bad command line: exit 2
        cfg(capsys, "add-symbol", "kraken", "ETH/USD", "--backtest", "-1")
    assert info.value.code == 2 and "--backtest: must be from 0 to 10000, got -1" in capsys.readouterr().err
    assert "exchange name 'Kraken!' is invalid" in refused(capsys, "add-exchange", "Kraken!")
    assert "exchange name 'kra-ken' is invalid" in refused(capsys, "add-symbol", "kra-ken", "BTC/USD")
    assert "symbol ETH/USD is not configured on kraken" in refused(capsys, "remove-symbol", "kraken", "ETH/USD")
    assert backend.sql("SELECT symbol FROM symbols") == [("BTC/USD",)]


def test_commands_before_init_say_run_init(backend: Backend, capsys):
    msg = refused(capsys, "list")
    assert msg.endswith("run: ohlcv-config init")
    msg = refused(capsys, "add-symbol", "kraken", "BTC/USD")
    assert msg.endswith("run: ohlcv-config init")
    if backend.kind == "sqlite":
        assert backend.sqlite_path is not None and not backend.sqlite_path.exists()  # nothing created


def test_unreachable_database_exit_1_without_password(monkeypatch, capsys, home):
    for var in STORE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DB_HOST", "127.0.0.1")
    monkeypatch.setenv("DB_PORT", "9")  # discard port: nothing listens
    monkeypatch.setenv("DB_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("DB_NAME", "fullon")
    msg = refused(capsys, "init")
    assert "config database postgresql://postgres:***@127.0.0.1:9/fullon unreachable" in msg
    assert "hunter2" not in msg
    msg = refused(capsys, "--config-db", "postgresql://u:pa55word@127.0.0.1:9/x", "list")
    assert "unreachable" in msg and "pa55word" not in msg


def test_sqlite_parent_directory_is_created(monkeypatch, capsys, tmp_path):
    for var in STORE_VARS:
        monkeypatch.delenv(var, raising=False)
    target = tmp_path / "a" / "b" / "conf.sqlite"
    monkeypatch.setenv("OHLCV_CONFIG_DB", f"sqlite://{target}")
    assert cfg(capsys, "init")[0] == 0
    assert target.exists()


def test_real_subprocess(backend: Backend):
    exe = str(VENV_BIN / "ohlcv-config")
    env = backend.subprocess_env()

    def call(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)

    for argv in (["init"], ["add-exchange", "kraken"], ["add-symbol", "kraken", "BTC/USD", "--backtest", "2"]):
        r = call(*argv)
        assert r.returncode == 0, r.stderr
    r = call("list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(e["name"], [s["symbol"] for s in e["symbols"]]) for e in doc["exchanges"]] == [("kraken", ["BTC/USD"])]
    assert doc["exchanges"][0]["symbols"][0]["backtest"] == 2
    r = call("add-symbol", "binance", "BTC/USD")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "ohlcv-config: error: exchange 'binance' is not configured; run: ohlcv-config add-exchange binance")
    r = call("add-symbol", "kraken", "BTC/USD", "--backtest", "-5")
    assert r.returncode == 2 and "--backtest: must be from 0 to 10000, got -5" in r.stderr


FULLON_LIKE = {
    # fullon's tables as an older deployment may have them: extra columns, rows already there.
    "sqlite": [
        "CREATE TABLE users (uid INTEGER PRIMARY KEY, mail VARCHAR(255) UNIQUE, role VARCHAR(50), name TEXT,"
        " lastname TEXT, active BOOLEAN, favourite_color TEXT)",
        "CREATE TABLE cat_exchanges (cat_ex_id INTEGER PRIMARY KEY, name TEXT UNIQUE, ohlcv_view TEXT,"
        " legacy_flag INTEGER DEFAULT 7)",
        "CREATE TABLE exchanges (ex_id INTEGER PRIMARY KEY, uid INTEGER, cat_ex_id INTEGER, name TEXT,"
        " test BOOLEAN, active BOOLEAN, timestamp TIMESTAMP, api_label TEXT, UNIQUE (uid, cat_ex_id, name))",
        "CREATE TABLE symbols (symbol_id INTEGER PRIMARY KEY, symbol TEXT, cat_ex_id INTEGER, updateframe TEXT,"
        " backtest INTEGER, decimals INTEGER, base TEXT, quote TEXT, futures BOOLEAN, only_ticker BOOLEAN,"
        " ex_base TEXT, UNIQUE (symbol, cat_ex_id))",
    ],
    "postgresql": [
        "CREATE TABLE users (uid SERIAL PRIMARY KEY, mail VARCHAR(255) UNIQUE, role VARCHAR(50), name TEXT,"
        " lastname TEXT, active BOOLEAN, favourite_color TEXT)",
        "CREATE TABLE cat_exchanges (cat_ex_id SERIAL PRIMARY KEY, name TEXT UNIQUE, ohlcv_view TEXT,"
        " legacy_flag INTEGER DEFAULT 7)",
        "CREATE TABLE exchanges (ex_id SERIAL PRIMARY KEY, uid INTEGER, cat_ex_id INTEGER, name TEXT,"
        " test BOOLEAN, active BOOLEAN, timestamp TIMESTAMP, api_label TEXT, UNIQUE (uid, cat_ex_id, name))",
        "CREATE TABLE symbols (symbol_id SERIAL PRIMARY KEY, symbol TEXT, cat_ex_id INTEGER, updateframe TEXT,"
        " backtest INTEGER, decimals INTEGER, base TEXT, quote TEXT, futures BOOLEAN, only_ticker BOOLEAN,"
        " ex_base TEXT, UNIQUE (symbol, cat_ex_id))",
    ],
}


def seed_fullon_like(backend: Backend) -> None:
    if backend.kind == "sqlite":
        assert backend.sqlite_path is not None
        backend.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    for stmt in FULLON_LIKE[backend.kind]:
        backend.sql(stmt)
    backend.sql("INSERT INTO users (mail, role, name, active, favourite_color) VALUES (?, ?, ?, ?, ?)",
                "admin@fullon", "admin", "Ada", True, "green")
    backend.sql("INSERT INTO users (mail, role, name, active, favourite_color) VALUES (?, ?, ?, ?, ?)",
                "trader@fullon", "user", "Tom", True, "red")
    backend.sql("INSERT INTO cat_exchanges (name, ohlcv_view, legacy_flag) VALUES (?, ?, ?)", "kraken", "v", 3)
    backend.sql("INSERT INTO exchanges (uid, cat_ex_id, name, test, active, api_label) VALUES (?, ?, ?, ?, ?, ?)",
                1, 1, "kraken1", False, True, "main")
    backend.sql("INSERT INTO symbols (symbol, cat_ex_id, updateframe, backtest, decimals, base, quote, futures,"
                " only_ticker, ex_base) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                "BTC/USD", 1, "1h", 10, 1, "BTC", "USD", False, False, "XBT")


def test_init_keeps_a_pre_existing_fullon_database(backend: Backend, capsys):
    seed_fullon_like(backend)
    code, out, _ = cfg(capsys, "init")
    assert code == 0 and "admin admin@fullon uid=1 exists" in out
    # what was there is untouched, extra columns included
    assert backend.sql("SELECT uid, mail, name, favourite_color FROM users ORDER BY uid") == [
        (1, "admin@fullon", "Ada", "green"), (2, "trader@fullon", "Tom", "red"),
    ]
    assert backend.sql("SELECT name, ohlcv_view, legacy_flag FROM cat_exchanges") == [("kraken", "v", 3)]
    assert backend.sql("SELECT name, api_label FROM exchanges") == [("kraken1", "main")]
    assert backend.sql("SELECT symbol, backtest, decimals, ex_base FROM symbols") == [("BTC/USD", 10, 1, "XBT")]
    # the missing table was created, and the commands work on the old tables
    assert backend.sql("SELECT count(*) FROM cat_exchanges_params") == [(0,)]
    assert cfg(capsys, "add-exchange", "kraken", "--param", "rate_limit=5")[0] == 0
    assert cfg(capsys, "add-symbol", "kraken", "ETH/USD", "--backtest", "3")[0] == 0
    assert backend.sql("SELECT name, api_label FROM exchanges") == [("kraken1", "main")]  # account kept
    code, out, _ = cfg(capsys, "list", "--json")
    ex = json.loads(out)["exchanges"][0]
    assert ex["params"] == {"rate_limit": "5"}
    assert [(s["symbol"], s["backtest"], s["decimals"]) for s in ex["symbols"]] == [("BTC/USD", 10, 1),
                                                                                    ("ETH/USD", 3, 8)]


def test_sqlite_path_that_cannot_be_created_is_store_unavailable(monkeypatch, capsys, tmp_path):
    for var in STORE_VARS:
        monkeypatch.delenv(var, raising=False)
    blocker = tmp_path / "plainfile"
    blocker.write_text("not a directory")
    monkeypatch.setenv("OHLCV_CONFIG_DB", f"sqlite://{blocker}/sub/config.sqlite")
    msg = refused(capsys, "init")
    assert msg.startswith(f"ohlcv-config: error: config database sqlite://{blocker}/sub/config.sqlite unavailable")
