"""``ohlcv-export``: stream one symbol's stored trades or 1m candles to stdout as CSV or JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from fullon_ohlcv_service.adapters.stores import open_ohlcv_store
from fullon_ohlcv_service.cliargs import OneLineParser, time_ms
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.identifiers import validate_exchange, validate_symbol
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.settings import Settings, add_common_args, settings_from_args

TRADE_FIELDS = ("ts", "id", "price", "volume", "side")
CANDLE_FIELDS = ("ts", "open", "high", "low", "close", "volume", "final")
FLUSH_ROWS = 1_000


def trade_row(t: Trade) -> dict[str, Any]:
    return {"ts": t.ts, "id": t.id, "price": t.price, "volume": t.amount, "side": t.side}


def candle_row(c: Candle) -> dict[str, Any]:
    return {
        "ts": c.ts, "open": c.open, "high": c.high, "low": c.low, "close": c.close,
        "volume": c.volume, "final": c.final,
    }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="ohlcv-export",
        description="Stream stored trades or 1m candles of one symbol to stdout, in time order.",
    )
    p.add_argument("exchange", help="exchange name, e.g. kraken")
    p.add_argument("symbol", help="ccxt unified symbol, e.g. BTC/USD")
    p.add_argument("--kind", choices=("trades", "candles"), required=True)
    p.add_argument("--since", type=time_ms, help="first time included: ISO-8601 or epoch ms")
    p.add_argument("--until", type=time_ms, help="first time excluded: ISO-8601 or epoch ms")
    p.add_argument("--format", choices=("csv", "json"), default="json", help="json lines (default) or csv")
    p.add_argument("--follow", action="store_true",
                   help="after the stored rows, print new rows as they are committed (from the Redis stream when "
                        "one is configured, else by polling the store) until Ctrl-C")
    p.add_argument("--feed-redis", metavar="URL",
                   help="Redis of the live feeds, for --follow (env OHLCV_FEED_REDIS; default: the --cache if Redis)")
    add_common_args(p)
    return p


def _writer(fmt: str, fields: tuple[str, ...], out: IO[str]) -> Callable[[dict[str, Any]], None]:
    if fmt == "json":
        def write_json(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")

        return write_json
    w = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()

    def write_csv(row: dict[str, Any]) -> None:
        # booleans as JSON spells them, so both formats read the same
        w.writerow({k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in row.items()})

    return write_csv


async def export(
    settings: Settings, exchange: str, symbol: str, kind: str, since: int | None, until: int | None,
    fmt: str, out: IO[str], follow_until: asyncio.Event | None = None,
) -> int:
    """Write the rows to ``out``; return how many. Raises ConfigError naming an unknown exchange/symbol."""
    url = settings.ohlcv_db
    if url.kind == "sqlite" and not (url.path / f"{exchange}.sqlite").exists():
        # do not create an empty file for an exchange that was never collected
        raise _Unknown(f"no stored data for exchange {exchange} in {url.redacted}")
    async with open_ohlcv_store(url, exchange, readonly=True) as store:
        if not await store.has_symbol(symbol):
            raise _Unknown(f"no stored data for {exchange} {symbol} in {settings.ohlcv_db.redacted}")
        if follow_until is not None:  # --follow: stored rows, then new ones until the event is set
            from fullon_ohlcv_service.follow import follow

            rows = _writer(fmt, TRADE_FIELDS if kind == "trades" else CANDLE_FIELDS, out)
            return await follow(store, symbol, kind, since,
                                lambda r: rows(trade_row(r) if isinstance(r, Trade) else candle_row(r)),
                                out.flush, follow_until, settings.feed_url)
        n = 0
        if kind == "trades":
            write = _writer(fmt, TRADE_FIELDS, out)
            async for t in store.iter_trades(symbol, since, until):
                write(trade_row(t))
                n += 1
                if n % FLUSH_ROWS == 0:
                    out.flush()
        else:
            write = _writer(fmt, CANDLE_FIELDS, out)
            async for c in store.iter_candles(symbol, since, until):
                write(candle_row(c))
                n += 1
                if n % FLUSH_ROWS == 0:
                    out.flush()
        out.flush()
        return n


async def _follow_main(settings: Settings, exchange: str, symbol: str, kind: str, since: int | None,
                       fmt: str) -> int:
    """--follow until SIGINT (Ctrl-C) or SIGTERM: a requested stop, so the exit code is 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await export(settings, exchange, symbol, kind, since, None, fmt, sys.stdout, follow_until=stop)


class _Unknown(Exception):
    """The exchange or symbol has no stored tables."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        exchange = validate_exchange(ns.exchange)
        symbol = validate_symbol(ns.symbol)
    except ConfigError as exc:
        parser.error(str(exc))
    since, until = ns.since, ns.until
    if since is not None and until is not None and since > until:
        parser.error(f"--since ({since}) is after --until ({until}): nothing could match")
    if ns.follow and until is not None:
        parser.error("--until and --follow exclude each other")
    settings = settings_from_args(ns, parser=parser)
    try:
        if ns.follow:
            asyncio.run(_follow_main(settings, exchange, symbol, ns.kind, since, ns.format))
        else:
            asyncio.run(export(settings, exchange, symbol, ns.kind, since, until, ns.format, sys.stdout))
    except _Unknown as exc:
        print(f"ohlcv-export: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader (e.g. `head`) went away: not an error of ours; silence the final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0
