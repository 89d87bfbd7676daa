"""Settings: environment names, URL precedence, validation messages without passwords."""

from __future__ import annotations

import pytest

from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.settings import redact_url, settings_from_env


def test_embedded_default_is_sqlite_under_home(tmp_path):
    s = settings_from_env({"OHLCV_HOME": str(tmp_path)})
    assert s.config_db.kind == "sqlite" and s.config_db.path == tmp_path / "config.sqlite"
    assert s.ohlcv_db.kind == "sqlite" and s.ohlcv_db.path == tmp_path / "ohlcv"
    assert s.cache.kind == "sqlite"
    assert s.admin_mail == "admin@fullon" and s.log_level == "INFO"


def test_fullon_db_and_redis_variables():
    env = {
        "DB_HOST": "db.example", "DB_PORT": "5433", "DB_USER": "fullon", "DB_PASSWORD": "s3cret",
        "DB_NAME": "fullon", "DB_OHLCV_NAME": "fullon_ohlcv",
        "REDIS_HOST": "cache.example", "REDIS_PORT": "6380", "REDIS_DB": "3", "REDIS_PASSWORD": "pw",
        "ADMIN_MAIL": "me@example.com", "LOG_LEVEL": "debug",
    }
    s = settings_from_env(env)
    assert s.config_db.kind == "postgresql" and s.config_db.database == "fullon"
    assert s.ohlcv_db.database == "fullon_ohlcv"
    assert s.cache.kind == "redis" and s.cache.database == "3"
    assert "s3cret" not in str(s.config_db) and "pw@" not in str(s.cache)
    assert s.admin_mail == "me@example.com" and s.log_level == "DEBUG"


def test_flag_beats_url_variable_beats_fullon_variables(tmp_path):
    env = {"DB_HOST": "h", "DB_NAME": "x", "OHLCV_CONFIG_DB": f"sqlite:///{tmp_path}/a.sqlite"}
    s = settings_from_env(env)
    assert s.config_db.path == tmp_path / "a.sqlite"
    s = settings_from_env(env, config_db="postgresql://u@h2:5432/y")
    assert s.config_db.database == "y"


@pytest.mark.parametrize(
    ("env", "overrides", "needle"),
    [
        ({"REDIS_HOST": "h", "REDIS_DB": "99"}, {}, "REDIS_DB"),
        ({"REDIS_DB": "abc"}, {}, "REDIS_DB"),
        ({}, {"cache": "redis://:topsecret@h:6379/42"}, "--cache"),
        ({}, {"ohlcv_db": "mysql://u:topsecret@h/db"}, "--ohlcv-db"),
        ({}, {"config_db": "postgresql://u:topsecret@h:notaport/db"}, "--config-db"),
        ({}, {"heartbeat_interval": -1.0}, "--heartbeat-interval"),
        ({"LOG_LEVEL": "LOUD"}, {}, "LOG_LEVEL"),
        ({"DB_HOST": "h"}, {}, "DB_NAME"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_setting(env, overrides, needle):
    with pytest.raises(ConfigError) as info:
        settings_from_env(env, **overrides)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg
    assert "topsecret" not in msg


def test_redact_url():
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize("command", ["supervisor", "worker"])
def test_collection_flags_are_settings_of_both_commands(tmp_path, command):
    """One settings shape: the worker's knobs parse the same on ohlcv-supervisor (for its forks) and ohlcv-worker."""
    from fullon_ohlcv_service.settings import settings_from_args
    from fullon_ohlcv_service.supervisor.cli import build_parser as supervisor_parser
    from fullon_ohlcv_service.worker.cli import build_parser as worker_parser
    from fullon_ohlcv_service.worker.main import tuning_from_settings

    parser = supervisor_parser() if command == "supervisor" else worker_parser()
    head = ["--exchange", "kraken"] if command == "worker" else []
    env = {"OHLCV_HOME": str(tmp_path)}
    default = settings_from_args(parser.parse_args(head), env)
    assert (default.silence_min, default.gap_check, default.reconcile, default.native_ohlcv) == (3.0, 60.0, 60.0, True)
    ns = parser.parse_args([*head, "--silence-min", "2.5", "--gap-check", "7", "--reconcile", "9", "--no-native-ohlcv",
                            "--flush-rows", "10", "--buffer-mb", "64"])
    s = settings_from_args(ns, env)
    assert (s.silence_min, s.gap_check, s.reconcile, s.native_ohlcv, s.flush_rows, s.buffer_mb) == (
        2.5, 7.0, 9.0, False, 10, 64)
    t = tuning_from_settings(s)
    assert t.silence is not None and t.silence.min_s == 2.5
    assert (t.gap_every, t.reconcile_every, t.native_ohlcv) == (7.0, 9.0, False)


@pytest.mark.parametrize("name", ["silence_min", "gap_check", "reconcile", "backoff_reset"])
def test_collection_periods_must_be_positive(name):
    with pytest.raises(ConfigError, match=f"^--{name.replace('_', '-')}: must be > 0, got 0.0$"):
        settings_from_env({}, **{name: 0.0})
