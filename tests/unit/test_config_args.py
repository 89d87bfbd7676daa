"""ohlcv-config argument validation: pure checks and refusals that happen before any database I/O."""

from __future__ import annotations

import pytest

from fullon_ohlcv_service import config_cli
from fullon_ohlcv_service.adapters.sql_config import (
    InputRefused,
    check_backtest,
    check_symbol,
    check_updateframe,
    not_configured,
    parse_param,
    split_symbol,
)
from fullon_ohlcv_service.cli import run
from fullon_ohlcv_service.errors import ConfigError

# A port nothing listens on: if a refusal needed the database, the message would say "unreachable".
NOWHERE = "postgresql://postgres:topsecret@127.0.0.1:9/nowhere"


def test_parse_param():
    assert parse_param("rate_limit=250") == ("rate_limit", "250")
    assert parse_param("base.url=http://127.0.0.1:1/a=b") == ("base.url", "http://127.0.0.1:1/a=b")
    assert parse_param("empty=") == ("empty", "")
    for bad in ("novalue", "=x", "1abc=2", "a b=c", "x;drop=1"):
        with pytest.raises(InputRefused, match="KEY=VALUE"):
            parse_param(bad)


def test_backtest_and_updateframe():
    assert check_backtest(0) == 0 and check_backtest(365) == 365
    with pytest.raises(InputRefused, match=r"--backtest must be >= 0 days, got -1"):
        check_backtest(-1)
    for good in ("1m", "15m", "1h", "4h", "1d", "1w", "1M"):
        assert check_updateframe(good) == good
    for bad in ("", "h", "0h", "1x", "1h;", "10000m", "1h\n"):
        with pytest.raises(InputRefused, match="--updateframe"):
            check_updateframe(bad)


def test_symbol_checks_refuse_sql_and_paths():
    for good in ("BTC/USD", "BTC/USDT:USDT", "ETH/USD:USD-261225", "btc/usd"):
        assert check_symbol(good) == good
    bad = ['BTC/USD"; DROP TABLE symbols;--', "BTC/USD;", "BTCUSD", "../etc/passwd", "BTC/USD'", "BTC /USD",
           "A" * 21 + "/USD", "BTC/USD\n", ""]
    for symbol in bad:
        with pytest.raises(ConfigError, match="is invalid"):
            check_symbol(symbol)


def test_split_symbol():
    assert split_symbol("BTC/USD") == ("BTC", "USD", False)
    assert split_symbol("BTC/USDT:USDT") == ("BTC", "USDT", True)
    assert split_symbol("ETH/USD:USD-261225") == ("ETH", "USD", True)


def test_not_configured_names_each_exchange_and_command():
    one = str(not_configured(["binance"]))
    assert one == "exchange 'binance' is not configured; run: ohlcv-config add-exchange binance"
    two = str(not_configured(["binance", "bybit"]))
    assert "ohlcv-config add-exchange binance" in two and "ohlcv-config add-exchange bybit" in two


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add-symbol", "kraken", "BTC-USD"], "symbol 'BTC-USD' is invalid"),
        (["add-symbol", "kraken", "BTC/USD;DROP TABLE users"], "is invalid"),
        (["add-symbol", "kraken", "BTC/USD", "--updateframe", "1h'"], "--updateframe"),
        (["add-symbol", "Kraken", "BTC/USD"], "exchange name 'Kraken' is invalid"),
        (["add-exchange", "kra ken"], "exchange name 'kra ken' is invalid"),
        (["add-exchange", "kraken\n"], "exchange name 'kraken\\n' is invalid"),
        (["add-exchange", "kraken;drop"], "exchange name 'kraken;drop' is invalid"),
        (["add-exchange", "kraken", "--param", "nokey"], "--param 'nokey' is invalid"),
        (["remove-symbol", "kraken", "x"], "symbol 'x' is invalid"),
    ],
)
def test_refused_before_any_io(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("OHLCV_CONFIG_DB", NOWHERE)
    assert run("config", argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ohlcv-config: error: ") and message in err
    assert "\n" not in err and "unreachable" not in err and "topsecret" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        config_cli.main(["add-symbol", "kraken", "BTC/USD", "--backtest", "two"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        config_cli.main(["frobnicate"])
    assert info.value.code == 2
    capsys.readouterr()


def test_store_flags_before_or_after_the_command(tmp_path):
    parser = config_cli.build_parser()
    url = f"sqlite:///{tmp_path}/c.sqlite"
    before = parser.parse_args(["--config-db", url, "list"])
    after = parser.parse_args(["list", "--config-db", url])
    assert before.config_db == url and after.config_db == url
    assert parser.parse_args(["add-symbol", "kraken", "BTC/USD"]).backtest == 30


def test_bad_settings_exit_78(capsys):
    assert run("config", ["--config-db", "mysql://x/y", "list"]) == 78
    assert "--config-db/OHLCV_CONFIG_DB: unsupported URL" in capsys.readouterr().err
