"""Frozen Settings built from the environment (fullon's variable names) and CLI flags, validated."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.memory import DEFAULT_BUFFER_MB, MIB, MIN_BUFFER_MB, ROW_BYTES, writer_rows_fit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
DEFAULT_HOME = "~/.local/share/fullon_ohlcv"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs, titles and the cache)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{user}:***@{host}"
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: ``sqlite:///path``, ``postgresql://user:pw@host:port/db`` or ``redis://…/db``."""

    url: str
    kind: str  # "sqlite" | "postgresql" | "redis"

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    @property
    def path(self) -> Path:
        """Filesystem path of a sqlite URL."""
        if self.kind != "sqlite":
            raise ValueError(f"{self.redacted} is not a sqlite URL")
        raw = unquote(urlsplit(self.url).path)
        # sqlite:///abs/path and sqlite:////abs/path -> "/abs/path"; sqlite:///~/x -> "~/x" expanded
        raw = raw.lstrip("/")
        if raw.startswith("~"):
            return Path(os.path.expanduser(raw))
        return Path("/" + raw)

    @property
    def database(self) -> str:
        """Database name of a postgresql URL, or the db number of a redis URL."""
        return urlsplit(self.url).path.lstrip("/")

    def __str__(self) -> str:  # never the password
        return self.redacted


_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
}


