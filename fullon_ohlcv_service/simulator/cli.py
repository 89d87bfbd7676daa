"""``ohlcv-simulator``: serve the simulated exchanges, print one JSON start-up line, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import signal
import sys
from typing import Any

from fullon_ohlcv_service import log
from fullon_ohlcv_service.cliargs import OneLineParser, count, number, seconds
from fullon_ohlcv_service.errors import EXIT_OK, ConfigError
from fullon_ohlcv_service.settings import LOG_LEVELS
from fullon_ohlcv_service.simulator.faults import parse_fault_flag
from fullon_ohlcv_service.simulator.market import SymbolConfig
from fullon_ohlcv_service.simulator.server import MAX_RATE, VENUES, Simulator, parse_symbol_spec


def parse_symbols(text: str, exchanges: list[str], rate: float) -> dict[str, list[SymbolConfig]]:
    """``kraken:BTC/USD,ETH/USD@0.5;binance:BTC/USDT@20`` -> {exchange: [SymbolConfig, ...]}."""
    out: dict[str, list[SymbolConfig]] = {}
    for group in text.split(";"):
        group = group.strip()
        if not group:
            continue
        name, sep, items = group.partition(":")
        if not sep:
            if len(exchanges) != 1:
                raise ConfigError(f"--symbols group {group!r} needs an 'exchange:' prefix")
            name, items = exchanges[0], group
        name = name.strip()
        if name not in exchanges:
            raise ConfigError(f"--symbols names exchange {name!r}, which is not in --exchanges")
        out[name] = [parse_symbol_spec(s, rate) for s in items.split(",") if s.strip()]
    return out


def parse_history_start(text: str) -> str | int:
    """``minute``, ``day``, epoch ms, or an ISO-8601 UTC instant -> what Simulator(history_start=) takes."""
    value = text.strip()
    if value in ("minute", "day"):
        return value
    if value.isdigit():
        return int(value)
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--history-start {text!r} is not 'minute', 'day', epoch ms or an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ohlcv-simulator",
                                description="Kraken and Binance spot wire formats on loopback, with faults.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=count(0, 65535), default=0, help="TCP port (0 = a free one)")
    p.add_argument("--seed", type=count(0, 2**63 - 1), default=1)
    p.add_argument("--exchanges", default=",".join(VENUES), help="comma list (default: kraken,binance)")
    p.add_argument("--symbols", default="",
                   help="e.g. 'kraken:BTC/USD@20,ETH/USD@0.5;binance:BTC/USDT' (@rate = trades/s)")
    p.add_argument("--rate", type=number(0, MAX_RATE), default=5.0,
                   help="default average trades/s per symbol (at most 337, or 980 with --steady: one trade per ms "
                        "per symbol; a higher rate is refused)")
    p.add_argument("--history-days", type=number(0, 3650), default=1.0, help="days of history before start-up")
    p.add_argument("--history-start", default="minute",
                   help="where history starts: 'minute' (history-days ago, on a minute), 'day' (the UTC midnight "
                        "at or before that), or an instant (ISO-8601 UTC like 2026-01-01T00:00:00Z, or epoch ms)")
    p.add_argument("--tls", action="store_true",
                   help="serve https:// and wss:// with a certificate from a CA made at start-up; the start-up "
                        "line names its 'ca_file' (for SSL_CERT_FILE, ccxt's cafile, ...)")
    p.add_argument("--tls-dir", default=None,
                   help="with --tls: write ca.pem, server.pem and server.key here (default: a temporary "
                        "directory removed at exit)")
    p.add_argument("--fault", action="append", default=[],
                   help="fault at start, e.g. 'rest_429=3', 'ws_drop_every_s=10,exchange=kraken' (repeatable)")
    p.add_argument("--burst", action="store_true", help="stream trades as fast as sockets take them")
    p.add_argument("--steady", action="store_true",
                   help="no quiet stretches or bursts: every minute trades at the average rate")
    p.add_argument("--tick-ms", type=count(1, 60_000), default=50, help="live push interval")
    p.add_argument("--ping-interval", type=seconds(), default=20.0, help="Binance server ping interval, seconds")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="WARNING")
    return p


async def serve(sim: Simulator, out: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        stream = out or sys.stdout
        stream.write(json.dumps(sim.startup_line(), separators=(",", ":")) + "\n")
        stream.flush()
        await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.configure(level=args.log_level.upper())
    exchanges = [e.strip() for e in args.exchanges.split(",") if e.strip()]
    for name in exchanges:
        if name not in VENUES:
            raise ConfigError(f"the simulator has no exchange {name!r} (it has: {', '.join(VENUES)})")
    symbols = parse_symbols(args.symbols, exchanges, args.rate)
    if args.tls_dir and not args.tls:
        raise ConfigError("--tls-dir needs --tls")
    faults = [parse_fault_flag(f) for f in args.fault]
    sim = Simulator(seed=args.seed, symbols=symbols, rate=args.rate, history_days=args.history_days,
                    host=args.host, port=args.port, exchanges=exchanges, faults=faults, burst=args.burst,
                    steady=args.steady, tick_s=args.tick_ms / 1000, ping_interval_s=args.ping_interval,
                    history_start=parse_history_start(args.history_start), tls=args.tls, tls_dir=args.tls_dir)
    asyncio.run(serve(sim))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
