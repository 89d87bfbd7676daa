"""SqlConfigSource on SQLite and PostgreSQL: active/inactive accounts, only_ticker, params, unknown exchanges."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fullon_ohlcv_service import log
from fullon_ohlcv_service.adapters.sql_config import ConfigDB, InputRefused, SqlConfigSource, open_config_source
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.ports import ConfigSource
from fullon_ohlcv_service.settings import Settings, settings_from_env
from tests.integration.test_config_cli import Backend, make_backend


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, home: Path) -> Backend:
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return make_backend(request.param, home, pg)


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return settings_from_env(backend.env)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """JSON log lines of the ``fullon`` logger tree, captured for the test."""
    stream = io.StringIO()
    log.configure("DEBUG", "json", stream=stream)
    try:
        yield stream
    finally:
        log.configure()


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def seed(settings: Settings, backend: Backend) -> None:
    """kraken and binance collected by the admin; bitstamp's admin account inactive; coinbase only
    has another user's active account."""
    async with ConfigDB(settings, create=True) as db:
        await db.init()
        await db.add_exchange("kraken", {"rate_limit": "100", "base_url": "http://127.0.0.1:1"})
        await db.add_exchange("binance")
        await db.add_exchange("bitstamp")
        await db.add_exchange("coinbase")
        await db.add_symbol("kraken", "ETH/USD", backtest=5, updateframe="1d")
        await db.add_symbol("kraken", "BTC/USD", backtest=2)
        await db.add_symbol("kraken", "XRP/USD")
        await db.add_symbol("binance", "BTC/USDT:USDT", backtest=0)
        await db.add_symbol("bitstamp", "BTC/USD")
    await backend.asql("UPDATE symbols SET only_ticker = ? WHERE symbol = ?", True, "XRP/USD")
    await backend.asql("UPDATE exchanges SET active = ? WHERE name = ?", False, "bitstamp1")
    await backend.asql("INSERT INTO users (mail, role, name, active) VALUES (?, ?, ?, ?)", "other@x", "user", "o", True)
    await backend.asql("UPDATE exchanges SET uid = (SELECT uid FROM users WHERE mail = ?) WHERE name = ?",
                "other@x", "coinbase1")


async def test_load_all_active(settings: Settings, backend: Backend, logs: io.StringIO):
    await seed(settings, backend)
    async with open_config_source(settings) as src:
        assert isinstance(src, SqlConfigSource)
        source: ConfigSource = src
        specs = await source.load_exchanges(None)
    assert [s.name for s in specs] == ["binance", "kraken"]
    binance, kraken = specs
    assert binance.symbols == (SymbolSpec("BTC/USDT:USDT", backtest_days=0, futures=True),)
    assert kraken.symbols == (  # sorted, only_ticker XRP/USD left out
        SymbolSpec("BTC/USD", backtest_days=2),
        SymbolSpec("ETH/USD", backtest_days=5, updateframe="1d"),
    )
    assert dict(kraken.params) == {"rate_limit": "100", "base_url": "http://127.0.0.1:1"}
    with pytest.raises(TypeError):
        kraken.params["rate_limit"] = "1"  # type: ignore[index]
    assert kraken.fingerprint() == ExchangeSpec(
        "kraken", kraken.symbols, {"base_url": "http://127.0.0.1:1", "rate_limit": "100"}).fingerprint()
    assert not [r for r in records(logs) if r["level"] == "WARNING"]


async def test_named_exchanges_inactive_left_out_with_warning(settings: Settings, backend: Backend,
                                                               logs: io.StringIO):
    await seed(settings, backend)
    async with SqlConfigSource(settings) as src:
        specs = await src.load_exchanges(["kraken", "bitstamp", "coinbase", "kraken"])
    assert [s.name for s in specs] == ["kraken"]
    warnings = [r for r in records(logs) if r["level"] == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0]["exchanges"] == "bitstamp,coinbase"
    assert "no active account" in str(warnings[0]["msg"])


