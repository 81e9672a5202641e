"""The service's error hierarchy.

Every adapter maps foreign failures (HTTP status codes, exchange retCodes, sqlite errors)
into one of these at its edge, so the core and the operator see one vocabulary.
"""

from __future__ import annotations


class TitanError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(TitanError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class StartupError(TitanError):
    """A service could not start (port in use, another instance running, ...)."""


class StoreError(TitanError):
    """The database refused or failed an operation. ``database_failing`` tells the
    database failing (full, locked, read-only: every write would meet it, so try again
    later) from one job's own error (a constraint, a bug: that write will never pass)."""

    def __init__(self, message: str, *, database_failing: bool = True) -> None:
        super().__init__(message)
        self.database_failing = database_failing


class IllegalTransition(TitanError):
    """An order state change the state machine does not allow."""


class BrokerRejected(TitanError):
    """The broker (paper or real) proved it did not accept an order."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class BrokerUnavailable(TitanError):
    """The exchange could not be asked, or its answer did not say whether a request was
    carried out (a timeout, a lost connection, a 5xx): nothing is concluded from it."""
