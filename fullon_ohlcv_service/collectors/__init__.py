"""Collectors: trades, candles, backfill and the batch writer (depend on ports only)."""
