"""`ohlcv-supervisor` start-up refusals through the real console script: one clear line, a non-zero code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fullon_ohlcv_service.supervisor.cli import parse_exchanges

BIN = Path(sys.executable).parent


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "OHLCV_"))}
    env.update({"OHLCV_HOME": str(home), "OHLCV_CACHE": f"sqlite://{home / 'cache.sqlite'}",
                "OHLCV_CONFIG_DB": f"sqlite://{home / 'config.sqlite'}", "OHLCV_DB": f"sqlite://{home / 'ohlcv'}"})
    return env


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ohlcv-supervisor"), *args], env=_env(home), capture_output=True, text=True,
                          timeout=60, check=False)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--bogus"], 2, "ohlcv-supervisor: error: unrecognized arguments: --bogus"),
        (["--heartbeat-timeout", "abc"], 2, "argument --heartbeat-timeout: 'abc' is not a number of seconds"),
        (["--heartbeat-timeout", "-1"], 2,
         "ohlcv-supervisor: error: argument --heartbeat-timeout: must be > 0, got -1"),
        (["--restart-budget", "0"], 2, "--restart-budget: must be from 1 to 1000000, got 0"),
        (["--backoff-reset", "0"], 2, "--backoff-reset: must be > 0, got 0"),
        # issue 10: oversized, infinite and nan numbers, and flags that contradict each other
        (["--heartbeat-interval", "inf"], 2, "--heartbeat-interval: must be a finite number of seconds, got inf"),
        (["--heartbeat-timeout", "nan"], 2, "--heartbeat-timeout: must be a finite number of seconds, got nan"),
        (["--kill-grace", "1e400"], 2, "--kill-grace: must be a finite number of seconds, got inf"),
        (["--graceful-timeout", "99999999999999999999"], 2, "--graceful-timeout: must be at most 86400 seconds"),
        (["--boot-grace", "-0.5"], 2, "--boot-grace: must be >= 0, got -0.5"),
        (["--backoff-reset", "NaN"], 2, "--backoff-reset: must be a finite number of seconds, got nan"),
        (["--restart-budget", "99999999999999999999999"], 2, "--restart-budget: must be from 1 to 1000000, got 9999"),
        (["--restart-budget", "1.5"], 2, "--restart-budget: '1.5' is not a whole number"),
        (["--backoff-initial", "100", "--backoff-max", "10"], 2, "--backoff-initial: must not exceed --backoff-max"),
        (["--backoff-initial", "100"], 2, "--backoff-initial: must not exceed --backoff-max (100 > 60)"),
        (["--heartbeat-interval", "40"], 2, "--heartbeat-interval (40s) must be shorter than --heartbeat-timeout"),
        (["--exchanges", "kra ken"], 78, "--exchanges: 'kra ken' is not a ccxt exchange id"),
        (["--exchanges", ","], 78, "--exchanges: no exchange given"),
        (["--simulator", "ftp://x"], 78, "--simulator: malformed URL"),
    ],
)
def test_bad_flags(home: Path, args: list[str], code: int, text: str) -> None:
    proc = _run(home, *args)
    assert proc.returncode == code
    assert text in _one_line(proc)


def test_configuration_problems_are_one_line(home: Path) -> None:
    config = str(BIN / "ohlcv-config")
    subprocess.run([config, "init"], env=_env(home), check=True, capture_output=True)
    proc = _run(home)
    assert proc.returncode == 78
    assert "no exchange configured" in _one_line(proc) and "ohlcv-config add-exchange" in proc.stderr
    subprocess.run([config, "add-exchange", "kraken"], env=_env(home), check=True, capture_output=True)
    proc = _run(home, "--exchanges", "kraken,binance")
    assert proc.returncode == 78
    line = _one_line(proc)
    assert "binance" in line and "add-exchange" in line


def test_parse_exchanges() -> None:
    assert parse_exchanges(None) is None
    assert parse_exchanges(" Kraken, binance,kraken ,") == ["kraken", "binance"]


def test_a_reload_failure_is_one_classified_line(home: Path) -> None:
    """The running master's re-read (SIGHUP): a corrupt or unreadable configuration database is an
    OhlcvError of one line naming it, never a raw sqlite3/OS error (which would end the master)."""
    from fullon_ohlcv_service.errors import OhlcvError
    from fullon_ohlcv_service.settings import settings_from_env
    from fullon_ohlcv_service.supervisor.cli import reload_specs

    settings = settings_from_env({"OHLCV_HOME": str(home)})
    path = settings.config_db.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database, " * 1000)
    for breakage in ("corrupt", "a directory"):
        if breakage == "a directory":
            path.unlink()
            path.mkdir()
        with pytest.raises(OhlcvError) as exc:
            reload_specs(settings, None)
        text = str(exc.value)
        assert str(path) in text and "\n" not in text, (breakage, text)


def test_reload_errors_never_carry_the_password() -> None:
    from fullon_ohlcv_service.supervisor.cli import _scrub

    url = "postgresql://fullon:s3/cr#t@x@db.example:5432/fullon"  # unencoded / # @ in the password
    assert _scrub("auth failed: s3/cr#t@x rejected", url) == "auth failed: *** rejected"
    assert _scrub("auth failed: s3%2Fcr", "postgresql://u:s3%2Fcr@h/db") == "auth failed: ***"
    assert _scrub("no password here", "sqlite:///tmp/config.sqlite") == "no password here"
