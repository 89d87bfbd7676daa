"""The simulator server: one aiohttp app serving every exchange under its prefix, ground truth, faults and stats."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from fullon_ohlcv_service.adapters.ccxt_local import local_overrides
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.simulator.binance import Binance
from fullon_ohlcv_service.simulator.faults import POISON, validate_faults
from fullon_ohlcv_service.simulator.kraken import Kraken
from fullon_ohlcv_service.simulator.market import BUCKET_MS, Market, SymbolConfig, rate_problem
from fullon_ohlcv_service.simulator.tls import TlsFiles, write_certificates
from fullon_ohlcv_service.simulator.venue import Venue, json_response
from fullon_ohlcv_service.timeutil import now_ms

DAY_MS = 86_400_000
VENUES: dict[str, type[Venue]] = {"kraken": Kraken, "binance": Binance}
DEFAULT_SYMBOLS: dict[str, tuple[str, ...]] = {
    "kraken": ("BTC/USD", "ETH/USD", "SOL/USD"),
    "binance": ("BTC/USDT", "ETH/USDT", "SOL/USDT"),
}

SymbolsArg = Mapping[str, Sequence[str | SymbolConfig]]
HistoryStart = str | int  # "minute", "day", or an epoch-ms instant


def history_genesis(start_ms: int, history_days: float, history_start: HistoryStart = "minute") -> int:
    """The first millisecond of history: ``history_days`` before ``start_ms`` on a minute (``"minute"``), at the
    UTC midnight at or before that (``"day"``), or at a given epoch-ms instant (floored to its minute)."""
    if isinstance(history_start, int) and not isinstance(history_start, bool):
        if history_start > start_ms:
            raise ConfigError("history cannot start after the simulator starts")
        return history_start - history_start % BUCKET_MS
    genesis = start_ms - int(history_days * DAY_MS)
    if history_start == "day":
        return genesis - genesis % DAY_MS
    if history_start == "minute":
        return genesis - genesis % BUCKET_MS
    raise ConfigError(f"history start {history_start!r} is not 'minute', 'day' or an epoch-ms instant")


class ScaledClock:
    """Epoch-ms clock running ``speed`` times faster than wall time from now on (tests: minutes in seconds)."""

    def __init__(self, speed: float, start_ms: int | None = None) -> None:
        self.speed = speed
        self.start_ms = now_ms() if start_ms is None else start_ms
        self._mono0 = time.monotonic()

    def __call__(self) -> int:
        return self.start_ms + int((time.monotonic() - self._mono0) * 1000 * self.speed)


MAX_RATE = 1_000_000.0  # trades/s of one symbol: far above any benchmark, and finite


def parse_symbol_spec(text: str, default_rate: float) -> SymbolConfig:
    """``BTC/USD`` or ``BTC/USD@5`` (5 trades/s on average) -> SymbolConfig."""
    symbol, _, rate = text.strip().partition("@")
    if "/" not in symbol:
        raise ConfigError(f"symbol {symbol!r} must look like BASE/QUOTE")
    try:
        r = float(rate) if rate else default_rate
    except ValueError:
        raise ConfigError(f"rate in {text!r} is not a number") from None
    if not 0 <= r <= MAX_RATE:  # also refuses nan and inf
        raise ConfigError(f"rate in {text!r} must be a number from 0 to {MAX_RATE:g}")
    return SymbolConfig(symbol.upper(), rate=r)


class Simulator:
    """Kraken and Binance on loopback; use ``async with Simulator(seed=1) as sim`` then ``sim.url``.

    ``symbols`` maps exchange -> symbols (``"BTC/USD"``, ``"BTC/USD@20"`` or SymbolConfig); trades exist
    from ``history_days`` before start-up on.  ``burst=True`` streams future trades as fast as the socket
    takes them (benchmarks).  ``steady=True`` drops the quiet stretches and bursts, so every minute trades at
    the average rate (a test that counts the trades of a few live seconds).  ``clock`` (epoch ms) is
    injectable for tests.

    ``history_start`` aligns the start of history: ``"minute"`` (the default), ``"day"`` (the UTC midnight at
    or before ``history_days`` ago, for clients that work in whole days) or an epoch-ms instant.
    ``tls=True`` serves https:// and wss:// with a certificate from a CA made at start-up; its ``ca_file``
    (written to ``tls_dir``, else to a temporary directory removed at close) is what a client must trust.
    A symbol rate above what the market can emit (``market.max_rate``) is refused with a ConfigError.
    """

    def __init__(self, seed: int = 1, symbols: SymbolsArg | None = None, *, rate: float = 5.0,
                 history_days: float = 1.0, host: str = "127.0.0.1", port: int = 0,
                 exchanges: Sequence[str] | None = None, faults: Sequence[Mapping[str, Any]] = (),
                 burst: bool = False, steady: bool = False, tick_s: float = 0.05, ping_interval_s: float = 20.0,
                 clock: Callable[[], int] = now_ms, history_start: HistoryStart = "minute", tls: bool = False,
                 tls_dir: str | Path | None = None) -> None:
        names = list(exchanges or (symbols.keys() if symbols else VENUES.keys()))
        for name in names:
            if name not in VENUES:
                raise ConfigError(f"the simulator has no exchange {name!r} (it has: {', '.join(VENUES)})")
        self.seed = seed
        self.host = host
        self.port = port
        self.burst = burst
        self.steady = steady
        self.clock = clock
        self.history_days = history_days
        self.history_start = history_start
        history_genesis(clock(), history_days, history_start)  # a bad value fails here, not at start
        self.tls = tls
        self._tls_dir = Path(tls_dir) if tls_dir is not None else None
        self._tls_tmp: str | None = None
        self.tls_files: TlsFiles | None = None
        self._start_faults = [validate_faults(dict(f)) for f in faults]
        self._symbols: dict[str, list[SymbolConfig]] = {}
        for name in names:
            specs = (symbols or {}).get(name) or DEFAULT_SYMBOLS[name]
            self._symbols[name] = [s if isinstance(s, SymbolConfig) else parse_symbol_spec(s, rate) for s in specs]
            for config in self._symbols[name]:
                problem = rate_problem(f"{name} {config.symbol}", config.rate, steady)
                if problem:
                    raise ConfigError(problem)
        self._rate = rate
        self._tick_s = tick_s
        self._ping_interval_s = ping_interval_s
        self.venues: dict[str, Venue] = {}
        self.genesis_ms = 0
        self._runner: web.AppRunner | None = None
        self._url = ""
        self._overrides: dict[str, dict[str, Any]] = {}
        self.log = Log("fullon.simulator")

    # -- lifecycle -------------------------------------------------------------------------------------
    def _build(self) -> web.Application:
        start = self.clock()
        self.genesis_ms = history_genesis(start, self.history_days, self.history_start)
        for name, configs in self._symbols.items():
            markets = {c.symbol: Market(self.seed, name, c, genesis_ms=self.genesis_ms, steady=self.steady)
                       for c in configs}
            kwargs: dict[str, Any] = {"clock": self.clock, "burst": self.burst, "tick_s": self._tick_s}
            if name == "binance":
                kwargs["ping_interval_s"] = self._ping_interval_s
            self.venues[name] = VENUES[name](markets, **kwargs)
        app = web.Application()
        for venue in self.venues.values():
            venue.add_routes(app)
        app.router.add_get("/_sim/trades", self._h_trades)
        app.router.add_get("/_sim/candles", self._h_candles)
        app.router.add_get("/_sim/poison", self._h_poison)
        app.router.add_get("/_sim/stats", self._h_stats)
        app.router.add_get("/_sim/faults", self._h_stats)
        app.router.add_post("/_sim/faults", self._h_faults)
        app.router.add_get("/_sim/info", self._h_info)
        return app

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        app = self._build()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        ssl_context = None
        if self.tls:
            if self._tls_dir is None:
                self._tls_tmp = tempfile.mkdtemp(prefix="ohlcv-sim-tls-")
            self.tls_files = write_certificates(self._tls_dir or Path(str(self._tls_tmp)))
            ssl_context = self.tls_files.server_context()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self._runner = runner
        addresses = runner.addresses
        port = int(addresses[0][1]) if addresses else self.port
        self.port = port
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self._url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        for f in self._start_faults:
            self.set_faults(f)
        self.log.info("simulator listening", url=self._url, exchanges=",".join(self.venues), seed=self.seed)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for venue in self.venues.values():
            for s in list(venue.sessions):
                if not s.ws.closed:
                    with contextlib.suppress(ConnectionResetError, RuntimeError):
                        await asyncio.wait_for(s.ws.close(code=1001, message=b"simulator stopping"), 1.0)
        await runner.cleanup()
        if self._tls_tmp is not None:
            shutil.rmtree(self._tls_tmp, ignore_errors=True)
            self._tls_tmp = None

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the simulator is not started")
        return self._url

    def overrides(self, exchange: str) -> dict[str, Any]:
        """The ccxt constructor config fragment for ``exchange`` (see adapters.ccxt_local.local_overrides)."""
        if exchange not in self._overrides:
            self._overrides[exchange] = local_overrides(exchange, self.url)
            if self.ca_file is not None:
                self._overrides[exchange]["cafile"] = self.ca_file  # ccxt's REST and websocket trust it
        return self._overrides[exchange]

    @property
    def ca_file(self) -> str | None:
        """With ``tls``: the CA certificate (PEM) a client must trust; None without TLS."""
        return str(self.tls_files.ca_file) if self.tls_files is not None else None

    def startup_line(self) -> dict[str, Any]:
        line: dict[str, Any] = {"url": self.url, "exchanges": {name: self.overrides(name) for name in self.venues}}
        if self.ca_file is not None:
            line["ca_file"] = self.ca_file
        return line

    def symbols(self, exchange: str) -> list[str]:
        return list(self._venue(exchange).markets)

    # -- ground truth ----------------------------------------------------------------------------------
    def _venue(self, exchange: str) -> Venue:
        venue = self.venues.get(exchange)
        if venue is None:
            raise ConfigError(f"the simulator does not serve exchange {exchange!r}")
        return venue

    def market(self, exchange: str, symbol: str) -> Market:
        m = self._venue(exchange).markets.get(symbol)
        if m is None:
            raise ConfigError(f"the simulator has no symbol {symbol!r} on {exchange}")
        return m

    def now(self) -> int:
        return self.clock()

    def trades(self, exchange: str, symbol: str, since: int, until: int) -> list[dict[str, Any]]:
        """Ground truth: every trade with ``since <= ts < until`` that has happened (ts <= now)."""
        until = min(until, self.clock() + 1)
        return [t.truth() for t in self.market(exchange, symbol).iter_trades(since, until)]

    def poisoned(self, exchange: str, symbol: str, since: int, until: int) -> list[dict[str, Any]]:
        """Ground truth of the poison fault: the poisoned trades, then candles, served so far with a slot in
        ``[since, until)``; each with its kind and raw values (see simulator/poison.py)."""
        until = min(until, self.clock() + 1)
        venue = self._venue(exchange)
        return venue.book(self.market(exchange, symbol)).truth(since, until)

    def candles(self, exchange: str, symbol: str, since: int, until: int) -> list[list[float]]:
        """Ground truth: closed 1m candles opening in ``[since, until)`` as ``[ts, o, h, l, c, v]``."""
        now = self.clock()
        closed_until = now - now % BUCKET_MS  # the minute containing now is still forming
        return [c.row() for c in self.market(exchange, symbol).candles(since, min(until, closed_until))]

    # -- faults and stats ------------------------------------------------------------------------------
    def set_faults(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a fault request (see faults.FAULT_KEYS) to one exchange or all; returns the stats."""
        clean = validate_faults(dict(spec))
        exchange = clean.pop("exchange", None)
        targets = [self._venue(exchange)] if exchange else list(self.venues.values())
        for venue in targets:
            venue.faults.apply(clean)
            if clean.get("ws_drop"):
                venue.drop_all()
            if clean.get(POISON):
                venue.plant_poison(int(clean[POISON]))
        self.log.info("faults set", exchange=exchange or "*", **{k: v for k, v in clean.items()})
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {"url": self._url, "seed": self.seed, "now": self.clock(), "genesis_ms": self.genesis_ms,
                "ca_file": self.ca_file,
                "burst": self.burst, "steady": self.steady,
                "exchanges": {name: {**v.stats.snapshot(), "faults": v.faults.snapshot()}
                              for name, v in self.venues.items()}}

    # -- HTTP handlers ---------------------------------------------------------------------------------
    def _window(self, request: web.Request) -> tuple[str, str, int, int]:
        q = request.query
        try:
            exchange, symbol = q["exchange"], q["symbol"]
            since = int(q.get("since", "0"))
            until = int(q.get("until", str(self.clock() + 1)))
        except (KeyError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"exchange, symbol, since, until (ms) are required: {exc}") from None
        return exchange, symbol, since, until

    async def _h_trades(self, request: web.Request) -> web.Response:
        exchange, symbol, since, until = self._window(request)
        try:
            return json_response(self.trades(exchange, symbol, since, until))
        except ConfigError as exc:
            return json_response({"error": str(exc)}, status=404)

    async def _h_candles(self, request: web.Request) -> web.Response:
        exchange, symbol, since, until = self._window(request)
        try:
            return json_response(self.candles(exchange, symbol, since, until))
        except ConfigError as exc:
            return json_response({"error": str(exc)}, status=404)

    async def _h_poison(self, request: web.Request) -> web.Response:
        exchange, symbol, since, until = self._window(request)
        try:
            return json_response(self.poisoned(exchange, symbol, since, until))
        except ConfigError as exc:
            return json_response({"error": str(exc)}, status=404)

    async def _h_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats())

    async def _h_info(self, request: web.Request) -> web.Response:
        return json_response({**self.startup_line(), "symbols": {n: list(v.markets) for n, v in self.venues.items()}})

    async def _h_faults(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            return json_response(self.set_faults(spec))
        except ValueError:
            return json_response({"error": "body must be a JSON object"}, status=400)
        except ConfigError as exc:
            return json_response({"error": str(exc)}, status=400)
