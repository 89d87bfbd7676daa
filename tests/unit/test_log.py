"""Structured logging: key/value fields, JSON, and drivers' tracebacks folded into one line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fullon_ohlcv_service.log import Log, configure


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    configure()  # back to stderr for whatever runs next


def test_text_line_has_component_pid_and_fields():
    buf = io.StringIO()
    configure("INFO", "text", stream=buf)
    Log("fullon.ohlcv.worker.kraken", exchange="kraken").info("backfill", symbol="BTC/USD", pct=10)
    line = buf.getvalue().strip()
    assert "fullon.ohlcv.worker.kraken" in line and "pid=" in line
    assert "exchange=kraken" in line and "symbol=BTC/USD" in line and "pct=10" in line


def test_json_format():
    buf = io.StringIO()
    configure("DEBUG", "json", stream=buf)
    Log("fullon.ohlcv.supervisor").debug("tick", n=1)
    doc = json.loads(buf.getvalue())
    assert doc["component"] == "fullon.ohlcv.supervisor" and doc["n"] == 1 and doc["level"] == "DEBUG"


def test_driver_traceback_is_one_structured_line():
    buf = io.StringIO()
    configure("INFO", "text", stream=buf)
    try:
        raise ConnectionRefusedError("connect call failed")
    except ConnectionRefusedError:
        logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor", exc_info=True)
    out = buf.getvalue()
    assert out.count("\n") == 1, out
    assert "asyncpg.pool" in out and "ConnectionRefusedError: connect call failed" in out
    assert "Traceback" not in out
    logging.getLogger("asyncpg.pool").info("not shown below WARNING")
    assert buf.getvalue() == out


@pytest.mark.parametrize("path", ["/proc/no/such/dir/ohlcv.log", "/"])
def test_unwritable_log_file_is_one_config_error_and_logging_keeps_working(path):
    from fullon_ohlcv_service.errors import ConfigError

    buf = io.StringIO()
    configure("INFO", "text", stream=buf)
    with pytest.raises(ConfigError, match=r"^LOG_FILE_PATH: cannot write to ") as info:
        configure("INFO", "text", file=path)
    assert "\n" not in str(info.value)
    Log("fullon.ohlcv.supervisor").error("still logged")  # the previous handler was kept
    assert "still logged" in buf.getvalue()
