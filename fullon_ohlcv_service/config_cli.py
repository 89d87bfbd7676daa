"""``ohlcv-config``: create and edit the fullon configuration database (exchanges, params, symbols).

Commands: ``init``, ``add-exchange NAME [--param KEY=VALUE ...]``, ``add-symbol EXCHANGE SYMBOL
[--backtest DAYS] [--updateframe TF]``, ``remove-symbol EXCHANGE SYMBOL``, ``list [--json]``.

Exit codes (the choice, documented):
  0   done;
  1   input refused: an exchange that is not configured, a malformed exchange name or symbol, an
      exchange ccxt does not have (without ``--force``), a duplicate or missing symbol, a malformed
      ``--param``/``--updateframe`` or a bad value for a parameter the worker reads, no configuration
      yet or its tables missing. One line ``ohlcv-config: error: ...`` on stderr. Exit 1 (not 78)
      because nothing is wrong with the service's settings: the operator fixes the command line;
  1   the configuration database cannot be reached (StoreUnavailable, mapped by cli.py; no password);
  2   a command line argparse cannot parse (unknown flag, ``--backtest abc``, ``--backtest`` outside
      0..MAX_BACKTEST_DAYS);
  78  a settings problem (malformed ``--config-db`` URL, bad ``LOG_LEVEL``, unwritable
      ``LOG_FILE_PATH``...) or a configuration file that is not a SQLite database, mapped by cli.py.

``list`` and every command that only reads open the database read-only and create nothing; ``list``
shows parameters with credentials redacted (a URL's password, a secret-named parameter's value).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from fullon_ohlcv_service import log
from fullon_ohlcv_service.adapters.sql_config import (
    DEFAULT_BACKTEST,
    DEFAULT_UPDATEFRAME,
    MAX_BACKTEST_DAYS,
    ConfigDB,
    InputRefused,
    check_backtest,
    check_symbol,
    check_updateframe,
    parse_param,
)
from fullon_ohlcv_service.cliargs import OneLineParser, count
from fullon_ohlcv_service.errors import EXIT_CRASH, EXIT_OK, ConfigError, ExchangeUnsupported, StoreCorrupt
from fullon_ohlcv_service.exchange_params import KNOWN, parse_params, unknown_params
from fullon_ohlcv_service.identifiers import validate_exchange
from fullon_ohlcv_service.redaction import redact_params, redact_text
from fullon_ohlcv_service.settings import Settings, add_common_args, settings_from_args

PROG = "ohlcv-config"
EXIT_REFUSED = EXIT_CRASH  # 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Manage the fullon configuration database.")
    add_common_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        # SUPPRESS: a store flag given before the command is not reset to None by the subparser.
        p = sub.add_parser(name, help=help_text, description=help_text, argument_default=argparse.SUPPRESS)
        add_common_args(p)
        return p

    command("init", "create the tables and the admin user if they are missing (idempotent)")
    p = command("add-exchange", "add an exchange, the admin's active account on it, and its parameters")
    p.add_argument("name", help="ccxt exchange id, e.g. kraken")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="cat_exchanges_params row (repeatable; re-running updates the value). Read by the worker: "
                   + "; ".join(f"{k}: {v}" for k, v in KNOWN.items()))
    p.add_argument("--force", action="store_true", default=False,
                   help="add an exchange that this ccxt does not have (its worker stays parked until ccxt has it)")
    p = command("add-symbol", "add a symbol to collect on an exchange")
    p.add_argument("exchange")
    p.add_argument("symbol", help="ccxt unified symbol, e.g. BTC/USD or BTC/USDT:USDT")
    p.add_argument("--backtest", type=count(0, MAX_BACKTEST_DAYS), default=DEFAULT_BACKTEST, metavar="DAYS",
                   help=f"days of history to backfill, 0-{MAX_BACKTEST_DAYS} (default {DEFAULT_BACKTEST})")
    p.add_argument("--updateframe", default=DEFAULT_UPDATEFRAME, metavar="TF",
                   help=f"fullon's updateframe column (default {DEFAULT_UPDATEFRAME})")
    p = command("remove-symbol", "remove a symbol (its stored candles and trades are kept)")
    p.add_argument("exchange")
    p.add_argument("symbol")
    p = command("list", "list exchanges with their parameters, accounts and symbols")
    p.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    return parser


def validate_args(ns: argparse.Namespace) -> None:
    """Check the command's arguments before any I/O; raise ConfigError/InputRefused (exit 1)."""
    if ns.command == "add-exchange":
        validate_exchange(ns.name)
        params = dict(parse_param(item) for item in ns.param)
        parse_params(params)  # the worker's own rules, so that a bad value is refused now, not at its boot
        _check_exchange(ns.name, force=ns.force)
        unknown = unknown_params(params)
        if unknown:
            _warn(f"parameter(s) {', '.join(unknown)} are not read by this service (it reads "
                  f"{', '.join(KNOWN)}); stored as given, for other fullon services")
    elif ns.command in ("add-symbol", "remove-symbol"):
        validate_exchange(ns.exchange)
        check_symbol(ns.symbol)
        if ns.command == "add-symbol":
            check_backtest(ns.backtest)
            check_updateframe(ns.updateframe)


