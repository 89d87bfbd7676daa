"""The audit: stored trades and candles against ground truth, the audit window, the report and its verdict."""

from __future__ import annotations

import json

import pytest

from fullon_ohlcv_service.chaos import audit as a
from fullon_ohlcv_service.chaos import schedule as s
from fullon_ohlcv_service.chaos.report import AppliedFault, Report, SymbolResult, detection_summary, verdict_line
from fullon_ohlcv_service.models import Candle, Trade

T0 = 1_764_000_000_000  # a minute boundary
assert T0 % 60_000 == 0


def trades(n: int, start: int = T0, step: int = 7_000) -> list[Trade]:
    return [Trade(ts=start + i * step, id=str(1000 + i), price=100.0 + i, amount=0.5, side="buy" if i % 2 else "sell")
            for i in range(n)]


def test_identical_store_is_clean() -> None:
    t = trades(50)
    res = a.audit_trades(t, list(reversed(t)))
    assert res.ok and res.expected == res.stored == 50
    assert res.missing_ranges == []


def test_missing_duplicated_extra_altered() -> None:
    t = trades(20)
    stored = [x for x in t if x.id not in ("1005", "1006", "1007", "1015")]
    stored += [t[0], t[0], t[1]]  # 1000 three times, 1001 twice
    stored.append(Trade(ts=T0, id="9999", price=1.0, amount=1.0, side="buy"))
    altered = t[3]
    stored = [Trade(ts=x.ts, id=x.id, price=x.price + 0.01, amount=x.amount, side=x.side) if x.id == altered.id else x
              for x in stored]
    res = a.audit_trades(t, stored)
    assert res.missing == 4
    assert res.duplicated == 3
    assert res.extra == 1
    assert res.altered == 1
    assert not res.ok
    assert res.missing_ranges == [
        {"from_ts": t[5].ts, "to_ts": t[7].ts, "trades": 3},
        {"from_ts": t[15].ts, "to_ts": t[15].ts, "trades": 1},
    ]
    assert res.samples["missing"] == ["1005", "1006", "1007", "1015"]
    assert res.samples["extra"] == ["9999"]


def test_float_noise_is_not_an_alteration() -> None:
    t = trades(3)
    stored = [Trade(ts=x.ts, id=x.id, price=x.price * (1 + 1e-13), amount=x.amount, side=x.side) for x in t]
    assert a.audit_trades(t, stored).ok


def test_truth_with_repeated_id_is_refused() -> None:
    t = trades(2)
    with pytest.raises(ValueError):
        a.audit_trades([t[0], t[0]], [])


def candle(ts: int, close: float = 10.0, final: bool = True, volume: float = 1.5) -> Candle:
    return Candle(ts=ts, open=9.0, high=11.0, low=8.0, close=close, volume=volume, final=final)


def test_candles_missing_provisional_different_extra() -> None:
    truth = [candle(T0 + i * 60_000) for i in range(6)]
    stored = [
        truth[0],
        candle(truth[1].ts, final=False),
        candle(truth[2].ts, close=10.5),
        truth[3],
        # truth[4] missing
        candle(truth[5].ts, volume=1.5 + 1e-14),  # float noise: same
        candle(T0 + 10 * 60_000),  # a minute with no trade
    ]
    res = a.audit_candles(truth, stored)
    assert (res.missing, res.provisional, res.different, res.extra) == (1, 1, 1, 1)
    assert res.wrong == 4 and not res.ok
    assert res.samples["missing"][0]["ts"] == truth[4].ts
    assert res.samples["different"][0]["stored"]["close"] == 10.5
    assert a.audit_candles(truth, truth).ok


def test_candles_two_rows_for_one_minute_are_wrong() -> None:
    truth = [candle(T0)]
    assert a.audit_candles(truth, [candle(T0), candle(T0)]).extra == 1


def test_trade_window_starts_after_the_backfill_start_and_stops_before_the_end() -> None:
    start = T0 + 12_345
    since, until = a.trade_window(start, 1, T0 + 600_000, slack_ms=30_000, margin_ms=10_000)
    assert since % 60_000 == 0
    assert since >= start + 30_000 - 86_400_000
    assert since - (start + 30_000 - 86_400_000) < 60_000
    assert until == T0 + 590_000
    # a stop before the window start gives an empty window, never a negative one
    since, until = a.trade_window(start, 0, start, slack_ms=30_000, margin_ms=10_000)
    assert until == since


