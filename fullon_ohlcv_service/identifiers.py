"""The one mapping from exchange and symbol names to validated, quoted SQL schema and table names."""

from __future__ import annotations

import re

from fullon_ohlcv_service.errors import ConfigError

_SAFE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_EXCHANGE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# ccxt unified symbols: BASE/QUOTE, optional :SETTLE, optional -EXPIRY[-STRIKE-C|P] parts.
_SYMBOL = re.compile(r"^[A-Za-z0-9]{1,20}/[A-Za-z0-9]{1,20}(:[A-Za-z0-9]{1,20})?(-[A-Za-z0-9]{1,20}){0,3}$")
MAX_IDENT = 63  # PostgreSQL's NAMEDATALEN - 1


def validate_exchange(name: str) -> str:
    """A ccxt-style exchange id (``kraken``, ``binance``); raise ConfigError for anything else."""
    if not isinstance(name, str) or not _EXCHANGE.fullmatch(name):
        raise ConfigError(f"exchange name {name!r} is invalid: use lowercase letters, digits and _")
    return name


def validate_symbol(symbol: str) -> str:
    """A ccxt unified symbol (``BTC/USD``, ``BTC/USDT:USDT``); raise ConfigError for anything else."""
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        raise ConfigError(
            f"symbol {symbol!r} is invalid: expected a ccxt unified symbol such as BTC/USD or BTC/USDT:USDT"
        )
    return symbol


def symbol_table_base(symbol: str) -> str:
    """``BTC/USD`` -> ``btc_usd``: lowercase, ``/ : -`` to ``_``, only ``[a-z0-9_]`` allowed."""
    validate_symbol(symbol)
    base = symbol.lower().replace("/", "_").replace(":", "_").replace("-", "_")
    if not re.fullmatch(r"[a-z0-9_]+", base) or len(base) + len("_candles1m") > MAX_IDENT:
        raise ConfigError(f"symbol {symbol!r} cannot be mapped to a table name")
    return base


def quote_ident(name: str) -> str:
    """Double-quote an identifier that has already been validated as ``[a-z0-9_]``."""
    if not re.fullmatch(r"[a-z0-9_]+", name) or len(name) > MAX_IDENT:
        raise ConfigError(f"refusing unsafe SQL identifier {name!r}")
    return f'"{name}"'


def schema_name(exchange: str) -> str:
    """The unquoted schema (PostgreSQL) or attached-database (SQLite) name for an exchange."""
    return validate_exchange(exchange)


def trades_table(symbol: str) -> str:
    """Unquoted trade table name, e.g. ``btc_usd_trades``."""
    return f"{symbol_table_base(symbol)}_trades"


def candles_table(symbol: str) -> str:
    """Unquoted 1m candle table name, e.g. ``btc_usd_candles1m``."""
    return f"{symbol_table_base(symbol)}_candles1m"


def coverage_table(symbol: str) -> str:
    """Unquoted coverage table name (our own: intervals whose trades are known complete)."""
    return f"{symbol_table_base(symbol)}_coverage"


def rejects_table(symbol: str) -> str:
    """Unquoted reject table name (our own: rows refused by validation or quarantined by the writer)."""
    return f"{symbol_table_base(symbol)}_rejects"


def qualified(exchange: str, table: str) -> str:
    """``"kraken"."btc_usd_trades"``: both parts validated and quoted."""
    return f"{quote_ident(schema_name(exchange))}.{quote_ident(table)}"
