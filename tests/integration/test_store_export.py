"""ohlcv-export run as a real subprocess against SQLite and PostgreSQL stores: JSON lines, CSV, errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.settings import parse_store_url
from fullon_ohlcv_service.timeutil import ms_to_iso

SYM = "BTC/USD"
T0 = 1_700_000_040_000
M = 60_000
TRADES = [
    Trade(ts=T0 + i * 500, id=f"id{i:04d}", price=100.0 + i / 8, amount=0.25 * (i + 1), side="sell" if i % 2 else "buy")
    for i in range(40)
]
CANDLES = [Candle(ts=T0 + m * M, open=1.0 + m, high=2.0 + m, low=0.5, close=1.5, volume=3.25, final=m < 3)
           for m in range(4)]


def seed(url: str) -> None:
    async def run() -> None:
        async with open_ohlcv_store(parse_store_url("t", url, ("sqlite", "postgresql")), "kraken") as s:
            await s.init_symbol(SYM)
            await s.save_trades(SYM, list(reversed(TRADES)))
            await s.save_candles(SYM, CANDLES)

    asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, home: Path) -> str:
    url = f"sqlite://{home / 'ohlcv'}" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    seed(url)
    return url


def export(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "OHLCV_", "REDIS_"))}
    env["OHLCV_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "fullon_ohlcv_service", "export", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )


def test_trades_as_json_lines_in_time_order(db: str, home: Path) -> None:
    r = export(home, "kraken", SYM, "--kind", "trades", "--ohlcv-db", db)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows == [{"ts": t.ts, "id": t.id, "price": t.price, "volume": t.amount, "side": t.side} for t in TRADES]


def test_trades_range_with_iso_since_and_ms_until(db: str, home: Path) -> None:
    since, until = TRADES[5].ts, TRADES[12].ts
    r = export(home, "kraken", SYM, "--kind", "trades", "--ohlcv-db", db,
               "--since", ms_to_iso(since).replace("+00:00", "Z"), "--until", str(until))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [t.id for t in TRADES[5:12]]


def test_candles_as_csv_with_header(db: str, home: Path) -> None:
    r = export(home, "kraken", SYM, "--kind", "candles", "--format", "csv", "--ohlcv-db", db)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "ts,open,high,low,close,volume,final"
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(int(x["ts"]), float(x["open"]), float(x["volume"]), x["final"]) for x in rows] == [
        (c.ts, c.open, c.volume, "true" if c.final else "false") for c in CANDLES
    ]


def test_candles_as_json_lines(db: str, home: Path) -> None:
    r = export(home, "kraken", SYM, "--kind", "candles", "--ohlcv-db", db, "--since", str(T0 + M))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        {"ts": c.ts, "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
         "final": c.final} for c in CANDLES[1:]
    ]


@pytest.mark.parametrize(("exchange", "symbol"), [("kraken", "ETH/USD"), ("binance", "BTC/USD")])
def test_unknown_symbol_or_exchange_is_a_clear_error(db: str, home: Path, exchange: str, symbol: str) -> None:
    r = export(home, exchange, symbol, "--kind", "trades", "--ohlcv-db", db)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "no stored data" in r.stderr and exchange in r.stderr
    assert not (home / "ohlcv" / "binance.sqlite").exists()  # nothing created by a read


def test_hostile_symbol_is_a_usage_error(home: Path) -> None:
    r = export(home, "kraken", 'btc/usd"; drop table x;--', "--kind", "trades", "--ohlcv-db",
               f"sqlite://{home / 'ohlcv'}")
    assert r.returncode == 2
    assert "invalid" in r.stderr


def test_unreachable_postgres_exits_1_without_password(home: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = export(home, "kraken", SYM, "--kind", "trades", "--ohlcv-db", f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr
    assert "hunter2" not in r.stderr
