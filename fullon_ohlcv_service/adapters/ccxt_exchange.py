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

Behaviour worth knowing (checked against ccxt 4.5.90's source):

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
- ``watch_ohlcv`` finality: Binance's kline ``x`` flag is captured from the raw frame (ccxt drops
  it); on both exchanges a candle is also final once an update for a later minute arrives (Kraken
  has no closed flag). The previous minute is then re-emitted with ``final=True``. A candle seen
  before a websocket error is never finalised from the stream (it may have missed updates).
- A frame ccxt cannot parse (invalid JSON, wrong types) would stop ccxt's receive loop until the
  keepalive times out. Frames are guarded: the error is counted (``malformed_frames``), pending
  watches fail with TransientError, the socket stays open, and the next watch call of each kind
  raises TransientError once, so the caller runs a REST catch-up.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
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
from fullon_ohlcv_service.models import Candle, ExchangeSpec, Side, Trade
from fullon_ohlcv_service.settings import redact_url
from fullon_ohlcv_service.timeutil import MINUTE_MS, now_ms

HOUR_MS = 3_600_000
OHLCV_DEPTH = {"kraken": 720}  # 1m bars the REST OHLC endpoint serves at most; absent = deep
DEFAULT_PAGE = {"binance": 1000}  # ask for the maximum where ccxt's default is smaller
KRAKEN_PAGE = 1000  # Kraken's Trades page size when no count is given
MAX_PENDING_TRADES = 200_000  # live trades held between two watch_trades calls
_MAX_EXTEND = 20  # extra requests to leave a millisecond holding more than a page of trades
_REMOVED = {
    "bitmex": "bitmex was removed from ccxt in 4.5.84 (the venue closed on 2026-09-23)",
}
# exchange error texts that ccxt 4.5.90 leaves as a plain ExchangeError but that name an unknown symbol
_SYMBOL_ERRORS = ("EQuery:Unknown asset pair",)


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
    """The ccxt ``options`` this service needs for ``name`` (no URLs, no rate limits)."""
    if name == "binance":
        return {
            "fetchMarkets": {"types": ["spot"]},
            "fetchCurrencies": False,
            "fetchMargins": False,
            "watchTrades": {"name": "aggTrade"},
            "watchTradesForSymbols": {"name": "aggTrade"},
        }
    return {}


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
    if parsed.enable_rate_limit is not None:
        config["enableRateLimit"] = parsed.enable_rate_limit
    if parsed.rate_limit_ms is not None:
        config["rateLimit"] = parsed.rate_limit_ms
    if parsed.timeout_ms is not None:
        config["timeout"] = parsed.timeout_ms
    return config


# --------------------------------------------------------------------------- conversions


def to_trade(raw: Mapping[str, Any]) -> Trade:
    """A ccxt trade dict -> Trade. Raises ValueError on a trade with missing or bad fields."""
    ts, tid, price, amount, side = raw.get("timestamp"), raw.get("id"), raw.get("price"), raw.get("amount"), raw.get(
        "side"
    )
    if ts is None or tid is None or tid == "" or price is None or amount is None:
        raise ValueError(f"incomplete trade: ts={ts!r} id={tid!r} price={price!r} amount={amount!r}")
    if side not in ("buy", "sell"):
        raise ValueError(f"trade {tid!r} has side {side!r}")
    s: Side = "buy" if side == "buy" else "sell"
    kind = raw.get("type")
    return Trade(int(ts), str(tid), float(price), float(amount), s, kind if isinstance(kind, str) else "")


def to_candle(row: Sequence[Any], now: int) -> Candle:
    """A ccxt OHLCV row -> Candle, provisional while its minute has not closed at ``now``."""
    if len(row) < 6 or any(v is None for v in row[:6]):
        raise ValueError(f"incomplete candle row {list(row)[:6]!r}")
    ts = int(row[0])
    return Candle(ts, float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]),
                  final=ts + MINUTE_MS <= now)


def _id_key(tid: str) -> tuple[int, int | str]:
    return (0, int(tid)) if tid.isdigit() else (1, tid)


def sort_trades(trades: list[Trade]) -> list[Trade]:
    """Sort by (ts, numeric id); ids that are not numbers sort after numbers in the same ms."""
    trades.sort(key=lambda t: (t.ts, _id_key(t.id)))
    return trades


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


