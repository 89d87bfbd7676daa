"""Worker entry point (after fork or from `ohlcv-worker`): title, logging, signals, uvloop, exit code."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal

from fullon_ohlcv_service import log
from fullon_ohlcv_service.errors import EXIT_CONFIG, EXIT_CRASH, ConfigError
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.settings import Settings
from fullon_ohlcv_service.worker.runtime import Tuning, WorkerRuntime

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` when the parent dies (prctl PR_SET_PDEATHSIG); False where unavailable."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def run_worker(
    spec: ExchangeSpec, settings: Settings, *, parent_pid: int | None = None, tuning: Tuning | None = None
) -> int:
    """Run one exchange's worker until SIGTERM/SIGINT (exit 0), a boot error (78) or a crash (1)."""
    from setproctitle import setproctitle

    setproctitle(f"ohlcv-worker: {spec.name}")
    log.configure(settings.log_level, settings.log_format, file=settings.log_file)
    logger = log.Log(f"fullon.ohlcv.worker.{spec.name}", exchange=spec.name)
    # asyncpg's pool logs a traceback per reconnect attempt during a database outage; the writer already
    # reports the outage in one structured line, so only its errors are kept
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
    # the master's handlers (if forked) only queue signals for the master: start clean
    for sig in (signal.SIGHUP, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    if parent_pid is not None:
        set_parent_death_signal()
        if os.getppid() != parent_pid:
            return EXIT_CRASH
    import uvloop

    async def main() -> int:
        runtime = WorkerRuntime(spec, settings, parent_pid=parent_pid, tuning=tuning)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.stop.set)
        return await runtime.run()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except ConfigError as exc:
        logger.error("configuration error", error=str(exc))
        return EXIT_CONFIG
    except Exception:  # last resort: logged with traceback, classified as a crash (exit 1, restarted)
        logger.exception("worker crashed")
        return EXIT_CRASH
