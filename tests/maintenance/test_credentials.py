"""The encrypted credential store (titan_trio/credentials.py), ``titan credentials`` and
the service taking its exchange keys from it.

In-process tests pass small scrypt parameters (TEST_KDF) so that a flipped bit can be
tried in every position of a file quickly; the CLI as a subprocess always writes the
strong ones (checked in its header), which is what a user gets."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fill_disk, free_port
from tests.helpers import spawn, stop, wait_healthy
from titan_trio import credentials_cli
from titan_trio.credentials import (
    FILE_ENV,
    HEADER,
    NEW_PASSWORD_ENV,
    PASSWORD_ENV,
    STRONG,
    CannotDecrypt,
    CredentialsError,
    InvalidSecrets,
    KdfParams,
    NoPassword,
    NotAStore,
    Refused,
    read_store,
    write_store,
)
from titan_trio.exchange_keys import MissingKeys, bybit_keys

TEST_KDF = KdfParams(1, 1, 1)  # N=2: instant; never what the CLI writes
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "another long master password"
KEY, SECRET = "KEYkeyKEYkey0000wxyz", "SECRETsecretSECRETsecret00009876"
SECRETS = {"bybit": {"api_key": KEY, "api_secret": SECRET}}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "dot-titan" / "credentials.enc"
    write_store(path, SECRETS, PASSWORD, overwrite=False, params=TEST_KDF)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "credentials.enc")


# ----- the file ----------------------------------------------------------------------


def test_round_trip_and_nothing_in_clear(store: Path) -> None:
    assert read_store(store, PASSWORD) == SECRETS
    blob = store.read_bytes()
    assert KEY.encode() not in blob and SECRET.encode() not in blob and b"bybit" not in blob
    assert blob[:5] == b"TTNC\x01"


def test_every_write_has_a_new_salt_and_nonce(tmp_path: Path) -> None:
    a, b = tmp_path / "a.enc", tmp_path / "b.enc"
    for path in (a, b):
        write_store(path, SECRETS, PASSWORD, overwrite=False, params=TEST_KDF)
    salt_nonce = slice(8, HEADER.size)
    assert a.read_bytes()[salt_nonce] != b.read_bytes()[salt_nonce]


def test_a_wrong_password_is_one_clear_error_without_secrets(store: Path) -> None:
    with pytest.raises(CannotDecrypt) as caught:
        read_store(store, "correct horse battery stapl")
    message = str(caught.value)
    assert message == f"{store}: wrong master password, or the file is damaged or was altered"
    assert KEY[-4:] not in message and "stapl" not in message


def test_a_bit_flipped_in_any_position_fails_and_nothing_changes(tmp_path: Path) -> None:
    store = tmp_path / "credentials.enc"
    write_store(store, {"x": {"k": "secret"}}, PASSWORD, overwrite=False, params=TEST_KDF)
    original = store.read_bytes()
    assert len(original) == HEADER.size + len('{"x":{"k":"secret"}}') + 16
    env = {FILE_ENV: str(store), PASSWORD_ENV: PASSWORD, NEW_PASSWORD_ENV: NEW_PASSWORD}
    rotate = argparse.Namespace(file=None)
    for position in range(len(original)):
        for bit in range(8):
            tampered = bytearray(original)
            tampered[position] ^= 1 << bit
            store.write_bytes(bytes(tampered))
            with pytest.raises((CannotDecrypt, NotAStore)):
                read_store(store, PASSWORD)
            with pytest.raises((CannotDecrypt, NotAStore)):  # rotate writes nothing either
                credentials_cli.cmd_rotate(rotate, env, params=TEST_KDF)
            assert store.read_bytes() == tampered, (position, bit)
    assert leftovers(store.parent) == []
    for length in range(len(original)):  # and a truncated file, at any length
        store.write_bytes(original[:length])
        with pytest.raises((CannotDecrypt, NotAStore)):
            read_store(store, PASSWORD)


def test_a_header_asking_for_huge_memory_is_refused_before_any_work(store: Path) -> None:
    blob = bytearray(store.read_bytes())
    blob[5] = 30  # N = 2^30: 128 GiB at r=8
    blob[6] = 8
    store.write_bytes(bytes(blob))
    with pytest.raises(CannotDecrypt, match="key-derivation parameters are out of range"):
        read_store(store, PASSWORD)


def test_file_0600_in_a_new_0700_directory_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".titan" / "credentials.enc"
    old = os.umask(0)
    try:
        write_store(path, SECRETS, PASSWORD, overwrite=False, params=TEST_KDF)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700


def test_an_existing_file_is_not_replaced_without_overwrite(store: Path) -> None:
    before = store.read_bytes()
    other = {"bybit": {"api_key": "x" * 20, "api_secret": "y" * 20}}
    with pytest.raises(Refused, match="--force replaces it"):
        write_store(store, other, PASSWORD, overwrite=False, params=TEST_KDF)
    assert store.read_bytes() == before and leftovers(store.parent) == []
    write_store(store, other, PASSWORD, overwrite=True, params=TEST_KDF)
    assert read_store(store, PASSWORD) == other


def test_a_failed_rename_leaves_the_old_file_and_no_temp(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.read_bytes()

    def refuse(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(CredentialsError, match=r"cannot write .*: No space left on device"):
        write_store(store, SECRETS, NEW_PASSWORD, overwrite=True, params=TEST_KDF)
    assert store.read_bytes() == before and leftovers(store.parent) == []


def test_a_full_disk_fails_cleanly_and_keeps_the_old_file(small_disk: Path) -> None:
    path = small_disk / "credentials.enc"
    write_store(path, SECRETS, PASSWORD, overwrite=False, params=TEST_KDF)
    before = path.read_bytes()
    filler = fill_disk(small_disk)
    big = {"bybit": {"api_key": KEY, "api_secret": SECRET, "note": "n" * 100_000}}
    with pytest.raises(CredentialsError, match="No space left on device"):
        write_store(path, big, PASSWORD, overwrite=True, params=TEST_KDF)
    filler.unlink()
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["credentials.enc"]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "expected a JSON object"),
        ({}, "expected a JSON object"),
        ({"bybit": "k"}, "bybit: expected an object of strings"),
        ({"bybit": {"api_key": "k", "api_secret": 5}}, "bybit.api_secret: expected a non-empty"),
        ({"bybit": {"api_key": "k"}}, "bybit: missing api_secret"),
        ({"bybit": {"api_key": " k", "api_secret": "s"}}, "bybit.api_key: has spaces around"),
    ],
)
def test_secrets_that_are_not_a_secrets_object_are_refused(
    tmp_path: Path, doc: Any, problem: str
) -> None:
    path = tmp_path / "credentials.enc"
    with pytest.raises(InvalidSecrets, match=problem):
        write_store(path, doc, PASSWORD, overwrite=False, params=TEST_KDF)
    assert list(tmp_path.iterdir()) == []


# ----- the commands, in process ------------------------------------------------------


def test_decrypt_masks_every_secret_to_its_last_four_unless_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "credentials.enc"
    doc = {"bybit": {"api_key": KEY, "api_secret": SECRET}, "other": {"pin": "short123"}}
    write_store(path, doc, PASSWORD, overwrite=False, params=TEST_KDF)
    env = {PASSWORD_ENV: PASSWORD}
    credentials_cli.cmd_decrypt(argparse.Namespace(file=str(path), show=False), env)
    out = capsys.readouterr().out
    assert json.loads(out) == {
        "bybit": {"api_key": "****wxyz", "api_secret": "****9876"},
        "other": {"pin": "****"},  # short: hidden whole
    }
    assert KEY not in out and SECRET not in out and "short123" not in out
    credentials_cli.cmd_decrypt(argparse.Namespace(file=str(path), show=True), env)
    assert json.loads(capsys.readouterr().out) == doc


def test_rotate_re_encrypts_under_the_new_password(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = store.read_bytes()
    env = {PASSWORD_ENV: PASSWORD, NEW_PASSWORD_ENV: NEW_PASSWORD}
    assert credentials_cli.cmd_rotate(argparse.Namespace(file=str(store)), env, TEST_KDF) == 0
    after = store.read_bytes()
    assert after[8:24] != before[8:24] and after[24:36] != before[24:36]  # salt, nonce
    assert read_store(store, NEW_PASSWORD) == SECRETS
    with pytest.raises(CannotDecrypt):
        read_store(store, PASSWORD)
    assert store.stat().st_mode & 0o777 == 0o600 and leftovers(store.parent) == []
    assert "re-encrypted" in capsys.readouterr().out


def test_rotate_with_a_weak_or_missing_new_password_changes_nothing(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials_cli, "_terminal", lambda: False)
    before = store.read_bytes()
    args = argparse.Namespace(file=str(store))
    with pytest.raises(NoPassword, match="at least 12 characters"):
        credentials_cli.cmd_rotate(args, {PASSWORD_ENV: PASSWORD, NEW_PASSWORD_ENV: "short"})
    with pytest.raises(NoPassword, match=f"set {NEW_PASSWORD_ENV}"):
        credentials_cli.cmd_rotate(args, {PASSWORD_ENV: PASSWORD})
    assert store.read_bytes() == before


def test_encrypt_asks_on_the_terminal_twice_for_a_new_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.enc"
    answers = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr(credentials_cli, "_terminal", lambda: True)
    monkeypatch.setattr(credentials_cli.getpass, "getpass", lambda _prompt: next(answers))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(SECRETS)))
    args = argparse.Namespace(file=str(path), force=False)
    with pytest.raises(NoPassword, match="the two passwords differ"):
        credentials_cli.cmd_encrypt(args, {}, TEST_KDF)
    assert not path.exists()
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(SECRETS)))
    assert credentials_cli.cmd_encrypt(args, {}, TEST_KDF) == 0
    assert read_store(path, PASSWORD) == SECRETS


# ----- the CLI as a user runs it -----------------------------------------------------


def titan(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """``titan credentials ...`` as a process with no terminal (a prompt cannot hang)."""
    return subprocess.run(
        [sys.executable, "-m", "titan_trio", "credentials", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
        timeout=60,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_the_cli_checks_what_it_can_before_deriving_a_key(tmp_path: Path) -> None:
    path = tmp_path / "credentials.enc"
    env = {FILE_ENV: str(path)}
    assert "no credentials file at" in one_line_error(titan("exists", **env), 1)
    assert "no credentials file at" in one_line_error(titan("decrypt", **env), 1)
    assert "at least 12" in one_line_error(
        titan("encrypt", stdin=json.dumps(SECRETS), **env, **{PASSWORD_ENV: "short"}), 2
    )
    assert "stdin is not JSON" in one_line_error(
        titan("encrypt", stdin="{bybit", **env, **{PASSWORD_ENV: PASSWORD}), 2
    )
    assert "bybit: missing api_secret" in one_line_error(
        titan("encrypt", stdin='{"bybit": {"api_key": "k"}}', **env, **{PASSWORD_ENV: PASSWORD}),
        2,
    )
    assert f"set {PASSWORD_ENV}" in one_line_error(
        titan("encrypt", stdin=json.dumps(SECRETS), **env), 2
    )
    assert list(tmp_path.iterdir()) == []

    write_store(path, SECRETS, PASSWORD, overwrite=False, params=TEST_KDF)
    before = path.read_bytes()
    assert titan("exists", **env).returncode == 0  # no password needed
    assert "exists: --force" in one_line_error(
        titan("encrypt", stdin=json.dumps(SECRETS), **env, **{PASSWORD_ENV: PASSWORD}), 1
    )
    assert f"set {PASSWORD_ENV}" in one_line_error(titan("decrypt", **env), 2)
    assert f"set {NEW_PASSWORD_ENV}" in one_line_error(
        titan("rotate", **env, **{PASSWORD_ENV: PASSWORD}), 2
    )
    assert path.read_bytes() == before

    other = tmp_path / "other.enc"  # --file wins over the environment
    other.write_text('{"bybit": "not encrypted"}')
    assert "not a titan credentials file" in one_line_error(
        titan("exists", "--file", str(other), **env), 1
    )


@pytest.mark.slow
def test_the_cli_as_a_user_runs_it(tmp_path: Path) -> None:
    """Round trip through the commands, with the strong key derivation (slow: about half
    a second per password)."""
    path = tmp_path / "credentials.enc"
    env = {FILE_ENV: str(path)}
    made = titan("encrypt", stdin=json.dumps(SECRETS), **env, **{PASSWORD_ENV: PASSWORD})
    assert made.returncode == 0, made
    assert made.stdout == f"encrypted bybit (api_key, api_secret) to {path} (mode 0600)\n"
    blob = path.read_bytes()
    assert HEADER.unpack_from(blob)[2:5] == (STRONG.log2_n, STRONG.r, STRONG.p)
    assert path.stat().st_mode & 0o777 == 0o600
    assert titan("exists", **env).returncode == 0

    shown = titan("decrypt", **env, **{PASSWORD_ENV: PASSWORD})
    assert shown.returncode == 0 and KEY not in shown.stdout and SECRET not in shown.stdout
    assert json.loads(shown.stdout)["bybit"] == {"api_key": "****wxyz", "api_secret": "****9876"}
    wrong = titan("decrypt", "--show", **env, **{PASSWORD_ENV: "not the password at all"})
    assert "wrong master password, or the file is damaged" in one_line_error(wrong, 1)
    assert wrong.stdout == ""

    rotated = titan("rotate", **env, **{PASSWORD_ENV: PASSWORD, NEW_PASSWORD_ENV: NEW_PASSWORD})
    assert rotated.returncode == 0, rotated
    assert path.read_bytes() != blob
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials.enc"]
    shown = titan("decrypt", "--show", **env, **{PASSWORD_ENV: NEW_PASSWORD})
    assert json.loads(shown.stdout) == SECRETS


# ----- the service's keys ------------------------------------------------------------


def test_the_service_takes_its_bybit_keys_from_the_file_when_it_exists(store: Path) -> None:
    env = {FILE_ENV: str(store), PASSWORD_ENV: PASSWORD, "TITAN_BYBIT_API_KEY": "env-key-1"}
    keys = bybit_keys(env)
    assert (keys.key, keys.secret, keys.source) == (KEY, SECRET, "credentials file")
    assert repr(keys) == f"…wxyz (from the credentials file {store})"

    env.pop(PASSWORD_ENV)
    with pytest.raises(MissingKeys, match=f"set {PASSWORD_ENV}"):
        bybit_keys(env)
    with pytest.raises(MissingKeys, match="wrong master password") as caught:
        bybit_keys({**env, PASSWORD_ENV: "a wrong password"})
    assert "a wrong password" not in str(caught.value)

    write_store(store, {"binance": {"k": "v"}}, PASSWORD, overwrite=True, params=TEST_KDF)
    with pytest.raises(MissingKeys, match="has none"):
        bybit_keys({**env, PASSWORD_ENV: PASSWORD})

    store.unlink()  # no file: the environment, as before
    keys = bybit_keys({**env, "TITAN_BYBIT_API_SECRET": "env-secret-1"})
    assert (keys.key, keys.source) == ("env-key-1", "environment")


def test_a_file_the_service_may_not_look_at_stops_the_start(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(_self: Path) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "exists", denied)  # root ignores modes: the answer faked
    env = {FILE_ENV: str(store), PASSWORD_ENV: PASSWORD, "TITAN_BYBIT_API_KEY": "k"}
    with pytest.raises(MissingKeys, match=f"cannot read the credentials file {store}: Perm"):
        bybit_keys({**env, "TITAN_BYBIT_API_SECRET": "s"})  # not the environment's instead


def test_the_default_file_is_under_home(tmp_path: Path) -> None:
    home_store = tmp_path / ".titan" / "credentials.enc"
    write_store(home_store, SECRETS, PASSWORD, overwrite=False, params=TEST_KDF)
    keys = bybit_keys({"HOME": str(tmp_path), PASSWORD_ENV: PASSWORD})
    assert keys.source == "credentials file" and keys.key == KEY


@pytest.fixture
def fake() -> Iterator[Any]:
    from tests.integration.bybit_kit import fake_exchange

    with fake_exchange({"BTCUSDT": "95000"}) as fx:
        yield fx


@pytest.mark.slow
def test_the_service_trades_with_keys_from_the_file_and_never_shows_them(
    tmp_path: Path, fake: Any
) -> None:
    from tests.integration.bybit_kit import KEY as FAKE_KEY
    from tests.integration.bybit_kit import SECRET as FAKE_SECRET
    from tests.integration.bybit_kit import live_config

    path = tmp_path / "credentials.enc"
    doc = {"bybit": {"api_key": FAKE_KEY, "api_secret": FAKE_SECRET}}
    made = titan("encrypt", stdin=json.dumps(doc), **{FILE_ENV: str(path), PASSWORD_ENV: PASSWORD})
    assert made.returncode == 0, made
    port = free_port()
    config = live_config(tmp_path, fake, port, ["BTCUSDT"])
    no_env_keys = {"TITAN_BYBIT_API_KEY": "", "TITAN_BYBIT_API_SECRET": "", FILE_ENV: str(path)}

    refused = spawn(config, tmp_path, **no_env_keys, **{PASSWORD_ENV: "not the password"})
    out_refused, _ = refused.communicate(timeout=60)
    assert refused.returncode != 0 and "Traceback" not in out_refused
    assert "start-up failed: cannot read the API keys" in out_refused
    assert "wrong master password" in out_refused

    proc = spawn(config, tmp_path, **no_env_keys, **{PASSWORD_ENV: PASSWORD})
    try:
        health = wait_healthy(port, proc)  # signed requests the fake accepted
        assert health["broker"]["reachable"] and health["broker"]["stream"]["connected"]
        seen = json.dumps(health) + httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for route in ("/api/state/equity", "/api/risk", "/api/market"):
            seen += httpx.get(f"http://127.0.0.1:{port}{route}", timeout=5).text
    finally:
        code, _, out = stop(proc)
    assert code == 0, out
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log*"))
    assert f"key …{FAKE_KEY[-4:]} (from the credentials file {path})" in logs
    for secret in (FAKE_KEY, FAKE_SECRET, PASSWORD):
        for text in (seen, out, out_refused, logs):
            assert secret not in text
