"""The repository's supervisord.conf with the real supervisord: RUNNING, then stop leaves no worker behind."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.harness import FAST_FLAGS, System, bin_path, proc_alive, session_members, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "program:ohlcv"


def _flag(command: list[str], name: str, default: float) -> float:
    return float(command[command.index(name) + 1]) if name in command else default


def test_repository_conf_has_the_stop_contract() -> None:
    conf = configparser.RawConfigParser()
    conf.read(ROOT / "supervisord.conf")
    prog = conf[PROGRAM]
    command = shlex.split(prog["command"])
    assert command[0] == "ohlcv-supervisor"
    assert "--daemon" not in command  # foreground: supervisord owns the process
    assert conf["supervisord"]["nodaemon"] == "true"
    assert prog["stopsignal"] == "TERM"
    assert prog["stopasgroup"] == "true" and prog["killasgroup"] == "true"
    assert prog["autorestart"] == "unexpected" and prog["exitcodes"] == "0"
    graceful = _flag(command, "--graceful-timeout", 10.0)
    kill = _flag(command, "--kill-grace", 5.0)
    assert float(prog["stopwaitsecs"]) > graceful + kill
    assert prog["stdout_logfile"] == "/dev/stdout" and prog["stderr_logfile"] == "/dev/stderr"
    assert prog["stdout_logfile_maxbytes"] == "0" and prog["stderr_logfile_maxbytes"] == "0"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    s = System(tmp_path, f"sqlite://{tmp_path / 'home' / 'cache.sqlite'}")
    try:
        yield s
    finally:
        s.close()


def _ctl(conf: Path, system: System, *args: str) -> str:
    proc = subprocess.run([bin_path("supervisorctl"), "-c", str(conf), *args], env=system.env,
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr


def test_real_supervisord_runs_and_stops_the_service(system: System, tmp_path: Path) -> None:
    url = system.start_simulator()
    system.setup_config({"kraken": ["BTC/USD"], "binance": ["BTC/USDT"]})

    conf = configparser.RawConfigParser()
    conf.read(ROOT / "supervisord.conf")
    sock = tmp_path / "sd.sock"
    conf["supervisord"]["pidfile"] = str(tmp_path / "supervisord.pid")
    conf["supervisord"]["logfile"] = str(tmp_path / "supervisord.log")
    conf["unix_http_server"]["file"] = str(sock)
    conf["supervisorctl"]["serverurl"] = f"unix://{sock}"
    command = shlex.split(conf[PROGRAM]["command"])
    command[0] = bin_path("ohlcv-supervisor")
    command += ["--exchanges", "kraken,binance", "--simulator", url, *FAST_FLAGS]
    conf[PROGRAM]["command"] = shlex.join(command)
    conf[PROGRAM]["startsecs"] = "2"
    path = tmp_path / "supervisord.conf"
    with path.open("w") as f:
        conf.write(f)

    out = (tmp_path / "supervisord.out").open("wb")
    sd = subprocess.Popen([bin_path("supervisord"), "-c", str(path)], env=system.env, stdout=out,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def running() -> str | None:
            text = _ctl(path, system, "status", "ohlcv")
            return text if "RUNNING" in text else None

        status = wait_for("RUNNING", running, 30, interval=0.3)
        m = re.search(r"pid (\d+)", status)
        assert m, status
        master = int(m.group(1))
        system.master_pid = master
        k = system.wait_beating("kraken", 30)
        b = system.wait_beating("binance", 30)
        assert (tmp_path / "supervisord.out").read_text(errors="replace").count("worker started") >= 2  # logs

        stopped = _ctl(path, system, "stop", "ohlcv")
        assert "ohlcv: stopped" in stopped, stopped
        assert "STOPPED" in _ctl(path, system, "status", "ohlcv")
        for pid in (master, k, b):
            assert not proc_alive(pid)
        assert [p for p in session_members(sd.pid) if p != sd.pid] == []
        log = (tmp_path / "supervisord.out").read_text(errors="replace")
        assert "master stopped exit_code=0" in log
    finally:
        if sd.poll() is None:
            sd.send_signal(signal.SIGTERM)
            try:
                sd.wait(30)
            except subprocess.TimeoutExpired:
                sd.kill()
                sd.wait(5)
        for pid in session_members(sd.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.close()