def _check_exchange(name: str, *, force: bool) -> None:
    """Refuse an exchange this ccxt does not have, unless ``force`` (then warn)."""
    from fullon_ohlcv_service.adapters.ccxt_exchange import check_exchange_supported

    try:
        check_exchange_supported(name)
    except ExchangeUnsupported as exc:
        if not force:
            raise InputRefused(f"{exc}; to add it anyway, run again with --force") from None
        _warn(f"{exc}; added anyway (--force): its worker is parked FATAL until ccxt has it")


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


async def _run(ns: argparse.Namespace, settings: Settings) -> int:
    create = ns.command in ("init", "add-exchange")
    async with ConfigDB(settings, create=create, readonly=ns.command == "list") as db:
        where = settings.config_db.redacted
        if ns.command == "init":
            uid, created = await db.init()
            state = "created" if created else "exists"
            print(f"configuration database ready: {where} (admin {settings.admin_mail} uid={uid} {state})")
        elif ns.command == "add-exchange":
            await db.init()
            params = dict(parse_param(p) for p in ns.param)
            r = await db.add_exchange(ns.name, params)
            print(f"exchange {ns.name}: {'added' if r['created'] else 'exists'}; "
                  f"account {r['account']} {r['account_action']}; {r['params_changed']} parameter(s) changed")
        elif ns.command == "add-symbol":
            await db.add_symbol(ns.exchange, ns.symbol, ns.backtest, ns.updateframe)
            print(f"symbol {ns.symbol} added to {ns.exchange} (backtest {ns.backtest} days, "
                  f"updateframe {ns.updateframe})")
        elif ns.command == "remove-symbol":
            await db.remove_symbol(ns.exchange, ns.symbol)
            print(f"symbol {ns.symbol} removed from {ns.exchange} (stored data kept)")
        else:
            exchanges = await db.list_exchanges()
            for ex in exchanges:
                ex["params"] = redact_params(ex["params"])
            if ns.json:
                print(json.dumps({"config_db": where, "admin": settings.admin_mail, "exchanges": exchanges},
                                 indent=2, sort_keys=True))
            else:
                _print_table(exchanges)
    return EXIT_OK


def _print_table(exchanges: list[dict[str, Any]]) -> None:
    if not exchanges:
        print("no exchange configured; add one with: ohlcv-config add-exchange NAME")
        return
    for ex in exchanges:
        accounts = ", ".join(f"{a['name']}{'' if a['active'] else ' (inactive)'}" for a in ex["accounts"]) or "none"
        state = "collected" if ex["collected"] else "NOT collected (no active admin account)"
        print(f"{ex['name']}: {state}; accounts: {accounts}")
        for key, value in ex["params"].items():
            print(f"  param {key}={value}")
        for s in ex["symbols"]:
            extra = " only_ticker" if s["only_ticker"] else ""
            print(f"  {s['symbol']} backtest={s['backtest']}d updateframe={s['updateframe']}{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = settings_from_args(ns, parser=parser)  # ConfigError here is a settings problem: cli.py exits 78
    log.configure(settings.log_level, settings.log_format, file=settings.log_file)
    try:
        validate_args(ns)
        return asyncio.run(_run(ns, settings))
    except StoreCorrupt:
        raise  # not the command line's fault: cli.py exits 78 with the one line
    except (ConfigError, InputRefused) as exc:
        print(f"{PROG}: error: {redact_text(' '.join(str(exc).split()))}", file=sys.stderr)
        return EXIT_REFUSED
