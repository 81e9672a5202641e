"""The encrypted credential store: exchange API keys in one file, under a master password.

The file (``~/.titan/credentials.enc``; ``TITAN_CREDENTIALS_FILE`` or ``--file`` name
another) is, byte by byte (format version 1)::

    0   4   magic  b"TTNC"          what ``titan credentials exists`` recognises
    4   1   version (1)
    5   1   scrypt log2(N)
    6   1   scrypt r
    7   1   scrypt p
    8   16  salt   (random, new on every write)
    24  12  nonce  (random, new on every write)
    36  ..  AES-256-GCM ciphertext of the secrets' JSON, then its 16-byte tag

The 36 header bytes are the cipher's associated data: a bit flipped anywhere in the file,
header included, fails the tag check (a changed salt or KDF parameter derives another key,
which fails it too). A wrong password and a damaged or altered file are therefore the
same answer: AES-GCM cannot tell them apart, and saying which would help an attacker.

Why scrypt (N=2^17, r=8, p=1: 128 MiB, about half a second) rather than PBKDF2: it is
memory-hard, so guessing the password on GPUs or ASICs costs memory as well as time,
where PBKDF2-SHA256 needs 600,000 iterations just to be acceptable and still runs cheaply
in parallel on a GPU. The parameters are in the header, so a later version can raise them
without a format change (``rotate`` always writes the current ones). A header asking for
more than MAX_SCRYPT_MEMORY is refused before any work, so a forged file cannot make the
service allocate gigabytes at start-up.

A file is written only through ``write_store``: a temp file in the same directory (0600;
a missing directory is made 0700), written, fsynced, read back and decrypted with the new
key, then renamed over the old one and the directory fsynced. Any failure removes the
temp file and leaves the old file as it was. The secrets are a JSON object of objects of
strings, ``{"bybit": {"api_key": "...", "api_secret": "..."}}`` (``validate_secrets``).

Must never: write a secret or the password to a log, an exception message or stdout
(``decrypt`` masks unless ``--show``); prompt in the service (it reads
``TITAN_MASTER_PASSWORD`` only: there is nobody at a terminal to ask).
"""

from __future__ import annotations

import errno
import json
import os
import secrets as random
import struct
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from titan_trio.errors import TitanError
from titan_trio.private_files import FILE_MODE, make_private_dirs

FILE_ENV = "TITAN_CREDENTIALS_FILE"
PASSWORD_ENV = "TITAN_MASTER_PASSWORD"
NEW_PASSWORD_ENV = "TITAN_NEW_MASTER_PASSWORD"
DEFAULT_FILE = Path(".titan") / "credentials.enc"  # under the home directory

MAGIC = b"TTNC"
VERSION = 1
HEADER = struct.Struct(">4sBBBB16s12s")  # magic, version, log2 N, r, p, salt, nonce
TAG_BYTES = 16
MIN_PASSWORD_CHARS = 12
MAX_SCRYPT_MEMORY = 1 << 30  # bytes (128 * r * N): a header asking for more is refused

# The secrets every known exchange needs: a store with one of them must have all.
REQUIRED_FIELDS = {"bybit": ("api_key", "api_secret")}


@dataclass(frozen=True)
class KdfParams:
    """scrypt's cost: N = 2**log2_n, block size r, parallelism p."""

    log2_n: int
    r: int
    p: int

    def check(self) -> None:
        """CannotDecrypt when these are not parameters this version would ever use."""
        ok = 1 <= self.log2_n <= 30 and 1 <= self.r <= 32 and 1 <= self.p <= 16
        ok = ok and self.log2_n < 16 * self.r  # scrypt's own rule: N < 2^(128 r / 8)
        if not ok or 128 * self.r * (1 << self.log2_n) > MAX_SCRYPT_MEMORY:
            raise CannotDecrypt("its key-derivation parameters are out of range")


