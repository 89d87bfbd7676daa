"""The prometheus_client Collector: builds every metric family from one FleetSnapshot per scrape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fullon_ohlcv_service.contract import SupervisedState
from fullon_ohlcv_service.errors import OhlcvError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.metrics.figures import COMMIT_BUCKETS, EMIT_BUCKETS, REST_OUTCOMES, Histogram
from fullon_ohlcv_service.metrics.ledger import RESTART_REASONS
from fullon_ohlcv_service.metrics.snapshot import Fleet, FleetSnapshot, build_snapshot

STATES: tuple[str, ...] = tuple(s.value for s in SupervisedState)  # every ohlcv_worker_state label, in order
P = "ohlcv_"
EX = ["exchange"]
SYM = ["exchange", "symbol"]
HISTOGRAM_HELP = {
    "commit_seconds": ("batch_commit_seconds", "Seconds one write batch took to commit to the store", COMMIT_BUCKETS),
    "emit_to_commit_seconds": ("emit_to_commit_seconds",
                               "Seconds from a live trade's exchange timestamp to its commit", EMIT_BUCKETS),
}
# per-symbol families (8 series per symbol); the exchange_* families are always exported
SYMBOL_COUNTER_HELP = {
    "trades_stored": ("trades_committed_total", "Trades committed to the store (new rows)"),
    "candles_stored": ("candles_committed_total", "1m candle rows written or replaced in the store"),
    "gaps_found": ("gaps_found_total", "Candle gaps or candle mismatches found in the stored history"),
    "gaps_repaired": ("gaps_repaired_total", "Ranges repaired from REST trades"),
    "rejected": ("rejected_rows_total", "Rows refused by validation or quarantined by the writer"),
    "rest_errors": ("rest_errors_total", "Failed REST calls for the symbol"),
}


class Monotonic:
    """Never lets an exported counter go below what this exporter already exposed (per series)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, tuple[str, ...]], float] = {}
        self._hist: dict[tuple[str, tuple[str, ...]], Histogram] = {}

    def value(self, name: str, labels: tuple[str, ...], v: float) -> float:
        key = (name, labels)
        best = max(v, self._seen.get(key, 0.0))
        self._seen[key] = best
        return best

    def histogram(self, name: str, labels: tuple[str, ...], h: Histogram) -> Histogram:
        key = (name, labels)
        old = self._hist.get(key)
        if old is not None and old.bounds == h.bounds and (old.count > h.count or old.total > h.total):
            return old
        self._hist[key] = h
        return h


