"""The audit: stored trades and candles against ground truth, poisoned rows against the reject store, the audit
window, the report and its verdict."""

from __future__ import annotations

import json
import math

import pytest

from chaos import audit as a
from chaos import schedule as s
from chaos.report import (
    AppliedFault,
    Report,
    SymbolResult,
    Totals,
    detection_summary,
    verdict_line,
)
from fullon_ohlcv_service.models import Candle, Reject, Trade
from fullon_ohlcv_service.validation import candle_reject, trade_reject

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


def _report(stored: list[Trade], applied_ok: bool = True, orphans: tuple[str, ...] = (),
            poison: a.PoisonAudit | None = None) -> Report:
    t = trades(10)
    window = a.Window(T0, T0 + 600_000, T0 + 60_000)
    res = SymbolResult("kraken", "BTC/USD", window, a.audit_trades(t, stored), a.audit_candles([], []),
                       poison or a.PoisonAudit())
    plan = (s.Fault(at=1.0, kind=s.KILL9, target="kraken", slot=4.0), s.Fault(at=9.0, kind=s.SIGTERM_MASTER))
    applied = [AppliedFault(plan[0], T0, 1.02, True, pid=123, detected_s=0.8, new_pid=456),
               AppliedFault(plan[1], T0 + 9000, 9.0, applied_ok, detail="" if applied_ok else "master gone")]
    return Report(seed=1, minutes=0.2, store="sqlite", cache="sqlite", planned=plan, applied=applied,
                  results=[res], orphans=orphans, started_ms=T0, ended_ms=T0 + 10_000)


def test_clean_report_passes_with_the_exact_verdict() -> None:
    rep = _report(trades(10), poison=a.PoisonAudit(expected=3, rejected=3, kinds={"nan_price": 3}))
    assert rep.failures() == []
    assert rep.verdict() == "chaos: 0 missing, 0 duplicated, 0 wrong candles over 10 trades, 2 faults, " \
                            "3 poisoned rejected"
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
    assert missed.verdict().endswith("1 faults, 0 poisoned rejected")


def test_detection_summary_and_undetected() -> None:
    f = s.Fault(at=0, kind=s.SIGSTOP, target="binance")
    applied = [AppliedFault(f, T0, 0, True, detected_s=x) for x in (3.0, 5.0, 4.0)]
    applied.append(AppliedFault(f, T0, 0, True, pid=77, detected_s=None))
    applied.append(AppliedFault(s.Fault(at=0, kind=s.WS_DROP), T0, 0, True))
    d = detection_summary(applied)
    assert (d["count"], d["median_s"], d["max_s"]) == (3, 4.0, 5.0)
    assert len(d["undetected"]) == 1 and "pid 77" in d["undetected"][0]


def test_verdict_mentions_extra_and_altered_only_when_present() -> None:
    assert "extra" not in verdict_line(Totals(trades=5), 3)
    assert verdict_line(Totals(trades=5, extra=2), 3).endswith("; 2 extra trades, 0 altered trades")


# -- poisoned rows (the simulator's ``poison`` fault) against the reject store and the tables

def _p_trade(kind: str, tid: str, price: str = "100.5", amount: str = "0.25", ts: int = T0 + 5) -> dict[str, object]:
    return {"kind": "trade", "poison": kind, "slot": T0 + 5, "id": tid, "timestamp": ts, "price": price,
            "amount": amount, "side": "buy"}


def _p_candle(kind: str, minute: int, o: str = "nan") -> dict[str, object]:
    return {"kind": "candle", "poison": kind, "slot": minute + 1, "ts": minute, "open": o, "high": "101",
            "low": "99", "close": "100", "volume": "3"}


