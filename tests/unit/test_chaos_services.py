"""Outages of a run's servers: which observed down intervals the run's own planned outages do not explain."""

from __future__ import annotations

import socket
import time

from chaos import services


def test_unplanned_outages() -> None:
    planned = [("redis", 10.0, 20.0)]
    observed = [("redis", 10.4, 20.5), ("redis", 40.0, 45.0), ("postgresql", 12.0, 14.0)]
    assert services.unplanned(observed, planned) == [("redis", 40.0, 45.0), ("postgresql", 12.0, 14.0)]
    assert services.unplanned([], planned) == []


def test_availability_records_a_down_interval() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.listen(16)
    watch = services.Availability({"fake": ("127.0.0.1", port)}, period=0.05)
    watch.start()
    try:
        time.sleep(0.3)
        srv.close()
        t_down = time.monotonic()
        time.sleep(1.5)  # long enough to be seen by a poller that a loaded machine delays
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(16)
        t_up = time.monotonic()
        time.sleep(0.3)
    finally:
        intervals = watch.stop()
        srv.close()
    assert len(intervals) == 1
    name, a, b = intervals[0]
    # ordering, with slack for a loaded machine (the poll is 0.05 s)
    assert name == "fake" and t_down - 0.01 <= a < t_up <= b + 0.01 and b <= t_up + 2.0