def families(snap: FleetSnapshot, *, per_symbol: bool, rss: Callable[[int], float | None],
             mono: Monotonic | None = None) -> list[Metric]:
    """Every metric family for one snapshot (pure but for ``rss``; ``mono`` clamps counters)."""
    m = mono or Monotonic()
    report = snap.report
    healthy = GaugeMetricFamily(P + "healthy", "1 when ohlcv-status --check would exit 0")
    healthy.add_metric([], 1.0 if report.healthy else 0.0)
    out: list[Metric] = [healthy]
    sup = report.supervisor or {}
    sup_age = GaugeMetricFamily(P + "supervisor_heartbeat_age_seconds", "Age of the master's own record")
    if sup.get("heartbeat_age_s") is not None:
        sup_age.add_metric([], float(sup["heartbeat_age_s"]))
    out.append(sup_age)

    up = GaugeMetricFamily(P + "worker_up", "1 when the exchange's worker runs and heartbeats (no status problem)",
                           labels=EX)
    state = GaugeMetricFamily(P + "worker_state", "1 for the master's current state of the exchange's worker",
                              labels=[*EX, "state"])
    wstate = GaugeMetricFamily(P + "worker_reported_state", "1 for the state the worker reports about itself",
                               labels=[*EX, "state"])
    restarts = CounterMetricFamily(P + "worker_restarts", "Worker restarts by reason (this master's life)",
                                   labels=[*EX, "reason"])
    hb_age = GaugeMetricFamily(P + "worker_heartbeat_age_seconds", "Age of the current worker's heartbeat", labels=EX)
    start = GaugeMetricFamily(P + "worker_start_time_seconds", "Start time of the current worker (unix seconds)",
                              labels=EX)
    rss_g = GaugeMetricFamily(P + "worker_resident_memory_bytes", "Resident memory of the current worker", labels=EX)
    reconnects = CounterMetricFamily(P + "websocket_reconnects", "Websocket reconnects", labels=EX)
    errors = CounterMetricFamily(P + "worker_errors", "Collector and store errors counted by the worker", labels=EX)
    rest = CounterMetricFamily(P + "rest_requests", "REST requests made by ccxt, by outcome",
                               labels=[*EX, "outcome"])
    rl_waits = CounterMetricFamily(P + "rate_limit_waits", "Waits for a rate limit (ccxt's limiter, backoff after 429)",
                                   labels=EX)
    rl_secs = CounterMetricFamily(P + "rate_limit_wait_seconds", "Seconds spent waiting for rate limits", labels=EX)
    buf_rows = GaugeMetricFamily(P + "buffer_rows", "Rows queued in the worker and not yet committed", labels=EX)
    buf_bytes = GaugeMetricFamily(P + "buffer_bytes", "Estimated bytes held in the worker's buffers", labels=EX)
    buf_max = GaugeMetricFamily(P + "buffer_bytes_max", "The bound of the worker's buffers in bytes", labels=EX)
    lag = GaugeMetricFamily(P + "event_loop_lag_seconds", "Worst event-loop lag over the last heartbeat period",
                            labels=EX)
    n_sym = GaugeMetricFamily(P + "symbols", "Symbols the current worker collects", labels=EX)
    ex_age = GaugeMetricFamily(P + "exchange_data_age_seconds", "The stalest symbol's data age (status DATA_AGE)",
                               labels=EX)
    ex_bf = GaugeMetricFamily(P + "exchange_backfill_ratio", "The least advanced symbol's backfill (0..1)", labels=EX)
    ex_err = GaugeMetricFamily(P + "exchange_symbols_in_error", "Symbols whose collection failed", labels=EX)
    ex_deg = GaugeMetricFamily(P + "exchange_symbols_degraded", "Symbols behind because REST keeps failing",
                               labels=EX)
    reload_failed = GaugeMetricFamily(P + "config_reload_failed", "1 while the last SIGHUP reload failed")
    reload_failed.add_metric([], 1.0 if snap.reload_error else 0.0)
    ex_counters = {key: CounterMetricFamily(P + "exchange_" + name.removesuffix("_total"), text + " (all symbols)",
                                            labels=EX)
                   for key, (name, text) in SYMBOL_COUNTER_HELP.items()}
    hists = {key: HistogramMetricFamily(P + name, text, labels=EX) for key, (name, text, _) in HISTOGRAM_HELP.items()}
    sym_counters = {key: CounterMetricFamily(P + name.removesuffix("_total"), text, labels=SYM)
                    for key, (name, text) in SYMBOL_COUNTER_HELP.items()}
    sym_age = GaugeMetricFamily(P + "data_age_seconds", "Seconds since the newest stored trade or final candle",
                                labels=SYM)
    sym_bf = GaugeMetricFamily(P + "backfill_ratio", "Backfill progress of the symbol (0..1)", labels=SYM)
    sym_err = GaugeMetricFamily(P + "symbol_error", "1 while the symbol's collection has failed", labels=SYM)

    for fig in snap.exchanges:
        row = fig.row
        ex = row.exchange
        lab = (ex,)
        up.add_metric([ex], 1.0 if fig.healthy and row.state == "running" else 0.0)
        for s in (*STATES, *(() if row.state in STATES else (row.state,))):
            state.add_metric([ex, s], 1.0 if s == row.state else 0.0)
        if row.worker_state:
            wstate.add_metric([ex, row.worker_state], 1.0)
        for reason in (*RESTART_REASONS, *sorted(set(fig.restarts) - set(RESTART_REASONS))):
            restarts.add_metric([ex, reason], m.value("restarts", (ex, reason), fig.restarts.get(reason, 0)))
        if row.heartbeat_age_s is not None:
            hb_age.add_metric([ex], row.heartbeat_age_s)
            if row.uptime_s is not None:
                start.add_metric([ex], report.now_ms / 1000.0 - row.uptime_s)
            if row.pid is not None:
                resident = rss(row.pid)
                if resident is not None:
                    rss_g.add_metric([ex], resident)
            n_sym.add_metric([ex], float(row.symbols))
        c = fig.counters
        reconnects.add_metric([ex], m.value("reconnects", lab, c.worker.get("reconnects", 0.0)))
        errors.add_metric([ex], m.value("errors", lab, c.worker.get("errors", 0.0)))
        for outcome in (*REST_OUTCOMES, *sorted(set(c.rest) - set(REST_OUTCOMES))):
            rest.add_metric([ex, outcome], m.value("rest", (ex, outcome), c.rest.get(outcome, 0.0)))
        rl_waits.add_metric([ex], m.value("rl_waits", lab, c.worker.get("rate_limit_waits", 0.0)))
        rl_secs.add_metric([ex], m.value("rl_secs", lab, c.worker.get("rate_limit_wait_s", 0.0)))
        if row.buffer_depth is not None:
            buf_rows.add_metric([ex], float(row.buffer_depth))
        if fig.buffer_bytes is not None:
            buf_bytes.add_metric([ex], fig.buffer_bytes)
        if fig.buffer_bytes_max is not None:
            buf_max.add_metric([ex], fig.buffer_bytes_max)
        if fig.loop_lag_s is not None:
            lag.add_metric([ex], fig.loop_lag_s)
        if row.data_age_s is not None:
            ex_age.add_metric([ex], row.data_age_s)
        if row.backfill_pct is not None:
            ex_bf.add_metric([ex], row.backfill_pct / 100.0)
        if row.symbol_rows:
            ex_err.add_metric([ex], float(sum(1 for r in row.symbol_rows if r.error)))
            ex_deg.add_metric([ex], float(fig.degraded))
        for key, cfam in ex_counters.items():
            total = sum(v.get(key, 0.0) for v in c.symbols.values())
            cfam.add_metric([ex], m.value("ex_" + key, lab, total))
        for key, hfam in hists.items():
            h = c.histograms.get(key) or Histogram(HISTOGRAM_HELP[key][2])
            h = m.histogram(key, lab, h)
            hfam.add_metric([ex], h.cumulative(), sum_value=h.total)
        if not per_symbol:
            continue
        for srow in row.symbol_rows:
            sl = [ex, srow.symbol]
            if srow.data_age_s is not None:
                sym_age.add_metric(sl, srow.data_age_s)
            if srow.backfill_pct is not None:
                sym_bf.add_metric(sl, srow.backfill_pct / 100.0)
            sym_err.add_metric(sl, 1.0 if srow.error else 0.0)
        for symbol in sorted({r.symbol for r in row.symbol_rows} | set(fig.extra_symbols)):
            values = c.symbols.get(symbol, {})
            for key, cfam in sym_counters.items():
                cfam.add_metric([ex, symbol], m.value(key, (ex, symbol), values.get(key, 0.0)))

    out += [up, state, wstate, restarts, hb_age, start, rss_g, reconnects, errors, rest, rl_waits, rl_secs,
            buf_rows, buf_bytes, buf_max, lag, n_sym, ex_age, ex_bf, ex_err, ex_deg, reload_failed,
            *ex_counters.values(), *hists.values()]
    if per_symbol:
        out += [*sym_counters.values(), sym_age, sym_bf, sym_err]
    return out


