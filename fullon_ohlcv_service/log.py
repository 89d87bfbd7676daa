"""Structured logging to stderr (text or JSON): component, pid and key/value fields on every line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.redaction import redact_text

_FIELDS = "ohlcv_fields"


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        # the last line of defence: a URL with a password in a message, a field or a driver's
        # traceback is redacted here, whoever logged it
        line = self._format(record)
        return redact_text(line) if "://" in line else line

    def _format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, _FIELDS, {}))
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if record.exc_info:
            if record.name.startswith("fullon"):
                fields["exc"] = self.formatException(record.exc_info)
            else:  # a library's own retry noise: one line, not a traceback
                etype, evalue = record.exc_info[0], record.exc_info[1]
                fields["error"] = f"{etype.__name__ if etype else 'Error'}: {evalue}"
        if self.json:
            doc = {"ts": ts, "level": record.levelname, "component": record.name, "pid": record.process,
                   "msg": record.getMessage(), **fields}
            return json.dumps(doc, default=str)
        kv = " ".join(f"{k}={_kv(v)}" for k, v in fields.items() if k != "exc")
        line = f"{ts} {record.levelname:<7} {record.name} pid={record.process} {record.getMessage()}"
        if kv:
            line += " " + kv
        if "exc" in fields:
            line += "\n" + str(fields["exc"])
        return line


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="'):
        return json.dumps(text)
    return text


def configure(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None,
              file: str | None = None) -> None:
    """Install one handler on the ``fullon`` logger tree (idempotent; call again after fork)."""
    handler: logging.Handler = logging.StreamHandler(stream or sys.stderr)
    if file:
        try:
            handler = logging.FileHandler(file)
        except OSError as exc:  # before any handler is removed: logging keeps working for the error line
            raise ConfigError(f"LOG_FILE_PATH: cannot write to {file!r}: {exc.strerror or exc}") from None
    root = logging.getLogger("fullon")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler.setFormatter(_Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # Drivers log on their own (asyncpg's pool retries during a database outage, aiohttp, redis):
    # route their warnings through the same structured handler instead of bare tracebacks on stderr.
    for name in THIRD_PARTY:
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            lib.removeHandler(h)
        lib.addHandler(handler)
        lib.setLevel(max(logging.WARNING, logging.getLevelName(level)))
        lib.propagate = False


THIRD_PARTY = ("asyncpg", "aiohttp", "redis", "ccxt", "asyncio")


class Log:
    """A logger bound to a dotted component and context fields (exchange, symbol, ...)."""

    __slots__ = ("_fields", "_logger")

    def __init__(self, component: str, **fields: Any) -> None:
        self._logger = logging.getLogger(component)
        self._fields = fields

    def bind(self, **fields: Any) -> Log:
        new = Log(self._logger.name)
        new._fields = {**self._fields, **fields}
        return new

    def _log(self, level: int, msg: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, exc_info=exc, extra={_FIELDS: {**self._fields, **fields}})

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, False, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, True, fields)
