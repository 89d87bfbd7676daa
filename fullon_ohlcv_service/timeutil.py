"""One notion of time: int epoch milliseconds (UTC) for data, monotonic seconds for timeouts."""

from __future__ import annotations

import time
from datetime import UTC, datetime

MINUTE_MS = 60_000


def now_ms() -> int:
    """Wall-clock now as int epoch milliseconds."""
    return time.time_ns() // 1_000_000


def floor_minute(ts_ms: int) -> int:
    """The open of the 1m candle that contains ``ts_ms``."""
    return ts_ms - ts_ms % MINUTE_MS


def ms_to_iso(ts_ms: int) -> str:
    """ISO-8601 UTC string with millisecond precision and a ``+00:00`` offset."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def ms_to_datetime(ts_ms: int) -> datetime:
    """Aware UTC datetime for ``ts_ms`` (exact to the millisecond)."""
    return datetime.fromtimestamp(ts_ms // 1000, tz=UTC).replace(microsecond=(ts_ms % 1000) * 1000)


def datetime_to_ms(dt: datetime) -> int:
    """Epoch ms of an aware datetime (a naive one is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_time(text: str) -> int:
    """Parse epoch ms (digits) or an ISO-8601 time into epoch ms. Raises ValueError."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime_to_ms(datetime.fromisoformat(text))
