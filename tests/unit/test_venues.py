"""The per-venue capability tables (venues.py) and the code that reads them instead of the exchange's name."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from fullon_ohlcv_service import venues
from fullon_ohlcv_service.adapters import ccxt_exchange as cx
from fullon_ohlcv_service.adapters.ccxt_local import local_overrides
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.venues import BINANCE, DEFAULT, HOUR_MS, KRAKEN, capabilities

PACKAGE = Path(__file__).resolve().parents[2] / "fullon_ohlcv_service"
VENUE_NAMES = {"kraken", "binance"}


def test_kraken_table() -> None:
    assert capabilities("kraken") is KRAKEN
    assert KRAKEN.ohlcv_depth == 720  # REST OHLC serves the newest 720 bars whatever `since` says
    assert (KRAKEN.trade_limit, KRAKEN.trade_page_default) == (None, 1000)  # its default page is its maximum
    assert KRAKEN.candle_limit is None
    assert (KRAKEN.trade_pagination, KRAKEN.trade_cursor_arg, KRAKEN.trade_since_ns) == ("time", "since", True)
    assert KRAKEN.trade_window_ms is None and not KRAKEN.closed_candle_flag
    assert cx.exchange_options("kraken") == {}


def test_binance_table() -> None:
    assert capabilities("binance") is BINANCE
    assert BINANCE.ohlcv_depth is None
    assert (BINANCE.trade_limit, BINANCE.trade_page_default) == (1000, 500)  # ask the maximum, not ccxt's 500
    assert BINANCE.candle_limit == 1000
    assert (BINANCE.trade_pagination, BINANCE.trade_cursor_arg, BINANCE.trade_since_ns) == ("id", "fromId", False)
    assert BINANCE.trade_window_ms == HOUR_MS and BINANCE.closed_candle_flag
    assert (BINANCE.ws_symbols_per_subscribe, BINANCE.ws_streams_per_connection) == (200, 1024)
    assert BINANCE.ws_messages_per_second == 5 and BINANCE.ws_connect_rate == (300, 300.0)
    assert cx.exchange_options("binance") == {
        "fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False,
        "watchTrades": {"name": "aggTrade"}, "watchTradesForSymbols": {"name": "aggTrade"},
    }


def test_a_venue_without_a_table_gets_the_defaults() -> None:
    okx = capabilities("okx")
    assert okx == replace(DEFAULT, name="okx")
    assert okx.trade_limit is None and okx.candle_limit is None and okx.ohlcv_depth is None
    assert okx.trade_cursor_arg is None and not okx.trade_since_ns and okx.trade_window_ms is None
    assert cx.exchange_options("okx") == {}
    ex = cx.CcxtExchange(ExchangeSpec(name="okx"))
    assert ex.venue.name == "okx" and ex.ohlcv_depth is None


def test_options_handed_out_are_copies() -> None:
    opts = cx.exchange_options("binance")
    opts["fetchMarkets"]["types"].append("future")
    local_overrides("binance", "http://127.0.0.1:1")["options"]["fetchMarkets"]["types"].append("swap")
    assert cx.exchange_options("binance")["fetchMarkets"] == {"types": ["spot"]}
    assert BINANCE.markets_options["fetchMarkets"] == {"types": ["spot"]}


def test_adding_a_venue_is_adding_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    okx = replace(DEFAULT, name="okx", ohlcv_depth=1440, trade_page_max=100, trade_page_default=100,
                  candle_page_max=300, candle_page_default=100, stream_options=MappingProxyType({"x": {"y": 1}}))
    monkeypatch.setattr(venues, "VENUES", MappingProxyType({**venues.VENUES, "okx": okx}))
    ex = cx.CcxtExchange(ExchangeSpec(name="okx"))
    assert ex.venue is okx and ex.ohlcv_depth == 1440
    assert okx.candle_limit == 300 and okx.trade_limit is None
    assert cx.build_config("okx", {}, None)["options"] == {"x": {"y": 1}}


def _row(tid: Any, info: Any = None) -> dict[str, Any]:
    return {"id": tid, "info": info}


def test_page_cursor_by_id_is_past_every_row_refused_ones_included() -> None:
    rows = [_row("7"), _row("12"), _row(""), _row("x9"), _row(None), _row("10")]
    assert cx.page_cursor("id", rows) == 13
    assert cx.page_cursor("id", [_row(""), _row(None)]) is None


def test_page_cursor_by_time_is_the_cursor_ccxt_leaves_on_the_last_row() -> None:
    kraken_row = ["100.0", "0.1", 1.5, "b", "m", "", 42, "1700000000123456789"]  # + Kraken's `last`, appended by ccxt
    assert cx.page_cursor("time", [_row("1"), _row("42", kraken_row)]) == "1700000000123456789"
    assert cx.page_cursor("time", [_row("42", kraken_row[:7])]) is None  # no cursor on that page
    assert cx.page_cursor("time", [_row("42", [*kraken_row[:7], None])]) is None
    assert cx.page_cursor("time", [_row("42", {"a": 1})]) is None


def _name_tests(tree: ast.AST) -> list[int]:
    """Lines that compare with, or key a dict by, a venue's name."""
    lines = []
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            values = [k for k in node.keys if k is not None]
        for value in values:
            elts = value.elts if isinstance(value, ast.Tuple | ast.List | ast.Set) else [value]
            if any(isinstance(e, ast.Constant) and e.value in VENUE_NAMES for e in elts):
                lines.append(node.lineno)
    return lines


def test_no_code_outside_the_simulator_branches_on_a_venue_name() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "simulator" or rel == Path("venues.py"):
            continue  # the simulator imitates each venue's wire format; venues.py is the tables
        offenders += [f"{rel}:{line}" for line in _name_tests(ast.parse(path.read_text(), str(path)))]
    assert offenders == []


def test_the_name_check_sees_the_shapes_it_forbids() -> None:
    tree = ast.parse('if self.name == "binance": pass\nD = {"kraken": 720}\nok = name in ("kraken", "x")\n')
    assert _name_tests(tree) == [1, 2, 3]
