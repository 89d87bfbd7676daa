"""The trade websocket's facts: connected since, the newest trade it delivered, reconnects, time not read."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from fullon_ohlcv_service.models import Trade
from fullon_ohlcv_service.timeutil import now_ms


class Connection:
    """What one exchange's trade websocket has shown since it last (re)connected.

    - ``connected_ms``: when the current connection first delivered (local clock), ``newest_ts``: the
      newest trade time it delivered. Together they prove a quiet symbol synced (``proves``).
    - ``blocked_s``: seconds spent taking received batches (maybe waiting on the writer) instead of
      reading. That time is not the exchange's silence: the adapter keeps what arrives meanwhile.
    """

    def __init__(self, subscribe_margin_ms: int = 3000) -> None:
        self.subscribe_margin_ms = subscribe_margin_ms
        self.connected = False
        self.connected_ms: int | None = None
        self.newest_ts: int | None = None
        self.reconnects = 0
        self.reading = True  # False while a received batch is being taken
        self.block_started = 0.0  # when the current batch began to be taken
        self.blocked_total = 0.0  # seconds spent taking batches so far

    def delivered(self, batch: Sequence[tuple[str, Trade]]) -> None:
        """A read returned ``batch`` (maybe empty): the connection is up."""
        if not self.connected:
            self.connected = True
            self.connected_ms = now_ms()
        if batch:
            newest = max(t.ts for _, t in batch)
            if self.newest_ts is None or newest > self.newest_ts:
                self.newest_ts = newest

    def lost(self) -> None:
        """The socket dropped: no proof spans this, until the next connection delivers."""
        self.reconnects += 1
        self.connected = False
        self.connected_ms = self.newest_ts = None

    def proves(self, watermark: int | None) -> bool:
        """Whether the current connection delivers every trade after ``watermark`` of every symbol.

        True when the watermark is at least ``subscribe_margin_ms`` past the connection's first
        delivery (every symbol was subscribed in that one request) and the socket has already
        delivered a trade at or after the watermark (it is flowing, not stalled). A reconnect
        resets both, and interrupts every symbol, so the proof never spans an interruption.
        """
        return (watermark is not None and self.connected and self.connected_ms is not None
                and self.newest_ts is not None
                and self.connected_ms + self.subscribe_margin_ms <= watermark <= self.newest_ts)

    @contextlib.contextmanager
    def taking(self) -> Iterator[None]:
        """Around taking one received batch: the time inside is not spent reading."""
        self.reading = False
        self.block_started = time.monotonic()
        try:
            yield
        finally:
            self.blocked_total += time.monotonic() - self.block_started
            self.reading = True

    def blocked_s(self, mono: float) -> float:
        """Seconds spent taking batches (not reading the websocket) up to ``mono``."""
        if self.reading:
            return self.blocked_total
        return self.blocked_total + max(0.0, mono - self.block_started)
