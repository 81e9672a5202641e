"""Where the exchange API keys come from, and how they are kept out of sight.

Order of sources: the encrypted credential store (``titan credentials``;
titan_trio/credentials.py) when its file exists, else the environment:
``TITAN_BYBIT_API_KEY`` and ``TITAN_BYBIT_API_SECRET``. The file, when it is there,
is the only source: a file that cannot be read (no ``TITAN_MASTER_PASSWORD``, a wrong
one, an altered file, no bybit keys in it) stops the start with the reason, rather than
falling back to whatever keys the environment holds, so the keys in use are always the
ones the operator meant. The service never prompts for the password: under pm2 or
systemd nobody is at a terminal.

Keys are never part of the configuration file (it is often shared and committed), never
logged, never in an API answer: ``ApiKeys`` shows itself with the key's last four
characters and its source only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from titan_trio.credentials import PASSWORD_ENV, CredentialsError, read_store, store_path

BYBIT_KEY_ENV = "TITAN_BYBIT_API_KEY"
BYBIT_SECRET_ENV = "TITAN_BYBIT_API_SECRET"


@dataclass(frozen=True)
class ApiKeys:
    key: str = field(repr=False)
    secret: str = field(repr=False)
    source: str = "environment"  # or "credentials file"
    location: str = ""  # the file, for "credentials file"

    def __repr__(self) -> str:
        where = f" {self.location}" if self.location else ""
        return f"…{self.key[-4:]} (from the {self.source}{where})"

    __str__ = __repr__


class MissingKeys(Exception):
    """No usable keys: the message says what to set or fix (never a secret)."""


def bybit_keys(environ: Mapping[str, str]) -> ApiKeys:
    """The Bybit keys, from the credentials file when it exists, else the environment;
    MissingKeys naming what is missing or wrong."""
    path = store_path(environ)
    try:
        there = path.exists()
    except OSError as exc:  # a directory the service may not look into: say so
        raise MissingKeys(f"cannot read the credentials file {path}: {exc.strerror}") from None
    if there:
        password = environ.get(PASSWORD_ENV, "")
        if not password:
            raise MissingKeys(
                f"the credentials file {path} holds the API keys: set {PASSWORD_ENV} in the "
                "service's environment to read it"
            )
        try:
            secrets = read_store(path, password)
        except CredentialsError as exc:
            raise MissingKeys(f"cannot read the API keys: {exc}") from None
        bybit = secrets.get("bybit")
        if bybit is None:  # a store with bybit keys has both (validate_secrets)
            raise MissingKeys(
                f"broker bybit needs API keys: the credentials file {path} has none (add "
                'them: {"bybit": {"api_key": ..., "api_secret": ...}} to titan credentials '
                "encrypt --force, with the file's other secrets)"
            )
        return ApiKeys(bybit["api_key"], bybit["api_secret"], "credentials file", str(path))
    key = environ.get(BYBIT_KEY_ENV, "").strip()
    secret = environ.get(BYBIT_SECRET_ENV, "").strip()
    missing = [
        name for name, value in ((BYBIT_KEY_ENV, key), (BYBIT_SECRET_ENV, secret)) if not value
    ]
    if missing:
        raise MissingKeys(
            "broker bybit needs API keys: set "
            + " and ".join(missing)
            + " in the service's environment, or put them in the encrypted credentials "
            f"file ({path}: titan credentials encrypt) (create them at Bybit: API "
            "management, Contract Orders and Positions permission)"
        )
    return ApiKeys(key, secret)
