"""Console entry points; each imports its command lazily and maps classified errors to exit codes."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from fullon_ohlcv_service.errors import EXIT_CONFIG, EXIT_CRASH, ConfigError, StoreUnavailable
from fullon_ohlcv_service.redaction import redact_text

COMMANDS = {
    "supervisor": ("ohlcv-supervisor", "fullon_ohlcv_service.supervisor.cli"),
    "worker": ("ohlcv-worker", "fullon_ohlcv_service.worker.cli"),
    "status": ("ohlcv-status", "fullon_ohlcv_service.status"),
    "config": ("ohlcv-config", "fullon_ohlcv_service.config_cli"),
    "export": ("ohlcv-export", "fullon_ohlcv_service.export"),
    "simulator": ("ohlcv-simulator", "fullon_ohlcv_service.simulator.cli"),
}


def run(command: str, argv: Sequence[str] | None = None) -> int:
    """Run one command's ``main(argv) -> int``; ConfigError and StoreUnavailable become one line."""
    prog, module = COMMANDS[command]
    main: Callable[[list[str] | None], int] = importlib.import_module(module).main
    try:
        return main(list(argv) if argv is not None else None)
    except ConfigError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreUnavailable as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CRASH
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    """The error as one line with any credential removed (the messages are built without any; this is a net)."""
    return redact_text(" ".join(str(exc).split()))


def supervisor_main() -> int:
    return run("supervisor")


def worker_main() -> int:
    return run("worker")


def status_main() -> int:
    return run("status")


def config_main() -> int:
    return run("config")


def export_main() -> int:
    return run("export")


def simulator_main() -> int:
    return run("simulator")


def module_main(argv: Sequence[str] | None = None) -> int:
    """``python -m fullon_ohlcv_service [COMMAND] ...``; without a command, the supervisor."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return run(args[0], args[1:])
    if args and args[0] in ("-h", "--help") and len(args) == 1:
        print("usage: python -m fullon_ohlcv_service [" + "|".join(COMMANDS) + "] [ARGS...]")
        return 0
    return run("supervisor", args)