class _ProHooks:
    """Mixed into the ccxt.pro class: guards frame parsing and keeps Binance's kline ``x`` flag."""

    ohlcv_frame_error: Callable[[Any, BaseException], None] | None = None
    ohlcv_disconnect: Callable[[Any], None] | None = None
    kline_closed: dict[str, dict[int, bool]] | None = None

    def client(self, url: str) -> Any:
        client = super().client(url)  # type: ignore[misc]
        if not getattr(client, "_ohlcv_guarded", False):
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
            client._ohlcv_guarded = True
        return client

    def on_error(self, client: Any, error: Any) -> None:
        super().on_error(client, error)  # type: ignore[misc]
        if self.ohlcv_disconnect is not None:
            self.ohlcv_disconnect(error)

    def on_close(self, client: Any, error: Any) -> None:
        super().on_close(client, error)  # type: ignore[misc]
        if self.ohlcv_disconnect is not None:
            self.ohlcv_disconnect(error)

    def handle_ohlcv(self, client: Any, message: Any) -> None:
        super().handle_ohlcv(client, message)  # type: ignore[misc]
        kline = message.get("k") if isinstance(message, dict) else None
        if self.kline_closed is None or not isinstance(kline, dict) or "x" not in kline:
            return
        symbol = self.safe_symbol(kline.get("s"), None, None, "spot")  # type: ignore[attr-defined]
        if symbol is None or kline.get("t") is None:
            return
        flags = self.kline_closed.setdefault(symbol, {})
        flags[int(kline["t"])] = bool(kline["x"])
        if len(flags) > 16:  # keep the last few minutes only
            for ts in sorted(flags)[:-8]:
                del flags[ts]


def _pro_class(name: str) -> Any:
    import ccxt.pro

    base = getattr(ccxt.pro, name)
    return type(f"{name}_ohlcv", (_ProHooks, base), {})


class _OhlcvState:
    """Per-symbol live candle state: the newest minute seen and its not-yet-final candle."""

    __slots__ = ("newest", "open")

    def __init__(self) -> None:
        self.newest = -1
        self.open: Candle | None = None


# --------------------------------------------------------------------------- the adapter


