"""Value objects shared by every layer: Trade, Candle, Reject, SymbolSpec, ExchangeSpec (epoch-ms ints)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Side = Literal["buy", "sell"]
RejectKind = Literal["trade", "candle"]


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade print. ``id`` is the exchange's trade id as text; ``ts`` is epoch ms UTC."""

    ts: int
    id: str
    price: float
    amount: float
    side: Side
    type: str = ""  # fullon's `type` column: "market"/"limit" where the exchange says, else ""


@dataclass(frozen=True, slots=True)
class Candle:
    """One 1m candle; ``ts`` is the minute's open in epoch ms. ``final`` once the minute is closed."""

    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    final: bool = True


@dataclass(frozen=True, slots=True)
class Reject:
    """A trade or candle refused by validation or quarantined by the writer, kept in ``<symbol>_rejects``.

    ``ref`` is the trade id (or, for a trade without one, a digest of its values; for a candle, its
    minute as decimal epoch ms); ``raw`` is JSON text of the values as received; ``seen_ms`` when it was
    first refused. The store keeps one row per (kind, ref, reason).
    """

    kind: RejectKind
    ref: str
    reason: str
    raw: str
    seen_ms: int


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """A symbol to collect, from fullon_orm's `symbols` row."""

    symbol: str  # ccxt unified, e.g. "BTC/USD"
    backtest_days: int = 30
    updateframe: str = "1h"
    decimals: int = 8
    futures: bool = False


def _frozen_params() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """One exchange to collect: its ccxt name, its `cat_exchanges_params`, and its symbols."""

    name: str  # ccxt id, e.g. "kraken"
    symbols: tuple[SymbolSpec, ...] = ()
    params: Mapping[str, str] = field(default_factory=_frozen_params)

    def fingerprint(self) -> tuple[object, ...]:
        """What a running worker depends on: a change means the worker must restart."""
        return (self.name, self.symbols, tuple(sorted(self.params.items())))
