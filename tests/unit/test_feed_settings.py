"""--publish and the other feed flags: defaults by cache kind, validation, and the supervisor/worker parsers."""

from __future__ import annotations

import pytest

from fullon_ohlcv_service.collectors.feed import open_feed
from fullon_ohlcv_service.errors import ConfigError
from fullon_ohlcv_service.settings import settings_from_args, settings_from_env

HOME = {"OHLCV_HOME": "/nonexistent"}
REDIS = "redis://127.0.0.1:6379/12"


def test_defaults_follow_the_cache() -> None:
    assert settings_from_env(HOME).publish_mode == "off"
    s = settings_from_env(HOME, cache=REDIS)
    assert (s.publish_mode, s.feed_url, s.stream_maxlen, s.feed_symbols) == ("candles", s.cache, 100_000, "qualified")
    s = settings_from_env({**HOME, "OHLCV_FEED_REDIS": "redis://h:1/3"})
    assert s.publish_mode == "candles" and s.feed_url is not None and s.feed_url.url == "redis://h:1/3"
    assert settings_from_env({**HOME, "OHLCV_PUBLISH": "all"}, cache=REDIS).publish_mode == "all"
    assert settings_from_env(HOME, cache=REDIS, publish="off").publish_mode == "off"
    assert open_feed(settings_from_env(HOME, cache=REDIS, publish="off"), "kraken", object()) is None  # type: ignore[arg-type]


def test_bad_feed_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="--publish all: the live feeds need Redis"):
        settings_from_env(HOME, publish="all")
    with pytest.raises(ConfigError, match="--publish"):
        settings_from_env(HOME, cache=REDIS, publish="some")
    with pytest.raises(ConfigError, match="--stream-maxlen"):
        settings_from_env(HOME, cache=REDIS, stream_maxlen=0)
    with pytest.raises(ConfigError, match="--feed-redis"):
        settings_from_env(HOME, feed_redis="sqlite:///x")
    with pytest.raises(ConfigError) as info:
        settings_from_env(HOME, feed_redis="redis://:s3cret@h:1/99")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("module", ["fullon_ohlcv_service.supervisor.cli", "fullon_ohlcv_service.worker.cli"])
def test_supervisor_and_worker_take_the_flags(module: str) -> None:
    import importlib

    parser = importlib.import_module(module).build_parser()
    argv = ["--publish", "all", "--feed-redis", REDIS, "--stream-maxlen", "5000", "--feed-symbols", "bare",
            "--home", "/nonexistent"]
    if module.endswith("worker.cli"):
        argv += ["--exchange", "kraken"]
    s = settings_from_args(parser.parse_args(argv), env={})
    # the Settings object is what the supervisor hands to every forked worker (ForkStarter -> run_worker)
    assert (s.publish_mode, s.stream_maxlen, s.feed_symbols) == ("all", 5000, "bare")
    assert s.feed_url is not None and s.feed_url.url == REDIS
