"""What each exchange serves and allows: one frozen capability table per venue, after freqtrade's ``_ft_has``.

freqtrade keeps a ``_ft_has_default`` dict on its ``Exchange`` class and lets each venue's subclass override a
few keys (``ohlcv_candle_limit``, ``trades_pagination``, ...). Here the default is a frozen dataclass
(``DEFAULT``), each venue is ``dataclasses.replace(DEFAULT, name=..., <what differs>)``, and the code that
talks to exchanges (``adapters/ccxt_exchange.py``, ``adapters/ccxt_local.py``) and the simulator read these
fields instead of testing the exchange's name. Adding a venue is adding a table here (and registering it in
``VENUES``), plus an override in the adapter only where a field cannot say it (a new cursor shape, a wire quirk).

Numbers are the venue's documented limits as ccxt 4.5.90 uses them; each table names its sources. ``None`` means
"no bound known" (or "not applicable"): the code then asks for the exchange's default and assumes nothing.
Stream limits are recorded for sharding and for the operator; the adapter today subscribes every symbol of a
worker in one call (ccxt splits Binance's streams over connections, 50 per connection by default).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

HOUR_MS = 3_600_000

Pagination = Literal["time", "id"]


def _frozen(options: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(options)))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """One venue's capabilities; every field has a default, so a table lists only what differs."""

    name: str = "default"

    # REST trades
    trade_page_max: int | None = None  # most trades one REST page can hold when asked (None: not known)
    trade_page_default: int = 1000  # trades a page holds when no limit is asked: a page this long is "full"
    trade_pagination: Pagination = "time"  # the exchange's own cursor past a page: a time (Kraken `last`) or an id
    trade_cursor_arg: str | None = None  # request parameter carrying that cursor; None: no known cursor, so a
    #                                      page full of one millisecond cannot be followed
    trade_since_ns: bool = False  # the trades endpoint takes a nanosecond `since` (ccxt sends whole seconds)
    trade_window_ms: int | None = None  # a time query covers at most [since, since + window] (aggTrades: 1 h)

    # REST candles (1m)
    candle_page_max: int | None = None  # most candles one REST page can hold when asked
    candle_page_default: int | None = None  # candles a page holds when no limit is asked
    ohlcv_depth: int | None = None  # the REST OHLC endpoint serves only the newest N 1m bars whatever `since`
    #                                 says (Kraken 720); older minutes come from trades. None: deep history

    # websocket
    native_ohlcv: bool = True  # streams 1m candles (ccxt watch_ohlcv); they only ever write provisional rows
    closed_candle_flag: bool = False  # informational: a candle update says its minute closed (Binance kline `x`).
    #                                   Not read: final candles come from trades and REST, never from the stream
    trade_snapshot: bool = False  # the trade channel sends recent trades on subscribe, as ccxt subscribes
    trade_snapshot_size: int | None = None  # trades in that snapshot when one is sent (or asked for)
    ws_symbols_per_subscribe: int | None = None  # symbols one ccxt subscribe call accepts
    ws_streams_per_connection: int | None = None  # streams (symbol x channel) one connection may carry
    ws_messages_per_second: float | None = None  # messages the client may send per connection per second
    ws_connect_rate: tuple[int, float] | None = None  # (connections, per seconds) the venue allows per IP

    # ccxt options (deep-copied on use): what load_markets needs, and what the streams need
    markets_options: Mapping[str, Any] = field(default_factory=lambda: _frozen({}), compare=False)
    stream_options: Mapping[str, Any] = field(default_factory=lambda: _frozen({}), compare=False)

    sources: tuple[str, ...] = ()  # where the numbers come from

    @property
    def trade_limit(self) -> int | None:
        """Trades to ask for per REST page: the maximum where the default page is smaller, else None (the default)."""
        if self.trade_page_max is not None and self.trade_page_default < self.trade_page_max:
            return self.trade_page_max
        return None

    @property
    def candle_limit(self) -> int | None:
        """Candles to ask for per REST page: the maximum where the default page is smaller, else None (the default)."""
        if (self.candle_page_max is not None and self.candle_page_default is not None
                and self.candle_page_default < self.candle_page_max):
            return self.candle_page_max
        return None

    def ccxt_options(self) -> dict[str, Any]:
        """A fresh copy of every ccxt ``options`` key this venue needs (markets, then streams)."""
        return {**copy.deepcopy(dict(self.markets_options)), **copy.deepcopy(dict(self.stream_options))}


