"""Adapters: drivers behind the ports (SQL config, stores, caches, ccxt)."""
