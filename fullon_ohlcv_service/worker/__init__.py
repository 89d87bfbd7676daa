"""One exchange's worker process: uvloop runtime, collectors, heartbeat."""
