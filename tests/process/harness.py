"""Process-test harness: a simulator, an embedded configuration, the real ohlcv-supervisor, and /proc checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fullon_ohlcv_service.adapters.caches import open_sync_process_cache
from fullon_ohlcv_service.ports import SyncProcessCache
from fullon_ohlcv_service.settings import parse_store_url

BIN = Path(sys.executable).parent

# Short timeouts so the whole file runs in a minute or two.
FAST_FLAGS = [
    "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", "--boot-grace", "5", "--kill-grace", "1",
    "--graceful-timeout", "5", "--backoff-initial", "0.5", "--backoff-max", "2", "--backoff-reset", "2",
]
SIM_SYMBOLS = "kraken:BTC/USD@4,ETH/USD@1;binance:BTC/USDT@4"


def bin_path(name: str) -> str:
    return str(BIN / name)


def proc_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes in session ``sid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def wait_for(what: str, pred: Callable[[], Any], timeout: float, interval: float = 0.05,
             log: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = ("\n--- log tail ---\n" + log()[-6000:]) if log else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


class System:
    """One simulator + one configuration + at most one running ohlcv-supervisor, all cleaned up by close()."""

    def __init__(self, tmp: Path, cache_url: str) -> None:
        self.tmp = tmp
        home = tmp / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DB_", "REDIS_", "OHLCV_")) and k not in ("LOG_FILE_PATH", "LOG_FORMAT")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update({
            "OHLCV_HOME": str(home),
            "OHLCV_CONFIG_DB": f"sqlite://{home / 'config.sqlite'}",
            "OHLCV_DB": f"sqlite://{home / 'ohlcv'}",
            "OHLCV_CACHE": cache_url,
            "LOG_LEVEL": "INFO",
        })
        self.env = env
        self.cache_url = cache_url
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""
        self.sup: subprocess.Popen[bytes] | None = None
        self.sup_log_path = tmp / "supervisor.log"
        self._sup_log: IO[bytes] | None = None
        self._cache: SyncProcessCache | None = None
        self.master_pid: int | None = None  # set when the master is not our child (supervisord runs it)

    # ------------------------------------------------------------------ pieces

    def start_simulator(self, symbols: str = SIM_SYMBOLS, history_days: float = 0.05) -> str:
        """A steady market (no quiet stretches): a window of a few seconds always holds trades to audit."""
        log = (self.tmp / "simulator.log").open("wb")
        self.sim = subprocess.Popen(
            [bin_path("ohlcv-simulator"), "--port", "0", "--exchanges", "kraken,binance", "--symbols", symbols,
             "--history-days", f"{history_days:g}", "--steady"],
            env=self.env, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )
        assert self.sim.stdout is not None
        line = self.sim.stdout.readline().decode()
        assert line, f"ohlcv-simulator printed nothing (exit {self.sim.poll()})"
        self.sim_url = str(json.loads(line)["url"]).rstrip("/")
        threading.Thread(target=self.sim.stdout.read, daemon=True).start()
        return self.sim_url

    def run(self, name: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([bin_path(name), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def config(self, *args: str) -> None:
        proc = self.run("ohlcv-config", *args)
        assert proc.returncode == 0, f"ohlcv-config {' '.join(args)}: {proc.stderr}"

    def setup_config(self, symbols: dict[str, list[str]], backtest: int = 0) -> None:
        self.config("init")
        for exchange, syms in symbols.items():
            self.config("add-exchange", exchange, "--force")  # bitmex too: parked by the worker
            for s in syms:
                self.config("add-symbol", exchange, s, "--backtest", str(backtest))

    def start_supervisor(self, *args: str, fast: bool = True) -> subprocess.Popen[bytes]:
        self._sup_log = self.sup_log_path.open("ab")
        argv = [bin_path("ohlcv-supervisor"), *args]
        if self.sim_url:
            argv += ["--simulator", self.sim_url]
        if fast:
            argv += FAST_FLAGS
        self.sup = subprocess.Popen(argv, env=self.env, stdout=self._sup_log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return self.sup

    def log(self) -> str:
        try:
            return self.sup_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def cache(self) -> SyncProcessCache:
        if self._cache is None:
            self._cache = open_sync_process_cache(parse_store_url("cache", self.cache_url, ("sqlite", "redis")))
        return self._cache

    # ------------------------------------------------------------------ observations

    def sup_params(self) -> dict[str, Any]:
        master = self.master_pid or (self.sup.pid if self.sup else None)
        doc = self.cache.get_component("ohlcv-supervisor")
        if not doc or doc.get("params", {}).get("pid") != master:
            return {}
        params: dict[str, Any] = doc["params"]
        return params

    def state(self, exchange: str) -> dict[str, Any]:
        entry: dict[str, Any] = (self.sup_params().get("exchanges") or {}).get(exchange) or {}
        return entry

    def worker_doc(self, exchange: str) -> dict[str, Any] | None:
        return self.cache.get_component(f"ohlcv-worker:{exchange}")

    def beating_pid(self, exchange: str, other_than: int | None = None) -> int | None:
        """The worker pid the master runs for ``exchange`` once that pid has written a heartbeat."""
        pid = self.state(exchange).get("pid")
        if not pid or pid == other_than:
            return None
        doc = self.worker_doc(exchange)
        if doc and doc.get("params", {}).get("pid") == pid:
            return int(pid)
        return None

    def wait_beating(self, exchange: str, timeout: float, other_than: int | None = None) -> int:
        return int(wait_for(f"a heartbeating {exchange} worker", lambda: self.beating_pid(exchange, other_than),
                            timeout, log=self.log))

    def wait_live_data(self, exchange: str, symbol: str, timeout: float) -> None:
        def live() -> bool:
            doc = self.worker_doc(exchange)
            info = ((doc or {}).get("params", {}).get("symbols") or {}).get(symbol) or {}
            return bool(info.get("last_trade_ms")) and bool(info.get("trades_stored"))

        wait_for(f"live {exchange} {symbol} trades", live, timeout, interval=0.2, log=self.log)

    def http(self, path: str, **query: Any) -> Any:
        url = self.sim_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.loads(resp.read())

    def truth_trade_ids(self, exchange: str, symbol: str, since: int, until: int) -> set[str]:
        docs = self.http("/_sim/trades", exchange=exchange, symbol=symbol, since=since, until=until)
        return {str(d["id"]) for d in docs}

    def stored_trades(self, exchange: str, symbol: str, since: int, until: int) -> list[dict[str, Any]]:
        proc = self.run("ohlcv-export", exchange, symbol, "--kind", "trades", "--since", str(since),
                        "--until", str(until), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    # ------------------------------------------------------------------ teardown

    def stop_supervisor(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.sup is not None
        if self.sup.poll() is None:
            os.kill(self.sup.pid, sig)
        code = self.sup.wait(timeout)
        if self._sup_log:
            self._sup_log.close()
        return code

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        for proc in (self.sup, self.sim):
            if proc is None:
                continue
            for pid in session_members(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        if self._sup_log:
            self._sup_log.close()
