"""The cat_exchanges_params this service reads and their rules: one validation for ohlcv-config and worker boot.

fullon's ``cat_exchanges_params`` table is shared with other fullon services, so a name this service
does not read is kept as it is (``ohlcv-config`` only warns about it). A name it reads must hold a
valid value: ``ohlcv-config add-exchange --param`` refuses a bad one, and a worker that finds one (a
hand-edited database) stops with exit 78, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.redaction import redact_param

MAX_RATE_LIMIT_MS = 60_000  # a minute between request-cost units already stalls any backfill
MAX_TIMEOUT_MS = 600_000  # ten minutes for one REST call

KNOWN: dict[str, str] = {
    "base_url": "http(s)://host[:port][/path] that every REST and websocket URL of the exchange is rewritten to",
    "enable_rate_limit": "true or false: ccxt's request throttle (default true)",
    "rate_limit_ms": f"whole milliseconds from 0 to {MAX_RATE_LIMIT_MS} between request-cost units (ccxt's rateLimit)",
    "timeout_ms": f"whole milliseconds from 1 to {MAX_TIMEOUT_MS} for one REST call (ccxt's timeout)",
}


@dataclass(frozen=True, slots=True)
class ExchangeParams:
    """The parameters this service reads, parsed; None where the table has no (or an empty) value."""

    base_url: str | None = None
    enable_rate_limit: bool | None = None
    rate_limit_ms: int | None = None
    timeout_ms: int | None = None


def _bad(key: str, value: str, rule: str) -> ConfigError:
    return ConfigError(f"exchange parameter {key}={redact_param(key, value)!r} is invalid: {rule}")


def _bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _bad(key, value, "use true or false")


def _ms(key: str, value: str, lo: int, hi: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise _bad(key, value, f"use whole milliseconds from {lo} to {hi}")
    number = int(text)
    if not lo <= number <= hi:
        raise _bad(key, value, f"use whole milliseconds from {lo} to {hi}")
    return number


def _url(key: str, value: str) -> str:
    text = value.strip()
    bad = _bad(key, value, "use http(s)://host[:port][/path]")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise bad
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad
    return text


def parse_params(params: Mapping[str, str | None]) -> ExchangeParams:
    """The known parameters of ``params`` parsed; ConfigError (one line, no credentials) on a bad value."""
    def get(key: str) -> str | None:
        value = params.get(key)
        return None if value is None or str(value).strip() == "" else str(value)

    base_url, flag, rate, timeout = (get(k) for k in ("base_url", "enable_rate_limit", "rate_limit_ms", "timeout_ms"))
    return ExchangeParams(
        base_url=None if base_url is None else _url("base_url", base_url),
        enable_rate_limit=None if flag is None else _bool("enable_rate_limit", flag),
        rate_limit_ms=None if rate is None else _ms("rate_limit_ms", rate, 0, MAX_RATE_LIMIT_MS),
        timeout_ms=None if timeout is None else _ms("timeout_ms", timeout, 1, MAX_TIMEOUT_MS),
    )


def unknown_params(params: Mapping[str, object]) -> list[str]:
    """Names in ``params`` that this service does not read (kept for other fullon services)."""
    return sorted(k for k in params if k not in KNOWN)
