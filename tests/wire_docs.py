"""Wire examples copied from the venues' public documentation, for the simulator fidelity and fast-path tests.

Binance: https://github.com/binance/binance-spot-api-docs/blob/master/web-socket-streams.md (the payloads of
the aggTrade, trade and kline streams; combined streams wrap each as {"stream": <name>, "data": <payload>}).
Kraken websocket v1: https://docs.kraken.com/api/docs/websocket-v1/trade, .../ohlc, .../systemstatus,
.../subscriptionstatus, .../heartbeat, .../ping. Kraken websocket v2:
https://docs.kraken.com/api/docs/websocket-v2/trade and .../ohlc.
"""

from __future__ import annotations

from typing import Any

BINANCE_AGG_TRADE: dict[str, Any] = {
    "e": "aggTrade", "E": 1672515782136, "s": "BNBBTC", "a": 12345, "p": "0.001", "q": "100", "f": 100,
    "l": 105, "T": 1672515782136, "m": True, "M": True,
}
BINANCE_TRADE: dict[str, Any] = {
    "e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100", "b": 88, "a": 50,
    "T": 1672515782136, "m": True, "M": True,
}
BINANCE_KLINE: dict[str, Any] = {
    "e": "kline", "E": 1672515782136, "s": "BNBBTC", "k": {
        "t": 1672515780000, "T": 1672515839999, "s": "BNBBTC", "i": "1m", "f": 100, "L": 200, "o": "0.0010",
        "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100, "x": False, "q": "1.0000",
        "V": "500", "Q": "0.500", "B": "123456",
    },
}
BINANCE_COMBINED: dict[str, Any] = {"stream": "bnbbtc@aggTrade", "data": BINANCE_AGG_TRADE}
BINANCE_SUBSCRIBED: dict[str, Any] = {"result": None, "id": 1}

KRAKEN_V1_SYSTEM_STATUS: dict[str, Any] = {
    "connectionID": 8628615390848610000, "event": "systemStatus", "status": "online", "version": "1.0.0",
}
KRAKEN_V1_SUBSCRIBED: dict[str, Any] = {
    "channelID": 10001, "channelName": "ohlc-5", "event": "subscriptionStatus", "pair": "XBT/EUR", "reqid": 42,
    "status": "subscribed", "subscription": {"interval": 5, "name": "ohlc"},
}
KRAKEN_V1_SUBSCRIBE_ERROR: dict[str, Any] = {
    "errorMessage": "Currency pair not in ISO 4217-A3 format foobar", "event": "subscriptionStatus",
    "pair": "foobar", "reqid": 42, "status": "error", "subscription": {"name": "ticker"},
}
KRAKEN_V1_TRADE: list[Any] = [
    0,
    [["5541.20000", "0.15850568", "1534614057.321597", "s", "l", ""],
     ["6060.00000", "0.02455000", "1534614057.324998", "b", "l", ""]],
    "trade",
    "XBT/USD",
]
KRAKEN_V1_OHLC: list[Any] = [
    42,
    ["1542057314.748456", "1542057360.435743", "3586.70000", "3586.70000", "3586.60000", "3586.60000",
     "3586.68894", "0.03373000", 2],
    "ohlc-5",
    "XBT/USD",
]
KRAKEN_V1_HEARTBEAT: dict[str, Any] = {"event": "heartbeat"}
KRAKEN_V1_PONG: dict[str, Any] = {"event": "pong", "reqid": 42}

KRAKEN_V2_TRADE: dict[str, Any] = {
    "channel": "trade", "type": "update", "data": [
        {"symbol": "MATIC/USD", "side": "sell", "price": 0.5117, "qty": 40.0, "ord_type": "market",
         "trade_id": 4665906, "timestamp": "2023-09-25T07:49:37.708706Z"},
    ],
}
KRAKEN_V2_OHLC: dict[str, Any] = {
    "channel": "ohlc", "type": "update", "timestamp": "2023-10-04T16:26:30.524394914Z", "data": [
        {"symbol": "MATIC/USD", "open": 0.5624, "high": 0.5628, "low": 0.5622, "close": 0.5627, "trades": 12,
         "volume": 30927.68066226, "vwap": 0.5626, "interval_begin": "2023-10-04T16:25:00.000000000Z",
         "interval": 5, "timestamp": "2023-10-04T16:30:00.000000Z"},
    ],
}


def shape(value: Any) -> Any:
    """The JSON shape of a value: dict keys with their shapes, list items' shapes, a scalar's JSON type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def same_shape(documented: Any, served: Any) -> bool:
    """Whether ``served`` has the documented shape (a list of trades may hold any number of trade rows)."""
    if isinstance(documented, dict):
        return isinstance(served, dict) and set(documented) == set(served) and all(
            same_shape(documented[k], served[k]) for k in documented)
    if isinstance(documented, list):
        if not isinstance(served, list):
            return False
        if documented and all(isinstance(d, list | dict) for d in documented) and \
                all(shape(d) == shape(documented[0]) for d in documented):
            return all(same_shape(documented[0], s) for s in served)  # rows: any number of them
        return len(documented) == len(served) and all(same_shape(d, s) for d, s in zip(documented, served,
                                                                                        strict=True))
    return shape(documented) == shape(served)
