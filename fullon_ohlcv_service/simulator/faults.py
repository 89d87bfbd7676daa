"""Fault switches of one simulated exchange (drops, stalls, 429/5xx, malformed, duplicates, poison) and counters."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fullon_ohlcv_service.errors import ConfigError

# malformed: junk frames ccxt survives; malformed_json: truncated JSON, which stops ccxt's receive loop
# until its keepalive gives up (a silent socket the service has to detect by itself)
COUNT_KEYS = ("rest_429", "rest_418", "rest_5xx", "malformed", "malformed_json", "duplicates")
SECONDS_KEYS = ("ws_drop_every_s", "ws_stall_s", "ws_refuse_s")
# poison=N plants, at once, N poisoned trades and one poisoned candle in every market (simulator/poison.py)
POISON = "poison"
MAX_POISON = 1000  # per market and request
FAULT_KEYS = (*COUNT_KEYS, *SECONDS_KEYS, "ws_drop", "latency_ms", POISON, "exchange")


class FaultState:
    """What to break next on one exchange; every fault served is counted in ``counts``."""

    def __init__(self) -> None:
        self.rest_429 = 0
        self.rest_418 = 0
        self.rest_5xx = 0
        self.malformed = 0
        self.malformed_json = 0
        self.duplicates = 0
        self.latency_ms = 0
        self.ws_drop_every_s = 0.0
        self.stall_until = 0.0  # time.monotonic()
        self.refuse_until = 0.0
        self.counts: Counter[str] = Counter()

    def stalled(self) -> bool:
        return time.monotonic() < self.stall_until

    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def take(self, key: str) -> bool:
        """Consume one pending count fault (``rest_429``, ``malformed``, ...); True if it fires now."""
        left: int = getattr(self, key)
        if left <= 0:
            return False
        setattr(self, key, left - 1)
        self.counts[key] += 1
        return True

    def apply(self, spec: Mapping[str, Any]) -> None:
        """Switch faults on (or off, with 0/false) from a validated ``POST /_sim/faults`` body."""
        for key in COUNT_KEYS:
            if key in spec:
                setattr(self, key, int(spec[key]))
        if "latency_ms" in spec:
            self.latency_ms = int(spec["latency_ms"])
        if "ws_drop_every_s" in spec:
            self.ws_drop_every_s = float(spec["ws_drop_every_s"])
        now = time.monotonic()
        if "ws_stall_s" in spec:
            self.stall_until = now + float(spec["ws_stall_s"])
            if float(spec["ws_stall_s"]) > 0:
                self.counts["ws_stall"] += 1
        if "ws_refuse_s" in spec:
            self.refuse_until = now + float(spec["ws_refuse_s"])

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "pending": {k: getattr(self, k) for k in COUNT_KEYS},
            "latency_ms": self.latency_ms,
            "ws_drop_every_s": self.ws_drop_every_s,
            "ws_stall_left_s": round(max(0.0, self.stall_until - now), 3),
            "ws_refuse_left_s": round(max(0.0, self.refuse_until - now), 3),
            "counts": dict(self.counts),
        }


def validate_faults(spec: Any) -> dict[str, Any]:
    """Check a fault request (dict of known keys with numeric/bool values); raise ConfigError otherwise."""
    if not isinstance(spec, dict):
        raise ConfigError("faults must be a JSON object")
    unknown = sorted(set(spec) - set(FAULT_KEYS))
    if unknown:
        raise ConfigError(f"unknown fault keys: {', '.join(unknown)} (known: {', '.join(FAULT_KEYS)})")
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "exchange":
            if value is not None and not isinstance(value, str):
                raise ConfigError("fault 'exchange' must be a string")
            out[key] = value
        elif key == "ws_drop":
            if not isinstance(value, bool):
                raise ConfigError("fault 'ws_drop' must be true or false")
            out[key] = value
        elif key == POISON:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POISON:
                raise ConfigError(f"fault 'poison' must be a whole number from 0 to {MAX_POISON}")
            out[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"fault {key!r} must be a number >= 0")
            out[key] = value
    return out


def parse_fault_flag(text: str) -> dict[str, Any]:
    """``--fault rest_429=3`` / ``--fault ws_drop_every_s=5,exchange=kraken`` / ``--fault ws_drop`` to a spec."""
    spec: dict[str, Any] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            spec[key] = True if key == "ws_drop" else value
            continue
        value = value.strip()
        if key == "exchange":
            spec[key] = value
        elif key == "ws_drop":
            spec[key] = value.lower() in ("1", "true", "yes", "on")
        else:
            try:
                spec[key] = float(value) if "." in value else int(value)
            except ValueError:
                raise ConfigError(f"--fault {key}: {value!r} is not a number") from None
    return validate_faults(spec)
