"""``titan credentials encrypt | decrypt | exists | rotate``: the credential store
(titan_trio/credentials.py) from the shell.

The password comes from ``TITAN_MASTER_PASSWORD`` (``rotate``'s new one from
``TITAN_NEW_MASTER_PASSWORD``), else it is asked for on the terminal (``/dev/tty``, as
ssh and gpg do: ``encrypt`` reads the JSON on stdin, so stdin cannot be where a prompt
is answered). With neither, the command stops with exit 2 before touching anything: a
job under cron or pm2 must never hang on a prompt nobody sees. A new password is asked
twice. Everything that can be checked without the slow key derivation (the file there,
its header, the JSON) is checked before the password is asked for.

Exit codes as every titan command: 0 done; 1 refused or bad state (no file, not a
credentials file, wrong password or altered file, a file already there); 2 bad input
(no password, a weak new one, JSON that is not a secrets object).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from titan_trio.credentials import (
    FILE_ENV,
    NEW_PASSWORD_ENV,
    PASSWORD_ENV,
    STRONG,
    CredentialsError,
    InvalidSecrets,
    KdfParams,
    NoPassword,
    Refused,
    check_new_password,
    mask,
    open_sealed,
    read_sealed,
    store_path,
    validate_secrets,
    write_store,
)


def _terminal() -> bool:
    """Whether there is a terminal to ask on (getpass uses /dev/tty)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _ask(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise NoPassword("no master password given") from None


def current_password(environ: Mapping[str, str]) -> str:
    """The master password of an existing file: the environment's, or asked for."""
    password = environ.get(PASSWORD_ENV, "")
    if password:
        return password
    if not _terminal():
        raise NoPassword(f"no master password: set {PASSWORD_ENV} (or run this at a terminal)")
    password = _ask("Master password: ")
    if not password:
        raise NoPassword("no master password given")
    return password


def new_password(environ: Mapping[str, str], variable: str) -> str:
    """A password for a new file: ``variable`` of the environment, or asked twice."""
    password = environ.get(variable, "")
    if password:
        return check_new_password(password)
    if not _terminal():
        raise NoPassword(f"no new master password: set {variable} (or run this at a terminal)")
    password = check_new_password(_ask("New master password: "))
    if _ask("The same again: ") != password:
        raise NoPassword("the two passwords differ")
    return password


def _path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    return store_path(environ, args.file)


def _with_path(path: Path, exc: CredentialsError) -> CredentialsError:
    return type(exc)(f"{path}: {exc}")


def cmd_encrypt(
    args: argparse.Namespace,
    environ: Mapping[str, str] = os.environ,
    params: KdfParams = STRONG,
) -> int:
    """Encrypt the secrets JSON on stdin to the file (refused when it exists, unless
    ``--force``)."""
    path = _path(args, environ)
    if path.exists() and not args.force:
        raise Refused(f"{path} exists: --force replaces it (its secrets are then lost)")
    if sys.stdin.isatty():
        print("Paste the secrets' JSON, then Ctrl-D:", file=sys.stderr)
    try:
        doc: Any = json.loads(sys.stdin.read())
    except ValueError as exc:  # its message has a position, never the text
        raise InvalidSecrets(f"stdin is not JSON ({exc})") from None
    secrets = validate_secrets(doc)
    password = new_password(environ, PASSWORD_ENV)
    write_store(path, secrets, password, overwrite=args.force, params=params)
    names = ", ".join(f"{name} ({', '.join(fields)})" for name, fields in secrets.items())
    print(f"encrypted {names} to {path} (mode 0600)")
    return 0


def cmd_decrypt(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """Print the secrets as JSON, masked unless ``--show``."""
    path = _path(args, environ)
    blob = read_sealed(path)
    try:
        secrets = open_sealed(blob, current_password(environ))
    except CredentialsError as exc:
        raise _with_path(path, exc) from None
    print(json.dumps(secrets if args.show else mask(secrets), indent=2, sort_keys=True))
    return 0


def cmd_exists(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """Exit 0 when the file is a credentials file (its header read; no password), else 1
    with the reason."""
    path = _path(args, environ)
    read_sealed(path)
    print(f"credentials file {path}")
    return 0


def cmd_rotate(
    args: argparse.Namespace,
    environ: Mapping[str, str] = os.environ,
    params: KdfParams = STRONG,
) -> int:
    """Re-encrypt the file under a new password, with a new salt and nonce."""
    path = _path(args, environ)
    blob = read_sealed(path)
    if not environ.get(NEW_PASSWORD_ENV) and not _terminal():
        raise NoPassword(f"no new master password: set {NEW_PASSWORD_ENV}")
    try:
        secrets = open_sealed(blob, current_password(environ))
    except CredentialsError as exc:
        raise _with_path(path, exc) from None
    write_store(
        path, secrets, new_password(environ, NEW_PASSWORD_ENV), overwrite=True, params=params
    )
    print(f"re-encrypted {path} under the new master password")
    return 0


def add_commands(sub: Any) -> None:
    """``titan credentials ...`` in the parser's subcommands ``sub``."""
    p = sub.add_parser(
        "credentials",
        help="the encrypted file of exchange API keys",
        description="Exchange API keys, encrypted (AES-256-GCM, key from the master "
        f"password through scrypt) in ~/.titan/credentials.enc, or --file, or ${FILE_ENV}. "
        "The service reads its keys from this file when it exists.",
    )
    commands = p.add_subparsers(dest="credentials_command", required=True, parser_class=type(p))
    file_help = f"the credentials file (default: ${FILE_ENV} or ~/.titan/credentials.enc)"
    for name, func, text in (
        (
            "encrypt",
            cmd_encrypt,
            'encrypt the JSON on stdin, e.g. {"bybit": {"api_key": "...", "api_secret": '
            f'"..."}}}}, under ${PASSWORD_ENV} (or a prompt)',
        ),
        ("decrypt", cmd_decrypt, "print the secrets, each masked to its last 4 characters"),
        ("exists", cmd_exists, "exit 0 if the credentials file exists (no password needed)"),
        (
            "rotate",
            cmd_rotate,
            f"re-encrypt under a new password (${NEW_PASSWORD_ENV} or a prompt)",
        ),
    ):
        c = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        c.add_argument("--file", help=file_help)
        if name == "encrypt":
            c.add_argument("--force", action="store_true", help="replace an existing file")
        if name == "decrypt":
            c.add_argument("--show", action="store_true", help="print the secrets unmasked")
        c.set_defaults(func=func)
