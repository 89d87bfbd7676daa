"""Binance spot's wire formats: exchangeInfo, klines, aggTrades, trades, and the spot streams (raw and combined).

Streams, as Binance serves them: ``/ws`` (subscribe with ``SUBSCRIBE``), ``/ws/<stream>[/<stream>...]`` (raw
streams named in the URL, started at once; a path that names no stream, such as ccxt's ``/ws/0``, is a plain
``/ws``) and ``/stream?streams=<a>/<b>`` (combined: started at once, every event wrapped as
``{"stream": <name>, "data": <event>}``; ``SET_PROPERTY combined`` switches the wrapping on either endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from fullon_ohlcv_service.simulator.market import BUCKET_MS, Market
from fullon_ohlcv_service.simulator.poison import (
    CandleEntry,
    Entry,
    PoisonTrade,
    entries_from_id,
    iter_entries,
    latest_entries,
    minute_candles,
)
from fullon_ohlcv_service.simulator.venue import TradeCursor, Venue, WsSession, bound, dumps, json_response
from fullon_ohlcv_service.venues import BINANCE

KLINES_MAX = bound(BINANCE.candle_page_max, "Binance klines page")
KLINES_DEFAULT = bound(BINANCE.candle_page_default, "Binance klines default page")
TRADES_MAX = bound(BINANCE.trade_page_max, "Binance trades page")
TRADES_DEFAULT = BINANCE.trade_page_default
AGG_WINDOW_MAX_MS = bound(BINANCE.trade_window_ms, "Binance aggTrades window")


def market_id(symbol: str) -> str:
    return symbol.replace("/", "").upper()


def wire_id(t: Entry) -> int | str:
    """The trade id on the wire: an int, or "" for a poisoned trade without one."""
    if isinstance(t, PoisonTrade):
        return int(t.id) if t.id else ""
    return t.id


def maker(t: Entry) -> bool | None:
    """Binance's ``m`` (the buyer was the maker, so the taker sold); None for a poisoned trade with no side."""
    if isinstance(t, PoisonTrade) and t.side is None:
        return None
    return not t.buy


def key(t: Entry) -> int:
    return t.key if isinstance(t, PoisonTrade) else t.id


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


class KlineState:
    """A ``<sym>@kline_1m`` subscription: its trade cursor and the minute whose closing frame is still owed."""

    __slots__ = ("cursor", "open_minute")

    def __init__(self, cursor: TradeCursor) -> None:
        self.cursor = cursor
        self.open_minute: int | None = None


