"""``python -m fullon_ohlcv_service.chaos``: the chaos suite (same as scripts/chaos)."""

import sys

from fullon_ohlcv_service.chaos.cli import main

sys.exit(main())