STRONG = KdfParams(17, 8, 1)  # what the CLI writes; tests pass small ones


class CredentialsError(TitanError):
    """A credentials operation failed; the message is one line, without any secret."""

    exit_code = 1


class NoStore(CredentialsError):
    """There is no credentials file where one was expected."""


class NotAStore(CredentialsError):
    """The file is not a credentials file (or one of a version this one cannot read)."""


class CannotDecrypt(CredentialsError):
    """Wrong password, or the file was damaged or altered: the tag cannot tell which."""


class Refused(CredentialsError):
    """The operation would overwrite a file (``--force`` allows it)."""


class NoPassword(CredentialsError):
    """No password to use (nothing in the environment, no terminal), or a new one too
    weak: a configuration problem, exit 2."""

    exit_code = 2


class InvalidSecrets(CredentialsError):
    """The secrets given to ``encrypt`` are not an object of objects of strings: exit 2."""

    exit_code = 2


def store_path(environ: Mapping[str, str], override: str | None = None) -> Path:
    """``override`` (``--file``), else ``TITAN_CREDENTIALS_FILE``, else
    ``~/.titan/credentials.enc`` with ``~`` the HOME of ``environ``."""
    chosen = override or environ.get(FILE_ENV, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / DEFAULT_FILE


def validate_secrets(doc: Any) -> dict[str, dict[str, str]]:
    """The secrets as a plain dict, or InvalidSecrets naming the first problem (by path,
    never by value)."""
    if not isinstance(doc, dict) or not doc:
        raise InvalidSecrets(
            'expected a JSON object such as {"bybit": {"api_key": "...", "api_secret": "..."}}'
        )
    out: dict[str, dict[str, str]] = {}
    for name, fields in doc.items():
        if not isinstance(fields, dict) or not fields:
            raise InvalidSecrets(f"{name}: expected an object of strings")
        for field, value in fields.items():
            if not isinstance(value, str) or not value.strip():
                raise InvalidSecrets(f"{name}.{field}: expected a non-empty string")
            if value != value.strip():
                raise InvalidSecrets(f"{name}.{field}: has spaces around it (a paste error?)")
        missing = [f for f in REQUIRED_FIELDS.get(name, ()) if f not in fields]
        if missing:
            raise InvalidSecrets(f"{name}: missing " + ", ".join(missing))
        out[name] = dict(fields)
    return out


def mask(secrets: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Every value hidden but its last four characters (enough to tell keys apart, as on
    the exchange's own page). A value shorter than 12 characters is hidden whole: its
    last four would be a third of it or more."""
    return {
        name: {
            field: "****" + value[-4:] if len(value) >= 12 else "****"
            for field, value in fields.items()
        }
        for name, fields in secrets.items()
    }


def _key(password: str, salt: bytes, params: KdfParams) -> bytes:
    # NFC: the same password typed on another system (composed or decomposed accents)
    # derives the same key.
    data = unicodedata.normalize("NFC", password).encode()
    kdf = Scrypt(salt=salt, length=32, n=1 << params.log2_n, r=params.r, p=params.p)
    try:
        return kdf.derive(data)
    except MemoryError:  # OpenSSL's answer to any failure of scrypt, memory or not
        raise CredentialsError("not enough memory to derive the key (scrypt)") from None


def _header(params: KdfParams, salt: bytes, nonce: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, params.log2_n, params.r, params.p, salt, nonce)


def _seal(secrets: Mapping[str, Any], password: str, params: KdfParams) -> tuple[bytes, bytes]:
    """The file's bytes, and the key (to read the written file back without a second,
    slow, derivation)."""
    salt, nonce = random.token_bytes(16), random.token_bytes(12)
    header = _header(params, salt, nonce)
    key = _key(password, salt, params)
    text = json.dumps(secrets, sort_keys=True, separators=(",", ":")).encode()
    return header + AESGCM(key).encrypt(nonce, text, header), key


def _parse_header(blob: bytes) -> tuple[KdfParams, bytes]:
    """The KDF parameters and the salt; NotAStore or CannotDecrypt (absurd parameters)."""
    if len(blob) < HEADER.size + TAG_BYTES or blob[:4] != MAGIC:
        raise NotAStore("not a titan credentials file")
    _magic, version, log2_n, r, p, salt, _nonce = HEADER.unpack_from(blob)
    if version != VERSION:
        raise NotAStore(f"a credentials file of format version {version}; this titan reads 1")
    params = KdfParams(log2_n, r, p)
    params.check()
    return params, salt


def open_sealed(blob: bytes, password: str) -> dict[str, dict[str, str]]:
    """The secrets in ``blob``; NotAStore or CannotDecrypt (wrong password, damage)."""
    params, salt = _parse_header(blob)
    return _open_with_key(blob, _key(password, salt, params))


def _open_with_key(blob: bytes, key: bytes) -> dict[str, dict[str, str]]:
    header, nonce = blob[: HEADER.size], blob[HEADER.size - 12 : HEADER.size]
    try:
        text = AESGCM(key).decrypt(nonce, blob[HEADER.size :], header)
    except InvalidTag:
        raise CannotDecrypt(
            "wrong master password, or the file is damaged or was altered"
        ) from None
    try:
        return validate_secrets(json.loads(text))
    except (ValueError, InvalidSecrets):  # authentic, yet not ours: a bug, not an attack
        raise CannotDecrypt("decrypted, but the content is not a secrets object") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NoStore(
            f"no credentials file at {path} (create it: titan credentials encrypt)"
        ) from None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None


def read_sealed(path: Path) -> bytes:
    """The bytes of the credentials file at ``path``, its header checked (no password
    needed yet); NoStore or NotAStore naming the file."""
    blob = _read(path)
    try:
        _parse_header(blob)
    except CredentialsError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return blob


def read_store(path: Path, password: str) -> dict[str, dict[str, str]]:
    """The secrets of the file at ``path``; NoStore, NotAStore or CannotDecrypt, each
    naming the file."""
    blob = read_sealed(path)
    try:
        return open_sealed(blob, password)
    except CredentialsError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def write_store(
    path: Path,
    secrets: Mapping[str, Any],
    password: str,
    *,
    overwrite: bool,
    params: KdfParams = STRONG,
) -> None:
    """Encrypt ``secrets`` to ``path`` atomically (module docstring). Without
    ``overwrite`` an existing file is refused (Refused), also one made meanwhile: the
    final step is a hard link, which never replaces."""
    secrets = validate_secrets(secrets)
    blob, key = _seal(secrets, password, params)
    directory = path.parent
    try:
        make_private_dirs(directory)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CredentialsError(f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)  # mkstemp's is 0600 too; exactly, anyway
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            if _open_with_key(Path(temp).read_bytes(), key) != secrets:
                raise CredentialsError(f"cannot write {path}: it did not read back the same")
            if overwrite:
                os.replace(temp, path)
            else:
                _link_new(temp, path)
            _fsync_dir(directory)
        except OSError as exc:
            raise CredentialsError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(temp)  # after a link, or after a failure; gone after a replace
        except FileNotFoundError:
            pass


def _link_new(temp: str, path: Path) -> None:
    """Give ``temp`` the name ``path`` unless ``path`` exists (checked by the kernel,
    so a file made meanwhile is not replaced either)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise Refused(f"{path} exists: --force replaces it (its secrets are then lost)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        # a file system without hard links: checked here, a small race left
        if path.exists():
            raise Refused(
                f"{path} exists: --force replaces it (its secrets are then lost)"
            ) from None
        os.replace(temp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_new_password(password: str) -> str:
    """``password`` when it will do for a new file, else NoPassword saying why."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise NoPassword(f"the master password must have at least {MIN_PASSWORD_CHARS} characters")
    return password
