"""The ccxt exchange adapter: every ccxt quirk lives here, behind ports.ExchangeClient.

One ``CcxtExchange`` per exchange holds a ``ccxt.async_support`` REST client and a ``ccxt.pro``
websocket client that share one set of markets, loaded once over REST by the first call that needs
them (``__aenter__`` does no network I/O, so an unreachable exchange is a TransientError of that
call, not a boot failure). It returns our models (Trade, Candle) only and raises only our errors
(``errors.py``, mapped by ``classify``) and ``CancelledError``. Construction raises
ExchangeUnsupported at once for an exchange ccxt lacks (``check_exchange_supported``).

Per-exchange parameters (``ExchangeSpec.params``, i.e. fullon's ``cat_exchanges_params``); unknown
names are ignored (other fullon services share that table), bad values raise ConfigError (the rules,
shared with ``ohlcv-config``, are in ``exchange_params.py``):

- ``enable_rate_limit``: ``true``/``false`` (default true in production, off against the simulator);
- ``rate_limit_ms``: ccxt's ``rateLimit``, milliseconds between request-cost units;
- ``timeout_ms``: ccxt's REST ``timeout``;
- ``base_url``: rewrite every REST and websocket URL of the exchange to this base (the simulator's
  rewrite, for a proxy or a mirror); the rate limiter stays on unless ``enable_rate_limit=false``.

Behaviour worth knowing (checked against ccxt 4.5.90's source). What differs between venues (page sizes,
the REST OHLC depth, pagination by time or id, the aggTrades window, ccxt options) is read from the venue's
capability table (``venues.py``); nothing here tests the exchange's name.

- Binance: one trade-id space on both sides, the aggregate id (``/api/v3/aggTrades`` for REST,
  ``@aggTrade`` streams for the websocket). ccxt asks aggTrades for ``[since, since + 1 h]``, so an
  hour without trades is an empty page: ``fetch_trades`` steps forward an hour at a time until it
  finds a trade after the ``since`` millisecond or reaches now. Only spot markets are loaded.
- Kraken: REST ``Trades`` is asked with a nanosecond cursor (``since * 1e6 - 1``), not ccxt's whole
  seconds, so a page starts exactly at ``since``. A page may end inside a millisecond whose other
  trades begin the next page: callers page with ``since = last ts`` and dedup by id.
- A full page whose every trade sits in the ``since`` millisecond is extended (Kraken's ``last``
  cursor, Binance's ``fromId``) so that a (ts, id) cursor always moves forward.
- Kraken answers an unknown pair with ``EQuery:Unknown asset pair``, which ccxt leaves a plain
  ExchangeError: it is mapped to SymbolUnknown like Binance's BadSymbol (-1121).
- ``watch_trades`` does not use the return value of ccxt's ``watch_trades_for_symbols``: with many
  symbols on one socket, ccxt returns only the first symbol's new trades and keeps the others
  for later (and drops them once its 1000-row cache wraps). Instead every trade ccxt parses is
  tapped into our own bounded queue, so each call returns every trade of every symbol received
  since the previous call, in arrival order. If that queue overflows (the caller stopped reading
  for a long time), the next call raises TransientError so the caller catches up over REST.
  Pass the same symbol list on every call (a new list is a new ccxt subscription).
- A websocket drop fails the pending watch with TransientError; a drop while no watch was pending
  (the caller was busy storing) is reported by the next call of each kind of watch, once, so the
  caller always knows to catch up. The call after that reconnects and resubscribes (ccxt).
- ``watch_ohlcv`` returns provisional candles only (``final=False``), the latest update of each minute:
  a final 1m candle is built from the trade stream or read over REST (docs/architecture.md §7, "Candles"),
  so the stream's own closing signals (Binance's kline ``x``, Kraken's next-minute update) are not used.
- Every trade and candle is validated here (``validation.py``) before it becomes a model, on REST and
  websocket alike. A refused row goes to the RejectSink given at construction and is never returned; it
  never fails its page or frame (see ``_ParseHooks`` for what ccxt does with bad values), and REST
  paging follows the exchange's cursor past it, so ``[]`` still means "nothing valid after ``since``".
- A frame ccxt cannot parse (invalid JSON, wrong types) would stop ccxt's receive loop until the
  keepalive times out. Frames are guarded: the error is counted (``malformed_frames``), pending
  watches fail with TransientError, the socket stays open, and the next watch call of each kind
  raises TransientError once, so the caller runs a REST catch-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fullon_ohlcv_service.errors import (
    ExchangeUnsupported,
    OhlcvError,
    PermanentError,
    RateLimited,
    SymbolUnknown,
    TransientError,
)
from fullon_ohlcv_service.exchange_params import parse_params
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.metrics.figures import RestCounters
from fullon_ohlcv_service.models import Candle, ExchangeSpec, Reject, Trade
from fullon_ohlcv_service.ports import RejectSink
from fullon_ohlcv_service.settings import redact_url
from fullon_ohlcv_service.timeutil import MINUTE_MS, now_ms
from fullon_ohlcv_service.validation import (
    MAX_AHEAD_MS,
    build_candle,
    build_trade,
    candle_reject,
    trade_reject,
)
from fullon_ohlcv_service.venues import Capabilities, Pagination, capabilities

MAX_PENDING_TRADES = 200_000  # live trades held between two watch_trades calls
_MAX_EXTEND = 20  # extra requests to leave a millisecond holding more than a page of trades
_REMOVED = {
    "bitmex": "bitmex was removed from ccxt in 4.5.84 (the venue closed on 2026-09-23)",
}
# exchange error texts that ccxt 4.5.90 leaves as a plain ExchangeError but that name an unknown symbol
_SYMBOL_ERRORS = ("EQuery:Unknown asset pair",)
_PARSE_ERROR = "ohlcv_parse_error"  # set on a row ccxt could not parse (our guard's stand-in)
# every row ccxt parses during one REST call of ours, in wire order (see _ParseHooks)
_TRADE_TAP: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("ohlcv_trade_tap",
                                                                                         default=None)
_OHLCV_TAP: contextvars.ContextVar[list[tuple[list[Any], Any, str | None]] | None] = contextvars.ContextVar(
    "ohlcv_candle_tap", default=None)


# --------------------------------------------------------------------------- errors


_URL_PASSWORD = re.compile(r"(://[^/\s:@]*):[^@/\s]*@")


def _one_line(text: str, limit: int = 300) -> str:
    """One line, at most ``limit`` characters, with any ``user:password@`` in a URL masked."""
    text = _URL_PASSWORD.sub(r"\1:***@", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(exc: BaseException) -> OhlcvError:
    """Map any exception raised by ccxt (or under it) to our error classes. Pure; never raises.

    RateLimited: ccxt DDoSProtection/RateLimitExceeded (HTTP 429/418). TransientError: other
    NetworkError (RequestTimeout, ExchangeNotAvailable, InvalidNonce, a dropped socket), network
    errors under ccxt, malformed data, and any other ccxt error (named by its class).
    SymbolUnknown: BadSymbol, and Kraken's ``EQuery:Unknown asset pair`` (a plain ExchangeError in
    ccxt). PermanentError: NotSupported, AuthenticationError (PermissionDenied),
    BadRequest, ArgumentsRequired. Our own errors pass through unchanged.
    """
    import ccxt  # already imported by whoever could raise a ccxt error

    if isinstance(exc, OhlcvError):
        return exc
    name = type(exc).__name__
    msg = _one_line(f"{name}: {exc}")
    if isinstance(exc, ccxt.BaseError):
        if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
            return RateLimited(msg)
        if isinstance(exc, ccxt.NetworkError):
            return TransientError(msg)
        if isinstance(exc, ccxt.BadSymbol) or (
            isinstance(exc, ccxt.ExchangeError) and any(text in str(exc) for text in _SYMBOL_ERRORS)
        ):
            return SymbolUnknown(msg)
        if isinstance(exc, ccxt.NotSupported | ccxt.AuthenticationError | ccxt.BadRequest | ccxt.ArgumentsRequired):
            return PermanentError(msg)
        return TransientError(msg)
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        return TransientError(msg)
    # aiohttp errors, and parse errors on data the exchange sent (KeyError, TypeError, ValueError...)
    return TransientError(f"unexpected {msg}")


# --------------------------------------------------------------------------- support check


def check_exchange_supported(name: str) -> None:
    """Raise ExchangeUnsupported (a ConfigError) unless ccxt has REST and websocket classes for ``name``.

    No I/O: it only looks at ccxt's lists of exchanges.
    """
    import ccxt
    import ccxt.pro

    if name in _REMOVED and name not in ccxt.exchanges:
        raise ExchangeUnsupported(f"exchange {name!r} is not supported: {_REMOVED[name]}")
    if name not in ccxt.exchanges:
        import difflib

        close = difflib.get_close_matches(name, ccxt.exchanges, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ExchangeUnsupported(
            f"exchange {name!r} is not supported: ccxt {ccxt.__version__} does not know it{hint}")
    if name not in ccxt.pro.exchanges:
        raise ExchangeUnsupported(
            f"exchange {name!r} is not supported: ccxt {ccxt.__version__} has no websocket (ccxt.pro) class for it"
        )


# --------------------------------------------------------------------------- configuration


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def exchange_options(name: str) -> dict[str, Any]:
    """The ccxt ``options`` this service needs for ``name`` (no URLs, no rate limits), from its capability table."""
    return capabilities(name).ccxt_options()


def build_config(name: str, params: Mapping[str, str], simulator: str | None) -> dict[str, Any]:
    """The ccxt constructor config for ``name``: our options, URL overrides and rate limiting.

    With ``simulator`` every URL points at it and the rate limiter is off. Otherwise the limiter is
    on and ``params`` (see the module docstring) apply. Raises ConfigError on a bad parameter.
    """
    config: dict[str, Any] = {"enableRateLimit": True, "options": exchange_options(name)}
    parsed = parse_params(params)  # validated even against the simulator: the rules are ohlcv-config's
    base_url = simulator if simulator is not None else parsed.base_url
    if base_url is not None:
        from fullon_ohlcv_service.adapters.ccxt_local import local_overrides

        config = _deep_merge(config, local_overrides(name, base_url.rstrip("/")))
    if simulator is not None:
        config["enableRateLimit"] = False
        return config
    config["enableRateLimit"] = True  # a base_url rewrite (local_overrides) turns it off: a real venue keeps it
    if parsed.enable_rate_limit is not None:
        config["enableRateLimit"] = parsed.enable_rate_limit
    if parsed.rate_limit_ms is not None:
        config["rateLimit"] = parsed.rate_limit_ms
    if parsed.timeout_ms is not None:
        config["timeout"] = parsed.timeout_ms
    return config


# --------------------------------------------------------------------------- conversions


def _wire_side_problem(info: Any) -> str | None:
    """A side ccxt would have guessed: Kraken's REST row maps anything but "s" to buy, Binance's ``m``
    (buyer is maker) must be a boolean."""
    if isinstance(info, list) and len(info) > 3 and isinstance(info[2], int | float | str):
        return None if info[3] in ("b", "s") else "side unknown"  # Kraken [price, volume, time, side, ...]
    if isinstance(info, dict) and "m" in info and ("a" in info or "t" in info):
        return None if isinstance(info["m"], bool) else "side unknown"  # Binance aggTrade / trade
    return None


def _trade_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"ts": raw.get("timestamp"), "id": raw.get("id"), "price": raw.get("price"),
            "amount": raw.get("amount"), "side": raw.get("side"), "type": raw.get("type"), "info": raw.get("info")}


def trade_or_reject(raw: Mapping[str, Any], now: int) -> Trade | Reject:
    """A ccxt trade dict -> Trade, or the Reject that says which rule (validation.py) it breaks."""
    error = raw.get(_PARSE_ERROR)
    if error:
        return trade_reject(_trade_values(raw), f"unparseable: {error}", now)
    got = build_trade(raw.get("timestamp"), raw.get("id"), raw.get("price"), raw.get("amount"), raw.get("side"),
                      raw.get("type"), now)
    if isinstance(got, str):
        return trade_reject(_trade_values(raw), got, now)
    # the side last, as validation checks it: one poisoned trade gets one reason on every path
    problem = _wire_side_problem(raw.get("info"))
    return got if problem is None else trade_reject(_trade_values(raw), problem, now)


def candle_or_reject(row: Sequence[Any], final: bool, now: int, wire: Any = None) -> Candle | Reject:
    """A ccxt OHLCV row -> Candle, or the Reject that says which rule (validation.py) it breaks."""
    cells = list(row[:6]) + [None] * (6 - len(row[:6]))
    values: dict[str, Any] = dict(zip(("ts", "open", "high", "low", "close", "volume"), cells, strict=True))
    if wire is not None:
        values["info"] = wire
    got = build_candle(cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], final, now)
    return got if isinstance(got, Candle) else candle_reject(values, got, now)


def to_trade(raw: Mapping[str, Any]) -> Trade:
    """A ccxt trade dict -> Trade. Raises ValueError naming the rule a bad trade breaks."""
    got = trade_or_reject(raw, now_ms())
    if isinstance(got, Reject):
        raise ValueError(f"trade {got.ref!r} refused: {got.reason}")
    return got


def to_candle(row: Sequence[Any], now: int) -> Candle:
    """A ccxt OHLCV row -> Candle, provisional while its minute has not closed at ``now``.

    Raises ValueError naming the rule a bad row breaks (checked against the wall clock).
    """
    ts = row[0] if row else None
    final = isinstance(ts, int) and ts + MINUTE_MS <= now
    got = candle_or_reject(row, final, now_ms())
    if isinstance(got, Reject):
        raise ValueError(f"candle {got.ref!r} refused: {got.reason}")
    return got


def _id_key(tid: str) -> tuple[int, int | str]:
    return (0, int(tid)) if _numeric(tid) else (1, tid)


def _numeric(tid: str) -> bool:
    return tid.isascii() and tid.isdigit()


def sort_trades(trades: list[Trade]) -> list[Trade]:
    """Sort by (ts, numeric id); ids that are not numbers sort after numbers in the same ms."""
    trades.sort(key=lambda t: (t.ts, _id_key(t.id)))
    return trades


def page_cursor(pagination: Pagination, raw: Sequence[Mapping[str, Any]]) -> str | int | None:
    """The exchange's own cursor past every row of a non-empty REST trade page, refused rows included.

    ``"id"``: the highest numeric trade id + 1 (Binance's ``fromId``). ``"time"``: the time cursor the exchange
    returned with the page, which ccxt appends to the last row's raw list (Kraken's ``last``, in ns).
    """
    if pagination == "id":
        ids = [int(r["id"]) for r in raw if isinstance(r.get("id"), str) and _numeric(r["id"])]
        return max(ids) + 1 if ids else None
    info = raw[-1].get("info")
    cursor = info[-1] if isinstance(info, list) and len(info) > 7 else None
    return None if cursor is None else str(cursor)


# --------------------------------------------------------------------------- ccxt.pro hooks


def _tap_cache(limit: int, sink: Callable[[dict[str, Any]], None]) -> Any:
    """A ccxt ArrayCache that also hands every trade ccxt appends to ``sink``."""
    from ccxt.async_support.base.ws.cache import ArrayCache

    class TapCache(ArrayCache):  # type: ignore[misc]
        ohlcv_tap = True

        def append(self, item: dict[str, Any]) -> None:
            super().append(item)
            sink(item)

    return TapCache(limit)


class _ParseHooks:
    """Mixed into both ccxt classes: one bad row never fails a whole page or frame, and REST rows are tapped.

    - ccxt's cost arithmetic (``Precise``) raises on ``"nan"``/``"inf"`` text, which failed the whole
      page (or frame) of an otherwise good response: the row keeps its parsed values, without a cost,
      and validation refuses it.
    - Any other exception parsing one trade or candle yields a stand-in row marked ``_PARSE_ERROR``,
      which is refused as unparseable.
    - Inside a REST call of ours, every parsed row is also appended to the call's tap (a context
      variable, so concurrent calls do not mix): ccxt silently drops rows with a missing or early
      timestamp from what it returns, and those must be refused and counted, not lost, and a page
      must be judged full by what the exchange sent.
    """

    def safe_trade(self, trade: dict[str, Any], market: Any = None) -> Any:
        try:
            return super().safe_trade(trade, market)  # type: ignore[misc]
        except (ValueError, ArithmeticError, TypeError):
            trade["fee"], trade["fees"], trade["cost"] = {"cost": None, "currency": None}, [], None
            trade["amount"] = self.parse_number(trade.get("amount"))  # type: ignore[attr-defined]
            trade["price"] = self.parse_number(trade.get("price"))  # type: ignore[attr-defined]
            return trade

    def parse_trade(self, trade: Any, market: Any = None) -> Any:
        try:
            parsed = super().parse_trade(trade, market)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - one row: refused as unparseable, the page goes on
            parsed = {
                "info": trade, "symbol": market.get("symbol") if isinstance(market, dict) else None,
                "id": None, "order": None, "timestamp": None, "datetime": None, "type": None, "side": None,
                "takerOrMaker": None, "price": None, "amount": None, "cost": None, "fee": None, "fees": [],
                _PARSE_ERROR: _one_line(f"{type(exc).__name__}: {exc}", 200),
            }
        tap = _TRADE_TAP.get()
        if tap is not None:
            tap.append(parsed)
        return parsed

    def parse_ohlcv(self, ohlcv: Any, market: Any = None) -> Any:
        error: str | None = None
        try:
            parsed = super().parse_ohlcv(ohlcv, market)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - one row: refused as unparseable, the page goes on
            parsed, error = [None] * 6, _one_line(f"{type(exc).__name__}: {exc}", 200)
        tap = _OHLCV_TAP.get()
        if tap is not None:
            tap.append((parsed, ohlcv, error))
        return parsed


class _ProHooks(_ParseHooks):
    """Mixed into the ccxt.pro class: guards frame parsing and reports disconnects."""

    ohlcv_frame_error: Callable[[Any, BaseException], None] | None = None
    ohlcv_disconnect: Callable[[Any], None] | None = None

    def client(self, url: str) -> Any:
        client = super().client(url)  # type: ignore[misc]
        if not getattr(client, "ohlcv_guarded", False):
            inner = client.handle_text_or_binary_message
            owner = self

            def guarded(data: Any) -> None:
                try:
                    inner(data)
                except Exception as exc:  # a bad frame must not stop ccxt's receive loop
                    hook = owner.ohlcv_frame_error
                    if hook is None:
                        raise
                    hook(client, exc)

            client.handle_text_or_binary_message = guarded
            client.ohlcv_guarded = True
        return client

    def on_error(self, client: Any, error: Any) -> None:
        super().on_error(client, error)  # type: ignore[misc]
        if self.ohlcv_disconnect is not None:
            self.ohlcv_disconnect(error)

    def on_close(self, client: Any, error: Any) -> None:
        super().on_close(client, error)  # type: ignore[misc]
        if self.ohlcv_disconnect is not None:
            self.ohlcv_disconnect(error)


# the HTTP status of the request in flight in this task (ccxt's on_rest_response sees it, fetch's caller does not)
_HTTP_STATUS: contextvars.ContextVar[list[int]] = contextvars.ContextVar("ohlcv_http_status")
_RATE_LIMIT_WAIT_S = 0.001  # a throttle shorter than this is not a wait


def rest_outcome(status: int | None, exc: BaseException | None) -> str:
    """One REST request's outcome label: ok, rate_limited (429/418), 5xx, or error (anything else)."""
    import ccxt

    if exc is None:
        return "ok"
    if status in (418, 429) or isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
        return "rate_limited"
    if status is not None and 500 <= status <= 599:
        return "5xx"
    return "error"


