"""Kraken's wire formats: REST Assets/AssetPairs/OHLC/Trades, websocket v2 trade/ohlc (``/v2``, what ccxt uses)
and websocket v1 (the root path, what older clients such as cryptofeed use; see kraken_v1.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fullon_ohlcv_service.simulator.kraken_v1 import KrakenV1
from fullon_ohlcv_service.simulator.market import BUCKET_MS, Market, SimTrade
from fullon_ohlcv_service.simulator.poison import (
    CandleEntry,
    Entry,
    PoisonCandle,
    PoisonTrade,
    at,
    candle_entries,
    iter_entries,
    json_number,
    kraken_iso_ms,
    latest_entries,
)
from fullon_ohlcv_service.simulator.venue import TradeCursor, Venue, WsSession, bound, chunks, dumps, json_response
from fullon_ohlcv_service.venues import KRAKEN

OHLC_MAX_BARS = bound(KRAKEN.ohlcv_depth, "Kraken REST OHLC depth")
TRADES_MAX = bound(KRAKEN.trade_page_max, "Kraken Trades page")
SNAPSHOT_TRADES = bound(KRAKEN.trade_snapshot_size, "Kraken trade snapshot size")
SNAPSHOT_CANDLES = 10
FRAME_TRADES = 1000
HEARTBEAT_S = 1.0  # trades per websocket update frame in burst mode
_NS_THRESHOLD = 10**14  # a Kraken `since` above this is a nanosecond cursor, below it seconds

# Kraken's legacy asset ids (X for crypto, Z for fiat) and its altnames (XBT for BTC)
_LEGACY = {"BTC": ("XXBT", "XBT"), "ETH": ("XETH", "ETH"), "LTC": ("XLTC", "LTC"), "XRP": ("XXRP", "XRP"),
           "XLM": ("XXLM", "XLM"), "DOGE": ("XXDG", "XDG"), "USD": ("ZUSD", "USD"), "EUR": ("ZEUR", "EUR"),
           "GBP": ("ZGBP", "GBP"), "JPY": ("ZJPY", "JPY"), "CAD": ("ZCAD", "CAD")}


def asset_id(code: str) -> str:
    return _LEGACY.get(code, (code, code))[0]


def asset_altname(code: str) -> str:
    return _LEGACY.get(code, (code, code))[1]


def pair_ids(symbol: str) -> tuple[str, str, str]:
    """``BTC/USD`` -> (``XXBTZUSD``, altname ``XBTUSD``, wsname ``XBT/USD``)."""
    base, quote = symbol.split("/")
    alt = asset_altname(base) + asset_altname(quote)
    legacy = base in _LEGACY and quote in _LEGACY and asset_id(base) != base and asset_id(quote) != quote
    pid = asset_id(base) + asset_id(quote) if legacy else alt
    return pid, alt, f"{asset_altname(base)}/{asset_altname(quote)}"


_sec_cache: dict[int, str] = {}


def iso_us(ts_ms: int) -> str:
    """``2025-05-27T11:24:03.847000Z`` (Kraken v2 style, microseconds)."""
    sec, ms = divmod(ts_ms, 1000)
    head = _sec_cache.get(sec)
    if head is None:
        if len(_sec_cache) > 4096:
            _sec_cache.clear()
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _sec_cache[sec] = head
    return f"{head}.{ms:03d}000Z"


def trade_time(ts_ms: int) -> float:
    """REST trade time in seconds with a half-ms offset, so ccxt's int(float*1000) gives back ts_ms exactly."""
    return float(f"{ts_ms // 1000}.{ts_ms % 1000:03d}5")


def trade_ns(ts_ms: int) -> int:
    return ts_ms * 1_000_000 + 500_000


def ord_type(t: Entry) -> str:
    return "limit" if isinstance(t, SimTrade) and t.id % 5 == 0 else "market"


def rest_row(t: Entry) -> list[Any]:
    """One REST ``Trades`` row: [price, volume, time (s), b/s, l/m, misc, trade id]."""
    if isinstance(t, PoisonTrade):
        side = "x" if t.side is None else "b" if t.buy else "s"  # ccxt reads "x" as a buy: only the wire tells
        return [t.price, t.amount, trade_time(t.ts), side, "m", "", t.id]
    return [t.price, t.amount, trade_time(t.ts), "b" if t.buy else "s", "l" if ord_type(t) == "limit" else "m",
            "", t.id]


