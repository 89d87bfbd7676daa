"""`ohlcv-worker --exchange NAME`: load that exchange's spec from the config DB and run its worker in the foreground."""

from __future__ import annotations

import argparse
import asyncio

from fullon_ohlcv_service.cliargs import OneLineParser, add_worker_args, seconds
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.settings import (
    Settings,
    add_common_args,
    add_feed_args,
    settings_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="ohlcv-worker", description="Collect one exchange's trades and 1m candles in the foreground."
    )
    p.add_argument("--exchange", required=True, help="ccxt exchange id, as configured (e.g. kraken)")
    p.add_argument("--simulator", help="base URL of an exchange simulator: every ccxt URL points at it")
    p.add_argument("--heartbeat-interval", type=seconds(), help="seconds between heartbeats (default 5)")
    p.add_argument("--graceful-timeout", type=seconds(),
                   help="seconds to flush on SIGTERM or Ctrl-C; the stop never takes longer (rows not committed "
                   "by then are re-fetched from REST on the next start; default 10)")
    add_worker_args(p)
    add_feed_args(p)
    add_common_args(p)
    return p


async def load_spec(settings: Settings, exchange: str) -> ExchangeSpec:
    from fullon_ohlcv_service.adapters.sql_config import open_config_source

    async with open_config_source(settings) as source:
        specs = await source.load_exchanges([exchange])
    for spec in specs:
        if spec.name == exchange:
            return spec
    raise ConfigError(f"exchange {exchange!r} is not configured")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = settings_from_args(ns, parser=parser)
    from fullon_ohlcv_service.adapters.ccxt_exchange import check_exchange_supported

    check_exchange_supported(ns.exchange)
    spec = asyncio.run(load_spec(settings, ns.exchange))
    from fullon_ohlcv_service.worker.main import run_worker

    return run_worker(spec, settings, parent_pid=None)
