"""RejectBook: a worker's refused and quarantined rows, counted per symbol, logged sparingly, then stored."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Reject

_HELD_MAX = 10_000  # rejects kept while no writer is attached yet


class RejectBook:
    """Where every refused row of a worker goes (implements ports.RejectSink).

    - Counted per symbol, once per (kind, ref, reason) in this worker's life (the last ``remember``
      keys are kept, so a poison row fetched again by every REST catch-up is counted once).
    - Logged at most once per ``log_every_s`` per symbol, with one refused row's raw values and how
      many were refused since the previous line.
    - Passed on (synchronously, never waiting) to the sink ``attach`` installs: the writer, which
      queues them for the store's ``<symbol>_rejects`` table.
    """

    def __init__(
        self,
        log: Log,
        *,
        log_every_s: float = 60.0,
        remember: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.log_every_s = log_every_s
        self.remember = remember
        self.clock = clock
        self.counts: dict[str, int] = {}
        self._seen: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._sink: Callable[[str, Sequence[Reject]], None] | None = None
        self._held: list[tuple[str, list[Reject]]] = []
        self._held_rows = 0

    def count(self, symbol: str) -> int:
        """Rows of ``symbol`` refused so far (each distinct row once)."""
        return self.counts.get(symbol, 0)

    def attach(self, sink: Callable[[str, Sequence[Reject]], None]) -> None:
        """Send rejects to ``sink`` from now on (and those held until now)."""
        self._sink = sink
        held, self._held, self._held_rows = self._held, [], 0
        for symbol, rejects in held:
            sink(symbol, rejects)

    def reject(self, symbol: str, rejects: Sequence[Reject]) -> None:
        fresh: list[Reject] = []
        for r in rejects:
            key = (symbol, r.kind, r.ref, r.reason)
            if key in self._seen:
                self._seen.move_to_end(key)
                continue
            self._seen[key] = None
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            fresh.append(r)
        if not fresh:
            return
        self.counts[symbol] = self.counts.get(symbol, 0) + len(fresh)
        self._maybe_log(symbol, fresh)
        if self._sink is not None:
            self._sink(symbol, fresh)
        elif self._held_rows < _HELD_MAX:
            self._held.append((symbol, fresh))
            self._held_rows += len(fresh)

    def _maybe_log(self, symbol: str, fresh: list[Reject]) -> None:
        now = self.clock()
        unlogged = self._unlogged.get(symbol, 0) + len(fresh)
        last = self._last_log.get(symbol)
        if last is not None and now - last < self.log_every_s:
            self._unlogged[symbol] = unlogged
            return
        self._last_log[symbol] = now
        self._unlogged[symbol] = 0
        first = fresh[0]
        self.log.warning(
            "rows rejected", symbol=symbol, rejected=unlogged, total=self.counts[symbol], kind=first.kind,
            ref=first.ref, reason=first.reason, raw=first.raw,
        )
