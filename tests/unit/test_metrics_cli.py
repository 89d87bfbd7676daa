"""`ohlcv-supervisor --metrics-*` flags: defaults, a port that cannot be bound is one line, bad values."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.settings import settings_from_env
from fullon_ohlcv_service.supervisor.cli import build_parser, open_exporter


def test_metrics_are_off_by_default_and_on_with_a_port(tmp_path: Path) -> None:
    settings = settings_from_env({}, home=str(tmp_path))
    ns = build_parser().parse_args([])
    assert (ns.metrics_port, ns.metrics_host, ns.metrics_per_symbol) == (None, "127.0.0.1", "on")
    assert open_exporter(ns, settings) is None
    exporter = open_exporter(build_parser().parse_args(["--metrics-port", "0"]), settings)
    assert exporter is not None
    try:
        host, port = exporter.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
    finally:
        exporter.listener.close()


def test_a_port_in_use_or_out_of_range_is_one_line(tmp_path: Path) -> None:
    settings = settings_from_env({}, home=str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^--metrics-port: cannot listen on 127.0.0.1:{port}: .*in use"):
            open_exporter(build_parser().parse_args(["--metrics-port", str(port)]), settings)
    with pytest.raises(SystemExit) as exc:  # out of range: a bad command line, refused by the flag's type
        build_parser().parse_args(["--metrics-port", "70000"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--metrics-per-symbol", "maybe"])
    assert exc.value.code == 2
