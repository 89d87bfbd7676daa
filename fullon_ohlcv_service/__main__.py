"""`python -m fullon_ohlcv_service` runs the supervisor (or a named sub-command)."""

from fullon_ohlcv_service.cli import module_main

raise SystemExit(module_main())
