"""Frozen Settings built from the environment (fullon's variable names) and CLI flags, validated."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.feed_layout import DEFAULT_MAXLEN, PUBLISH_MODES, SYMBOL_FORMS
from fullon_ohlcv_service.memory import DEFAULT_BUFFER_MB, MIB, MIN_BUFFER_MB, ROW_BYTES, writer_rows_fit
from fullon_ohlcv_service.redaction import redact_url

__all__ = ["Settings", "StoreURL", "add_common_args", "parse_store_url", "redact_url", "settings_from_args",
           "settings_from_env", "sqlite_url"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
DEFAULT_HOME = "~/.local/share/fullon_ohlcv"


def sqlite_url(path: Path | str) -> str:
    """``sqlite:///abs/path`` for a filesystem path, percent-encoded so that ``#``, ``?`` and ``%`` in it
    stay part of the path (``StoreURL.path`` decodes it back)."""
    return "sqlite://" + quote(str(Path(path).absolute()), safe="/~")


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: ``sqlite:///path``, ``postgresql://user:pw@host:port/db`` or ``redis://…/db``."""

    url: str
    kind: str  # "sqlite" | "postgresql" | "redis"

    @property
    def redacted(self) -> str:
        """The URL as it may be shown: no password; a sqlite URL as ``sqlite://`` and its decoded path."""
        if self.kind == "sqlite":
            return f"sqlite://{self.path}"
        return redact_url(self.url)

    @property
    def path(self) -> Path:
        """Filesystem path of a sqlite URL."""
        if self.kind != "sqlite":
            raise ValueError(f"{redact_url(self.url)} is not a sqlite URL")
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


_RESERVED_IN_USERINFO = "'/', '?', '#' or '@'"


def _ambiguous_userinfo(url: str) -> bool:
    """True when the user or password of ``url`` holds an unencoded ``/ ? # @``.

    Parsers disagree on such a URL (urllib ends the password at the first ``/``, asyncpg at the first
    ``@``), so it would connect somewhere else or print part of the password as a host or a port.
    """
    body = url.partition("://")[2]
    at = body.rfind("@")
    if at < 0:
        return False
    end = min((i for i in (body.find(c) for c in "/?#") if i >= 0), default=len(body))
    authority = body[:end]
    if at < end:  # the last '@' is inside the authority: another '@' before it is an unencoded one
        return "@" in authority[: authority.rfind("@")]
    # an '@' only after the authority: a password cut short by '/', '?' or '#' (``u:pa/ss@host``),
    # unless the authority reads as host:port (then the '@' belongs to the path or the query)
    host, sep, port = authority.rpartition(":")
    return bool(sep) and not (port.isdigit() and "@" not in host)


def parse_store_url(setting: str, url: str, allowed: tuple[str, ...]) -> StoreURL:
    """Validate a store URL for ``setting``; raise ConfigError with one line and no password.

    The messages never quote a parser's own error: urllib's names the text it took for a port,
    which is part of the password when the password holds an unencoded ``/``.
    """
    shown = redact_url(url)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{setting}: malformed URL {shown!r}: it holds whitespace or a control character")
    if url.partition("://")[0].lower() != "sqlite" and _ambiguous_userinfo(url):
        raise ConfigError(
            f"{setting}: malformed URL {shown!r}: its user or password holds an unencoded {_RESERVED_IN_USERINFO}; "
            "percent-encode them (%2F, %3F, %23, %40)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError(
            f"{setting}: malformed URL {shown!r}: the host or port cannot be read (a port is a number 0-65535)"
        ) from None
    kind = _SCHEMES.get(parts.scheme)
    if kind is None or kind not in allowed:
        raise ConfigError(
            f"{setting}: unsupported URL {shown!r}; expected one of "
            + ", ".join(f"{a}://..." for a in allowed)
        )
    if kind == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise ConfigError(f"{setting}: malformed sqlite URL {shown!r}; expected sqlite:///path")
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise ConfigError(
                f"{setting}: malformed sqlite URL {shown!r}: a '?' or '#' in a file path must be percent-encoded "
                "(%3F, %23)"
            )
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


# Bounds of the numeric settings, shared by the flags' parsers (exit 2) and Settings.validate (exit 78).
MAX_SECONDS = 86_400.0  # a day: no duration setting needs more, and none may be inf or nan
DURATIONS = ("heartbeat_interval", "flush_interval", "heartbeat_timeout", "boot_grace", "kill_grace",
             "graceful_timeout", "backoff_initial", "backoff_max", "backoff_reset", "silence_min", "gap_check",
             "reconcile", "rest_backoff_max", "stream_backoff_max", "store_backoff_max", "open_backoff_max",
             "markets_backoff_max", "task_backoff_max", "poll_backoff_max")