def test_candle_window_ends_at_the_last_proven_minute() -> None:
    since = T0
    t = [Trade(ts=T0 + 5_000, id="1", price=1, amount=1, side="buy"),
         Trade(ts=T0 + 130_000, id="2", price=1, amount=1, side="buy"),
         Trade(ts=T0 + 400_000, id="3", price=1, amount=1, side="buy")]  # beyond the cut-off
    assert a.candle_window_end(since, T0 + 300_000, t) == T0 + 120_000
    assert a.candle_window_end(since, T0 + 300_000, []) == since
    assert a.ceil_minute(T0) == T0 and a.ceil_minute(T0 + 1) == T0 + 60_000


def test_parsers() -> None:
    assert a.truth_trade({"id": "5", "timestamp": 10, "price": "1.5", "amount": 2, "side": "sell"}) == \
        Trade(ts=10, id="5", price=1.5, amount=2.0, side="sell")
    assert a.export_trade({"ts": 10, "id": "5", "price": 1.5, "volume": 2, "side": "sell"}) == \
        Trade(ts=10, id="5", price=1.5, amount=2.0, side="sell")
    assert a.truth_candle([60_000, 1, 2, 0.5, 1.5, 3]) == Candle(60_000, 1, 2, 0.5, 1.5, 3, True)
    doc = {"ts": 60_000, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 3, "final": False}
    assert a.export_candle(doc) == Candle(60_000, 1, 2, 0.5, 1.5, 3, False)


def _report(stored: list[Trade], applied_ok: bool = True, orphans: tuple[str, ...] = ()) -> Report:
    t = trades(10)
    window = a.Window(T0, T0 + 600_000, T0 + 60_000)
    res = SymbolResult("kraken", "BTC/USD", window, a.audit_trades(t, stored), a.audit_candles([], []))
    plan = (s.Fault(at=1.0, kind=s.KILL9, target="kraken", slot=4.0), s.Fault(at=9.0, kind=s.SIGTERM_MASTER))
    applied = [AppliedFault(plan[0], T0, 1.02, True, pid=123, detected_s=0.8, new_pid=456),
               AppliedFault(plan[1], T0 + 9000, 9.0, applied_ok, detail="" if applied_ok else "master gone")]
    return Report(seed=1, minutes=0.2, store="sqlite", cache="sqlite", planned=plan, applied=applied,
                  results=[res], orphans=orphans, started_ms=T0, ended_ms=T0 + 10_000)


def test_clean_report_passes_with_the_exact_verdict() -> None:
    rep = _report(trades(10))
    assert rep.failures() == []
    assert rep.verdict() == "chaos: 0 missing, 0 duplicated, 0 wrong candles over 10 trades, 2 faults"
    text = rep.render()
    assert text.splitlines()[-1] == rep.verdict()
    doc = json.loads(json.dumps(rep.to_json()))
    assert doc["passed"] is True and doc["detection"]["median_s"] == 0.8 and doc["applied_faults"] == 2


def test_report_fails_on_loss_duplicate_orphan_and_missed_fault() -> None:
    t = trades(10)
    assert "1 trades missing" in _report(t[1:]).failures()
    assert "1 trades duplicated" in _report([*t, t[3]]).failures()
    fails = _report(t, orphans=("pid 42 ohlcv-worker: kraken",)).failures()
    assert any("orphan" in f for f in fails)
    missed = _report(t, applied_ok=False)
    assert any("1 of 2 planned faults applied" in f and "master gone" in f for f in missed.failures())
    assert missed.verdict().endswith("1 faults")


def test_detection_summary_and_undetected() -> None:
    f = s.Fault(at=0, kind=s.SIGSTOP, target="binance")
    applied = [AppliedFault(f, T0, 0, True, detected_s=x) for x in (3.0, 5.0, 4.0)]
    applied.append(AppliedFault(f, T0, 0, True, pid=77, detected_s=None))
    applied.append(AppliedFault(s.Fault(at=0, kind=s.WS_DROP), T0, 0, True))
    d = detection_summary(applied)
    assert (d["count"], d["median_s"], d["max_s"]) == (3, 4.0, 5.0)
    assert len(d["undetected"]) == 1 and "pid 77" in d["undetected"][0]


def test_verdict_mentions_extra_and_altered_only_when_present() -> None:
    from fullon_ohlcv_service.chaos.report import Totals

    assert "extra" not in verdict_line(Totals(trades=5), 3)
    assert verdict_line(Totals(trades=5, extra=2), 3).endswith("; 2 extra trades, 0 altered trades")