class CcxtExchange:
    """ports.ExchangeClient over ccxt: ``async with CcxtExchange(spec, simulator=url) as ex: ...``."""

    def __init__(self, spec: ExchangeSpec, simulator: str | None = None) -> None:
        check_exchange_supported(spec.name)
        self.spec = spec
        self.name = spec.name
        self.ohlcv_depth: int | None = OHLCV_DEPTH.get(spec.name)
        self.simulator = simulator
        self.config = build_config(spec.name, spec.params, simulator)
        self.malformed_frames = 0
        self.disconnects = 0  # websocket errors and closes seen (each means live data may be missing)
        self.log = Log("fullon.adapters.ccxt", exchange=spec.name)
        self._rest: Any = None
        self._pro: Any = None
        self._markets: set[str] | None = None
        self._markets_lock = asyncio.Lock()
        self._pending: collections.deque[tuple[str, Trade]] = collections.deque()
        self._overflowed = 0
        self._watched: frozenset[str] = frozenset()
        self._frame_seen: dict[str, int] = {}
        self._ohlcv: dict[str, _OhlcvState] = {}
        self._kline_closed: dict[str, dict[int, bool]] = {}
        self._closing = False

    # ---- lifecycle

    async def __aenter__(self) -> CcxtExchange:
        import ccxt.async_support as ccxt_async

        try:
            self._rest = getattr(ccxt_async, self.name)(_deep_merge({}, self.config))
            self._pro = _pro_class(self.name)(_deep_merge({}, self.config))
        except Exception as exc:
            await self.close()
            raise ExchangeUnsupported(f"exchange {self.name!r} cannot be set up: {classify(exc)}") from exc
        self._pro.ohlcv_frame_error = self._on_frame_error
        self._pro.ohlcv_disconnect = self._on_disconnect
        self._pro.kline_closed = self._kline_closed
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

        ``[]`` only when no trade exists between ``since`` and now.
        """
        await self._market(symbol)
        limit = limit or DEFAULT_PAGE.get(self.name)
        try:
            if self.name == "binance":
                page = await self._binance_trades(symbol, since, limit)
            else:
                page = await self._plain_trades(symbol, since, limit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        return page

    def _parse_page(self, raw: list[dict[str, Any]], since: int) -> list[Trade]:
        return sort_trades([to_trade(t) for t in raw if t.get("timestamp") is None or t["timestamp"] >= since])

    async def _plain_trades(self, symbol: str, since: int, limit: int | None) -> list[Trade]:
        rest, _ = self._clients()
        params: dict[str, Any] = {}
        if self.name == "kraken":
            params["since"] = str(since * 1_000_000 - 1)  # a ns cursor: the page starts at `since` exactly
        raw = await rest.fetch_trades(symbol, since, limit, params)
        page = self._parse_page(raw, since)
        if self.name == "kraken":
            for _ in range(_MAX_EXTEND):  # a full page inside the `since` ms: follow Kraken's cursor
                if not page or page[-1].ts != since or len(raw) < (limit or KRAKEN_PAGE):
                    break
                info = raw[-1].get("info")
                cursor = info[-1] if isinstance(info, list) and len(info) > 7 else None
                if cursor is None:
                    break
                raw = await rest.fetch_trades(symbol, since, limit, {"since": str(cursor)})
                more = self._parse_page(raw, since)
                if not more:
                    break
                page = self._merge(page, more)
        return page

    @staticmethod
    def _merge(page: list[Trade], more: list[Trade]) -> list[Trade]:
        seen = {t.id for t in page}
        return sort_trades(page + [t for t in more if t.id not in seen])

    async def _binance_trades(self, symbol: str, since: int, limit: int | None) -> list[Trade]:
        rest, _ = self._clients()
        start, page = since, list[Trade]()
        while True:
            raw = await rest.fetch_trades(symbol, start, limit)  # aggTrades, [start, start + 1 h]
            page = self._merge(page, self._parse_page(raw, since))
            # Step to the next hour while the window held everything it had (not a full page) and
            # nothing after the `since` millisecond: otherwise a (ts, id) cursor could not move on.
            if len(raw) >= (limit or 500) or (page and page[-1].ts > since) or start + HOUR_MS >= now_ms():
                break
            start += HOUR_MS + 1
        for _ in range(_MAX_EXTEND):  # a full page inside the `since` ms: continue by aggregate id
            if not page or page[-1].ts != since or not page[-1].id.isdigit() or len(raw) < (limit or 500):
                break
            raw = await rest.fetch_trades(symbol, None, limit, {"fromId": int(page[-1].id) + 1})
            more = self._parse_page(raw, since)
            if not more:
                break
            page = self._merge(page, more)
        return page

    async def fetch_ohlcv(self, symbol: str, since: int, limit: int | None = None) -> list[Candle]:
        """One page of 1m candles from ``since``; a minute not yet closed comes back ``final=False``."""
        await self._market(symbol)
        rest, _ = self._clients()
        limit = limit or DEFAULT_PAGE.get(self.name)
        try:
            rows = await rest.fetch_ohlcv(symbol, "1m", since, limit)
            now = now_ms()
            candles = [to_candle(r, now) for r in rows if r and r[0] is not None and r[0] >= since]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        candles.sort(key=lambda c: c.ts)
        return candles

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
        been told about (they may have happened while nobody was awaiting a watch)."""
        seen = self._frame_seen.setdefault(kind, self._events())  # a new watcher starts from now
        if self._events() > seen:
            self._frame_seen[kind] = self._events()
            raise TransientError(
                f"{self.name}: live stream interrupted ({self.malformed_frames} malformed frame(s), "
                f"{self.disconnects} disconnect(s) so far)"
            )

    def _sink(self, symbol: str) -> Callable[[dict[str, Any]], None]:
        pending = self._pending

        def sink(raw: dict[str, Any]) -> None:
            if len(pending) >= MAX_PENDING_TRADES:
                self._overflowed += 1
                return
            try:
                trade = to_trade(raw)
            except (ValueError, TypeError) as exc:
                # keep ccxt's loop over the frame going; the next watch call reports it once
                self._bad_data(exc)
                return
            pending.append((symbol, trade))

        return sink

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
                raise classify(exc) from exc
            self._watched = wanted
        out = list(self._pending)
        self._pending.clear()
        return [(s, t) for s, t in out if s in wanted]

    async def watch_ohlcv(self, symbol: str) -> list[Candle]:
        """The next live 1m candle updates for ``symbol``, oldest first.

        A candle is final on Binance's closed flag, or once a later minute's update arrives; the
        newly closed minute is then re-emitted with ``final=True``.
        """
        await self._market(symbol)
        _, pro = self._clients()
        state = self._ohlcv.setdefault(symbol, _OhlcvState())
        kind = f"ohlcv:{symbol}"
        try:
            self._check_events(kind)
        except TransientError:
            state.open = None
            raise
        try:
            rows = await pro.watch_ohlcv(symbol, "1m")
            latest: dict[int, Candle] = {}  # one version per minute: the last (a final one comes last)
            for row in rows:
                for candle in self._live_candle(symbol, state, row):
                    latest[candle.ts] = candle
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.open = None  # it may have missed updates: never finalise it from the stream
            self._frame_seen[kind] = self._events()
            raise classify(exc) from exc
        return [latest[ts] for ts in sorted(latest)]

    def _live_candle(self, symbol: str, state: _OhlcvState, row: Sequence[Any]) -> list[Candle]:
        candle = to_candle(row, 0)  # final=True for now; decided below
        ts = candle.ts
        closed = self._kline_closed.get(symbol, {}).get(ts, False)
        out: list[Candle] = []
        if ts < state.newest:
            return [candle]  # a late update for a minute already passed: it is closed
        if ts > state.newest and state.open is not None:
            out.append(dataclasses.replace(state.open, final=True))
            state.open = None
        state.newest = ts
        live = Candle(ts, candle.open, candle.high, candle.low, candle.close, candle.volume, closed)
        state.open = None if closed else live
        out.append(live)
        return out
