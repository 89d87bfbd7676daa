"""The /metrics exporter as a child process of the master: forked like a worker, restarted with backoff.

The master keeps the listening socket (bound once at start, so a bad port is a one-line error and a
restarted exporter never races for it) and forks the exporter, which serves it from its own threads.
The master itself never holds a thread, so every fork stays safe (docs/architecture.md §8).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fullon_ohlcv_service.errors import EXIT_CRASH, ConfigError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.retry import Backoff
from fullon_ohlcv_service.supervisor.policy import describe_exit

ExporterTarget = Callable[[socket.socket, int], int]  # (listener, master_pid) -> exit code
_CHILD_DEFAULT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (port 0: any free port); ConfigError in one line if it cannot."""
    try:
        sock = socket.create_server((host, port), backlog=128, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


class ExporterProcess:
    """One exporter child: started when due, restarted after an exit with a capped backoff, stopped last."""

    def __init__(self, listener: socket.socket, target: ExporterTarget, *, clock: Callable[[], float] = time.monotonic,
                 backoff_initial: float = 1.0, backoff_max: float = 30.0) -> None:
        self.listener = listener
        self.target = target
        self.clock = clock
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log = Log("fullon.supervisor.metrics")
        self.pid: int | None = None
        self.due_at: float | None = 0.0
        self.failures = 0
        self.started_at = 0.0
        self.stopping = False
        host, port = listener.getsockname()[:2]
        self.address = f"{host}:{port}"

    def fileno(self) -> int:
        return self.listener.fileno()

    def owns(self, pid: int) -> bool:
        return self.pid is not None and pid == self.pid

    def due(self) -> bool:
        return self.pid is None and not self.stopping and self.due_at is not None and self.clock() >= self.due_at

    def start(self, master_pid: int, close_fds: Sequence[int] = ()) -> None:
        """Fork the exporter (the caller has closed its cache connections: nothing crosses the fork)."""
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self._schedule(f"cannot fork the metrics exporter: {exc}")
            return
        if pid == 0:
            self._child(master_pid, close_fds)
        self.pid = pid
        self.started_at = self.clock()
        self.due_at = None
        self.log.info("metrics exporter started", exporter_pid=pid, listen=self.address)

    def _child(self, master_pid: int, close_fds: Sequence[int]) -> NoReturn:
        code = EXIT_CRASH
        try:
            signal.set_wakeup_fd(-1)
            for sig in _CHILD_DEFAULT:
                signal.signal(sig, signal.SIG_DFL)
            for fd in close_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = self.target(self.listener, master_pid)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else EXIT_CRASH
        except BaseException:  # noqa: BLE001 - the child's last resort: print it, then exit 1 below
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def on_exit(self, status: int) -> None:
        """The exporter was reaped: schedule a restart unless the master is stopping."""
        _, text = describe_exit(status)
        pid, self.pid = self.pid, None
        if self.stopping:
            self.log.info("metrics exporter stopped", exporter_pid=pid, exit=text)
            return
        if self.clock() - self.started_at >= 60.0:
            self.failures = 0
        self._schedule(f"metrics exporter exited ({text})", exporter_pid=pid)

    def _schedule(self, what: str, **fields: Any) -> None:
        delay = Backoff(self.backoff_initial, self.backoff_max).delay(self.failures) if self.failures else 0.0
        self.failures += 1
        self.due_at = self.clock() + delay
        self.log.warning(f"{what}; restarting it", delay_s=round(delay, 2), **fields)

    def stop(self) -> None:
        """SIGTERM the exporter and never restart it (the master is stopping)."""
        self.stopping = True
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def finish(self, grace: float = 2.0) -> None:
        """At the master's exit: make sure the exporter is gone and reaped, then close the socket."""
        self.stop()
        pid = self.pid
        deadline = time.monotonic() + grace
        while pid is not None:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done == pid:
                break
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        self.pid = None
        self.listener.close()

    def params(self) -> dict[str, Any]:
        return {"listen": self.address, "pid": self.pid}