class Binance(Venue):
    """Binance spot: REST under ``/binance/<host>/api/v3/...``, streams under ``/binance/<host>/ws[/N]``."""

    name = "binance"

    def __init__(self, markets: dict[str, Market], *, ping_interval_s: float = 20.0, **kwargs: Any) -> None:
        super().__init__(markets, **kwargs)
        self.by_id = {market_id(s): m for s, m in markets.items()}
        self.ping_interval_s = ping_interval_s

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/binance/{host}/api/v3/{method}", self.rest)
        app.router.add_get("/binance/{host}/ws", self.ws_handler)
        app.router.add_get("/binance/{host}/ws/{streams:.+}", self.ws_handler)
        app.router.add_get("/binance/{host}/stream", self.ws_handler)

    # -- REST ------------------------------------------------------------------------------------------
    def rate_limit_response(self, status: int) -> web.Response:
        msg = ("Way too many requests; IP banned until further notice." if status == 418
               else "Too many requests; current limit of IP is 6000 requests per minute.")
        return json_response({"code": -1003, "msg": msg}, status=status, headers={"Retry-After": "1"})

    async def rest(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        gated = await self.rest_gate(request, method)
        if gated is not None:
            return gated
        handler = {"exchangeInfo": self.exchange_info, "klines": self.klines, "aggTrades": self.agg_trades,
                   "trades": self.trades, "historicalTrades": self.historical_trades, "ping": self.ping,
                   "time": self.time}.get(method)
        if handler is None:
            return json_response({"code": -1000, "msg": f"Unknown endpoint {method}."}, status=404)
        try:
            return handler(request)
        except BinanceError as exc:
            return json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)

    def ping(self, request: web.Request) -> web.Response:
        return json_response({})

    def time(self, request: web.Request) -> web.Response:
        return json_response({"serverTime": self.now()})

    def _market(self, request: web.Request) -> Market:
        sid = request.query.get("symbol")
        if not sid:
            raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        m = self.by_id.get(sid.upper())
        if m is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return m

    @staticmethod
    def _int(request: web.Request, name: str) -> int | None:
        v = request.query.get(name)
        if v is None or v == "":
            return None
        try:
            return int(v)
        except ValueError:
            raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.") from None

    def _limit(self, request: web.Request, default: int, maximum: int) -> int:
        limit = self._int(request, "limit")
        if limit is None:
            return default
        if limit <= 0:
            raise BinanceError(-1100, "Illegal characters found in parameter 'limit'.")
        return min(limit, maximum)

    def exchange_info(self, request: web.Request) -> web.Response:
        symbols = []
        for s, m in self.markets.items():
            base, quote = s.split("/")
            pd, ad = m.config.price_decimals, m.config.amount_decimals
            tick = f"{10.0 ** -pd:.{max(pd, 1)}f}" if pd > 0 else "1.00"
            step = f"{10.0 ** -ad:.{ad}f}" if ad > 0 else "1.00"
            symbols.append({
                "symbol": market_id(s), "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
                "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8, "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                "icebergAllowed": True, "ocoAllowed": True, "quoteOrderQtyMarketAllowed": True,
                "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "10000000.00000000",
                     "tickSize": tick},
                    {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
                    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
                "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        wanted = request.query.get("symbol")
        if wanted:
            symbols = [x for x in symbols if x["symbol"] == wanted.upper()]
            if not symbols:
                raise BinanceError(-1121, "Invalid symbol.")
        return json_response({"timezone": "UTC", "serverTime": self.now(), "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}],
            "exchangeFilters": [], "symbols": symbols})

    @staticmethod
    def kline_row(c: CandleEntry) -> list[Any]:
        return [c.ts, c.open, c.high, c.low, c.close, c.volume, c.ts + BUCKET_MS - 1, c.quote_volume, c.count,
                "0.00000000", "0.00000000", "0"]

    def klines(self, request: web.Request) -> web.Response:
        m = self._market(request)
        interval = request.query.get("interval")
        if not interval:
            raise BinanceError(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
        if interval != "1m":
            raise BinanceError(-1120, "Invalid interval.")
        limit = self._limit(request, KLINES_DEFAULT, KLINES_MAX)
        start = self._int(request, "startTime")
        end = self._int(request, "endTime")
        now = self.now()
        last_open = now - now % BUCKET_MS
        if end is not None:
            last_open = min(last_open, end - end % BUCKET_MS)
        rows: list[list[Any]] = []
        book = self.book(m)
        if start is not None:
            first = max(start + (-start) % BUCKET_MS, m.genesis_ms)
            minute = first
            while minute <= last_open and len(rows) < limit:
                for c in minute_candles(m, book, minute, now)[:limit - len(rows)]:
                    rows.append(self.kline_row(c))
                minute += BUCKET_MS
        else:
            minute = last_open
            while minute >= m.genesis_ms and len(rows) < limit:
                for c in reversed(minute_candles(m, book, minute, now)):  # reversed again below
                    if len(rows) < limit:
                        rows.append(self.kline_row(c))
                minute -= BUCKET_MS
            rows.reverse()
        return json_response(rows)

    @staticmethod
    def agg_item(t: Entry) -> dict[str, Any]:
        return {"a": wire_id(t), "p": t.price, "q": t.amount, "f": key(t), "l": key(t), "T": t.ts, "m": maker(t),
                "M": True}

    @staticmethod
    def trade_item(t: Entry) -> dict[str, Any]:
        return {"id": wire_id(t), "price": t.price, "qty": t.amount,
                "quoteQty": f"{float(t.price) * float(t.amount):.8f}", "time": t.ts, "isBuyerMaker": maker(t),
                "isBestMatch": True}

    def _select(self, request: web.Request, default: int) -> list[Entry]:
        m = self._market(request)
        limit = self._limit(request, default, TRADES_MAX)
        now = self.now()
        from_id = self._int(request, "fromId")
        start = self._int(request, "startTime")
        end = self._int(request, "endTime")
        book = self.book(m)
        if from_id is not None:
            until = now + 1 if end is None else min(now, end) + 1
            return entries_from_id(m, book, from_id, until, limit)
        if start is not None or end is not None:
            if start is not None and end is not None and end - start > AGG_WINDOW_MAX_MS:
                raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
            if start is None:
                assert end is not None
                start = end - AGG_WINDOW_MAX_MS
            stop = now if end is None else min(now, end)
            out: list[Entry] = []
            for t in iter_entries(m, book, start, stop + 1):  # both bounds inclusive, as Binance documents
                out.append(t)
                if len(out) >= limit:
                    break
            return out
        return latest_entries(m, book, now, limit)

    def agg_trades(self, request: web.Request) -> web.Response:
        return json_response([self.agg_item(t) for t in self._select(request, TRADES_DEFAULT)])

    def trades(self, request: web.Request) -> web.Response:
        m = self._market(request)
        limit = self._limit(request, TRADES_DEFAULT, TRADES_MAX)
        return json_response([self.trade_item(t) for t in latest_entries(m, self.book(m), self.now(), limit)])

    def historical_trades(self, request: web.Request) -> web.Response:
        return json_response([self.trade_item(t) for t in self._select(request, TRADES_DEFAULT)])

    # -- websocket streams -----------------------------------------------------------------------------
    def malformed_frames(self) -> list[str]:
        """Frames ccxt survives: unknown event, missing event type, wrong types, a stray subscribe answer.

        (A non-JSON text frame is not in this list: ccxt's binance handler raises on it and its receive
        loop stops; ``malformed_json`` sends that kind of frame on purpose.)
        """
        sid = next(iter(self.by_id), "BTCUSDT")
        return [
            dumps({"e": "nonsenseEvent", "E": self.now(), "s": sid}),
            dumps({"E": self.now(), "s": sid, "p": "1.0"}),
            dumps({"result": "not-null", "id": "x"}),
            dumps({"e": 12345, "s": ["wrong", "type"]}),
        ]

    async def on_ws_open(self, session: WsSession) -> None:
        if self.ping_interval_s > 0:
            session.tasks.append(asyncio.get_running_loop().create_task(self._pinger(session)))
        if session.path.endswith("/stream"):
            session.combined = True
            named = session.query.get("streams", "")
        else:
            named = session.match.get("streams", "")
        async with session.lock:
            for stream in named.split("/"):
                if self._parse_stream(stream) is not None:  # anything else (ccxt's /ws/0) names no stream
                    self._subscribe(session, stream)

    def _subscribe(self, session: WsSession, stream: str) -> None:
        if stream in session.subs:
            return
        parsed = self._parse_stream(stream)
        assert parsed is not None
        m, kind = parsed
        cursor = self.cursor(m, self.now())
        self.subscribed(session, stream, KlineState(cursor) if kind == "kline_1m" else cursor)

    @staticmethod
    def _wrap(session: WsSession, stream: str, frame: str) -> str:
        """A combined-stream event: ``{"stream": <name>, "data": <event>}``; a raw one as it is."""
        return f'{{"stream":"{stream}","data":{frame}}}' if session.combined else frame

    async def _pinger(self, session: WsSession) -> None:
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            while not session.ws.closed:
                await asyncio.sleep(self.ping_interval_s)
                if not self.faults.stalled() and not session.ws.closed:
                    await session.ws.ping(b"sim")

    async def on_ws_message(self, session: WsSession, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        method = msg.get("method")
        req_id = msg.get("id")
        params = msg.get("params")
        if method == "LIST_SUBSCRIPTIONS":
            await session.send({"result": sorted(session.subs), "id": req_id})
            return
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            await self._property(session, method, params, req_id)
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
            await session.send({"error": {"code": 2, "msg": "Invalid request: unknown method or params"},
                                "id": req_id})
            return
        async with session.lock:
            for stream in params:
                parsed = self._parse_stream(stream)
                if parsed is None:
                    await session.send({"error": {"code": 2, "msg": f"Invalid request: invalid stream {stream}"},
                                        "id": req_id})
                    return
            for stream in params:
                if method == "UNSUBSCRIBE":
                    self.unsubscribed(session, stream)
                else:
                    self._subscribe(session, stream)
            await session.send({"result": None, "id": req_id})

    async def _property(self, session: WsSession, method: str, params: Any, req_id: Any) -> None:
        """``SET_PROPERTY ["combined", bool]`` and ``GET_PROPERTY ["combined"]``, as Binance documents them."""
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            await session.send({"code": 2, "msg": "Invalid request: property name must be a string", "id": req_id})
            return
        if params[0] != "combined":
            await session.send({"code": 0, "msg": "Unknown property", "id": req_id})
            return
        if method == "GET_PROPERTY":
            await session.send({"result": session.combined, "id": req_id})
            return
        if len(params) != 2 or not isinstance(params[1], bool):
            await session.send({"code": 1, "msg": "Invalid value type: expected Boolean", "id": req_id})
            return
        session.combined = params[1]
        await session.send({"result": None, "id": req_id})

    def _parse_stream(self, stream: Any) -> tuple[Market, str] | None:
        if not isinstance(stream, str) or "@" not in stream:
            return None
        sid, kind = stream.split("@", 1)
        m = self.by_id.get(sid.upper())
        if m is None or kind not in ("trade", "aggTrade", "kline_1m"):
            return None
        return m, kind

    async def pump(self, session: WsSession) -> None:
        now = self.now()
        for stream, state in list(session.subs.items()):
            sid, kind = stream.split("@", 1)
            sid = sid.upper()
            if isinstance(state, KlineState):
                await self._pump_kline(session, stream, sid, state, now)
                continue
            assert isinstance(state, TradeCursor)
            trades = state.advance(now)
            entries = state.with_poison(state.with_duplicates(trades, self.faults) if trades else [])
            if not entries:
                continue
            agg = kind == "aggTrade"
            for t in entries:
                if agg:
                    frame = {"e": "aggTrade", "E": now, "s": sid, "a": wire_id(t), "p": t.price, "q": t.amount,
                             "f": key(t), "l": key(t), "T": t.ts, "m": maker(t), "M": True}
                else:
                    frame = {"e": "trade", "E": now, "s": sid, "t": wire_id(t), "p": t.price, "q": t.amount,
                             "T": t.ts, "m": maker(t), "M": True}
                await session.send_text(self._wrap(session, stream, dumps(frame)))
            self.stats.trades_sent += len(entries)

    def _kline_frame(self, sid: str, c: CandleEntry, closed: bool, now: int) -> str:
        return dumps({"e": "kline", "E": now, "s": sid, "k": {
            "t": c.ts, "T": c.ts + BUCKET_MS - 1, "s": sid, "i": "1m", "f": c.first_id, "L": c.last_id,
            "o": c.open, "c": c.close, "h": c.high, "l": c.low, "v": c.volume, "n": c.count, "x": closed,
            "q": c.quote_volume, "V": "0.00000000", "Q": "0.00000000", "B": "0"}})

    async def _pump_kline(self, session: WsSession, stream: str, sid: str, state: KlineState, now: int) -> None:
        m = state.cursor.market
        trades = state.cursor.advance(now)
        clock = state.cursor.last_ts if self.burst else now
        last_by_minute: dict[int, int] = {}
        for t in trades:
            last_by_minute[t.ts - t.ts % BUCKET_MS] = t.ts
        for minute, upto in last_by_minute.items():
            if state.open_minute is not None and state.open_minute != minute:
                await self._close_kline(session, stream, sid, m, state.open_minute, now)
            state.open_minute = minute
            if minute + BUCKET_MS <= clock + 1:
                await self._close_kline(session, stream, sid, m, minute, now)
                state.open_minute = None
            else:
                c = m.candle(minute, upto)
                if c is not None:
                    await session.send_text(self._wrap(session, stream, self._kline_frame(sid, c, False, now)))
        if state.open_minute is not None and state.open_minute + BUCKET_MS <= clock + 1:
            await self._close_kline(session, stream, sid, m, state.open_minute, now)
            state.open_minute = None
        for pc in state.cursor.poison_candles():  # an extra, unclosed update of the poisoned minute
            await session.send_text(self._wrap(session, stream, self._kline_frame(sid, pc, False, now)))

    async def _close_kline(self, session: WsSession, stream: str, sid: str, m: Market, minute: int,
                           now: int) -> None:
        c = m.candle(minute)
        if c is not None:
            await session.send_text(self._wrap(session, stream, self._kline_frame(sid, c, True, now)))
