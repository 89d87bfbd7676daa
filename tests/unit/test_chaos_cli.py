"""scripts/chaos's command line: the seeded plan is printed without running anything, and bad flags are refused."""

from __future__ import annotations

import pytest

from chaos.cli import main


def test_plan_is_deterministic_and_ends_with_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--plan", "--seed", "4", "--store", "postgres", "--cache", "redis"]) == 0
    first = capsys.readouterr().out
    assert main(["--plan", "--seed", "4", "--store", "postgres", "--cache", "redis"]) == 0
    assert capsys.readouterr().out == first
    lines = first.strip().splitlines()
    assert lines[-1].endswith("sigterm_master")
    assert any("redis_restart" in line for line in lines) and any("pg_restart" in line for line in lines)
    assert main(["--plan", "--seed", "5"]) == 0
    assert capsys.readouterr().out != first


@pytest.mark.parametrize("argv", [["--minutes", "0"], ["--redis-db", "16"]])
def test_bad_values(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--plan"]) == 2
    assert "chaos: error" in capsys.readouterr().err


def test_unknown_store_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--store", "mysql"])
    assert exc.value.code == 2
