"""What every simulated exchange shares: markets, fault gate for REST, websocket sessions, live trade cursors."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from fullon_ohlcv_service.simulator.faults import FaultState
from fullon_ohlcv_service.simulator.market import BUCKET_MS, Market, SimTrade
from fullon_ohlcv_service.simulator.poison import Entry, PoisonBook, PoisonCandle, PoisonTrade, at

_conn_ids = itertools.count(1)


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers)


def bound(value: int | None, what: str) -> int:
    """A limit the capability table (``fullon_ohlcv_service/venues.py``) gives for a venue the simulator serves.

    The simulator serves the same page sizes and depths the adapter reads, from that one table.
    """
    if value is None:
        raise RuntimeError(f"the capability table gives no {what}")
    return value


class VenueStats:
    """Requests, connections and subscriptions seen by one exchange."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.connections_total = 0
        self.connections_open = 0
        self.subscriptions_total = 0
        self.subscriptions_open = 0
        self.frames_sent = 0
        self.trades_sent = 0

    def snapshot(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "requests_total": sum(self.requests.values()),
                "connections_total": self.connections_total, "connections_open": self.connections_open,
                "subscriptions_total": self.subscriptions_total, "subscriptions_open": self.subscriptions_open,
                "frames_sent": self.frames_sent, "trades_sent": self.trades_sent}


class TradeCursor:
    """The live position of one trade subscription: everything with ``ts > last_ts`` is still to send."""

    def __init__(self, market: Market, last_ts: int, burst: bool, book: PoisonBook | None = None) -> None:
        self.market = market
        self.last_ts = last_ts
        self.burst = burst
        self.book = book
        self.span = (last_ts + 1, last_ts + 1)  # [from, to) the last advance covered
        self.recent: deque[SimTrade] = deque(maxlen=64)  # re-sent by the duplicates fault

    def advance(self, now: int) -> list[SimTrade]:
        """New trades up to ``now`` (or, in burst mode, the next non-empty minute whatever the clock says)."""
        start = self.last_ts + 1
        trades = self._advance(now)
        self.span = (start, self.last_ts + 1)
        return trades

    def _advance(self, now: int) -> list[SimTrade]:
        if self.burst:
            for _ in range(1440):
                b = (self.last_ts + 1) // BUCKET_MS
                trades = [t for t in self.market.bucket(b) if t.ts > self.last_ts]
                self.last_ts = b * BUCKET_MS + BUCKET_MS - 1
                if trades:
                    return trades
            return []
        if now <= self.last_ts:
            return []
        trades = self.market.trades(self.last_ts + 1, now + 1)
        self.last_ts = now
        return trades

    def poison_trades(self) -> list[PoisonTrade]:
        """The poisoned trades whose slots the last advance passed."""
        return self.book.trades_in(*self.span) if self.book else []

    def poison_candles(self) -> list[PoisonCandle]:
        """The poisoned candles whose slots the last advance passed."""
        return self.book.candles_in(*self.span) if self.book else []

    def with_poison(self, trades: list[SimTrade]) -> list[Entry]:
        """``trades`` (valid, maybe with re-sent duplicates) with the passed poisoned trades put in time order."""
        poison = self.poison_trades()
        if not poison:
            return list(trades)
        out: list[Entry] = list(trades)
        for p in poison:
            i = next((k for k, e in enumerate(out) if at(e) > p.slot), len(out))
            out.insert(i, p)
        return out

    def with_duplicates(self, trades: list[SimTrade], faults: FaultState) -> list[SimTrade]:
        """Append re-sends of already-sent (or just-sent) real trades while the duplicates fault lasts."""
        out = list(trades)
        pool = list(self.recent) + trades
        i = 0
        while pool and faults.take("duplicates"):
            out.append(pool[-1 - i % len(pool)])  # the most recent trades again, newest first: out of order
            i += 1
        self.recent.extend(trades)
        return out


class WsSession:
    """One accepted websocket: the socket, its subscriptions and its sender task."""

    def __init__(self, venue: Venue, ws: web.WebSocketResponse, request: web.Request | None = None) -> None:
        self.venue = venue
        self.ws = ws
        self.path = request.path if request is not None else ""
        self.query: dict[str, str] = dict(request.query) if request is not None else {}
        self.match: dict[str, str] = dict(request.match_info) if request is not None else {}
        self.combined = False  # Binance: frames wrapped as {"stream": ..., "data": ...}
        self.id = next(_conn_ids)
        self.subs: dict[str, Any] = {}
        self.opened = time.monotonic()
        self.lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.last_sent = time.monotonic()

    async def send(self, obj: Any) -> None:
        await self.send_text(dumps(obj))

    async def send_text(self, text: str) -> None:
        if self.ws.closed:
            raise ConnectionResetError("websocket closed")
        await self.ws.send_str(text)
        self.venue.stats.frames_sent += 1
        self.last_sent = time.monotonic()

    def close_soon(self, code: int = 1001) -> None:
        if not self.ws.closed:
            asyncio.get_running_loop().create_task(self.ws.close(code=code, message=b"simulator drop"))


