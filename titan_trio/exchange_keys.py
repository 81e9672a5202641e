"""Where the exchange API keys come from, and how they are kept out of sight.

Order of sources: the encrypted credential store (``titan credentials``) once it exists
in this version, else the environment: ``TITAN_BYBIT_API_KEY`` and
``TITAN_BYBIT_API_SECRET``. Keys are never part of the configuration file (it is often
shared and committed), never logged, never in an API answer: ``ApiKeys`` shows itself
with the key's last four characters only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BYBIT_KEY_ENV = "TITAN_BYBIT_API_KEY"
BYBIT_SECRET_ENV = "TITAN_BYBIT_API_SECRET"


@dataclass(frozen=True)
class ApiKeys:
    key: str = field(repr=False)
    secret: str = field(repr=False)
    source: str = "environment"

    def __repr__(self) -> str:
        return f"…{self.key[-4:]} (from the {self.source})"

    __str__ = __repr__


class MissingKeys(Exception):
    """No usable keys: the message says what to set."""


def bybit_keys(environ: Mapping[str, str]) -> ApiKeys:
    """The Bybit keys, or MissingKeys naming what is missing."""
    key = environ.get(BYBIT_KEY_ENV, "").strip()
    secret = environ.get(BYBIT_SECRET_ENV, "").strip()
    missing = [
        name for name, value in ((BYBIT_KEY_ENV, key), (BYBIT_SECRET_ENV, secret)) if not value
    ]
    if missing:
        raise MissingKeys(
            "broker bybit needs API keys: set "
            + " and ".join(missing)
            + " in the service's environment (create them at Bybit: API management, "
            "Contract Orders and Positions permission)"
        )
    return ApiKeys(key, secret)
