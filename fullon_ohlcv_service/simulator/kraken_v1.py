"""Kraken websocket v1 (``wss://ws.kraken.com``, arrays on channel ids), served beside v2 for clients that speak it.

What it serves, as Kraken documents v1: a ``systemStatus`` event on connect; ``{"event": "ping"}`` answered
with ``pong``; ``subscribe``/``unsubscribe`` of ``trade`` and ``ohlc`` (interval 1) for pairs named by their
wsname (``XBT/USD``) or by the unified symbol (``BTC/USD``), each answered by one ``subscriptionStatus`` per
pair; a snapshot of the last 50 trades on a trade subscription; then
``[channelID, [[price, volume, time, side, orderType, misc], ...], "trade", pair]`` and
``[channelID, [time, etime, open, high, low, close, vwap, volume, count], "ohlc-1", pair]``; and a
``{"event": "heartbeat"}`` after a second with nothing else sent.

Times are seconds with six decimals. A trade's is its millisecond plus 500 microseconds (like the REST
``Trades`` times), so ``int(float(time) * 1000)`` gives back the millisecond exactly. v1 trades carry no
trade id; the truth endpoints have them.
"""

from __future__ import annotations

import time
from typing import Any

from fullon_ohlcv_service.simulator.market import BUCKET_MS, Market, SimTrade
from fullon_ohlcv_service.simulator.poison import (
    CandleEntry,
    Entry,
    PoisonTrade,
    latest_entries,
)
from fullon_ohlcv_service.simulator.venue import TradeCursor, WsSession, chunks, dumps

Kraken = Any  # the owning simulator.kraken.Kraken venue; not imported, so the two modules form no cycle

VERSION = "1.9.5"
SNAPSHOT_TRADES = 50
FRAME_TRADES = 1000
HEARTBEAT_S = 1.0
CHANNELS = ("trade", "ohlc")


def seconds(ts_ms: int, micros: int = 0) -> str:
    """``1534614057.321500``: epoch seconds with six decimals, ``micros`` into the millisecond."""
    sec, ms = divmod(ts_ms, 1000)
    return f"{sec}.{ms:03d}{micros:03d}"


def trade_row(t: Entry) -> list[str]:
    """One v1 trade: [price, volume, time, side, orderType, misc] (a poisoned one with its raw values)."""
    if isinstance(t, PoisonTrade):
        side = "x" if t.side is None else "b" if t.buy else "s"
        return [t.price, t.amount, seconds(t.ts, 500), side, "m", ""]
    ord_type = "l" if t.id % 5 == 0 else "m"  # as the v2 and REST formats say it
    return [t.price, t.amount, seconds(t.ts, 500), "b" if t.buy else "s", ord_type, ""]


def ohlc_row(c: CandleEntry, upto: int) -> list[Any]:
    """[time, etime, open, high, low, close, vwap, volume, count]: time is the last update, etime the close."""
    return [seconds(upto), seconds(c.ts + BUCKET_MS), c.open, c.high, c.low, c.close, c.vwap, c.volume, c.count]


class V1Sub:
    """One v1 subscription: its channel id, the pair name the client used, and its live cursor."""

    __slots__ = ("channel", "cursor", "name", "pair")

    def __init__(self, channel: int, name: str, pair: str, cursor: TradeCursor) -> None:
        self.channel = channel
        self.name = name  # "trade" or "ohlc-1"
        self.pair = pair
        self.cursor = cursor


