"""`ohlcv-supervisor`: parse flags, import ccxt, read the configuration, then run the master loop."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote

from fullon_ohlcv_service import log
from fullon_ohlcv_service.cliargs import OneLineParser, add_worker_args, count, seconds
from fullon_ohlcv_service.errors import ConfigError, OhlcvError, StoreUnavailable
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.settings import (
    COUNTS,
    Settings,
    add_common_args,
    add_feed_args,
    settings_from_args,
)

if TYPE_CHECKING:
    from fullon_ohlcv_service.metrics.process import ExporterProcess

_EXCHANGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="ohlcv-supervisor",
        description="Fork one collector worker per exchange, watch their heartbeats and restart them by policy. "
        "SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the configuration (if that fails, the running "
        "configuration is kept and ohlcv-status shows why).",
    )
    p.add_argument("--exchanges", metavar="A,B",
                   help="comma-separated ccxt ids (default: every exchange the admin has)")
    p.add_argument("--simulator", metavar="URL", help="base URL of an exchange simulator (rewrites every ccxt URL)")
    g = p.add_argument_group("liveness and restarts (seconds)")
    g.add_argument("--heartbeat-interval", type=seconds(), metavar="S", help="worker heartbeat period (default 5)")
    g.add_argument("--heartbeat-timeout", type=seconds(), metavar="S",
                   help="a worker whose heartbeat is older than this is hung (default 30)")
    g.add_argument("--boot-grace", type=seconds(zero_ok=True), metavar="S",
                   help="no worker is judged hung before this (default 60)")
    g.add_argument("--kill-grace", type=seconds(), metavar="S", help="SIGTERM to SIGKILL for a hung worker (default 5)")
    g.add_argument("--graceful-timeout", type=seconds(), metavar="S",
                   help="time the workers get to flush on stop before SIGKILL (default 10)")
    g.add_argument("--restart-budget", type=count(*COUNTS["restart_budget"]), metavar="N",
                   help="restarts per exchange per hour before it is parked FATAL (default 20)")
    g.add_argument("--backoff-initial", type=seconds(), metavar="S", help="second restart delay, doubling (default 1)")
    g.add_argument("--backoff-max", type=seconds(), metavar="S", help="restart delay cap (default 60)")
    g.add_argument("--backoff-reset", type=seconds(), metavar="S", default=30.0,
                   help="a worker up this long was healthy: its next restart is immediate (default 30)")
    g.add_argument("--start-method", choices=("fork", "spawn"), default="fork",
                   help="how workers are started (default fork; spawn exists for the benchmark)")
    m = p.add_argument_group("metrics (Prometheus)")
    m.add_argument("--metrics-port", type=count(0, 65535), metavar="PORT",
                   help="serve /metrics on this TCP port from a small child process (default: off; 0 = any free port)")
    m.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address /metrics listens on (default 127.0.0.1)")
    m.add_argument("--metrics-per-symbol", choices=("on", "off"), default="on",
                   help="export the per-symbol series (8 per symbol; default on)")
    add_feed_args(p)
    add_worker_args(p)
    add_common_args(p)
    return p


def parse_exchanges(raw: str | None) -> list[str] | None:
    """``kraken,binance`` -> ["kraken", "binance"]; None means every exchange the admin has."""
    if raw is None:
        return None
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if not _EXCHANGE_RE.match(name):
            raise ConfigError(f"--exchanges: {part.strip()!r} is not a ccxt exchange id")
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError("--exchanges: no exchange given")
    return names


def load_specs(settings: Settings, names: Sequence[str] | None) -> list[ExchangeSpec]:
    """Read the configuration in a short asyncio.run that closes every connection before returning."""
    from fullon_ohlcv_service.adapters.sql_config import open_config_source

    async def _load() -> list[ExchangeSpec]:
        async with open_config_source(settings) as source:
            return await source.load_exchanges(list(names) if names is not None else None)

    specs = asyncio.run(_load())
    if names is not None:  # keep the operator's order (titles, logs)
        order = {name: i for i, name in enumerate(names)}
        specs.sort(key=lambda s: order.get(s.name, len(order)))
    if not specs:
        raise ConfigError("no exchange configured for the admin; add one with: ohlcv-config add-exchange NAME")
    return specs


def reload_specs(settings: Settings, names: Sequence[str] | None) -> list[ExchangeSpec]:
    """``load_specs`` for a SIGHUP in the running master: every failure is a classified one-line error.

    A configuration database that is corrupt, not SQLite, unreadable or unreachable must not stop the
    master (it keeps its running configuration and reports the error). Errors the adapters already
    classify pass through; any other (sqlite3.DatabaseError for a corrupt file, an OSError ...) becomes
    ConfigError or StoreUnavailable naming the database without its password.
    """
    try:
        return load_specs(settings, names)
    except OhlcvError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; the master logs it and keeps running
        where = settings.config_db.redacted
        lines = str(exc).strip().splitlines()
        first = lines[0].strip() if lines else ""
        detail = _scrub(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, settings.config_db.url)
        if isinstance(exc, OSError):  # TimeoutError and ConnectionError included
            raise StoreUnavailable(f"configuration database {where} unavailable: {detail}") from None
        raise ConfigError(f"configuration database {where} cannot be read: {detail}") from None


def _scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url``, even one with unencoded ``/ ? # @`` (split by hand)."""
    rest = url.partition("://")[2]
    userinfo = rest.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    for secret in {password, unquote(password)}:
        if secret:
            text = text.replace(secret, "***")
    return text