ZERO_OK_DURATIONS = ("boot_grace",)
COUNTS = {"flush_rows": (1, 1_000_000), "buffer_rows": (1, 100_000_000), "restart_budget": (1, 1_000_000)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: object) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def seconds_problem(value: float, *, zero_ok: bool = False, hi: float = MAX_SECONDS) -> str | None:
    """Why ``value`` is not a usable number of seconds in (0, hi] ([0, hi] with ``zero_ok``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number of seconds, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {_show(value)}"
    if value < 0 or (value == 0 and not zero_ok):
        return f"must be {'>= 0' if zero_ok else '> 0'}, got {_show(value)}"
    if value > hi:
        return f"must be at most {hi:g} seconds, got {_show(value)}"
    return None


def count_problem(value: int, lo: int, hi: int) -> str | None:
    """Why ``value`` is not a whole number in [lo, hi], or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number, got {value!r}"
    if not lo <= value <= hi:
        return f"must be from {lo} to {hi}, got {_show(value)}"
    return None


def check_seconds(name: str, value: float, *, zero_ok: bool = False, hi: float = MAX_SECONDS) -> float:
    """``value`` as float if ``seconds_problem`` finds nothing; else ConfigError naming ``name``."""
    problem = seconds_problem(value, zero_ok=zero_ok, hi=hi)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return float(value)