def _reject_of(p: dict[str, object], reason: str = "x") -> Reject:
    """The reject the worker's adapter writes for it (validation.py's raw format)."""
    if p["kind"] == "candle":
        values = {k: p[k] for k in ("open", "high", "low", "close", "volume")}
        parsed = {k: float(str(v)) for k, v in values.items()}
        return candle_reject({"ts": p["ts"], **parsed}, reason, T0)
    values = {"ts": p["timestamp"], "id": p["id"] or None, "price": float(str(p["price"])),
              "amount": float(str(p["amount"])), "side": p["side"], "type": "market", "info": ["raw row"]}
    return trade_reject(values, reason, T0)


POISONED = [_p_trade("nan_price", "9001", price="nan"), _p_trade("inf_amount", "9002", amount="1e400"),
            _p_trade("empty_id", ""), _p_trade("ts_overflow", "9004", ts=2**63),
            _p_candle("nan_open", T0), _p_candle("high_below_low", T0 + 60_000, o="100")]


def test_every_poisoned_row_rejected_and_none_stored_is_clean() -> None:
    rejects = [_reject_of(p) for p in POISONED]
    assert rejects[2].ref.startswith("noid:") and rejects[4].ref == str(T0)
    stored_c = [Candle(T0, 100, 101, 99, 100, 3)]  # the minute's valid candle, not the poisoned one
    res = a.audit_poison(POISONED, rejects, trades(10), stored_c, [t.id for t in trades(10)])
    assert res.ok and (res.expected, res.rejected, res.stored, res.unrejected) == (6, 6, 0, 0)
    assert res.kinds["nan_open"] == 1 and sum(res.kinds.values()) == 6


def test_poisoned_rows_stored_or_not_rejected_fail() -> None:
    rejects = [_reject_of(p) for p in POISONED[1:4]]  # no reject for the nan price nor the candles
    other = _reject_of(_p_trade("empty_id", "", price="200.5"))  # an id-less reject with other values
    stored = [*trades(3), Trade(T0 + 5, "9002", 100.5, 1.0, "buy"),  # a poisoned id in the table
              Trade(T0 + 5, "77", 100.5, 0.25, "buy")]  # the id-less one's values under an invented id
    stored_c = [Candle(T0, math.nan, 101, 99, 100, 3, final=False)]  # the poisoned candle's values
    res = a.audit_poison(POISONED, [r for r in rejects if r.ref != rejects[1].ref] + [other], stored, stored_c)
    assert not res.ok
    assert (res.expected, res.rejected, res.unrejected, res.stored) == (6, 2, 4, 3)
    assert {d["poison"] for d in res.samples["unrejected"]} == {"nan_price", "empty_id", "nan_open",
                                                                "high_below_low"}
    assert {d["poison"] for d in res.samples["stored"]} == {"inf_amount", "empty_id", "nan_open"}


def test_a_valid_trade_in_the_reject_store_fails() -> None:
    good = trades(3)
    bad = trade_reject({"ts": good[1].ts, "id": good[1].id, "price": 1.0, "amount": 1.0, "side": "buy"},
                       "price not positive", T0)
    res = a.audit_poison([], [bad], good, [], [t.id for t in good])
    assert res.valid_rejected == 1 and not res.ok and res.samples["valid_rejected"] == [{"id": good[1].id}]


def test_report_counts_poison_in_failures_and_verdict() -> None:
    poison = a.PoisonAudit(expected=5, rejected=3, stored=1, unrejected=2, valid_rejected=1)
    rep = _report(trades(10), poison=poison)
    assert "1 poisoned rows stored in the trades or candles tables" in rep.failures()
    assert "2 of 5 poisoned rows not in the reject store" in rep.failures()
    assert "1 valid trades in the reject store" in rep.failures()
    assert rep.verdict().endswith("2 faults, 3 of 5 poisoned rejected; 1 poisoned stored")
    assert "poisoned 3/5 rejected, stored=1" in rep.render()
    doc = rep.to_json()
    assert doc["totals"]["poisoned"] == 5 and doc["symbols"][0]["poison"]["unrejected"] == 2
    assert verdict_line(Totals(trades=5, poisoned=2, poisoned_rejected=2), 3).endswith("3 faults, 2 poisoned rejected")