def check_cache(settings: Settings) -> None:
    """Open an embedded (SQLite) process cache once: a file that is not a database stops the start (exit 78).

    An unreachable cache does not: the master rides out a cache outage and reports it.
    """
    if settings.cache.kind != "sqlite":
        return
    from fullon_ohlcv_service.adapters.sqlite_cache import SyncSqliteProcessCache

    cache = SyncSqliteProcessCache(settings.cache)
    try:
        cache.open()
    except StoreUnavailable:
        pass
    finally:
        cache.close()


PRELOAD = (
    "ccxt", "ccxt.pro", "uvloop", "aiohttp", "redis", "redis.asyncio", "asyncpg", "sqlite3",
    "fullon_ohlcv_service.adapters.stores", "fullon_ohlcv_service.adapters.sqlite_store",
    "fullon_ohlcv_service.adapters.postgres_store", "fullon_ohlcv_service.adapters.redis_cache",
    "fullon_ohlcv_service.adapters.sqlite_cache", "fullon_ohlcv_service.adapters.ccxt_exchange",
    "fullon_ohlcv_service.adapters.redis_feed", "fullon_ohlcv_service.worker.main",
)


def preload() -> None:
    """Import every heavy module BEFORE any fork: workers then start in milliseconds and share these
    pages copy-on-write. Importing opens no connection, loop or thread."""
    for name in PRELOAD:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = settings_from_args(ns, parser=parser)
    names = parse_exchanges(ns.exchanges)
    log.configure(settings.log_level, settings.log_format, file=settings.log_file)

    preload()
    import setproctitle

    from fullon_ohlcv_service.adapters.caches import open_sync_process_cache
    from fullon_ohlcv_service.adapters.ccxt_exchange import check_exchange_supported
    from fullon_ohlcv_service.supervisor.arbiter import Arbiter, ForkStarter, SpawnStarter, Starter
    from fullon_ohlcv_service.worker.main import run_worker

    specs = load_specs(settings, names)
    check_cache(settings)
    exporter = open_exporter(ns, settings)
    starter: Starter = (ForkStarter if ns.start_method == "fork" else SpawnStarter)(run_worker, settings)
    arbiter = Arbiter(
        specs,
        settings,
        starter=starter,
        cache=open_sync_process_cache(settings.cache),
        reload=lambda: reload_specs(settings, names),
        check_supported=check_exchange_supported,
        set_title=setproctitle.setproctitle,
        exporter=exporter,
    )
    return arbiter.run()


def open_exporter(ns: argparse.Namespace, settings: Settings) -> ExporterProcess | None:
    """Bind the /metrics socket now (a bad port is a one-line error before any fork); None when off."""
    if ns.metrics_port is None:
        return None
    if not 0 <= ns.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port: {ns.metrics_port} is not a TCP port (0-65535)")
    import functools

    from fullon_ohlcv_service.metrics.exporter import run_exporter
    from fullon_ohlcv_service.metrics.process import ExporterProcess, listen

    target = functools.partial(run_exporter, cache_url=settings.cache, per_symbol=ns.metrics_per_symbol == "on")
    return ExporterProcess(listen(ns.metrics_host, ns.metrics_port), target)
