"""Prometheus metrics: worker figures in the heartbeat, the master's ledger, and the /metrics exporter process."""
