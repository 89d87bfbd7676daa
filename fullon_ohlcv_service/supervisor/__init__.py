"""The master process: fork one worker per exchange, watch heartbeats, restart with policy."""
