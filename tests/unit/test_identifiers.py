"""The one name -> SQL identifier mapping: valid names map exactly, hostile ones are refused."""

from __future__ import annotations

import pytest

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.identifiers import (
    candles_table,
    coverage_table,
    qualified,
    quote_ident,
    schema_name,
    symbol_table_base,
    trades_table,
)


@pytest.mark.parametrize(
    ("symbol", "base"),
    [
        ("BTC/USD", "btc_usd"),
        ("ETH/USDT:USDT", "eth_usdt_usdt"),
        ("BTC/USD:BTC-251226", "btc_usd_btc_251226"),
        ("BTC/USDT:USDT-251226-100000-C", "btc_usdt_usdt_251226_100000_c"),
        ("1INCH/EUR", "1inch_eur"),
    ],
)
def test_symbols_map_to_fullon_table_names(symbol: str, base: str) -> None:
    assert symbol_table_base(symbol) == base
    assert trades_table(symbol) == f"{base}_trades"
    assert candles_table(symbol) == f"{base}_candles1m"
    assert coverage_table(symbol) == f"{base}_coverage"


def test_qualified_quotes_schema_and_table() -> None:
    assert qualified("kraken", trades_table("BTC/USD")) == '"kraken"."btc_usd_trades"'
    assert schema_name("binance_us") == "binance_us"


HOSTILE_SYMBOLS = [
    'btc/usd"; drop table x;--',
    "BTC/USD; DROP TABLE trades",
    'BTC/USD"',
    "BTC/USD'",
    "BTC/ÜSD",
    "\uff22\uff34\uff23/USD",  # fullwidth letters
    "BTC/USD\x00",
    "BTC/USD\n",
    "BTC USD",
    "BTCUSD",
    "BTC/",
    "/USD",
    "",
    "BTC/USD/EUR",
    "../BTC/USD",
    "BTC/USD.x",
    "A" * 21 + "/USD",
    "/".join(["A" * 20, "B" * 20]) + ":" + "C" * 20,  # valid shape, too long for a table name
]


@pytest.mark.parametrize("symbol", HOSTILE_SYMBOLS)
def test_hostile_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(ConfigError):
        trades_table(symbol)
    with pytest.raises(ConfigError):
        candles_table(symbol)


def test_longest_accepted_symbol_fits_postgres_identifier_limit() -> None:
    symbol = "A" * 20 + "/" + "B" * 20 + "-" + "C" * 11  # base of 53 chars
    for table in (trades_table(symbol), candles_table(symbol), coverage_table(symbol)):
        assert len(table) <= 63
        assert quote_ident(table) == f'"{table}"'


HOSTILE_EXCHANGES = [
    'kraken"; drop schema public cascade;--',
    "Kraken",
    "kraken ",
    "kraken\n",
    "kräken",
    "kraken-futures",
    "1kraken",
    "",
    "k" * 33,
    "kraken.x",
    "pg_catalog;",
]


@pytest.mark.parametrize("exchange", HOSTILE_EXCHANGES)
def test_hostile_exchanges_are_refused(exchange: str) -> None:
    with pytest.raises(ConfigError):
        schema_name(exchange)
    with pytest.raises(ConfigError):
        qualified(exchange, "btc_usd_trades")


@pytest.mark.parametrize("name", ['x"y', "x y", "", "X", "a" * 64, "é", "a;b", "a.b"])
def test_quote_ident_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(ConfigError):
        quote_ident(name)


def test_non_string_names_are_refused() -> None:
    with pytest.raises(ConfigError):
        symbol_table_base(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        schema_name(42)  # type: ignore[arg-type]
