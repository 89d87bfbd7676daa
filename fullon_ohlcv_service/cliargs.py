"""argparse pieces every command shares: one-line errors (exit 2) and bounded, finite number types."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from fullon_ohlcv_service.errors import EXIT_USAGE
from fullon_ohlcv_service.settings import MAX_SECONDS, count_problem, seconds_problem
from fullon_ohlcv_service.timeutil import parse_time

# the latest epoch ms a time flag accepts: 9999-12-31T23:59:59.999Z (and what ISO-8601 can spell)
MAX_TIME_MS = 253_402_300_799_999


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump) and exits EXIT_USAGE (2)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def seconds(*, zero_ok: bool = False, hi: float = MAX_SECONDS) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds in (0, hi] ([0, hi] with ``zero_ok``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_short(text)!r} is not a number of seconds") from None
        problem = seconds_problem(value, zero_ok=zero_ok, hi=hi)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def count(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_short(text)!r} is not a whole number") from None
        problem = count_problem(value, lo, hi)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def number(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in [lo, hi] (a rate, a count of days)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_short(text)!r} is not a number") from None
        if not lo <= value <= hi:  # also false for nan; inf is above any hi
            raise argparse.ArgumentTypeError(f"must be a finite number from {lo:g} to {hi:g}, got {_short(text)}")
        return value

    return parse


def time_ms(text: str) -> int:
    """An argparse ``type``: epoch milliseconds or an ISO-8601 time, from 1970 to the year 9999."""
    try:
        value = parse_time(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{_short(text)!r} is neither epoch ms nor an ISO-8601 time") from None
    if not 0 <= value <= MAX_TIME_MS:
        raise argparse.ArgumentTypeError(f"{_short(text)} is outside 1970-01-01 .. 9999-12-31")
    return value


def _short(text: str) -> str:
    return text if len(text) <= 24 else text[:21] + "..."


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the collection itself, shared by ``ohlcv-worker`` and ``ohlcv-supervisor`` (for every worker)."""
    from fullon_ohlcv_service.memory import MIN_BUFFER_MB
    from fullon_ohlcv_service.settings import COUNTS

    g = parser.add_argument_group("collection (each worker)")
    g.add_argument("--flush-rows", type=count(*COUNTS["flush_rows"]), metavar="N",
                   help="rows per write batch (default 1000)")
    g.add_argument("--flush-interval", type=seconds(), metavar="S",
                   help="max seconds a row waits before a flush (default 0.25)")
    g.add_argument("--buffer-rows", type=count(*COUNTS["buffer_rows"]), metavar="N",
                   help="rows buffered before reading pauses (default 50000)")
    g.add_argument("--buffer-mb", type=count(MIN_BUFFER_MB, 1 << 20), metavar="MB",
                   help="memory bound of each worker's buffers, all its symbols together (default 128)")
    g.add_argument("--silence-min", type=seconds(), metavar="S",
                   help="shortest silence (s) that triggers a REST catch-up (default 3)")
    g.add_argument("--gap-check", type=seconds(), metavar="S", help="seconds between candle gap checks (default 60)")
    g.add_argument("--reconcile", type=seconds(), metavar="S",
                   help="seconds between REST reconciliations of the last final candles (default 60)")
    g.add_argument("--no-native-ohlcv", dest="native_ohlcv", action="store_const", const=False,
                   help="do not watch the exchange's live candles (candles then come from trades and REST only)")