DEFAULT = Capabilities()

KRAKEN = replace(
    DEFAULT,
    name="kraken",
    trade_page_max=1000,  # Trades `count`, 1000 by default and at most
    trade_page_default=1000,
    trade_pagination="time",
    trade_cursor_arg="since",  # the response's `last` (ns), which ccxt appends to the last row's info
    trade_since_ns=True,
    ohlcv_depth=720,
    trade_snapshot=False,  # v2 `trade`: `snapshot` is optional and false by default; ccxt does not ask for it
    trade_snapshot_size=50,  # "the snapshot reflects the most recent 50 trades"
    # websocket v2 limits: no fixed message rate or connection count is documented for public channels; the
    # message rate is dynamic (an error frame when exceeded) and connections pass Cloudflare's own rate limiting
    sources=(
        "https://docs.kraken.com/exchange/guides/general/historical-data (Trades up to 1000 per call, OHLC up "
        "to 720 per call, `last` as the next `since`)",
        "https://docs.kraken.com/api-reference/market-data/get-ohlc-data (up to 720 of the most recent entries, "
        "older data cannot be retrieved regardless of `since`)",
        "https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/trade (snapshot: optional, default false; "
        "the most recent 50 trades)",
        "https://docs.kraken.com/api/docs/guides/spot-ratelimits (websocket message rate: dynamic, not a number)",
        "https://support.kraken.com/hc/en-us/articles/360044504011 (Cloudflare disconnections: reconnect and "
        "resubscribe on one connection)",
        "freqtrade/exchange/kraken.py _ft_has: ohlcv_candle_limit 720, ohlcv_has_history False, "
        "trades_pagination time / since",
    ),
)

BINANCE = replace(
    DEFAULT,
    name="binance",
    trade_page_max=1000,  # aggTrades `limit`: default 500, max 1000
    trade_page_default=500,
    trade_pagination="id",
    trade_cursor_arg="fromId",  # the aggregate id, the same id space as the aggTrade stream
    trade_window_ms=HOUR_MS,  # startTime/endTime at most 1 h apart; ccxt sends endTime = since + 1 h
    candle_page_max=1000,  # klines `limit`: default 500, max 1000
    candle_page_default=500,
    closed_candle_flag=True,
    trade_snapshot=False,
    ws_symbols_per_subscribe=200,  # ccxt 4.5.90 watchTradesForSymbols: "accepts 200 symbols at most"
    ws_streams_per_connection=1024,
    ws_messages_per_second=5,
    ws_connect_rate=(300, 300.0),  # 300 connections per 5 minutes per IP
    markets_options=_frozen({"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}),
    stream_options=_frozen({"watchTrades": {"name": "aggTrade"}, "watchTradesForSymbols": {"name": "aggTrade"}}),
    sources=(
        "https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints "
        "(aggTrades, klines: limit default 500, max 1000; startTime..endTime < 1 h)",
        "https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams (5 incoming messages/s, "
        "1024 streams per connection, 300 connections per 5 minutes per IP)",
        "ccxt/pro/binance.py 4.5.90 (200 symbols per watchTradesForSymbols call)",
        "freqtrade/exchange/binance.py _ft_has: ohlcv_candle_limit 1000, trades_pagination id / fromId",
    ),
)

VENUES: Mapping[str, Capabilities] = MappingProxyType({c.name: c for c in (KRAKEN, BINANCE)})


def capabilities(name: str) -> Capabilities:
    """The capability table of exchange ``name``; the defaults (named ``name``) for a venue without one."""
    return VENUES.get(name) or replace(DEFAULT, name=name)