class KrakenV1:
    """The v1 protocol of one Kraken venue (its markets, faults and stats are the venue's)."""

    def __init__(self, venue: Kraken, by_name: dict[str, Market]) -> None:
        self.venue = venue
        self.by_name = by_name  # wsname (XBT/USD) and unified symbol (BTC/USD) -> market
        self._next_channel = 1000

    async def on_open(self, session: WsSession) -> None:
        self.venue._next_conn += 1
        await session.send({"connectionID": self.venue._next_conn, "event": "systemStatus", "status": "online",
                            "version": VERSION})

    async def on_message(self, session: WsSession, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        event = msg.get("event")
        reqid = msg.get("reqid")
        if event == "ping":
            if not self.venue.faults.stalled():
                await session.send({"event": "pong", **({"reqid": reqid} if reqid is not None else {})})
            return
        if event not in ("subscribe", "unsubscribe"):
            await session.send({"errorMessage": "Unsupported event", "event": "error",
                                **({"reqid": reqid} if reqid is not None else {})})
            return
        sub = msg.get("subscription")
        pairs = msg.get("pair")
        name = sub.get("name") if isinstance(sub, dict) else None
        interval = sub.get("interval", 1) if isinstance(sub, dict) else 1
        if not isinstance(pairs, list) or not pairs:
            await self._status(session, event, None, sub, reqid, error="Pair(s) not found")
            return
        for pair in pairs:
            m = self.by_name.get(pair) if isinstance(pair, str) else None
            if name not in CHANNELS:
                await self._status(session, event, pair, sub, reqid, error="Subscription name invalid")
                continue
            if m is None:
                await self._status(session, event, pair, sub, reqid, error=f"Currency pair not supported {pair}")
                continue
            if name == "ohlc" and interval != 1:
                await self._status(session, event, pair, sub, reqid, error="Subscription ohlc interval not supported")
                continue
            key = f"v1:{name}:{pair}"
            async with session.lock:
                if event == "unsubscribe":
                    old = session.subs.get(key)
                    self.venue.unsubscribed(session, key)
                    channel = old.channel if isinstance(old, V1Sub) else None
                    await self._status(session, event, pair, sub, reqid, channel=channel,
                                       channel_name=old.name if isinstance(old, V1Sub) else None)
                    continue
                if key in session.subs:
                    continue
                self._next_channel += 1
                channel_name = "trade" if name == "trade" else "ohlc-1"
                await self._status(session, event, pair, sub, reqid, channel=self._next_channel,
                                   channel_name=channel_name)
                now = self.venue.now()
                state = V1Sub(self._next_channel, channel_name, pair, self.venue.cursor(m, now))
                if name == "trade" and not self.venue.burst:
                    recent = latest_entries(m, state.cursor.book, now, SNAPSHOT_TRADES)
                    if recent:
                        await session.send_text(self._trade_frame(state, recent))
                        state.cursor.recent.extend(t for t in recent if isinstance(t, SimTrade))
                elif name == "ohlc" and not self.venue.burst:
                    last = self._last_candle(m, now)  # "a snapshot of the last valid candle"
                    if last is not None:
                        await session.send(self._ohlc_frame(state, last, min(now, last.ts + BUCKET_MS - 1)))
                self.venue.subscribed(session, key, state)

    async def _status(self, session: WsSession, event: str, pair: Any, sub: Any, reqid: Any, *,
                      error: str | None = None, channel: int | None = None, channel_name: str | None = None) -> None:
        reply: dict[str, Any] = {}
        if error is None and channel is not None:
            reply["channelID"] = channel
            reply["channelName"] = channel_name
        if error is not None:
            reply["errorMessage"] = error
        reply["event"] = "subscriptionStatus"
        if pair is not None:
            reply["pair"] = pair
        if reqid is not None:
            reply["reqid"] = reqid
        reply["status"] = "error" if error else "subscribed" if event == "subscribe" else "unsubscribed"
        reply["subscription"] = sub if isinstance(sub, dict) else {}
        await session.send(reply)

    def _last_candle(self, m: Market, now: int) -> CandleEntry | None:
        """The newest minute with trades in the last hour, as it stands at ``now``."""
        minute = now - now % BUCKET_MS
        for _ in range(60):
            c = m.candle(minute, now if minute + BUCKET_MS > now else None)
            if c is not None:
                return c
            minute -= BUCKET_MS
        return None

    @staticmethod
    def _trade_frame(state: V1Sub, trades: list[Entry]) -> str:
        return dumps([state.channel, [trade_row(t) for t in trades], "trade", state.pair])

    async def pump(self, session: WsSession) -> None:
        if time.monotonic() - session.last_sent >= HEARTBEAT_S:
            await session.send_text('{"event":"heartbeat"}')
        venue = self.venue
        now = venue.now()
        for state in list(session.subs.values()):
            assert isinstance(state, V1Sub)
            cursor = state.cursor
            trades = cursor.advance(now)
            if state.name == "trade":
                entries = cursor.with_poison(cursor.with_duplicates(trades, venue.faults) if trades else [])
                for part in chunks(entries, FRAME_TRADES):
                    await session.send_text(self._trade_frame(state, part))
                    venue.stats.trades_sent += len(part)
                continue
            last_by_minute: dict[int, int] = {}
            for t in trades:
                last_by_minute[t.ts - t.ts % BUCKET_MS] = t.ts
            for minute, upto in last_by_minute.items():
                c = cursor.market.candle(minute, upto)
                if c is not None:
                    await session.send(self._ohlc_frame(state, c, upto))
            for pc in cursor.poison_candles():  # an extra update of the poisoned minute
                await session.send(self._ohlc_frame(state, pc, max(pc.ts, min(now, pc.ts + BUCKET_MS - 1))))

    @staticmethod
    def _ohlc_frame(state: V1Sub, c: CandleEntry, upto: int) -> list[Any]:
        return [state.channel, ohlc_row(c, upto), state.name, state.pair]