class Venue(abc.ABC):
    """Base of one simulated exchange (Kraken, Binance): its markets, faults, stats and live sessions."""

    name = ""

    def __init__(self, markets: dict[str, Market], *, clock: Callable[[], int], burst: bool = False,
                 tick_s: float = 0.05) -> None:
        self.markets = markets
        self.clock = clock
        self.burst = burst
        self.tick_s = tick_s
        self.faults = FaultState()
        self.stats = VenueStats()
        self.sessions: set[WsSession] = set()
        self._malformed_kind = 0
        self.poison = {symbol: PoisonBook(m, self.name) for symbol, m in markets.items()}

    # -- to be provided by each exchange --------------------------------------------------------------
    @abc.abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Provided by each exchange's venue."""

    @abc.abstractmethod
    def rate_limit_response(self, status: int) -> web.Response:
        """Provided by each exchange's venue."""

    @abc.abstractmethod
    def malformed_frames(self) -> list[str]:
        """Provided by each exchange's venue."""

    @abc.abstractmethod
    async def on_ws_message(self, session: WsSession, msg: Any) -> None:
        """Provided by each exchange's venue."""

    async def on_ws_open(self, session: WsSession) -> None:
        return None

    @abc.abstractmethod
    async def pump(self, session: WsSession) -> None:
        """Provided by each exchange's venue."""

    # -- REST ------------------------------------------------------------------------------------------
    async def rest_gate(self, request: web.Request, key: str) -> web.Response | None:
        """Count the request, add latency, and answer with an injected 429/418/5xx when one is due."""
        self.stats.requests[key] += 1
        if self.faults.latency_ms > 0:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if self.faults.take("rest_429"):
            return self.rate_limit_response(429)
        if self.faults.take("rest_418"):
            return self.rate_limit_response(418)
        if self.faults.take("rest_5xx"):
            return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>",
                                content_type="text/html")
        return None

    # -- websocket -------------------------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests["ws"] += 1
        if self.faults.refusing():
            self.faults.counts["ws_refused"] += 1
            return web.Response(status=503, text="websocket connections refused (simulated)")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        session = WsSession(self, ws, request)
        self.sessions.add(session)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        sender = asyncio.get_running_loop().create_task(self._sender(session))
        try:
            await self.on_ws_open(session)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = orjson.loads(msg.data)
                    except orjson.JSONDecodeError:
                        continue
                    await self.on_ws_message(session, data)
                elif msg.type == WSMsgType.ERROR:
                    break
        except ConnectionResetError:
            pass
        finally:
            for task in (sender, *session.tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.sessions.discard(session)
            self.stats.connections_open -= 1
            self.stats.subscriptions_open -= len(session.subs)
            if not ws.closed:
                await ws.close()
        return ws

    async def _sender(self, session: WsSession) -> None:
        try:
            while not session.ws.closed:
                if self.faults.ws_drop_every_s > 0 and \
                        time.monotonic() - session.opened >= self.faults.ws_drop_every_s:
                    self.faults.counts["ws_drop"] += 1
                    await session.ws.close(code=1001, message=b"simulator drop")
                    return
                if not self.faults.stalled() and session.subs:
                    if self.faults.latency_ms > 0:
                        await asyncio.sleep(self.faults.latency_ms / 1000)
                    if self.faults.take("malformed"):
                        await self.send_malformed(session)
                    if self.faults.take("malformed_json"):
                        await session.send_text('{"channel":"trade","type":"update","data":[{"symbol":')
                    async with session.lock:
                        await self.pump(session)
                if self.burst and session.subs and not self.faults.stalled():
                    await asyncio.sleep(0)
                else:
                    await asyncio.sleep(self.tick_s)
        except (ConnectionResetError, RuntimeError):
            return

    async def send_malformed(self, session: WsSession) -> None:
        frames = self.malformed_frames()
        frame = frames[self._malformed_kind % len(frames)]
        self._malformed_kind += 1
        await session.send_text(frame)

    def drop_all(self) -> int:
        """Close every open websocket now (the ``ws_drop`` fault); returns how many were closed."""
        n = 0
        for s in list(self.sessions):
            if not s.ws.closed:
                s.close_soon()
                n += 1
        self.faults.counts["ws_drop"] += n
        return n

    def subscribed(self, session: WsSession, key: str, value: Any) -> None:
        if key not in session.subs:
            self.stats.subscriptions_total += 1
            self.stats.subscriptions_open += 1
        session.subs[key] = value

    def unsubscribed(self, session: WsSession, key: str) -> None:
        if session.subs.pop(key, None) is not None:
            self.stats.subscriptions_open -= 1

    def market_for(self, symbol: str) -> Market | None:
        return self.markets.get(symbol)

    def book(self, market: Market) -> PoisonBook:
        return self.poison[market.symbol]

    def cursor(self, market: Market, last_ts: int) -> TradeCursor:
        """A live cursor from ``last_ts`` that also passes the market's poisoned entries."""
        return TradeCursor(market, last_ts, self.burst, self.book(market))

    def plant_poison(self, trades: int) -> tuple[int, int]:
        """The ``poison`` fault: ``trades`` poisoned trades and one poisoned candle in every market, from now on."""
        now = self.now()
        nt = nc = 0
        for book in self.poison.values():
            t, c = book.plant(now, trades, 1 if trades else 0)
            nt += len(t)
            nc += len(c)
        self.faults.counts["poison_trades"] += nt
        self.faults.counts["poison_candles"] += nc
        return nt, nc

    def now(self) -> int:
        return self.clock()


def chunks(items: list[Entry], size: int) -> Iterable[list[Entry]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