def ws_trade(symbol: str, t: Entry) -> dict[str, Any]:
    """One websocket v2 trade item (a poisoned one carries its raw values: texts where JSON has no number)."""
    if isinstance(t, PoisonTrade):
        return {"symbol": symbol, "side": t.side, "price": t.price_json, "qty": t.amount_json, "ord_type": "market",
                "trade_id": int(t.id) if t.id else "", "timestamp": iso_us(kraken_iso_ms(t.ts))}
    return {"symbol": symbol, "side": "buy" if t.buy else "sell", "price": t.price_f, "qty": t.amount_f,
            "ord_type": ord_type(t), "trade_id": t.id, "timestamp": iso_us(t.ts)}


class Kraken(Venue):
    """Kraken spot: REST under ``/kraken/<host>/0/public/...`` and websocket v2 under ``/kraken/<host>/v2``."""

    name = "kraken"

    def __init__(self, markets: dict[str, Market], **kwargs: Any) -> None:
        super().__init__(markets, **kwargs)
        self.by_pair: dict[str, Market] = {}
        by_name: dict[str, Market] = {}
        for symbol, m in markets.items():
            pid, alt, wsname = pair_ids(symbol)
            self.by_pair[pid] = m
            self.by_pair[alt] = m
            by_name[wsname] = by_name[symbol] = m
        self._next_conn = 6447481662169813000
        self.v1 = KrakenV1(self, by_name)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/kraken/{host}/0/public/{method}", self.rest)
        app.router.add_get("/kraken/{host}/v2", self.ws_handler)
        app.router.add_get("/kraken/{host}", self.ws_handler)  # v1: wss://ws.kraken.com
        app.router.add_get("/kraken/{host}/", self.ws_handler)

    # -- REST ------------------------------------------------------------------------------------------
    def rate_limit_response(self, status: int) -> web.Response:
        return json_response({"error": ["EAPI:Rate limit exceeded"]}, status=status, headers={"Retry-After": "1"})

    @staticmethod
    def error(msg: str) -> web.Response:
        return json_response({"error": [msg]})

    async def rest(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        gated = await self.rest_gate(request, method)
        if gated is not None:
            return gated
        handler = {"Assets": self.assets, "AssetPairs": self.asset_pairs, "OHLC": self.ohlc,
                   "Trades": self.trades, "Time": self.time, "SystemStatus": self.system_status}.get(method)
        if handler is None:
            return self.error("EGeneral:Unknown method")
        try:
            return handler(request)
        except ValueError:
            return self.error("EGeneral:Invalid arguments")

    def time(self, request: web.Request) -> web.Response:
        now = self.now()
        return json_response({"error": [], "result": {
            "unixtime": now // 1000, "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now / 1000))}})

    def system_status(self, request: web.Request) -> web.Response:
        return json_response({"error": [], "result": {"status": "online",
                                                       "timestamp": iso_us(self.now())[:19] + "Z"}})

    def assets(self, request: web.Request) -> web.Response:
        result: dict[str, Any] = {}
        for m in self.markets.values():
            base, quote = m.symbol.split("/")
            for code, decimals in ((base, 10), (quote, 4 if asset_id(quote).startswith("Z") else 8)):
                result[asset_id(code)] = {"aclass": "currency", "altname": asset_altname(code),
                                          "decimals": decimals, "display_decimals": min(decimals, 5),
                                          "status": "enabled"}
        return json_response({"error": [], "result": result})

    def asset_pairs(self, request: web.Request) -> web.Response:
        wanted = request.query.get("pair")
        result: dict[str, Any] = {}
        for m in self.markets.values():
            pid, alt, wsname = pair_ids(m.symbol)
            if wanted and not ({pid, alt} & set(wanted.split(","))):
                continue
            base, quote = m.symbol.split("/")
            result[pid] = {
                "altname": alt, "wsname": wsname, "aclass_base": "currency", "base": asset_id(base),
                "aclass_quote": "currency", "quote": asset_id(quote), "lot": "unit",
                "cost_decimals": 5, "pair_decimals": m.config.price_decimals,
                "lot_decimals": m.config.amount_decimals, "lot_multiplier": 1,
                "leverage_buy": [], "leverage_sell": [],
                "fees": [[0, 0.26], [50000, 0.24]], "fees_maker": [[0, 0.16], [50000, 0.14]],
                "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40,
                "ordermin": "0.0001", "costmin": "0.5", "tick_size": f"{10.0 ** -m.config.price_decimals:.10f}",
                "status": "online",
            }
        if wanted and not result:
            return self.error("EQuery:Unknown asset pair")
        return json_response({"error": [], "result": result})

    def _market(self, request: web.Request) -> tuple[str, Market] | None:
        pair = request.query.get("pair", "")
        m = self.by_pair.get(pair)
        if m is None:
            return None
        return pair_ids(m.symbol)[0], m

    def ohlc(self, request: web.Request) -> web.Response:
        found = self._market(request)
        if found is None:
            return self.error("EQuery:Unknown asset pair")
        pid, m = found
        interval = int(request.query.get("interval", "1"))
        if interval != 1:
            return self.error("EQuery:Invalid arguments:interval")
        now = self.now()
        current = now - now % BUCKET_MS
        first = current - (OHLC_MAX_BARS - 1) * BUCKET_MS
        since_q = request.query.get("since")
        if since_q is not None:
            since_ms = int(float(since_q)) * 1000 + 1  # bars strictly after `since`
            first = max(first, since_ms)
        rows = [self._ohlc_row(c) for c in candle_entries(m, self.book(m), first, current + BUCKET_MS, now)]
        last = (current - BUCKET_MS) // 1000
        return json_response({"error": [], "result": {pid: rows, "last": last}})

    @staticmethod
    def _ohlc_row(c: CandleEntry) -> list[Any]:
        return [c.ts // 1000, c.open, c.high, c.low, c.close, c.vwap, c.volume, c.count]

    def trades(self, request: web.Request) -> web.Response:
        found = self._market(request)
        if found is None:
            return self.error("EQuery:Unknown asset pair")
        pid, m = found
        count = min(TRADES_MAX, max(1, int(request.query.get("count", str(TRADES_MAX)))))
        now = self.now()
        since_q = request.query.get("since")
        book = self.book(m)
        out: list[Entry] = []
        if since_q is None or since_q == "":
            out = latest_entries(m, book, now, count)
            cursor = trade_ns(at(out[-1])) if out else now * 1_000_000
        else:
            since = int(since_q)
            if since < _NS_THRESHOLD:
                start = since * 1000
                cursor = since * 1_000_000_000
            else:
                start = (since - 500_000) // 1_000_000 + 1
                cursor = since
            for t in iter_entries(m, book, start, now + 1):
                out.append(t)
                if len(out) >= count:
                    break
            if out:
                cursor = trade_ns(at(out[-1]))  # a poisoned entry's slot: no valid trade shares its ms
        rows = [rest_row(t) for t in out]
        return json_response({"error": [], "result": {pid: rows, "last": str(cursor)}})

    # -- websocket v2 ----------------------------------------------------------------------------------
    def malformed_frames(self) -> list[str]:
        """Frames ccxt must survive: not JSON, unknown channel, missing fields, wrong types."""
        return [
            "<html><body>502 Bad Gateway</body></html>",
            dumps({"channel": "nonsense", "type": "update", "data": [{"x": 1}]}),
            dumps({"channel": "heartbeat", "type": "update"}),
            dumps({"method": "pong", "req_id": "not-a-number", "success": "yes"}),
            dumps({"channel": "status", "type": "update", "data": "online"}),
        ]

    @staticmethod
    def _v1(session: WsSession) -> bool:
        return not session.path.rstrip("/").endswith("/v2")

    async def on_ws_open(self, session: WsSession) -> None:
        if self._v1(session):
            await self.v1.on_open(session)
            return
        self._next_conn += 1
        await session.send({"channel": "status", "type": "update", "data": [
            {"version": "2.0.10", "system": "online", "api_version": "v2", "connection_id": self._next_conn}]})

    def _stamp(self) -> str:
        return iso_us(self.now())

    async def on_ws_message(self, session: WsSession, msg: Any) -> None:
        if self._v1(session):
            await self.v1.on_message(session, msg)
            return
        if not isinstance(msg, dict):
            return
        method = msg.get("method")
        req_id = msg.get("req_id")
        if method == "ping":
            if self.faults.stalled():
                return
            reply: dict[str, Any] = {"method": "pong", "time_in": self._stamp(), "time_out": self._stamp()}
            if req_id is not None:
                reply["req_id"] = req_id
            await session.send(reply)
            return
        if method not in ("subscribe", "unsubscribe"):
            await session.send({"error": f"Unsupported method {method!r}", "method": method, "success": False,
                                "req_id": req_id, "time_in": self._stamp(), "time_out": self._stamp()})
            return
        params = msg.get("params") or {}
        if not isinstance(params, dict):
            params = {}
        channel = params.get("channel")
        symbols = params.get("symbol") or []
        if channel not in ("trade", "ohlc") or not isinstance(symbols, list):
            await session.send({"error": "Subscription name invalid", "method": method, "success": False,
                                "req_id": req_id, "time_in": self._stamp(), "time_out": self._stamp()})
            return
        interval = params.get("interval", 1)
        for symbol in symbols:
            m = self.market_for(symbol) if isinstance(symbol, str) else None
            result: dict[str, Any] = {"channel": channel, "symbol": symbol}
            if channel == "ohlc":
                result["interval"] = interval
            if m is None or (channel == "ohlc" and interval != 1):
                err = (f"Currency pair not supported {symbol}" if m is None
                       else "Subscription ohlc interval not supported")
                await session.send({"error": err, "method": method, "req_id": req_id, "success": False,
                                    "symbol": symbol, "time_in": self._stamp(), "time_out": self._stamp()})
                continue
            key = f"{channel}:{symbol}"
            async with session.lock:
                if method == "unsubscribe":
                    self.unsubscribed(session, key)
                    await session.send({"method": method, "req_id": req_id, "result": result, "success": True,
                                        "time_in": self._stamp(), "time_out": self._stamp()})
                    continue
                if channel == "trade":
                    result["snapshot"] = params.get("snapshot", True)
                await session.send({"method": method, "req_id": req_id, "result": result, "success": True,
                                    "time_in": self._stamp(), "time_out": self._stamp()})
                if key in session.subs:
                    continue
                if channel == "trade":
                    await self._subscribe_trades(session, key, m, bool(params.get("snapshot", True)))
                else:
                    await self._subscribe_ohlc(session, key, m, bool(params.get("snapshot", True)))

    async def _subscribe_trades(self, session: WsSession, key: str, m: Market, snapshot: bool) -> None:
        now = self.now()
        cursor = self.cursor(m, now)
        if snapshot and not self.burst:
            recent = latest_entries(m, cursor.book, now, SNAPSHOT_TRADES)
            if recent:
                await session.send_text(self._trade_frame(m.symbol, recent, "snapshot"))
                cursor.recent.extend(t for t in recent if isinstance(t, SimTrade))
        self.subscribed(session, key, cursor)

    async def _subscribe_ohlc(self, session: WsSession, key: str, m: Market, snapshot: bool) -> None:
        now = self.now()
        cursor = self.cursor(m, now)
        if snapshot and not self.burst:
            current = now - now % BUCKET_MS
            candles = candle_entries(m, cursor.book, current - (SNAPSHOT_CANDLES - 1) * BUCKET_MS,
                                     current + BUCKET_MS, now)
            if candles:
                await session.send({"channel": "ohlc", "type": "snapshot", "timestamp": iso_us(now),
                                    "data": [self._candle_item(m.symbol, c) for c in candles]})
        self.subscribed(session, key, cursor)

    def _trade_frame(self, symbol: str, trades: list[Entry], kind: str = "update") -> str:
        return dumps({"channel": "trade", "type": kind, "data": [ws_trade(symbol, t) for t in trades]})

    @staticmethod
    def _candle_item(symbol: str, c: CandleEntry) -> dict[str, Any]:
        num: Callable[[str], float | str] = json_number if isinstance(c, PoisonCandle) else float
        return {"symbol": symbol, "open": num(c.open), "high": num(c.high), "low": num(c.low),
                "close": num(c.close), "trades": c.count, "volume": num(c.volume), "vwap": num(c.vwap),
                "interval_begin": iso_us(c.ts), "interval": 1, "timestamp": iso_us(c.ts + BUCKET_MS)}

    async def pump(self, session: WsSession) -> None:
        if self._v1(session):
            await self.v1.pump(session)
            return
        if time.monotonic() - session.last_sent >= HEARTBEAT_S:
            await session.send_text('{"channel":"heartbeat"}')  # Kraken's once-a-second sign of life
        now = self.now()
        for key, cursor in list(session.subs.items()):
            assert isinstance(cursor, TradeCursor)
            trades = cursor.advance(now)
            if key.startswith("trade:"):
                entries = cursor.with_poison(cursor.with_duplicates(trades, self.faults) if trades else [])
                for part in chunks(entries, FRAME_TRADES):
                    await session.send_text(self._trade_frame(cursor.market.symbol, part))
                    self.stats.trades_sent += len(part)
                continue
            poison = cursor.poison_candles()
            if trades or poison:
                # the forming candle after the last trade of each minute touched in this tick
                last_by_minute: dict[int, int] = {}
                for t in trades:
                    last_by_minute[t.ts - t.ts % BUCKET_MS] = t.ts
                items = []
                for minute, upto in last_by_minute.items():
                    c = cursor.market.candle(minute, upto)
                    if c is not None:
                        items.append(self._candle_item(cursor.market.symbol, c))
                items.extend(self._candle_item(cursor.market.symbol, pc) for pc in poison)  # an extra update
                if items:
                    await session.send({"channel": "ohlc", "type": "update", "timestamp": iso_us(now),
                                        "data": items})