def parse_store_url(setting: str, url: str, allowed: tuple[str, ...]) -> StoreURL:
    """Validate a store URL for ``setting``; raise ConfigError with one line and no password."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{setting}: malformed URL {shown!r} ({exc})") from None
    kind = _SCHEMES.get(parts.scheme)
    if kind is None or kind not in allowed:
        raise ConfigError(
            f"{setting}: unsupported URL {shown!r}; expected one of "
            + ", ".join(f"{a}://..." for a in allowed)
        )
    if kind == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise ConfigError(f"{setting}: malformed sqlite URL {shown!r}; expected sqlite:///path")
    elif kind == "postgresql":
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError(f"{setting}: malformed PostgreSQL URL {shown!r}; expected postgresql://user@host:port/db")
    else:
        if not parts.hostname:
            raise ConfigError(f"{setting}: malformed Redis URL {shown!r}; expected redis://host:port/db")
        db = parts.path.strip("/") or "0"
        if not db.isdigit() or not 0 <= int(db) <= 15:
            raise ConfigError(f"{setting}: Redis db must be 0-15 in {shown!r}")
    del port
    return StoreURL(url=url, kind=kind)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process of this service needs to know, validated once at start."""

    home: Path
    config_db: StoreURL
    ohlcv_db: StoreURL
    cache: StoreURL
    admin_mail: str = "admin@fullon"
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: str | None = None
    # worker
    heartbeat_interval: float = 5.0
    flush_rows: int = 1000
    flush_interval: float = 0.25
    buffer_rows: int = 50_000
    buffer_mb: int = DEFAULT_BUFFER_MB  # the worker's buffers, all symbols together (memory.py)
    # the worker's retry caps (seconds; retry.py's capped exponential backoff)
    rest_backoff_max: float = 10.0  # an exchange REST call (catch-up, gap repair, candles)
    stream_backoff_max: float = 10.0  # re-reading a websocket after it dropped (trades, live candles)
    store_backoff_max: float = 5.0  # the writer's retry of a batch the store did not take
    open_backoff_max: float = 10.0  # opening the process cache or the store, reading resume points
    markets_backoff_max: float = 30.0  # loading the exchange's markets
    task_backoff_max: float = 30.0  # restarting a collector task that crashed
    poll_backoff_max: float = 15.0  # a catch-up polling REST while it has nothing new
    # supervisor
    heartbeat_timeout: float = 30.0
    boot_grace: float = 60.0
    kill_grace: float = 5.0
    graceful_timeout: float = 10.0
    restart_budget: int = 20
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    simulator: str | None = None  # base URL of an exchange simulator; rewrites every ccxt URL

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied (None values are ignored)."""
        real = {k: v for k, v in changes.items() if v is not None}
        new = replace(self, **real)
        new.validate()
        return new

    def validate(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"LOG_FORMAT: {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        if "@" not in self.admin_mail:
            raise ConfigError(f"ADMIN_MAIL: {self.admin_mail!r} is not a mail address")
        positive = (
            "heartbeat_interval", "flush_interval", "heartbeat_timeout", "kill_grace",
            "graceful_timeout", "backoff_initial", "backoff_max",
            "rest_backoff_max", "stream_backoff_max", "store_backoff_max", "open_backoff_max",
            "markets_backoff_max", "task_backoff_max", "poll_backoff_max",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be > 0, got {value}")
        for name in ("flush_rows", "buffer_rows", "restart_budget"):
            value = getattr(self, name)
            if not value >= 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.boot_grace < 0:
            raise ConfigError(f"--boot-grace: must be >= 0, got {self.boot_grace}")
        if self.buffer_rows < self.flush_rows:
            raise ConfigError("--buffer-rows: must be >= --flush-rows")
        if not isinstance(self.buffer_mb, int) or self.buffer_mb < MIN_BUFFER_MB:
            raise ConfigError(f"--buffer-mb: must be an integer >= {MIN_BUFFER_MB}, got {self.buffer_mb}")
        if not writer_rows_fit(self.buffer_rows, self.buffer_mb * MIB):
            raise ConfigError(f"--buffer-rows: {self.buffer_rows} rows do not fit in a quarter of --buffer-mb "
                              f"{self.buffer_mb} (about {ROW_BYTES} bytes a row)")
        if self.simulator is not None:
            parts = urlsplit(self.simulator)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"--simulator: malformed URL {redact_url(self.simulator)!r}; expected http://host:port")


def _env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value} is out of range {lo}-{hi}")
    return value


def _pg_url(env: Mapping[str, str], db_var: str) -> str:
    host = env["DB_HOST"]
    port = _env_int(env, "DB_PORT", 5432, 1, 65535)
    user = env.get("DB_USER") or "postgres"
    password = env.get("DB_PASSWORD") or ""
    name = env.get(db_var) or ""
    if not name:
        raise ConfigError(f"{db_var}: must be set when DB_HOST is set")
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return f"postgresql://{auth}@{host}:{port}/{quote(name, safe='')}"


def _redis_url(env: Mapping[str, str]) -> str:
    host = env["REDIS_HOST"]
    port = _env_int(env, "REDIS_PORT", 6379, 1, 65535)
    db = _env_int(env, "REDIS_DB", 0, 0, 15)
    password = env.get("REDIS_PASSWORD") or ""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _float_env(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from ``env`` (default: os.environ) then apply non-None ``overrides``.

    Store precedence: explicit override (CLI flag) > ``OHLCV_*`` URL variable > fullon's
    ``DB_*``/``REDIS_*`` variables > the embedded SQLite files under ``OHLCV_HOME``.
    """
    env = os.environ if env is None else env
    home_raw = overrides.pop("home", None) or env.get("OHLCV_HOME") or DEFAULT_HOME
    home = Path(os.path.expanduser(str(home_raw)))

    def pick(flag: str | None, var: str, fallback: str) -> str:
        return flag or env.get(var) or fallback

    if env.get("DB_HOST"):
        default_config = _pg_url(env, "DB_NAME")
        default_ohlcv = _pg_url(env, "DB_OHLCV_NAME") if env.get("DB_OHLCV_NAME") else None
    else:
        default_config = f"sqlite://{(home / 'config.sqlite').absolute()}"
        default_ohlcv = None
    if default_ohlcv is None:
        default_ohlcv = f"sqlite://{(home / 'ohlcv').absolute()}"
    if env.get("REDIS_HOST"):
        default_cache = _redis_url(env)
    else:
        _env_int(env, "REDIS_DB", 0, 0, 15)  # validate even when unused
        default_cache = f"sqlite://{(home / 'cache.sqlite').absolute()}"

    config_db = parse_store_url(
        "--config-db/OHLCV_CONFIG_DB",
        pick(overrides.pop("config_db", None), "OHLCV_CONFIG_DB", default_config),
        ("sqlite", "postgresql"),
    )
    ohlcv_db = parse_store_url(
        "--ohlcv-db/OHLCV_DB",
        pick(overrides.pop("ohlcv_db", None), "OHLCV_DB", default_ohlcv),
        ("sqlite", "postgresql"),
    )
    cache = parse_store_url(
        "--cache/OHLCV_CACHE", pick(overrides.pop("cache", None), "OHLCV_CACHE", default_cache), ("sqlite", "redis")
    )
    base: dict[str, Any] = {
        "home": home,
        "config_db": config_db,
        "ohlcv_db": ohlcv_db,
        "cache": cache,
        "admin_mail": env.get("ADMIN_MAIL") or "admin@fullon",
        "log_level": (env.get("LOG_LEVEL") or "INFO").upper(),
        "log_format": (env.get("LOG_FORMAT") or "text").lower(),
        "log_file": env.get("LOG_FILE_PATH") or None,
    }
    hb = _float_env(env, "OHLCV_HEARTBEAT_INTERVAL")
    if hb is not None:
        base["heartbeat_interval"] = hb
    settings = Settings(**base)
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return settings.with_overrides(**overrides)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every command shares: the three stores, home and logging."""
    g = parser.add_argument_group("stores and logging")
    g.add_argument("--home", help=f"directory of the embedded SQLite files (env OHLCV_HOME, default {DEFAULT_HOME})")
    g.add_argument("--config-db", help="configuration database URL (env OHLCV_CONFIG_DB, or DB_HOST/DB_NAME...)")
    g.add_argument("--ohlcv-db", help="candle/trade database URL (env OHLCV_DB, or DB_HOST/DB_OHLCV_NAME...)")
    g.add_argument("--cache", help="process cache URL (env OHLCV_CACHE, or REDIS_HOST...)")
    g.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="env LOG_LEVEL (default INFO)")
    g.add_argument("--log-format", choices=LOG_FORMATS, help="env LOG_FORMAT (default text)")


_NAME_RE = re.compile(r"^[a-z_]+$")


def settings_from_args(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment overridden by every parsed flag whose dest names a setting."""
    known = {f.name for f in fields(Settings)}
    overrides = {k: v for k, v in vars(ns).items() if k in known and v is not None and _NAME_RE.match(k)}
    return settings_from_env(env, **overrides)