class _RestHooks:
    """Mixed into the ccxt REST class: counts every HTTP request by outcome and the rate limiter's waits."""

    ohlcv_counters: RestCounters | None = None

    async def fetch(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        counters = self.ohlcv_counters
        if counters is None:
            return await super().fetch(url, method, headers, body)  # type: ignore[misc]
        holder: list[int] = []
        token = _HTTP_STATUS.set(holder)
        try:
            result = await super().fetch(url, method, headers, body)  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            counters.count(rest_outcome(holder[-1] if holder else None, exc))
            raise
        finally:
            _HTTP_STATUS.reset(token)
        counters.count("ok")
        return result

    def on_rest_response(self, code: Any, reason: Any, url: Any, method: Any, response_headers: Any,
                         response_body: Any, request_headers: Any, request_body: Any) -> Any:
        holder = _HTTP_STATUS.get(None)
        if holder is not None and isinstance(code, int):
            holder.append(code)
        return super().on_rest_response(  # type: ignore[misc]
            code, reason, url, method, response_headers, response_body, request_headers, request_body)

    async def throttle(self, cost: Any = None) -> Any:
        t0 = time.monotonic()
        result = await super().throttle(cost)  # type: ignore[misc]
        waited = time.monotonic() - t0
        if waited >= _RATE_LIMIT_WAIT_S and self.ohlcv_counters is not None:
            self.ohlcv_counters.waited(waited)
        return result


def _pro_class(name: str) -> Any:
    import ccxt.pro

    base = getattr(ccxt.pro, name)
    return type(f"{name}_ohlcv", (_ProHooks, base), {})


def _rest_class(name: str) -> Any:
    import ccxt.async_support as ccxt_async

    base = getattr(ccxt_async, name)
    return type(f"{name}_ohlcv_rest", (_RestHooks, _ParseHooks, base), {})


# --------------------------------------------------------------------------- the adapter


class CcxtExchange:
    """ports.ExchangeClient over ccxt: ``async with CcxtExchange(spec, simulator=url) as ex: ...``."""

    def __init__(self, spec: ExchangeSpec, simulator: str | None = None, rejects: RejectSink | None = None,
                 pending_max: int = MAX_PENDING_TRADES) -> None:
        check_exchange_supported(spec.name)
        self.spec = spec
        self.name = spec.name
        self.venue: Capabilities = capabilities(spec.name)  # what this exchange serves and allows (venues.py)
        self.ohlcv_depth: int | None = self.venue.ohlcv_depth
        self.simulator = simulator
        self.config = build_config(spec.name, spec.params, simulator)
        self.malformed_frames = 0
        self.rest_counters = RestCounters()  # REST requests by outcome, rate-limit waits (for /metrics)
        self.disconnects = 0  # websocket errors and closes seen (each means live data may be missing)
        self.rejects = rejects  # where refused rows go (the worker's reject book)
        self.rejected = 0  # rows refused by validation (REST and websocket)
        self.log = Log("fullon.adapters.ccxt", exchange=spec.name)
        self._rest: Any = None
        self._pro: Any = None
        self._markets: set[str] | None = None
        self._markets_lock = asyncio.Lock()
        self._pending: collections.deque[tuple[str, Trade]] = collections.deque()
        self.pending_max = pending_max  # live trades held between two watch_trades calls (memory bound)
        self._overflowed = 0
        self._watched: frozenset[str] = frozenset()
        self._frame_seen: dict[str, int] = {}
        self._told: set[str] = set()  # kinds of watch told of an interruption and not called since
        self._closing = False

    # ---- lifecycle

    async def __aenter__(self) -> CcxtExchange:
        try:
            self._rest = _rest_class(self.name)(_deep_merge({}, self.config))
            self._rest.ohlcv_counters = self.rest_counters
            self._pro = _pro_class(self.name)(_deep_merge({}, self.config))
        except Exception as exc:
            await self.close()
            raise ExchangeUnsupported(f"exchange {self.name!r} cannot be set up: {classify(exc)}") from exc
        self._pro.ohlcv_frame_error = self._on_frame_error
        self._pro.ohlcv_disconnect = self._on_disconnect
        self.log.debug("ccxt clients created", simulator=redact_url(self.simulator or ""),
                       rate_limit=self.config.get("enableRateLimit"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the websocket client, then the REST client. Safe to call twice."""
        pro, rest = self._pro, self._rest
        self._pro = self._rest = None
        self._closing = True
        for client in (pro, rest):
            if client is None:
                continue
            try:
                await client.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - closing must go on to the next client
                self.log.warning("closing ccxt client failed", error=classify(exc))

    def _clients(self) -> tuple[Any, Any]:
        if self._rest is None or self._pro is None:
            raise PermanentError(f"{self.name}: exchange client is not open (use 'async with')")
        return self._rest, self._pro

    # ---- markets

    async def load_markets(self) -> set[str]:
        """Load markets once over REST, share them with the websocket client; unified symbols."""
        if self._markets is not None:
            return set(self._markets)
        rest, pro = self._clients()
        async with self._markets_lock:
            if self._markets is None:
                try:
                    await rest.load_markets()
                    pro.set_markets_from_exchange(rest)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise classify(exc) from exc
                self._markets = set(rest.symbols or ())
                self.log.info("markets loaded", markets=len(self._markets))
        return set(self._markets)

    async def _market(self, symbol: str) -> None:
        if self._markets is None:
            await self.load_markets()
        if symbol not in (self._markets or ()):
            raise SymbolUnknown(f"{self.name} does not list symbol {symbol!r}")

    # ---- REST

    async def fetch_trades(self, symbol: str, since: int, limit: int | None = None) -> list[Trade]:
        """One page of trades at or after ``since`` (ms, inclusive), sorted by (ts, id).

        ``[]`` only when no valid trade exists between ``since`` and now: a page whose every row was
        refused is followed by the next one (the exchange's own cursor moves past refused rows).
        """
        await self._market(symbol)
        limit = limit or self.venue.trade_limit
        try:
            page, raw = await self._first_trades(symbol, since, limit)
            page = await self._follow_cursor(symbol, since, limit, raw, page)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        return page

    async def _rest_trades(self, symbol: str, since: int | None, limit: int | None,
                           params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every trade row of one REST response as ccxt parsed it, in wire order (see _ParseHooks)."""
        rest, _ = self._clients()
        tap: list[dict[str, Any]] = []
        token = _TRADE_TAP.set(tap)
        try:
            await rest.fetch_trades(symbol, since, limit, params)
        except Exception as exc:
            if not tap:
                raise
            self.log.debug("ccxt failed on a parsed trade page; judging its rows one by one", symbol=symbol,
                           error=f"{type(exc).__name__}: {exc}")
            # ccxt parsed the rows, then failed on them as a whole (a row without a timestamp breaks its
            # sort): the rows are judged one by one here instead
        finally:
            _TRADE_TAP.reset(token)
        return tap

    def _take_trades(self, symbol: str, raw: list[dict[str, Any]], since: int) -> list[Trade]:
        """The valid trades of ``raw`` at or after ``since``, sorted; the invalid ones go to the reject sink."""
        now = now_ms()
        page: list[Trade] = []
        refused: list[Reject] = []
        for row in raw:
            got = trade_or_reject(row, now)
            if isinstance(got, Reject):
                refused.append(got)
            elif got.ts >= since:
                page.append(got)
        self._reject(symbol, refused)
        return sort_trades(page)

    async def _first_trades(self, symbol: str, since: int,
                            limit: int | None) -> tuple[list[Trade], list[dict[str, Any]]]:
        """The first page from ``since`` (valid trades, and the rows of its last response).

        Where a time query covers a bounded window (Binance aggTrades, ``[start, start + 1 h]``), an hour
        without trades is an empty page: step to the next window while one held everything it had (not a full
        page) and nothing after the ``since`` millisecond, until now; otherwise a (ts, id) cursor could not move
        on. A nanosecond ``since`` (Kraken) makes the page start exactly at ``since``, not at its whole second.
        """
        venue = self.venue
        full = limit or venue.trade_page_default
        start, page = since, list[Trade]()
        while True:
            params: dict[str, Any] = {}
            if venue.trade_since_ns:
                params["since"] = str(start * 1_000_000 - 1)
            raw = await self._rest_trades(symbol, start, limit, params)
            page = self._merge(page, self._take_trades(symbol, raw, since))
            window = venue.trade_window_ms
            if window is None or len(raw) >= full or (page and page[-1].ts > since) or start + window >= now_ms():
                return page, raw
            start += window + 1

    async def _follow_cursor(self, symbol: str, since: int, limit: int | None, raw: list[dict[str, Any]],
                             page: list[Trade]) -> list[Trade]:
        """After a full page with no valid trade after the ``since`` ms (all in that ms, or refused), follow the
        exchange's own cursor (``page_cursor``), which is past every row the page held, refused ones included."""
        venue = self.venue
        if venue.trade_cursor_arg is None:
            return page
        full = limit or venue.trade_page_default
        for _ in range(_MAX_EXTEND):
            if len(raw) < full or (page and page[-1].ts > since):
                break
            cursor = page_cursor(venue.trade_pagination, raw)
            if cursor is None:
                break
            # an id cursor is asked alone: a time bound with it would narrow it again (Binance's window)
            raw = await self._rest_trades(symbol, since if venue.trade_pagination == "time" else None, limit,
                                          {venue.trade_cursor_arg: cursor})
            if not raw:
                break
            page = self._merge(page, self._take_trades(symbol, raw, since))
        return page

    @staticmethod
    def _merge(page: list[Trade], more: list[Trade]) -> list[Trade]:
        seen = {t.id for t in page}
        return sort_trades(page + [t for t in more if t.id not in seen])

    async def fetch_ohlcv(self, symbol: str, since: int, limit: int | None = None) -> list[Candle]:
        """One page of 1m candles from ``since``; a minute not yet closed comes back ``final=False``.

        ``[]`` only when no valid candle exists from ``since`` on: a page whose every row was refused
        is followed by the next one.
        """
        await self._market(symbol)
        limit = limit or self.venue.candle_limit
        start = since
        candles: list[Candle] = []
        try:
            for _ in range(_MAX_EXTEND):
                raw = await self._rest_ohlcv(symbol, start, limit)
                candles, reached = self._take_candles(symbol, raw, since)
                if candles or reached is None or reached < start:
                    break
                start = reached + MINUTE_MS  # every row was refused: ask again past the last one
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        return candles

    async def _rest_ohlcv(self, symbol: str, since: int, limit: int | None) -> list[tuple[list[Any], Any, str | None]]:
        """Every candle row of one REST response: (as ccxt parsed it, as the exchange sent it, parse error)."""
        rest, _ = self._clients()
        tap: list[tuple[list[Any], Any, str | None]] = []
        token = _OHLCV_TAP.set(tap)
        try:
            await rest.fetch_ohlcv(symbol, "1m", since, limit)
        except Exception as exc:
            if not tap:
                raise
            self.log.debug("ccxt failed on a parsed candle page; judging its rows one by one", symbol=symbol,
                           error=f"{type(exc).__name__}: {exc}")
            # parsed, then failed as a whole (see _rest_trades): the rows are judged one by one here
        finally:
            _OHLCV_TAP.reset(token)
        return tap

    def _take_candles(self, symbol: str, raw: list[tuple[list[Any], Any, str | None]],
                      since: int) -> tuple[list[Candle], int | None]:
        """The valid candles of ``raw`` from ``since``, sorted (the invalid ones go to the reject sink), and
        the newest plausible minute the page held (refused rows included)."""
        now = now_ms()
        candles: list[Candle] = []
        refused: list[Reject] = []
        reached: int | None = None
        for parsed, wire, error in raw:
            ts = parsed[0] if isinstance(parsed, list) and parsed else None
            if isinstance(ts, int) and not isinstance(ts, bool) and ts <= now + MAX_AHEAD_MS:
                reached = ts if reached is None else max(reached, ts)
            if error:
                values = {"info": wire, "ts": ts}
                refused.append(candle_reject(values, f"unparseable: {error}", now))
                continue
            final = isinstance(ts, int) and ts + MINUTE_MS <= now
            got = candle_or_reject(parsed, final, now, wire)
            if isinstance(got, Reject):
                refused.append(got)
            elif got.ts >= since:
                candles.append(got)
        self._reject(symbol, refused)
        candles.sort(key=lambda c: c.ts)
        return candles, reached

    def _reject(self, symbol: str, refused: Sequence[Reject]) -> None:
        if not refused:
            return
        self.rejected += len(refused)
        if self.rejects is not None:
            self.rejects.reject(symbol, refused)
        elif self.rejected <= 5 or self.rejected % 100 == 0:
            first = refused[0]
            self.log.warning("row refused", symbol=symbol, kind=first.kind, ref=first.ref, reason=first.reason,
                             raw=first.raw, rejected=self.rejected)

    # ---- websocket

    def _bad_data(self, exc: BaseException) -> None:
        self.malformed_frames += 1
        if self.malformed_frames <= 5 or self.malformed_frames % 100 == 0:
            self.log.warning("malformed frame from exchange", error=_one_line(f"{type(exc).__name__}: {exc}"),
                             malformed_frames=self.malformed_frames)

    def _on_frame_error(self, client: Any, exc: BaseException) -> None:
        import ccxt

        self._bad_data(exc)
        client.reject(ccxt.BadResponse(f"malformed frame from {self.name}: {_one_line(str(exc), 120)}"))

    def _on_disconnect(self, error: Any) -> None:
        if self._closing:
            return
        self.disconnects += 1
        self.log.info("websocket disconnected", error=_one_line(str(error), 200), disconnects=self.disconnects)

    def _events(self) -> int:
        return self.malformed_frames + self.disconnects

    def _check_events(self, kind: str) -> None:
        """Raise TransientError once per kind of watch after malformed frames or disconnects it has not
        been told about (they may have happened while nobody was awaiting a watch).

        Events that arrive after a kind was told and before its next call belong to that same
        interruption (one drop closes every socket of the exchange, and their close events trickle
        in): no connection of that kind is open until this call subscribes again, so they are
        absorbed instead of being reported as a second interruption (one drop, one reconnect).
        """
        if kind in self._told:
            self._told.discard(kind)
            self._frame_seen[kind] = self._events()
            return
        seen = self._frame_seen.setdefault(kind, self._events())  # a new watcher starts from now
        if self._events() > seen:
            self._frame_seen[kind] = self._events()
            self._told.add(kind)
            raise TransientError(
                f"{self.name}: live stream interrupted ({self.malformed_frames} malformed frame(s), "
                f"{self.disconnects} disconnect(s) so far)"
            )

    def _sink(self, symbol: str) -> Callable[[dict[str, Any]], None]:
        pending = self._pending

        def sink(raw: dict[str, Any]) -> None:
            if len(pending) >= self.pending_max:
                self._overflowed += 1
                return
            got = trade_or_reject(raw, now_ms())
            if isinstance(got, Reject):
                self._reject(symbol, [got])  # refused, not missing: no catch-up is needed for it
                return
            pending.append((symbol, got))

        return sink

    @property
    def pending_trades(self) -> int:
        """Live trades received and not yet returned by ``watch_trades`` (counted in the worker's memory)."""
        return len(self._pending)

    def _tap(self, symbols: Sequence[str]) -> None:
        _, pro = self._clients()
        limit = int(pro.safe_integer(pro.options, "tradesLimit", 1000))
        for symbol in symbols:  # (re)install where ccxt has none or replaced ours (unsubscribe, clean-up)
            if not getattr(pro.trades.get(symbol), "ohlcv_tap", False):
                pro.trades[symbol] = _tap_cache(limit, self._sink(symbol))

    async def watch_trades(self, symbols: Sequence[str]) -> list[tuple[str, Trade]]:
        """Every live trade of ``symbols`` received since the previous call, as (symbol, trade).

        Waits for the next trade when none is buffered. Raises TransientError on a dropped socket,
        malformed frames or a buffer overflow; the next call reconnects and resubscribes.
        """
        wanted = frozenset(symbols)
        if not wanted:
            raise PermanentError("watch_trades needs at least one symbol")
        for symbol in sorted(wanted):
            await self._market(symbol)
        if self._overflowed:
            dropped, self._overflowed = self._overflowed, 0
            self._pending.clear()
            raise TransientError(f"{self.name}: live trade buffer overflowed, {dropped} trade(s) dropped")
        self._check_events("trades")
        if not self._pending or wanted != self._watched:
            _, pro = self._clients()
            self._tap(sorted(wanted))
            try:
                await pro.watch_trades_for_symbols(sorted(wanted))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._frame_seen["trades"] = self._events()
                self._told.add("trades")
                raise classify(exc) from exc
            self._watched = wanted
        out = list(self._pending)
        self._pending.clear()
        return [(s, t) for s, t in out if s in wanted]

    async def watch_ohlcv(self, symbol: str) -> list[Candle]:
        """The next live 1m candle updates for ``symbol``, oldest first: the latest update of each minute,
        always provisional (``final=False``; a final candle comes from trades or REST, never from the stream).
        """
        await self._market(symbol)
        _, pro = self._clients()
        kind = f"ohlcv:{symbol}"
        self._check_events(kind)
        try:
            rows = await pro.watch_ohlcv(symbol, "1m")
            latest: dict[int, Candle] = {}  # one version per minute: the last
            refused: list[Any] = []
            for row in rows:
                candle = self._live_candle(symbol, row)
                if candle is None:
                    refused.append(row)
                else:
                    latest[candle.ts] = candle
            if refused:
                self._evict_candles(symbol, refused)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._frame_seen[kind] = self._events()
            self._told.add(kind)
            raise classify(exc) from exc
        return [latest[ts] for ts in sorted(latest)]

    def _evict_candles(self, symbol: str, rows: list[Any]) -> None:
        """Drop refused rows from ccxt's candle cache. A row with no usable time stays last in that cache
        and ccxt would hand it back, alone, on every update until the next minute starts."""
        cache = ((getattr(self._pro, "ohlcvs", None) or {}).get(symbol) or {}).get("1m")
        queue, index = getattr(cache, "_deque", None), getattr(cache, "hashmap", None)
        if not isinstance(queue, collections.deque) or not isinstance(index, dict):
            return
        for row in rows:
            for i, kept in enumerate(queue):
                if kept is row:
                    del queue[i]
                    break
            key = row[0] if isinstance(row, list) and row else None
            if index.get(key) is row:
                del index[key]

    def _live_candle(self, symbol: str, row: Sequence[Any]) -> Candle | None:
        """A live row -> a provisional Candle, or None when it is refused (it went to the reject sink)."""
        candle = candle_or_reject(row, False, now_ms())
        if isinstance(candle, Reject):
            self._reject(symbol, [candle])
            return None
        return candle