def check_count(name: str, value: int, lo: int, hi: int) -> int:
    """``value`` if ``count_problem`` finds nothing; else ConfigError naming ``name``."""
    problem = count_problem(value, lo, hi)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process of this service needs to know, validated once at start.

    One shape for every process: the master reads its limits from it and hands the same object to
    every worker it forks, so a flag given to ``ohlcv-supervisor`` reaches the workers as it reaches
    ``ohlcv-worker`` run in the foreground.
    """

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
    silence_min: float = 3.0  # shortest silence (s) of a symbol that triggers a REST catch-up
    gap_check: float = 60.0  # seconds between candle gap checks
    reconcile: float = 60.0  # seconds between REST reconciliations of the last final candles
    native_ohlcv: bool = True  # also watch the exchange's live 1m candles (provisional rows only)
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
    backoff_reset: float = 30.0  # a worker up this long was healthy: its next restart is immediate
    simulator: str | None = None  # base URL of an exchange simulator; rewrites every ccxt URL
    # live feeds (collectors/feed.py): None = "candles" when a Redis is configured for them, else "off"
    publish: str | None = None
    feed_redis: StoreURL | None = None  # None: the process cache when it is Redis
    stream_maxlen: int = DEFAULT_MAXLEN
    feed_symbols: str = "qualified"  # OHLCVCache symbol: kraken:BTCUSD, or bare BTCUSD

    @property
    def feed_url(self) -> StoreURL | None:
        """The Redis the live feeds go to: ``--feed-redis``, else the process cache when it is Redis."""
        if self.feed_redis is not None:
            return self.feed_redis
        return self.cache if self.cache.kind == "redis" else None

    @property
    def publish_mode(self) -> str:
        """``off``, ``candles`` or ``all``; by default ``candles`` when a Redis is there for the feeds."""
        if self.publish is not None:
            return self.publish
        return "candles" if self.feed_url is not None else "off"

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
        for name in DURATIONS:
            check_seconds(_flag(name), getattr(self, name), zero_ok=name in ZERO_OK_DURATIONS)
        for name, (lo, hi) in COUNTS.items():
            check_count(_flag(name), getattr(self, name), lo, hi)
        if self.buffer_rows < self.flush_rows:
            raise ConfigError("--buffer-rows: must be >= --flush-rows")
        if not isinstance(self.buffer_mb, int) or self.buffer_mb < MIN_BUFFER_MB:
            raise ConfigError(f"--buffer-mb: must be an integer >= {MIN_BUFFER_MB}, got {self.buffer_mb}")
        if not writer_rows_fit(self.buffer_rows, self.buffer_mb * MIB):
            raise ConfigError(f"--buffer-rows: {self.buffer_rows} rows do not fit in a quarter of --buffer-mb "
                              f"{self.buffer_mb} (about {ROW_BYTES} bytes a row)")
        if self.publish is not None and self.publish not in PUBLISH_MODES:
            raise ConfigError(f"--publish: {self.publish!r} is not one of {', '.join(PUBLISH_MODES)}")
        if self.publish_mode != "off" and self.feed_url is None:
            raise ConfigError(f"--publish {self.publish_mode}: the live feeds need Redis; give --feed-redis "
                              "redis://host:port/db or a Redis --cache")
        if self.feed_symbols not in SYMBOL_FORMS:
            raise ConfigError(f"--feed-symbols: {self.feed_symbols!r} is not one of {', '.join(SYMBOL_FORMS)}")
        if not 1 <= self.stream_maxlen <= 1_000_000_000:
            raise ConfigError(f"--stream-maxlen: must be a whole number in [1, 1000000000], got {self.stream_maxlen}")
        if self.backoff_initial > self.backoff_max:
            raise ConfigError(f"--backoff-initial: must not exceed --backoff-max ({self.backoff_initial:g} > "
                              f"{self.backoff_max:g})")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError(f"--heartbeat-interval ({self.heartbeat_interval:g}s) must be shorter than --heartbeat-"
                              f"timeout ({self.heartbeat_timeout:g}s), or every worker would be judged hung")
        self._check_distinct_files()
        if self.simulator is not None:
            parts = urlsplit(self.simulator)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"--simulator: malformed URL {redact_url(self.simulator)!r}; expected http://host:port")

    def _check_distinct_files(self) -> None:
        """The embedded configuration file, cache file and store directory must be three different paths."""
        named = [(n, u.path) for n, u in (("--config-db", self.config_db), ("--ohlcv-db", self.ohlcv_db),
                                          ("--cache", self.cache)) if u.kind == "sqlite"]
        for i, (name, path) in enumerate(named):
            for other, other_path in named[:i]:
                if path.absolute() == other_path.absolute():
                    raise ConfigError(f"{name}: {path} is also the {other} path; give each store its own")


def _env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {_show(raw)!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {_show(value)} is out of range {lo}-{hi}")
    return value


def _env_host(env: Mapping[str, str], name: str) -> str:
    """A host name or address for a URL (an IPv6 address gets its brackets); ConfigError on anything else."""
    host = env[name].strip()
    if not host or any(c in host for c in "/?#@[]") or any(c.isspace() or not c.isprintable() for c in host):
        raise ConfigError(f"{name}: {host!r} is not a host name or address")
    return f"[{host}]" if ":" in host else host


def _pg_url(env: Mapping[str, str], db_var: str) -> str:
    host = _env_host(env, "DB_HOST")
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
    host = _env_host(env, "REDIS_HOST")
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
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {_show(raw)!r} is not a number") from None
    return check_seconds(name, value)


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
        default_config = sqlite_url(home / "config.sqlite")
        default_ohlcv = None
    if default_ohlcv is None:
        default_ohlcv = sqlite_url(home / "ohlcv")
    if env.get("REDIS_HOST"):
        default_cache = _redis_url(env)
    else:
        _env_int(env, "REDIS_DB", 0, 0, 15)  # validate even when unused
        default_cache = sqlite_url(home / "cache.sqlite")

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
    feed_raw = overrides.pop("feed_redis", None) or env.get("OHLCV_FEED_REDIS")
    feed_redis = parse_store_url("--feed-redis/OHLCV_FEED_REDIS", feed_raw, ("redis",)) if feed_raw else None
    base: dict[str, Any] = {
        "home": home,
        "config_db": config_db,
        "ohlcv_db": ohlcv_db,
        "cache": cache,
        "admin_mail": env.get("ADMIN_MAIL") or "admin@fullon",
        "log_level": (env.get("LOG_LEVEL") or "INFO").upper(),
        "log_format": (env.get("LOG_FORMAT") or "text").lower(),
        "log_file": env.get("LOG_FILE_PATH") or None,
        "feed_redis": feed_redis,
        "publish": (env.get("OHLCV_PUBLISH") or "").lower() or None,
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


def add_feed_args(parser: argparse.ArgumentParser) -> None:
    """The live feed flags of the supervisor and the worker (README "Live feeds")."""
    g = parser.add_argument_group("live feeds (Redis: fullon_cache's OHLCVCache list and Redis Streams)")
    g.add_argument("--publish", choices=PUBLISH_MODES,
                   help="off, candles (OHLCVCache 1m list + candle stream) or all (also the trade stream); "
                        "env OHLCV_PUBLISH; default candles when the cache (or --feed-redis) is Redis, else off")
    g.add_argument("--feed-redis", metavar="URL",
                   help="Redis for the feeds (env OHLCV_FEED_REDIS; default: the --cache when it is Redis)")
    g.add_argument("--stream-maxlen", type=int, metavar="N",
                   help=f"entries kept per stream, XADD MAXLEN ~ N (default {DEFAULT_MAXLEN})")
    g.add_argument("--feed-symbols", choices=SYMBOL_FORMS,
                   help="OHLCVCache symbol: qualified kraken:BTCUSD (default) or bare BTCUSD (one exchange only)")


_NAME_RE = re.compile(r"^[a-z_]+$")


def settings_from_args(
    ns: argparse.Namespace, env: Mapping[str, str] | None = None, *, parser: argparse.ArgumentParser | None = None,
) -> Settings:
    """Settings from the environment overridden by every parsed flag whose dest names a setting.

    With ``parser``, numeric flags that together make the settings invalid (``--backoff-initial`` above
    ``--backoff-max``...) are a bad command line: ``parser.error`` (exit 2). Any other problem is a
    ConfigError (exit 78), as is one the environment causes without those flags.
    """
    known = {f.name for f in fields(Settings)}
    overrides = {k: v for k, v in vars(ns).items() if k in known and v is not None and _NAME_RE.match(k)}
    try:
        return settings_from_env(env, **overrides)
    except ConfigError as exc:
        numeric = set(overrides) & (set(DURATIONS) | set(COUNTS))
        if parser is None or not numeric:
            raise
        try:
            settings_from_env(env, **{k: v for k, v in overrides.items() if k not in numeric})
        except ConfigError:
            raise exc from None
        parser.error(str(exc))
