"""Redaction: no form of URL, well-formed or not, shows its password; the rest stays readable."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fullon_ohlcv_service.log import Log, configure
from fullon_ohlcv_service.redaction import (
    redact_param,
    redact_params,
    redact_text,
    redact_url,
    redact_value,
    url_has_credentials,
)

# every password an operator may type, encoded or not (a "SECRET" core marks it for the assertions)
PASSWORDS = ["SECRET", "SE/CRET", "SE?CRET", "SE#CRET", "SE@CRET", "SE:CRET", "SE%CRET", "SE%2FCRET", "S/E?C#R@ET",
             "SE CRET", "SE@/CRET@"]
# scheme, user part, host part (with or without a port), path
FORMS = [
    ("postgresql", "fullon", "db.example:5432", "/fullon"),
    ("postgresql", "fullon", "db.example", "/fullon"),
    ("postgres", "u", "[::1]:5433", "/x"),
    ("redis", "", "cache.example:6379", "/3"),
    ("redis", "", "cache.example", ""),
    ("rediss", "default", "cache.example:6380", "/0"),
    ("http", "proxyuser", "proxy.example:8080", "/kraken"),
]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(("scheme", "user", "host", "path"), FORMS)
def test_no_url_form_shows_its_password(scheme: str, user: str, host: str, path: str, password: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}{path}"
    shown = redact_url(url)
    assert "CRET" not in shown, (url, shown)
    assert shown.startswith(f"{scheme}://{user}:***@")
    assert shown.endswith(f"@{host}{path}")  # host, port and database are still there to read
    assert url_has_credentials(url)
    assert redact_url(shown) == shown  # idempotent


@pytest.mark.parametrize("password", PASSWORDS)
def test_urls_inside_free_text_and_known_passwords_are_hidden(password: str) -> None:
    url = f"postgresql://u:{password}@127.0.0.1:9/db"
    text = f"config database {url} unreachable: ConnectionRefusedError (to {url})"
    # in free text whitespace ends a URL, so a password with a space needs its URL named (settings refuse
    # such a URL anyway: it never reaches a message)
    out = redact_text(text, url) if " " in password else redact_text(text)
    assert "CRET" not in out and "127.0.0.1:9/db unreachable" in out
    # a driver's message that quotes the password alone, outside any URL
    assert "CRET" not in redact_text(f"password authentication failed: {password!r}", url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:SECRET@[::1/db",  # malformed IPv6
        "postgresql://u:SECRET@h:notaport/db",
        "redis://:SECRET@",
        "://u:SECRET@h",
        "postgresql://u:SECRET@h/db?sslmode=require&password=SECRET2",
        "postgresql://h/db?password=SECRET",
        "redis://h:6379/0?password=SECRET&db=1",
        "postgresql://u:SECRET@h/db@more@x",
        "  postgresql://u:SECRET@h/db",
    ],
)
def test_malformed_or_odd_urls_never_leak(url: str) -> None:
    assert "SECRET" not in redact_url(url)
    assert "SECRET" not in redact_text(f"error: {url} refused")


def test_urls_without_credentials_are_unchanged() -> None:
    for url in ("postgresql://postgres@127.0.0.1:5432/db", "redis://h:6379/0", "sqlite:///tmp/a#b/c.sqlite",
                "http://127.0.0.1:8080/x", "postgresql://h:5432/db?sslmode=require", "not a url at all"):
        assert redact_url(url) == url
        assert not url_has_credentials(url)


def test_params_are_shown_without_credentials() -> None:
    params = {"base_url": "https://user:SECRET@proxy.example:8443/kraken", "api_key": "SECRET", "secret": "SECRET",
              "rate_limit_ms": "250", "ws_proxy": "socks5://u:SECRET@p:1080", "note": "see http://docs/x"}
    shown = redact_params(params)
    assert "SECRET" not in json.dumps(shown)
    assert shown["base_url"] == "https://user:***@proxy.example:8443/kraken"
    assert shown["rate_limit_ms"] == "250" and shown["note"] == "see http://docs/x"
    assert redact_param("api_key", "") == ""  # nothing to hide: shown as empty


def test_nested_values_for_the_cache() -> None:
    doc = {"message": "Redis redis://:SECRET@h:6379/0 unavailable", "n": 3,
           "symbols": {"BTC/USD": {"last_rest_error": "GET https://u:SECRET@x/y failed", "ok": True}},
           "list": ["postgresql://u:SECRET@h/db", 1.5]}
    assert "SECRET" not in json.dumps(redact_value(doc))
    assert redact_value(doc)["n"] == 3 and redact_value(doc)["symbols"]["BTC/USD"]["ok"] is True


def test_every_log_line_is_redacted_whoever_logs() -> None:
    buf = io.StringIO()
    configure("INFO", "text", stream=buf)
    try:
        Log("fullon.ohlcv.worker.kraken").warning("store unavailable; retrying",
                                                   error="PostgreSQL store postgresql://u:SE/CRET@h:5/db is down")
        try:
            raise ConnectionError("connect to redis://:SE#CRET@h:6379/0 failed")
        except ConnectionError:
            logging.getLogger("redis.connection").warning("retrying", exc_info=True)
        configure("INFO", "json", stream=buf)
        Log("fullon.supervisor").info("cache down", url="redis://:SE@CRET@h:6379/0")
    finally:
        configure()
    out = buf.getvalue()
    assert "CRET" not in out
    assert out.count("***") == 3
