"""Issue 10 through the real commands: damaged files, homes with URL characters, read-only commands that
create nothing, numbers that are refused in one line, URLs that never show a password, exchange
parameters checked when they are configured."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fullon_ohlcv_service.cli import run

BIN = Path(sys.executable).parent
CLEARED = ("DB_", "REDIS_", "OHLCV_", "LOG_", "ADMIN_MAIL")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
    env["OHLCV_HOME"] = str(home)
    env.update(extra)
    return env


def cmd(name: str, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one of the console scripts (``ohlcv-config`` ...) as a real process."""
    return subprocess.run([str(BIN / name), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """os.environ without any store, home or log variable (for commands run in-process)."""
    for key in list(os.environ):
        if key.startswith(CLEARED):
            monkeypatch.delenv(key)
    return monkeypatch


def configure(home: Path, *symbols: str) -> None:
    env = env_for(home)
    for argv in (["init"], ["add-exchange", "kraken"], *(["add-symbol", "kraken", s] for s in symbols)):
        r = cmd("ohlcv-config", *argv, env=env)
        assert r.returncode == 0, r.stderr


def damage(path: Path, how: str) -> bytes:
    """Make ``path`` a file SQLite refuses: random bytes, or a real database whose first page is overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "garbage":
        path.write_bytes(b"this is not a database\n" * 300)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 100,)] * 200)
        conn.commit()
        conn.close()
        data = bytearray(path.read_bytes())
        data[100:4096] = b"\xff" * (4096 - 100)  # the schema page, past the header
        path.write_bytes(bytes(data))
    return path.read_bytes()


# ---------------------------------------------------------------- finding 5: damaged SQLite files

@pytest.mark.parametrize("how", ["garbage", "malformed"])
@pytest.mark.parametrize(
    ("name", "argv", "damaged"),
    [
        ("ohlcv-config", ["list"], "config.sqlite"),
        ("ohlcv-config", ["init"], "config.sqlite"),
        ("ohlcv-config", ["add-symbol", "kraken", "BTC/USD"], "config.sqlite"),
        ("ohlcv-status", [], "cache.sqlite"),
        ("ohlcv-export", ["kraken", "BTC/USD", "--kind", "trades"], "ohlcv/kraken.sqlite"),
    ],
)
def test_a_damaged_file_is_one_line_and_exit_78(home: Path, name: str, argv: list[str], damaged: str,
                                                how: str) -> None:
    before = damage(home / damaged, how)
    r = cmd(name, *argv, env=env_for(home))
    lines = error_lines(r.stderr)
    assert r.returncode == 78, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"{name}: error: ") and str(home / damaged) in lines[0]
    assert "is not a usable SQLite database" in lines[0]
    assert (home / damaged).read_bytes() == before  # nothing lost, nothing touched


def test_supervisor_and_worker_refuse_a_damaged_configuration_or_cache(home: Path, clean_env: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OHLCV_HOME", str(home))
    damage(home / "config.sqlite", "garbage")
    for command, argv in (("supervisor", []), ("worker", ["--exchange", "kraken"])):
        capsys.readouterr()
        assert run(command, argv) == 78
        err = capsys.readouterr().err
        assert f"the configuration database {home / 'config.sqlite'} is not a usable SQLite database" in err
        assert len(error_lines(err)) == 1 and "Traceback" not in err
    (home / "config.sqlite").unlink()
    configure(home, "BTC/USD")
    damage(home / "cache.sqlite", "garbage")
    # a real process (a master that rode this out as a cache outage would fork workers and never end)
    r = cmd("ohlcv-supervisor", "--simulator", "http://127.0.0.1:9", env=env_for(home), timeout=60)
    assert r.returncode == 78, r.stderr  # before any worker is forked
    assert error_lines(r.stderr) == [f"ohlcv-supervisor: error: the process cache {home / 'cache.sqlite'} is not a "
                                     "usable SQLite database (file is not a database); move it aside or restore it "
                                     "from a backup"]


def test_worker_with_a_damaged_store_is_parked_not_retried(home: Path) -> None:
    configure(home, "BTC/USD")
    before = damage(home / "ohlcv" / "kraken.sqlite", "garbage")
    r = cmd("ohlcv-worker", "--exchange", "kraken", "--simulator", "http://127.0.0.1:9", env=env_for(home),
            timeout=90)
    assert r.returncode == 78, r.stderr
    assert "Traceback" not in r.stderr and "retrying" not in r.stderr
    assert f"the SQLite store {home / 'ohlcv' / 'kraken.sqlite'} is not a usable SQLite database" in r.stderr
    assert (home / "ohlcv" / "kraken.sqlite").read_bytes() == before


# ---------------------------------------------------------------- finding 16: read-only commands

def test_read_only_commands_on_a_fresh_home_create_nothing(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    env = env_for(home)
    r = cmd("ohlcv-status", env=env)
    assert r.returncode == 0 and r.stdout.strip() == (
        f"no process cache at {home / 'cache.sqlite'}: no ohlcv-supervisor has run with these settings")
    r = cmd("ohlcv-status", "--check", env=env)
    assert r.returncode == 1 and r.stdout.startswith("UNHEALTHY: no process cache at ")
    r = cmd("ohlcv-status", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["problems"][0].startswith("no process cache at ")
    r = cmd("ohlcv-config", "list", env=env)
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        f"ohlcv-config: error: no configuration at {home / 'config.sqlite'}; run: ohlcv-config init"]
    r = cmd("ohlcv-export", "kraken", "BTC/USD", "--kind", "candles", env=env)
    assert r.returncode == 1 and error_lines(r.stderr) == [
        f"ohlcv-export: error: no stored data for exchange kraken in sqlite://{home / 'ohlcv'}"]
    assert list(tmp_path.iterdir()) == []  # not even the home directory


def test_read_only_commands_change_no_existing_file(home: Path) -> None:
    """Files as a backup or an older version leaves them (rollback journal, a cache table missing): a
    command that only reads must not switch them to WAL nor add what is missing."""
    import asyncio

    from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
    from fullon_ohlcv_service.adapters.sqlite_store import SqliteOhlcvStore
    from fullon_ohlcv_service.models import Candle

    configure(home, "BTC/USD")
    cache = SyncSqliteProcessCache(home / "cache.sqlite")
    cache.stop(cache.register("ohlcv", "ohlcv-supervisor", {"pid": 1}), "stopped")
    cache.close()

    async def store_one() -> None:
        async with SqliteOhlcvStore(home / "ohlcv", "kraken") as s:
            await s.init_symbol("BTC/USD")
            await s.save_candles("BTC/USD", [Candle(1_700_000_040_000, 1.0, 2.0, 0.5, 1.5, 3.0, True)])

    asyncio.run(store_one())
    for path in (home / "cache.sqlite", home / "ohlcv" / "kraken.sqlite"):
        with sqlite3.connect(path, isolation_level=None) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
            if path.name == "cache.sqlite":
                conn.execute("DROP TABLE trade_status")
        conn.close()
    before = tree(home)
    env = env_for(home)
    for argv in (["ohlcv-config", "list"], ["ohlcv-config", "list", "--json"], ["ohlcv-status", "--json"],
                 ["ohlcv-status"], ["ohlcv-export", "kraken", "BTC/USD", "--kind", "candles"],
                 ["ohlcv-export", "kraken", "ETH/USD", "--kind", "candles"]):
        r = cmd(*argv, env=env)
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert tree(home) == before  # byte for byte, and no file added


# ---------------------------------------------------------------- finding 8: '#', '?', '%' in OHLCV_HOME

def test_home_with_url_characters_end_to_end(tmp_path: Path) -> None:
    import asyncio

    from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache
    from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
    from fullon_ohlcv_service.models import Trade
    from fullon_ohlcv_service.settings import settings_from_env

    home = tmp_path / "h#1?2%41 x%"
    configure(home, "BTC/USD")
    env = env_for(home)
    r = cmd("ohlcv-config", "list", env=env)
    assert r.returncode == 0 and "BTC/USD backtest=30d" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [home.name]  # nothing truncated at '#', '?' or '%'
    assert sorted(p.name for p in home.iterdir()) == ["config.sqlite"]
    # what the supervisor and a worker write, through the same settings
    settings = settings_from_env(env)
    cache = SyncSqliteProcessCache(settings.cache)
    cache.register("ohlcv", "ohlcv-supervisor", {"pid": 4242, "exchanges": {}}, status="running")
    cache.close()

    async def store_one() -> None:
        async with open_ohlcv_store(settings.ohlcv_db, "kraken") as s:
            await s.init_symbol("BTC/USD")
            await s.save_trades("BTC/USD", [Trade(1_700_000_000_000, "t1", 10.0, 1.0, "buy")])

    asyncio.run(store_one())
    r = cmd("ohlcv-status", env=env)
    assert r.returncode == 0 and r.stdout.startswith("supervisor: pid 4242, running"), r.stdout + r.stderr
    r = cmd("ohlcv-export", "kraken", "BTC/USD", "--kind", "trades", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == "t1", r.stderr
    assert {p.name for p in home.iterdir()} >= {"config.sqlite", "cache.sqlite", "ohlcv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [home.name]

    def tables(path: Path) -> set[str]:
        with sqlite3.connect(path) as conn:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    assert "users" in tables(home / "config.sqlite") and "process_data" not in tables(home / "config.sqlite")
    assert "process_data" in tables(home / "cache.sqlite") and "users" not in tables(home / "cache.sqlite")


# ---------------------------------------------------------------- finding 10: numbers and the log file

@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--since", "99999999999999999999"], "argument --since: 99999999999999999999 is outside 1970-01-01"),
        (["--until", "-5"], "argument --until: -5 is outside"),
        (["--since", "nan"], "argument --since: 'nan' is neither epoch ms nor an ISO-8601 time"),
        (["--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01"], "--since (1767312000000) is after --until"),
    ],
)
def test_export_time_flags_are_one_line_and_exit_2(home: Path, argv: list[str], needle: str) -> None:
    r = cmd("ohlcv-export", "kraken", "BTC/USD", "--kind", "trades", *argv, env=env_for(home))
    assert r.returncode == 2 and r.stdout == ""
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize(
    ("command", "argv", "needle"),
    [
        ("config", ["add-symbol", "kraken", "BTC/USD", "--backtest", "99999999999999999999"],
         "--backtest: must be from 0 to 10000, got 99999999999999999999"),
        ("worker", ["--exchange", "kraken", "--silence-min", "nan"], "--silence-min: must be a finite number"),
        ("worker", ["--exchange", "kraken", "--gap-check", "inf"], "--gap-check: must be a finite number"),
        ("worker", ["--exchange", "kraken", "--reconcile", "0"], "--reconcile: must be > 0"),
        ("worker", ["--exchange", "kraken", "--flush-rows", "1e3"], "--flush-rows: '1e3' is not a whole number"),
        ("worker", ["--exchange", "kraken", "--flush-rows", "500", "--buffer-rows", "10"],
         "--buffer-rows: must be >= --flush-rows"),
        ("worker", ["--exchange", "kraken", "--heartbeat-interval", "1e400"], "must be a finite number"),
        ("simulator", ["--rate", "nan"], "--rate: must be a finite number"),
        ("simulator", ["--tick-ms", "0"], "--tick-ms: must be from 1 to 60000"),
        ("simulator", ["--port", "70000"], "--port: must be from 0 to 65535"),
        ("simulator", ["--history-days", "inf"], "--history-days: must be a finite number"),
        ("simulator", ["--ping-interval", "-1"], "--ping-interval: must be > 0"),
    ],
)
def test_numeric_flags_are_one_line_and_exit_2(clean_env: pytest.MonkeyPatch, home: Path, command: str,
                                               argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OHLCV_HOME", str(home))
    with pytest.raises(SystemExit) as info:
        run(command, argv)
    assert info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and needle in lines[0], lines
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("command", ["config", "supervisor"])
@pytest.mark.parametrize(("var", "value", "needle"), [
    ("LOG_FILE_PATH", "/proc/no/such/dir/x.log", "LOG_FILE_PATH: cannot write to '/proc/no/such/dir/x.log'"),
    ("LOG_FILE_PATH", "/", "LOG_FILE_PATH: cannot write to '/'"),
    ("OHLCV_HEARTBEAT_INTERVAL", "nan", "OHLCV_HEARTBEAT_INTERVAL: must be a finite number of seconds, got nan"),
    ("OHLCV_HEARTBEAT_INTERVAL", "inf", "OHLCV_HEARTBEAT_INTERVAL: must be a finite number of seconds, got inf"),
])
def test_bad_environment_is_one_line_and_exit_78(clean_env: pytest.MonkeyPatch, home: Path, command: str, var: str,
                                                 value: str, needle: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OHLCV_HOME", str(home))
    clean_env.setenv(var, value)
    assert run(command, ["list"] if command == "config" else []) == 78
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and needle in lines[0], lines


# ---------------------------------------------------------------- finding 4: no password in any message

SECRET_URLS = [
    "postgresql://u:SE/CRET@127.0.0.1:9/db", "postgresql://u:SE?CRET@127.0.0.1/db", "postgresql://u:SE#CRET@h:9/db",
    "postgresql://u:SE@CRET@127.0.0.1:9/db", "postgresql://u:SECRET@[::1/db", "postgresql://u:SECRET@h:bad/db",
    "postgresql://u:SE%2FCRET@127.0.0.1:9/db", "redis://:SE/CRET@127.0.0.1:9/0", "redis://:SE#CRET@127.0.0.1/0",
    "redis://:SE@CRET@127.0.0.1:9/0", "redis://:SE%23CRET@127.0.0.1:9/0", "redis://:SECRET@127.0.0.1:9/42",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_command_prints_a_password(clean_env: pytest.MonkeyPatch, home: Path, url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OHLCV_HOME", str(home))
    store = "--cache" if url.startswith("redis") else "--config-db"
    attempts = [("config", [store, url, "list"]), ("status", ["--cache", url]),
                ("export", ["kraken", "BTC/USD", "--kind", "trades", "--ohlcv-db", url]),
                ("supervisor", [store, url]), ("worker", ["--exchange", "kraken", store, url])]
    for command, argv in attempts:
        capsys.readouterr()
        code = run(command, argv)
        err = capsys.readouterr().err
        assert code in (1, 78), (command, code, err)
        assert "CRET" not in err and len(error_lines(err)) == 1, (command, err)


def test_a_database_error_does_not_quote_the_password(clean_env: pytest.MonkeyPatch, home: Path, pg_url: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL answers (no such database) for a URL whose password holds every reserved character."""
    clean_env.setenv("OHLCV_HOME", str(home))
    base = pg_url.rsplit("/", 1)[0].replace("postgres@", "postgres:S%2FE%3FC%23R%40ET@")
    assert run("config", ["--config-db", f"{base}/no_such_database_here", "list"]) == 1
    err = capsys.readouterr().err
    assert "no_such_database_here" in err and ":***@" in err
    assert "S/E?C#R@ET" not in err and "S%2FE" not in err


# ---------------------------------------------------------------- findings 11 and 12: ohlcv-config

BAD_PARAMS = [
    ("rate_limit_ms=abc", "rate_limit_ms='abc' is invalid: use whole milliseconds from 0 to 60000"),
    ("rate_limit_ms=99999999999999999999", "rate_limit_ms='99999999999999999999' is invalid"),
    ("rate_limit_ms=-1", "rate_limit_ms='-1' is invalid"),
    ("rate_limit_ms=1e3", "rate_limit_ms='1e3' is invalid"),
    ("timeout_ms=0", "timeout_ms='0' is invalid: use whole milliseconds from 1 to 600000"),
    ("timeout_ms=nan", "timeout_ms='nan' is invalid"),
    ("enable_rate_limit=maybe", "enable_rate_limit='maybe' is invalid: use true or false"),
    ("base_url=ftp://u:SECRET@proxy", "base_url='ftp://u:***@proxy' is invalid: use http(s)://host[:port][/path]"),
    ("base_url=http://h:99999", "base_url='http://h:99999' is invalid"),
]


def config_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run("config", list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("param", "needle"), BAD_PARAMS)
def test_bad_exchange_parameters_are_refused_when_configured(clean_env: pytest.MonkeyPatch, home: Path, param: str,
                                                             needle: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from fullon_ohlcv_service.adapters.ccxt_exchange import build_config
    from fullon_ohlcv_service.errors import ConfigError

    clean_env.setenv("OHLCV_HOME", str(home))
    code, _, err = config_in_process(capsys, "add-exchange", "kraken", "--param", param)
    assert code == 1 and len(error_lines(err)) == 1 and needle in err, err
    assert "SECRET" not in err
    assert not (home / "config.sqlite").exists()  # refused before anything was written
    # the worker applies the very same rules at boot (a hand-edited database): exit 78 there
    key, _, value = param.partition("=")
    with pytest.raises(ConfigError, match="is invalid"):
        build_config("kraken", {key: value}, None)


def test_exchange_names_are_checked_against_ccxt(clean_env: pytest.MonkeyPatch, home: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OHLCV_HOME", str(home))
    code, _, err = config_in_process(capsys, "add-exchange", "krakn")
    assert code == 1
    assert "exchange 'krakn' is not supported" in err and "did you mean 'kraken'?" in err and "--force" in err
    code, _, err = config_in_process(capsys, "add-exchange", "bitmex")
    assert code == 1 and "bitmex was removed from ccxt" in err
    assert not (home / "config.sqlite").exists()
    code, out, err = config_in_process(capsys, "add-exchange", "bitmex", "--force")
    assert code == 0 and "exchange bitmex: added" in out
    assert "ohlcv-config: warning: exchange 'bitmex' is not supported" in err and "--force" in err
    code, out, err = config_in_process(capsys, "add-exchange", "kraken", "--param", "rate_limit=100",
                                       "--param", "rate_limit_ms=250", "--param", "timeout_ms=5000")
    assert code == 0 and "3 parameter(s) changed" in out
    assert "ohlcv-config: warning: parameter(s) rate_limit are not read by this service" in err


def test_list_shows_no_credentials(clean_env: pytest.MonkeyPatch, home: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OHLCV_HOME", str(home))
    code, _, err = config_in_process(capsys, "add-exchange", "kraken",
                                     "--param", "base_url=https://proxyuser:SE%2FCRET@proxy.example:8443/k",
                                     "--param", "api_secret=SECRET2", "--param", "mirror=http://m:SECRET3@x/y")
    assert code == 0, err
    code, out, _ = config_in_process(capsys, "list")
    assert code == 0 and "SECRET" not in out and "CRET" not in out
    assert "param base_url=https://proxyuser:***@proxy.example:8443/k" in out
    assert "param api_secret=***" in out and "param mirror=http://m:***@x/y" in out
    code, out, _ = config_in_process(capsys, "list", "--json")
    assert code == 0 and "CRET" not in out
    assert json.loads(out)["exchanges"][0]["params"]["api_secret"] == "***"
