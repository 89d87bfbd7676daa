"""Classified errors and the process exit-code contract."""

from __future__ import annotations

# Exit codes are a contract between workers, the supervisor and supervisord.
EXIT_OK = 0  # a requested stop: never restarted (a worker exiting 0 unasked by the master is restarted)
EXIT_CRASH = 1  # an unexpected failure: restarted with backoff
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_CONFIG = 78  # EX_CONFIG: configuration or boot error; the exchange is parked, not restarted
EXIT_ALL_FATAL = 3  # supervisor: every exchange is parked FATAL


class OhlcvError(Exception):
    """Base of every error this service raises on purpose."""


class TransientError(OhlcvError):
    """May succeed if retried later with backoff (network, 429, 5xx, a database that is down)."""


class PermanentError(OhlcvError):
    """Retrying will not help; stop that unit of work and report it."""


class ConfigError(PermanentError):
    """Bad settings, flags or configuration rows. Message is one clear line, never a password."""


class StoreDataError(PermanentError):
    """The store refused values in a batch (a constraint, type or range the validation missed).

    Retrying the same rows fails again; the writer isolates the offending rows and quarantines them.
    """


class StoreCorrupt(ConfigError):
    """A SQLite file that is not a database or is damaged: retrying cannot help, the operator must act (78)."""


class StoreUnavailable(TransientError):
    """A database or cache cannot be reached. The message names the endpoint without password."""


class ExchangeUnsupported(ConfigError):
    """The exchange is not known to ccxt (for example bitmex since ccxt 4.5.84)."""


class SymbolUnknown(PermanentError):
    """The exchange does not list this symbol."""


class RateLimited(TransientError):
    """The exchange asked us to slow down (HTTP 429/418)."""