async def test_unknown_exchanges_raise_with_the_command(settings: Settings, backend: Backend):
    await seed(settings, backend)
    async with SqlConfigSource(settings) as src:
        with pytest.raises(ConfigError) as info:
            await src.load_exchanges(["kraken", "bybit", "okx"])
        msg = str(info.value)
        assert "'bybit' (run: ohlcv-config add-exchange bybit)" in msg
        assert "'okx' (run: ohlcv-config add-exchange okx)" in msg and "kraken" not in msg
        with pytest.raises(ConfigError, match=r"^exchange 'bybit' is not configured; "
                                              r"run: ohlcv-config add-exchange bybit$"):
            await src.load_exchanges(["bybit"])
        with pytest.raises(ConfigError, match="exchange name 'Kraken' is invalid"):
            await src.load_exchanges(["Kraken"])
        assert await src.load_exchanges([]) == []


async def test_changes_show_up_on_the_next_load(settings: Settings, backend: Backend):
    await seed(settings, backend)
    async with SqlConfigSource(settings) as src:
        before = {s.name: s.fingerprint() for s in await src.load_exchanges(None)}
        await src.add_exchange("kraken", {"rate_limit": "250"})
        await src.remove_symbol("binance", "BTC/USDT:USDT")
        after = {s.name: s for s in await src.load_exchanges(None)}
    assert after["kraken"].params["rate_limit"] == "250" and after["kraken"].fingerprint() != before["kraken"]
    assert after["binance"].symbols == ()


async def test_invalid_symbol_rows_are_left_out_with_an_error(settings: Settings, backend: Backend,
                                                               logs: io.StringIO):
    await seed(settings, backend)
    await backend.asql("INSERT INTO symbols (symbol, cat_ex_id) VALUES (?, (SELECT cat_ex_id FROM cat_exchanges"
                " WHERE name = ?))", "BTC/USD'; --", "binance")
    async with SqlConfigSource(settings) as src:
        (binance,) = await src.load_exchanges(["binance"])
    assert [s.symbol for s in binance.symbols] == ["BTC/USDT:USDT"]
    errors = [r for r in records(logs) if r["level"] == "ERROR"]
    assert errors and errors[0]["symbol"] == "BTC/USD'; --"


async def test_hand_edited_numbers_are_bounded_not_fatal(settings: Settings, backend: Backend, logs: io.StringIO):
    """A fullon database edited by hand: an absurd backtest is clamped, a non-number is the default."""
    await seed(settings, backend)
    await backend.asql("UPDATE symbols SET backtest = ? WHERE symbol = ?", 2**31 - 1, "BTC/USD")
    if backend.kind == "sqlite":  # PostgreSQL's INTEGER column cannot hold text
        await backend.asql("UPDATE symbols SET backtest = ? WHERE symbol = ?", "lots", "ETH/USD")
    async with SqlConfigSource(settings) as src:
        (kraken,) = await src.load_exchanges(["kraken"])
    days = {s.symbol: s.backtest_days for s in kraken.symbols}
    assert days["BTC/USD"] == 10_000
    if backend.kind == "sqlite":
        assert days["ETH/USD"] == 30
        assert any("not a whole number" in str(r["msg"]) for r in records(logs))


async def test_no_admin_user_means_nothing_collected(settings: Settings, backend: Backend, logs: io.StringIO):
    await seed(settings, backend)
    other = settings.with_overrides(admin_mail="nobody@fullon")
    async with SqlConfigSource(other) as src:
        assert await src.load_exchanges(None) == []
    assert any("admin user not found" in str(r["msg"]) for r in records(logs))


async def test_missing_database_or_tables_is_a_config_error(settings: Settings, backend: Backend):
    with pytest.raises(ConfigError, match="run: ohlcv-config init"):
        async with SqlConfigSource(settings) as src:
            await src.load_exchanges(None)
    if backend.kind == "sqlite":
        assert backend.sqlite_path is not None and not backend.sqlite_path.exists()


async def test_a_refused_change_rolls_back_and_the_connection_stays_usable(settings: Settings, backend: Backend):
    await seed(settings, backend)
    async with ConfigDB(settings) as db:
        with pytest.raises(InputRefused, match="already configured"):
            await db.add_symbol("kraken", "btc/usd")
        with pytest.raises(ConfigError, match="add-exchange bybit"):
            await db.add_symbol("bybit", "BTC/USD")
        await db.add_symbol("kraken", "SOL/USD", backtest=1)
        (kraken,) = await db.load_exchanges(["kraken"])
    assert [s.symbol for s in kraken.symbols] == ["BTC/USD", "ETH/USD", "SOL/USD"]
