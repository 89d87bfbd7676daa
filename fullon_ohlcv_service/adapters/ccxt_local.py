"""ccxt constructor config that points every URL of an exchange class at a local simulator (nothing leaves loopback)."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

from fullon_ohlcv_service.errors import ConfigError, ExchangeUnsupported
from fullon_ohlcv_service.venues import capabilities


def _exchange_class(exchange_id: str) -> Any:
    try:
        import ccxt.pro as ccxt_pro
    except ImportError:  # pragma: no cover - ccxt without pro is not a supported install
        ccxt_pro = None
    cls = getattr(ccxt_pro, exchange_id, None) if ccxt_pro is not None else None
    if cls is None:
        import ccxt.async_support as ccxt_async

        cls = getattr(ccxt_async, exchange_id, None)
    if cls is None or not isinstance(cls, type):
        raise ExchangeUnsupported(f"exchange {exchange_id!r} is not known to this ccxt")
    return cls


def rewrite_url(url: str, exchange_id: str, base_url: str) -> str:
    """``wss://ws.kraken.com/v2`` -> ``ws://127.0.0.1:PORT/kraken/ws.kraken.com/v2`` (http for http(s))."""
    base = urlsplit(base_url)
    if base.scheme not in ("http", "https") or not base.hostname:
        raise ConfigError(f"simulator URL {base_url!r} must look like http://127.0.0.1:PORT")
    orig = urlsplit(url)
    if orig.scheme in ("ws", "wss"):
        scheme = "wss" if base.scheme == "https" else "ws"
    else:
        scheme = base.scheme
    host = orig.hostname or "unknown-host"
    path = orig.path.rstrip("/") if orig.path != "/" else ""
    query = f"?{orig.query}" if orig.query else ""
    prefix = base.path.rstrip("/")
    return f"{scheme}://{base.netloc}{prefix}/{exchange_id}/{host}{path}{query}"


def _rewrite(value: Any, exchange_id: str, base_url: str) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, exchange_id, base_url) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, exchange_id, base_url) for v in value]
    if isinstance(value, str) and "://" in value:
        return rewrite_url(value, exchange_id, base_url)
    return value


def local_overrides(exchange_id: str, base_url: str) -> dict[str, Any]:
    """A ccxt constructor config fragment: every ``urls['api']`` value (REST and ws) moved to ``base_url``.

    Use it as ``ccxt.pro.kraken({**local_overrides('kraken', sim.url)})``; it also turns the rate limiter
    off (a loopback server needs none) and sets the options that keep load_markets on spot endpoints.
    """
    cls = _exchange_class(exchange_id)
    api = cls().describe()["urls"]["api"]
    return {
        "urls": {"api": _rewrite(api, exchange_id, base_url)},
        "options": copy.deepcopy(dict(capabilities(exchange_id).markets_options)),  # load_markets: spot only
        "enableRateLimit": False,
    }


def iter_urls(value: Any) -> list[str]:
    """Every URL string inside a (nested) config fragment, for checks that nothing leaves loopback."""
    if isinstance(value, dict):
        return [u for v in value.values() for u in iter_urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in iter_urls(v)]
    if isinstance(value, str) and "://" in value:
        return [value]
    return []