def process_rss(pid: int) -> float | None:
    """Resident set size of ``pid`` in bytes (psutil), None when it is gone."""
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class FleetCollector(Collector):
    """Reads the process cache once per scrape and yields every family from that one snapshot.

    Scrapes are serialised (one snapshot at a time); a cache that cannot be read yields
    ``ohlcv_cache_up 0`` and nothing else, never an error page.
    """

    def __init__(self, read: Callable[[], Fleet], *, per_symbol: bool = True,
                 rss: Callable[[int], float | None] = process_rss) -> None:
        self.read = read
        self.per_symbol = per_symbol
        self.rss = rss
        self.mono = Monotonic()
        self._lock = threading.Lock()
        self.log = Log("fullon.metrics")
        self._cache_errors = 0
        self.last_error: str | None = None

    def describe(self) -> list[Metric]:
        return []  # families depend on the fleet: no fixed description

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            t0 = time.perf_counter()
            cache_up = GaugeMetricFamily(P + "cache_up", "1 when the process cache answered this scrape")
            try:
                fleet = self.read()
            except OhlcvError as exc:
                self._cache_errors += 1
                self.last_error = str(exc)
                if self._cache_errors == 1 or self._cache_errors % 100 == 0:
                    self.log.warning("process cache unreadable for a scrape", error=str(exc))
                cache_up.add_metric([], 0.0)
                yield cache_up
                return
            self._cache_errors = 0
            cache_up.add_metric([], 1.0)
            result: list[Any] = [cache_up]
            result += families(build_snapshot(fleet), per_symbol=self.per_symbol, rss=self.rss, mono=self.mono)
            took = GaugeMetricFamily(P + "scrape_collect_seconds", "Seconds this scrape took to read and build")
            took.add_metric([], time.perf_counter() - t0)
            result.append(took)
        yield from result
