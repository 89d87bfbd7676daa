"""Outages of shared servers: which observed down intervals a run's own planned outages do not explain."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from fullon_ohlcv_service.chaos import services


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
        time.sleep(0.4)
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
    assert name == "fake" and t_down - 0.01 <= a <= t_down + 0.3 and t_up - 0.01 <= b <= t_up + 0.3


def test_the_postgresql_cluster_is_found_by_its_port() -> None:
    """The cluster the chaos run stops and starts is the one on 5432, whatever its version (pg_lsclusters)."""
    if shutil.which("pg_lsclusters") is None:
        pytest.skip("no Debian PostgreSQL cluster tools here")
    version, name = services.pg_cluster()
    assert version.isdigit() and name
    with pytest.raises(services.StoreUnavailable, match="port 1"):
        services.pg_cluster(port=1)
