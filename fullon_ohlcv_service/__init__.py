"""fullon_ohlcv_service: a loss-free OHLCV and trade collector, data-compatible with fullon."""

__version__ = "0.1.0"
