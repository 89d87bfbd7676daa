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


# ---------------------------------------------------------------- issue 10, finding 4: passwords in URLs

SECRETS = ["SE/CRET", "SE?CRET", "SE#CRET", "SE@CRET", "S/E?C#R@ET", "SECRET"]
URL_FORMS = [
    ("--config-db", "config_db", "postgresql://u:{pw}@127.0.0.1:5432/db"),
    ("--config-db", "config_db", "postgresql://u:{pw}@127.0.0.1/db"),
    ("--ohlcv-db", "ohlcv_db", "postgres://u:{pw}@db.example/ohlcv"),
    ("--cache", "cache", "redis://:{pw}@127.0.0.1:6379/0"),
    ("--cache", "cache", "redis://:{pw}@cache.example"),
    ("--cache", "cache", "rediss://default:{pw}@cache.example:6380/2"),
    ("--config-db", "config_db", "postgresql://u:{pw}@[::1/db"),
    ("--config-db", "config_db", "postgresql://u:{pw}@h:99999/db"),
    ("--cache", "cache", "redis://:{pw}@h:6379/99"),
    ("--ohlcv-db", "ohlcv_db", "mysql://u:{pw}@h/db"),
]


@pytest.mark.parametrize("password", SECRETS)
@pytest.mark.parametrize(("flag", "setting", "template"), URL_FORMS)
def test_no_url_form_leaks_its_password_from_settings(tmp_path, flag, setting, template, password):
    url = template.format(pw=password)
    try:
        s = settings_from_env({"OHLCV_HOME": str(tmp_path)}, **{setting: url})
    except ConfigError as exc:
        msg = str(exc)
        assert flag in msg and "\n" not in msg
        assert "CRET" not in msg, msg
        if password != "SECRET" and "99" not in url and "mysql" not in url and "[::1/" not in url:
            assert "percent-encode" in msg  # the refusal says what to do
        return
    shown = str(getattr(s, setting))
    assert password == "SECRET" and "CRET" not in shown and ":***@" in shown  # accepted only when unambiguous


def test_percent_encoded_passwords_are_accepted_and_hidden(tmp_path):
    s = settings_from_env({"OHLCV_HOME": str(tmp_path)}, config_db="postgresql://u:S%2FE%3FC%23R%40ET@h:5432/db",
                          cache="redis://:S%2FE%40T@h:6379/1")
    assert str(s.config_db) == "postgresql://u:***@h:5432/db" and str(s.cache) == "redis://:***@h:6379/1"
    # fullon's variables: any password is encoded when the URL is built
    env = {"DB_HOST": "h", "DB_NAME": "fullon", "DB_PASSWORD": "p/a?s#s@w%rd", "REDIS_HOST": "r",
           "REDIS_PASSWORD": "r/e?d#i@s"}
    s = settings_from_env(env)
    assert s.config_db.redacted == "postgresql://postgres:***@h:5432/fullon"
    assert s.cache.redacted == "redis://:***@r:6379/0"
    from urllib.parse import unquote, urlsplit

    assert unquote(urlsplit(s.config_db.url).password or "") == "p/a?s#s@w%rd"


@pytest.mark.parametrize(("var", "value"), [("DB_HOST", "h/x"), ("DB_HOST", "u:pw@h"), ("REDIS_HOST", "h#1"),
                                            ("REDIS_HOST", "h x")])
def test_host_variables_must_be_hosts(var, value):
    env = {"DB_NAME": "x", var: value}
    if var == "REDIS_HOST":
        env.pop("DB_NAME")
    with pytest.raises(ConfigError, match=var):
        settings_from_env(env)


def test_ipv6_host_variable_gets_brackets():
    s = settings_from_env({"DB_HOST": "::1", "DB_NAME": "x"})
    assert s.config_db.redacted == "postgresql://postgres@[::1]:5432/x"


# ---------------------------------------------------------------- finding 8: '#', '?', '%' in OHLCV_HOME

@pytest.mark.parametrize("name", ["a#b", "a?b", "a%b", "a%41b", "a b", "a#1?2%zz"])
def test_home_with_url_characters_keeps_every_path(tmp_path, name):
    home = tmp_path / name
    s = settings_from_env({"OHLCV_HOME": str(home)})
    assert s.config_db.path == home / "config.sqlite"
    assert s.cache.path == home / "cache.sqlite"
    assert s.ohlcv_db.path == home / "ohlcv"
    assert str(s.config_db) == f"sqlite://{home / 'config.sqlite'}"  # shown decoded, as the operator wrote it
    # a flag built from the same path by hand must encode it: raw '?' and '#' are refused, not truncated
    if "?" in name or "#" in name:
        with pytest.raises(ConfigError, match="percent-encoded"):
            settings_from_env({"OHLCV_HOME": str(home)}, cache=f"sqlite://{home}/cache.sqlite")


def test_two_stores_in_one_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--cache: .* is also the --config-db path"):
        settings_from_env({"OHLCV_HOME": str(tmp_path)}, cache=f"sqlite://{tmp_path}/config.sqlite")


# ---------------------------------------------------------------- finding 10: numbers

@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"heartbeat_interval": float("inf")}, "--heartbeat-interval: must be a finite number"),
        ({"graceful_timeout": float("nan")}, "--graceful-timeout: must be a finite number"),
        ({"kill_grace": 1e300}, "--kill-grace: must be at most 86400"),
        ({"boot_grace": -1.0}, "--boot-grace: must be >= 0"),
        ({"restart_budget": 10**20}, "--restart-budget: must be from 1 to 1000000"),
        ({"flush_rows": 0}, "--flush-rows: must be from 1"),
        ({"backoff_initial": 120.0}, "--backoff-initial: must not exceed --backoff-max (120 > 60)"),
        ({"heartbeat_interval": 30.0}, "must be shorter than --heartbeat-timeout"),
    ],
)
def test_numbers_must_be_finite_and_in_range(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as info:
        settings_from_env({"OHLCV_HOME": str(tmp_path)}, **overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0", "-1", "abc", "99999999999999999999"])
def test_heartbeat_variable_is_checked_and_named(tmp_path, value):
    with pytest.raises(ConfigError, match=r"^OHLCV_HEARTBEAT_INTERVAL: "):
        settings_from_env({"OHLCV_HOME": str(tmp_path), "OHLCV_HEARTBEAT_INTERVAL": value})


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
    with pytest.raises(ConfigError, match=f"^--{name.replace('_', '-')}: must be > 0, got 0$"):
        settings_from_env({}, **{name: 0.0})
