"""A short chaos run in CI: the real supervisor under seeded faults must lose, duplicate and corrupt nothing.

The same run then plants a loss and a wrong candle in the store and audits again, so the test also
proves that the audit would have seen them.
"""

from __future__ import annotations

import re
import sqlite3
import urllib.parse

import pytest

from chaos.report import Report, SymbolResult
from chaos.runner import ChaosRun, Options
from fullon_ohlcv_service.settings import parse_store_url

VERDICT = re.compile(r"^chaos: 0 missing, 0 duplicated, 0 wrong candles over (\d+) trades, (\d+) faults, "
                     r"(\d+) poisoned rejected$")


class PlantingRun(ChaosRun):
    """After the real audit, delete 5 stored BTC/USD trades and alter one final candle, drop the reject of one
    poisoned trade and store another poisoned one as if it were valid, then audit again."""

    tampered: list[SymbolResult]

    def _audit(self) -> list[SymbolResult]:
        clean = super()._audit()
        btc = next(r for r in clean if (r.exchange, r.symbol) == ("kraken", "BTC/USD"))
        db = parse_store_url("ohlcv", self.env["OHLCV_DB"], ("sqlite",)).path / "kraken.sqlite"
        q = urllib.parse.urlencode({"exchange": "kraken", "symbol": "BTC/USD", "since": btc.window.since,
                                    "until": btc.window.trades_until})
        poisoned = [p for p in self._http("GET", f"/_sim/poison?{q}") if p["kind"] == "trade" and p["id"]]
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM btc_usd_rejects WHERE kind = 'trade' AND ref = ?", (poisoned[0]["id"],))
            conn.execute("INSERT INTO btc_usd_trades (timestamp, price, volume, side, trade_id) "
                         "VALUES (?, 1.0, 1.0, 'buy', ?)", (poisoned[1]["slot"], poisoned[1]["id"]))
            ids = [r[0] for r in conn.execute(
                "SELECT trade_id FROM btc_usd_trades WHERE timestamp >= ? ORDER BY timestamp LIMIT 5 OFFSET 500",
                (btc.window.since,))]
            conn.executemany("DELETE FROM btc_usd_trades WHERE trade_id = ?", [(i,) for i in ids])
            conn.execute(
                "UPDATE btc_usd_candles1m SET close = close * 1.01 WHERE timestamp = (SELECT timestamp FROM "
                "btc_usd_candles1m WHERE timestamp >= ? AND final = 1 ORDER BY timestamp LIMIT 1 OFFSET 10)",
                (btc.window.since,))
        self.tampered = super()._audit()
        return clean


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_chaos_run_on_sqlite_loses_nothing_and_would_see_a_loss() -> None:
    run = PlantingRun(Options(minutes=1, seed=3, busy_rate=1.0))
    report = run.run()
    text = report.render()
    doc = report.to_json()
    assert report.failures() == [], text
    m = VERDICT.match(text.splitlines()[-1])
    assert m is not None, text
    trades, faults, poisoned = int(m.group(1)), int(m.group(2)), int(m.group(3))
    assert trades == doc["totals"]["trades"] > 10_000
    # the poison fault's rows (simulator/poison.py) were all refused into the reject store, none stored
    assert poisoned == doc["totals"]["poisoned"] > 0 and doc["totals"]["poisoned_stored"] == 0
    assert faults == doc["applied_faults"] == doc["planned_faults"] >= 9
    kinds = {f["kind"] for f in doc["faults"] if f["ok"]}
    assert {"kill9", "sigstop", "ws_drop", "ws_stall", "rest_429", "rest_5xx", "malformed",
            "poison", "sighup_add_symbol", "sigterm_master"} <= kinds
    assert doc["detection"]["count"] >= 2 and doc["detection"]["undetected"] == []
    assert doc["orphans"] == [] and doc["errors"] == []
    # every configured symbol and the one added at the SIGHUP were audited, candles included
    assert len({(s["exchange"], s["symbol"]) for s in doc["symbols"]}) == 7
    assert all(s["candles"]["expected"] > 0 for s in doc["symbols"])
    # it published every feed, and the streams and OHLCVCache lists matched the store (chaos/feed_audit.py)
    feeds = doc["feeds"]
    assert feeds["enabled"] and feeds["ok"] and len(feeds["symbols"]) == 7, feeds
    assert all(s["published"] > 0 and s["bars"] > 0 for s in feeds["symbols"])

    # The planted defects are found, exactly.
    bad = {(r.exchange, r.symbol): r for r in run.tampered}
    btc = bad[("kraken", "BTC/USD")]
    assert btc.trades.missing == 5 and btc.trades.duplicated == 0 and len(btc.trades.missing_ranges) == 1
    assert btc.candles.different == 1 and btc.candles.wrong == 1
    assert btc.poison.unrejected == 1 and btc.poison.stored == 1 and btc.trades.extra == 1
    assert all(r.trades.ok and r.candles.ok for k, r in bad.items() if k != ("kraken", "BTC/USD"))
    failed = Report(seed=3, minutes=1, store="sqlite", cache="sqlite", planned=report.planned,
                    applied=report.applied, results=run.tampered)
    assert "5 trades missing" in failed.failures()
    poisoned_total = sum(r.poison.expected for r in run.tampered)
    assert f"1 of {poisoned_total} poisoned rows not in the reject store" in failed.failures()
    assert "1 poisoned rows stored in the trades or candles tables" in failed.failures()
    assert failed.verdict().startswith("chaos: 5 missing, 0 duplicated, 1 wrong candles over")
