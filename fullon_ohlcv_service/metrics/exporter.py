"""The exporter process's body: serve /metrics from prometheus_client's handler with bounded threads and timeouts."""

from __future__ import annotations

import os
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler
from prometheus_client.process_collector import ProcessCollector

from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.metrics.collector import FleetCollector
from fullon_ohlcv_service.metrics.snapshot import read_fleet
from fullon_ohlcv_service.settings import StoreURL
from fullon_ohlcv_service.timeutil import now_ms

MAX_HANDLERS = 8  # concurrent scrapes served; more connections get 503 at once
CLIENT_TIMEOUT_S = 5.0  # a client that sends nothing, or never reads, is dropped after this
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class MetricsServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer over an already listening socket, with at most ``max_handlers`` threads."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, listener: socket.socket, registry: CollectorRegistry, *, max_handlers: int = MAX_HANDLERS,
                 client_timeout: float = CLIENT_TIMEOUT_S) -> None:
        base: Any = MetricsHandler.factory(registry)

        class Handler(base):  # type: ignore[misc, valid-type]
            timeout = client_timeout  # StreamRequestHandler sets it on the connection: reads and writes

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(listener.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.slots = threading.BoundedSemaphore(max_handlers)
        self.busy_refusals = 0
        self.dropped = 0
        self.log = Log("fullon.metrics")

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.busy_refusals += 1
            try:
                request.settimeout(0.2)
                request.sendall(_BUSY)
            except OSError:
                pass  # a client that cannot even take 80 bytes: just drop it
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away or stopped reading (timeout): count it, no traceback
        self.dropped += 1


def run_exporter(listener: socket.socket, master_pid: int, *, cache_url: StoreURL, per_symbol: bool,
                 poll_s: float = 1.0) -> int:
    """Serve /metrics until the master goes away or sends SIGTERM. Runs in the forked exporter child."""
    from setproctitle import setproctitle

    from fullon_ohlcv_service.adapters.caches import open_sync_process_cache
    from fullon_ohlcv_service.worker.main import set_parent_death_signal

    setproctitle("ohlcv-supervisor: metrics")
    set_parent_death_signal()
    log = Log("fullon.metrics")
    if os.getppid() != master_pid:
        return 0
    cache = open_sync_process_cache(cache_url)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: read_fleet(cache, now_ms), per_symbol=per_symbol))
    ProcessCollector(namespace="ohlcv_exporter", registry=registry)
    server = MetricsServer(listener, registry)
    server.timeout = poll_s
    log.info("serving /metrics", listen="{}:{}".format(*listener.getsockname()[:2]), per_symbol=per_symbol)
    try:
        while os.getppid() == master_pid:
            server.handle_request()
    finally:
        cache.close()
    return 0
