"""Worker entry point (after fork or from `ohlcv-worker`): title, logging, signals, uvloop, exit code."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading

from fullon_ohlcv_service import log
from fullon_ohlcv_service.collectors.trades import SilencePolicy
from fullon_ohlcv_service.errors import EXIT_CONFIG, EXIT_CRASH, EXIT_OK, ConfigError
from fullon_ohlcv_service.models import ExchangeSpec
from fullon_ohlcv_service.settings import Settings
from fullon_ohlcv_service.worker.runtime import Tuning, WorkerRuntime

PR_SET_PDEATHSIG = 1
# the signals the master blocks around fork (supervisor.arbiter.HANDLED_SIGNALS): the worker unblocks them
WORKER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


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


class StopDeadline:
    """After a stop signal, end the process at the graceful timeout even if something is stuck.

    The runtime flushes what it can within the graceful timeout and then closes its adapters. A
    thread blocked inside a driver (SQLite waits up to its 30 s busy timeout for a lock another process
    holds) cannot be cancelled, and closing the store or leaving the interpreter would wait for it. A
    daemon timer armed by the first stop signal exits the process at the deadline instead; a second
    stop signal exits at once. Nothing is lost either way: what was not committed is re-fetched from
    REST on the next start.
    """

    def __init__(self, seconds: float, logger: log.Log) -> None:
        self.seconds = seconds
        self.log = logger
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self.expire, args=("graceful timeout reached",))
            self._timer.daemon = True
            self._timer.start()

    def expire(self, why: str) -> None:
        self.log.warning(f"stop: {why}; exiting now (what was not committed is re-fetched from REST on the "
                         "next start)", graceful_timeout_s=self.seconds)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(EXIT_OK)

    def release(self) -> None:
        """The worker returned: cancel the timer, unless a thread that the exit would wait for is still alive."""
        if self._timer is None:
            return
        me = threading.current_thread()
        if not any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate()):
            self._timer.cancel()


def tuning_from_settings(settings: Settings) -> Tuning:
    """The collectors' knobs that the settings carry (flags of ohlcv-worker and ohlcv-supervisor alike)."""
    return Tuning(silence=SilencePolicy(min_s=settings.silence_min), gap_every=settings.gap_check,
                  reconcile_every=settings.reconcile, native_ohlcv=settings.native_ohlcv)


def run_worker(
    spec: ExchangeSpec, settings: Settings, *, parent_pid: int | None = None, tuning: Tuning | None = None
) -> int:
    """Run one exchange's worker until SIGTERM/SIGINT (exit 0), a boot error (78) or a crash (1).

    ``settings`` is the whole configuration, the same object the master was started with when forked;
    ``tuning`` (tests only) replaces the collector knobs derived from it.

    Forked by the master, it starts with the master's signals blocked (supervisor.arbiter.ForkStarter);
    they are unblocked once the event loop's handlers are installed, so a SIGTERM sent at any time
    after the fork stops the worker. SIGHUP is ignored: a terminal hang-up or ``kill -HUP -PGID`` is the
    master's reload, not a reason for a worker to die.
    """
    from setproctitle import setproctitle

    setproctitle(f"ohlcv-worker: {spec.name}")
    log.configure(settings.log_level, settings.log_format, file=settings.log_file)
    logger = log.Log(f"fullon.ohlcv.worker.{spec.name}", exchange=spec.name)
    # asyncpg's pool logs a traceback per reconnect attempt during a database outage; the writer already
    # reports the outage in one structured line, so only its errors are kept
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
    # the master's handlers (if forked) only queue signals for the master: start clean; a SIGHUP pending
    # since the fork is discarded by SIG_IGN
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    if parent_pid is not None:
        set_parent_death_signal()
        if os.getppid() != parent_pid:
            return EXIT_CRASH
    import uvloop

    deadline = StopDeadline(settings.graceful_timeout, logger)
    tuning = tuning if tuning is not None else tuning_from_settings(settings)
    silence_min = tuning.silence.min_s if tuning.silence is not None else None
    logger.info("worker starting", symbols=len(spec.symbols), silence_min_s=silence_min,
                gap_check_s=tuning.gap_every, reconcile_s=tuning.reconcile_every, native_ohlcv=tuning.native_ohlcv,
                heartbeat_interval_s=settings.heartbeat_interval, buffer_mb=settings.buffer_mb)

    async def main() -> int:
        runtime = WorkerRuntime(spec, settings, parent_pid=parent_pid, tuning=tuning)
        loop = asyncio.get_running_loop()

        def on_stop(signame: str) -> None:
            if deadline.armed:
                deadline.expire(f"second stop signal ({signame})")
            runtime.stop.set()
            deadline.arm()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig.name)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)  # a stop pending since the fork lands now
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
    finally:
        deadline.release()
