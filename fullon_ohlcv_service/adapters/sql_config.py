"""The fullon_orm configuration database: management queries for ohlcv-config and the ConfigSource loader.

Works on SQLite (stdlib sqlite3, run off the loop) and PostgreSQL (asyncpg) with fullon_orm's table and
column names. Only the columns named here are read or written, so an existing fullon database with more
columns is used as it is. Writes never touch a row they do not need to.

Loader semantics (``load_exchanges``): exchanges asked for that are not in ``cat_exchanges`` raise
ConfigError with the ``ohlcv-config add-exchange NAME`` command; exchanges without an active account of
the admin user are left out with a warning naming them; symbol rows whose name is not a valid ccxt
unified symbol (possible in a hand-edited fullon database) are left out with an error log, because they
could not be mapped to a safe table name.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import asyncpg

from fullon_ohlcv_service.adapters.config_schema import (
    TABLES,
    ConfigConnection,
    ddl,
    is_unique_violation,
    schema_missing,
)
from fullon_ohlcv_service.errors import ConfigError, PermanentError
from fullon_ohlcv_service.exchange_params import parse_params
from fullon_ohlcv_service.identifiers import symbol_table_base, validate_exchange, validate_symbol
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import ExchangeSpec, SymbolSpec
from fullon_ohlcv_service.settings import Settings

_log = Log("fullon.ohlcv.config")

DEFAULT_BACKTEST = 30
MAX_BACKTEST_DAYS = 10_000  # back to the 1990s: all of any exchange's history, and still a positive epoch
DEFAULT_UPDATEFRAME = "1h"
DEFAULT_DECIMALS = 8
_PARAM_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}")
_UPDATEFRAME = re.compile(r"[1-9][0-9]{0,3}[smhdwM]")


class InputRefused(PermanentError):
    """A configuration change that cannot be made as asked (duplicate, missing row, bad value)."""


# --- pure validation (no I/O) -------------------------------------------------------------------
def add_exchange_command(name: str) -> str:
    return f"ohlcv-config add-exchange {name}"


def not_configured(names: Sequence[str]) -> ConfigError:
    """ConfigError naming each exchange and the exact command that would add it."""
    if len(names) == 1:
        return ConfigError(f"exchange {names[0]!r} is not configured; run: {add_exchange_command(names[0])}")
    parts = ", ".join(f"{n!r} (run: {add_exchange_command(n)})" for n in names)
    return ConfigError(f"exchanges not configured: {parts}")


def parse_param(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (KEY, VALUE); the key is a plain identifier, the value any text."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _PARAM_KEY.fullmatch(key):
        raise InputRefused(f"--param {text!r} is invalid: expected KEY=VALUE with KEY made of letters, digits, _ . -")
    return key, value


def check_backtest(days: int) -> int:
    if days < 0:
        raise InputRefused(f"--backtest must be >= 0 days, got {days}")
    if days > MAX_BACKTEST_DAYS:
        raise InputRefused(f"--backtest must be at most {MAX_BACKTEST_DAYS} days, got {days}")
    return days


def check_updateframe(tf: str) -> str:
    if not _UPDATEFRAME.fullmatch(tf):
        raise InputRefused(f"--updateframe {tf!r} is invalid: expected a timeframe such as 1m, 15m, 1h, 1d")
    return tf


def check_symbol(symbol: str) -> str:
    """A ccxt unified symbol that maps to a safe table name (raises ConfigError otherwise)."""
    validate_symbol(symbol)
    symbol_table_base(symbol)
    return symbol


def split_symbol(symbol: str) -> tuple[str, str, bool]:
    """``BTC/USDT:USDT`` -> ("BTC", "USDT", True): base, quote, and whether it is a derivative."""
    base, _, rest = symbol.partition("/")
    quote = re.split(r"[:\-]", rest, maxsplit=1)[0]
    return base, quote, ":" in rest


def _bool(value: Any, default: bool = False) -> bool:
    return default if value is None else bool(value)


def _int(value: Any, default: int) -> int:
    """An integer column of a (possibly hand-edited) fullon row; ``default`` when it holds no usable number."""
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        _log.warning("configuration value is not a whole number; using the default", value=value, default=default)
        return default


class ConfigDB:
    """The configuration database, opened with ``async with`` (``create`` makes a missing SQLite file;
    ``readonly`` opens an embedded one read-only, for commands that only read)."""

    def __init__(self, settings: Settings, *, create: bool = False, readonly: bool = False) -> None:
        self.settings = settings
        self.create = create
        self.readonly = readonly
        self._conn: ConfigConnection | None = None

    async def __aenter__(self) -> ConfigDB:
        conn = ConfigConnection(self.settings.config_db, create=self.create, readonly=self.readonly)
        await conn.__aenter__()
        try:
            if not self.create and not set(TABLES) <= await conn.existing_tables():
                raise schema_missing(self.settings.config_db)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @property
    def db(self) -> ConfigConnection:
        if self._conn is None:
            raise RuntimeError("ConfigDB used outside 'async with'")
        return self._conn

    # --- schema and admin ------------------------------------------------------------------------
    async def init(self) -> tuple[int, bool]:
        """Create missing tables and the admin user; return (admin uid, whether the user was created)."""
        async with self.db.transaction():
            await self.db.executescript(ddl(self.db.kind))
            uid = await self.admin_uid()
            if uid is not None:
                return uid, False
            await self.db.execute(
                "INSERT INTO users (mail, role, name, active) VALUES (?, ?, ?, ?)",
                self.settings.admin_mail, "admin", "admin", True,
            )
            uid = await self.admin_uid()
        if uid is None:
            raise PermanentError(f"admin user {self.settings.admin_mail} was not created")
        _log.info("admin user created", mail=self.settings.admin_mail, uid=uid)
        return uid, True

    async def admin_uid(self) -> int | None:
        rows = await self.db.fetch("SELECT uid FROM users WHERE mail = ?", self.settings.admin_mail)
        return int(rows[0][0]) if rows else None

    async def _require_admin(self) -> int:
        uid = await self.admin_uid()
        if uid is None:
            raise InputRefused(f"admin user {self.settings.admin_mail} does not exist; run: ohlcv-config init")
        return uid

    async def cat_ex_id(self, name: str) -> int | None:
        rows = await self.db.fetch("SELECT cat_ex_id FROM cat_exchanges WHERE name = ?", name)
        return int(rows[0][0]) if rows else None

    async def _require_cat_ex(self, name: str) -> int:
        cat = await self.cat_ex_id(name)
        if cat is None:
            raise not_configured([name])
        return cat

    # --- management ------------------------------------------------------------------------------
    async def add_exchange(self, name: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Ensure the cat_exchanges row, an active admin account on it, and upsert ``params``."""
        validate_exchange(name)
        params = dict(params or {})
        for key in params:
            parse_param(f"{key}=")
        parse_params(params)  # the worker's rules: a value it would refuse at boot is refused now
        async with self.db.transaction():
            uid = await self._require_admin()
            cat = await self.cat_ex_id(name)
            created = cat is None
            if cat is None:
                await self.db.execute("INSERT INTO cat_exchanges (name, ohlcv_view) VALUES (?, ?)", name, "")
                cat = await self._require_cat_ex(name)
            account, action = await self._ensure_account(uid, cat, name)
            changed = 0
            for key, value in sorted(params.items()):
                rows = await self.db.fetch(
                    "SELECT value FROM cat_exchanges_params WHERE cat_ex_id = ? AND name = ?", cat, key
                )
                if not rows:
                    await self.db.execute(
                        "INSERT INTO cat_exchanges_params (cat_ex_id, name, value) VALUES (?, ?, ?)", cat, key, value
                    )
                    changed += 1
                elif rows[0][0] != value:
                    await self.db.execute(
                        "UPDATE cat_exchanges_params SET value = ? WHERE cat_ex_id = ? AND name = ?", value, cat, key
                    )
                    changed += 1
        _log.info("exchange configured", exchange=name, created=created, account=account, account_action=action,
                  params_changed=changed)
        return {"exchange": name, "created": created, "account": account, "account_action": action,
                "params_changed": changed}

    async def _ensure_account(self, uid: int, cat: int, name: str) -> tuple[str, str]:
        rows = await self.db.fetch(
            "SELECT ex_id, name, active FROM exchanges WHERE uid = ? AND cat_ex_id = ? ORDER BY ex_id", uid, cat
        )
        for _ex_id, acc, active in rows:
            if _bool(active):
                return str(acc), "kept"
        if rows:  # the admin has accounts here but none active: activate the oldest
            ex_id, acc, _ = rows[0]
            await self.db.execute("UPDATE exchanges SET active = ? WHERE ex_id = ?", True, ex_id)
            return str(acc), "activated"
        acc = f"{name}1"
        await self.db.execute(
            "INSERT INTO exchanges (uid, cat_ex_id, name, test, active) VALUES (?, ?, ?, ?, ?)",
            uid, cat, acc, False, True,
        )
        return acc, "created"

    async def add_symbol(
        self,
        exchange: str,
        symbol: str,
        backtest: int = DEFAULT_BACKTEST,
        updateframe: str = DEFAULT_UPDATEFRAME,
        decimals: int = DEFAULT_DECIMALS,
    ) -> None:
        """Add a symbol row; refuse a symbol that is malformed or already there (same table name)."""
        validate_exchange(exchange)
        check_symbol(symbol)
        check_backtest(backtest)
        check_updateframe(updateframe)
        base, quote, futures = split_symbol(symbol)
        table = symbol_table_base(symbol)
        async with self.db.transaction():
            cat = await self._require_cat_ex(exchange)
            rows = await self.db.fetch("SELECT symbol FROM symbols WHERE cat_ex_id = ?", cat)
            for (existing,) in rows:
                if existing == symbol or _table_base_or_none(str(existing)) == table:
                    raise _duplicate(exchange, symbol, str(existing))
            try:
                await self.db.execute(
                    "INSERT INTO symbols (symbol, cat_ex_id, updateframe, backtest, decimals, base, quote, futures,"
                    " only_ticker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    symbol, cat, updateframe, backtest, decimals, base, quote, futures, False,
                )
            except (asyncpg.UniqueViolationError, sqlite3.IntegrityError) as exc:
                if is_unique_violation(exc):
                    raise _duplicate(exchange, symbol, symbol) from None
                raise
        _log.info("symbol added", exchange=exchange, symbol=symbol, backtest=backtest, updateframe=updateframe)

    async def remove_symbol(self, exchange: str, symbol: str) -> None:
        validate_exchange(exchange)
        check_symbol(symbol)
        async with self.db.transaction():
            cat = await self._require_cat_ex(exchange)
            rows = await self.db.fetch("SELECT symbol_id FROM symbols WHERE cat_ex_id = ? AND symbol = ?", cat, symbol)
            if not rows:
                raise InputRefused(f"symbol {symbol} is not configured on {exchange}")
            await self.db.execute("DELETE FROM symbols WHERE symbol_id = ?", rows[0][0])
        _log.info("symbol removed", exchange=exchange, symbol=symbol)

    async def list_exchanges(self) -> list[dict[str, Any]]:
        """Every cat_exchange with its params, the admin's accounts on it and all its symbols."""
        uid = await self.admin_uid()
        out: list[dict[str, Any]] = []
        for cat, name in await self.db.fetch("SELECT cat_ex_id, name FROM cat_exchanges ORDER BY name"):
            accounts = []
            if uid is not None:
                for acc, test, active in await self.db.fetch(
                    "SELECT name, test, active FROM exchanges WHERE uid = ? AND cat_ex_id = ? ORDER BY ex_id",
                    uid, cat,
                ):
                    accounts.append({"name": acc, "test": _bool(test), "active": _bool(active)})
            symbols = [
                {"symbol": s, "backtest": _int(b, DEFAULT_BACKTEST), "updateframe": u or DEFAULT_UPDATEFRAME,
                 "decimals": _int(d, DEFAULT_DECIMALS), "futures": _bool(f), "only_ticker": _bool(o)}
                for s, b, u, d, f, o in await self.db.fetch(
                    "SELECT symbol, backtest, updateframe, decimals, futures, only_ticker FROM symbols"
                    " WHERE cat_ex_id = ? ORDER BY symbol", cat,
                )
            ]
            out.append({
                "name": name,
                "collected": any(a["active"] for a in accounts),
                "accounts": accounts,
                "params": await self._params(cat),
                "symbols": symbols,
            })
        return out

    async def _params(self, cat: int) -> dict[str, str]:
        rows = await self.db.fetch(
            "SELECT name, value FROM cat_exchanges_params WHERE cat_ex_id = ? ORDER BY name", cat
        )
        return {str(k): "" if v is None else str(v) for k, v in rows}

    # --- loader ----------------------------------------------------------------------------------
    async def load_exchanges(self, names: Sequence[str] | None) -> list[ExchangeSpec]:
        """One ExchangeSpec per exchange asked for (``None``: every exchange the admin collects), by name."""
        cats = {str(n): int(c) for c, n in await self.db.fetch("SELECT cat_ex_id, name FROM cat_exchanges")}
        if names is not None:
            wanted = sorted({validate_exchange(n) for n in names})
            missing = [n for n in wanted if n not in cats]
            if missing:
                raise not_configured(missing)
        uid = await self.admin_uid()
        active: set[str] = set()
        if uid is None:
            _log.warning("admin user not found; no exchange is collected", mail=self.settings.admin_mail)
        else:
            rows = await self.db.fetch(
                "SELECT DISTINCT c.name FROM exchanges e JOIN cat_exchanges c ON c.cat_ex_id = e.cat_ex_id"
                " WHERE e.uid = ? AND e.active = ?", uid, True,
            )
            active = {str(r[0]) for r in rows}
        if names is None:
            wanted = sorted(n for n in active if n in cats)
        left_out = [n for n in wanted if n not in active]
        if left_out:
            _log.warning("exchanges left out: the admin user has no active account on them",
                         exchanges=",".join(left_out), mail=self.settings.admin_mail)
        specs = []
        for name in wanted:
            if name in active:
                specs.append(await self._spec(name, cats[name]))
        return specs

    async def _spec(self, name: str, cat: int) -> ExchangeSpec:
        rows = await self.db.fetch(
            "SELECT symbol, backtest, updateframe, decimals, futures FROM symbols"
            " WHERE cat_ex_id = ? AND (only_ticker IS NULL OR only_ticker = ?)", cat, False,
        )
        symbols = []
        for sym, backtest, updateframe, decimals, futures in rows:
            if _table_base_or_none(str(sym)) is None:
                _log.error("symbol left out: not a valid ccxt unified symbol", exchange=name, symbol=sym)
                continue
            symbols.append(SymbolSpec(
                symbol=str(sym),
                backtest_days=min(MAX_BACKTEST_DAYS, max(0, _int(backtest, DEFAULT_BACKTEST))),
                updateframe=str(updateframe or DEFAULT_UPDATEFRAME),
                decimals=_int(decimals, DEFAULT_DECIMALS),
                futures=_bool(futures),
            ))
        symbols.sort(key=lambda s: s.symbol)
        return ExchangeSpec(name=name, symbols=tuple(symbols), params=MappingProxyType(await self._params(cat)))


def _table_base_or_none(symbol: str) -> str | None:
    try:
        return symbol_table_base(symbol)
    except ConfigError:
        return None


def _duplicate(exchange: str, symbol: str, existing: str) -> InputRefused:
    same = "" if existing == symbol else f" (as {existing}, which maps to the same table)"
    return InputRefused(
        f"symbol {symbol} is already configured on {exchange}{same}; "
        f"to change it run: ohlcv-config remove-symbol {exchange} {existing}"
    )


class SqlConfigSource(ConfigDB):
    """ports.ConfigSource over the configuration database (read-only use; never creates anything)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, create=False)

    async def __aenter__(self) -> SqlConfigSource:
        await super().__aenter__()
        return self


def open_config_source(settings: Settings) -> SqlConfigSource:
    """A SqlConfigSource for ``settings.config_db`` (open it with ``async with``)."""
    return SqlConfigSource(settings)
