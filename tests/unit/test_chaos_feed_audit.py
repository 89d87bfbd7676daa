"""The chaos feed audit's rules: stored trades in the stream or a gap marker, none twice, the OHLCVCache list exact."""

from __future__ import annotations

from chaos.feed_audit import FeedCheck, FeedResult, audit_bars, audit_trades
from fullon_ohlcv_service.feed_layout import Gap
from fullon_ohlcv_service.models import Candle, Trade

M = 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % M


def tr(i: int) -> Trade:
    return Trade(T0 + i * 1000, str(i), 10.0 + i, 0.5, "buy", type="limit")


def test_a_clean_feed_passes_and_marked_trades_count_as_covered() -> None:
    stored = [tr(i) for i in range(10)]
    published = [Trade(t.ts, t.id, t.price, t.amount, t.side) for t in stored if t.id not in ("4", "5")]
    res = FeedResult("kraken", "BTC/USD", T0)
    audit_trades(res, stored, [*published, tr(50)], [Gap("BTC/USD", tr(4).ts, tr(5).ts, 2, "redis unavailable")],
                 until=T0 + 20_000)  # tr(50) is after the audited window: not judged
    assert res.ok and (res.stored, res.published, res.marked, res.missing) == (10, 8, 2, 0)


def test_missing_duplicated_and_unstored_trades_are_found() -> None:
    stored = [tr(i) for i in range(10)]
    published = [tr(i) for i in range(10) if i not in (3, 8)] + [tr(7), Trade(tr(8).ts, "8", 99.0, 0.5, "buy"), tr(12)]
    res = FeedResult("kraken", "BTC/USD", T0)
    audit_trades(res, stored, published, [Gap("BTC/USD", T0 + 11_000, T0 + 19_000, 1, "restart")], until=T0 + 20_000)
    assert (res.missing, res.duplicated, res.unstored) == (1, 1, 2)  # tr 3; tr 7 twice; tr 8 altered, tr 12 unknown
    assert res.samples["missing"] == ["3"] and not res.ok
    assert res.failures() == [
        "feeds kraken BTC/USD: 1 stored trades neither in the trade stream nor in a gap marker",
        "feeds kraken BTC/USD: 1 trades published twice",
        "feeds kraken BTC/USD: 2 published trades not stored as published"]


def test_trades_before_a_lossy_redis_restart_are_exempt() -> None:
    res = FeedResult("kraken", "BTC/USD", T0, exempt_before=tr(5).ts)
    audit_trades(res, [tr(i) for i in range(10)], [tr(i) for i in range(5, 10)], [], until=T0 + 20_000)
    assert res.ok and res.missing == 0
    res2 = FeedResult("kraken", "BTC/USD", T0, exempt_before=tr(5).ts)
    audit_trades(res2, [tr(i) for i in range(10)], [tr(i) for i in range(6, 10)], [], until=T0 + 20_000)
    assert res2.missing == 1


def cd(m: int, close: float = 1.0, final: bool = True) -> Candle:
    return Candle(T0 + m * M, 1.0, 2.0, 0.5, close, 3.0, final)


def bar(c: Candle) -> list[float]:
    return [c.ts // 1000, c.open, c.high, c.low, c.close, c.volume]


def test_the_ohlcv_list_must_equal_the_stored_finals() -> None:
    finals = [cd(m) for m in range(5)] + [cd(5, final=False)]
    ok = FeedResult("kraken", "BTC/USD", T0 + M)
    audit_bars(ok, finals, [bar(cd(-1, 7.0))] + [bar(c) for c in finals[:5]])  # before the window: not judged
    assert ok.ok and ok.bars == 4
    cases = {
        "different": [bar(cd(m, 9.0 if m == 2 else 1.0)) for m in range(5)],
        "missing": [bar(cd(m)) for m in (0, 1, 3, 4)],
        "twice": [bar(cd(m)) for m in (0, 1, 2, 2, 3, 4)],
        "out of order": [bar(cd(m)) for m in (0, 2, 1, 3, 4)],
        "provisional listed": [bar(cd(m)) for m in range(6)],
    }
    for name, bars in cases.items():
        res = FeedResult("kraken", "BTC/USD", T0)
        audit_bars(res, finals, bars)
        assert res.bars_wrong > 0 and not res.ok, name


def test_supervisor_flags_only_when_enabled() -> None:
    check = FeedCheck(12)
    assert check.supervisor_args() == []
    check.enabled, check.url = True, "redis://127.0.0.1:40123/12"  # prepare() sets both (a private Redis)
    assert check.supervisor_args() == ["--publish", "all", "--feed-redis", "redis://127.0.0.1:40123/12",
                                       "--stream-maxlen", "5000000"]
