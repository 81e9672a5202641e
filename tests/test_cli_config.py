"""``titan config validate``: OK and exit 0 for a good file, every problem and exit 2 for a
bad one, one clear line and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from titan_trio.cli import main
from titan_trio.config import ENV_OVERRIDES

DEFAULT_JSON = Path(__file__).resolve().parents[1] / "config" / "default.json"

BAD_DOC = {"mode": "demo", "api": {"port": "x", "bogus": 1}, "risk": {"maxRiskPct": 0}}
BAD_PATHS = ["mode", "api.port", "api.bogus", "risk.maxRiskPct"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``validate`` reads the process environment: keep the caller's TITAN_* out of it."""
    for var in [*ENV_OVERRIDES, "TITAN_CONFIG"]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_DOC))
    return path


def test_shipped_default_config_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(DEFAULT_JSON)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK\n"
    assert err == ""


def test_good_file_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"api": {"port": 0}, "risk": {"maxPositions": 3}}))
    assert main(["config", "validate", str(path)]) == 0
    assert capsys.readouterr().out == "OK\n"


def test_bad_file_lists_every_problem(bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(bad_file)]) == 2
    out, err = capsys.readouterr()
    assert "OK" not in out
    problem_lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problem_lines) == len(BAD_PATHS), err
    for path in BAD_PATHS:
        assert any(line.startswith(f"  - {path}: ") for line in problem_lines), (path, err)
    assert "Traceback" not in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.json"
    assert main(["config", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: cannot read the file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"mode": "paper",}', "expected JSON, got a syntax error at line 1 column 18"),
        (b'{"mode": "\xe9"}', "expected UTF-8 text"),
        (b"[]", "<root>: expected an object, got list"),
    ],
)
def test_unreadable_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    assert main(["config", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in err


def test_environment_problems_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TITAN_API_PORT", "eighty")
    assert main(["config", "validate", str(DEFAULT_JSON)]) == 2
    assert "env TITAN_API_PORT: expected int, got 'eighty'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["bogus"], ["config", "bogus"], ["config", "validate"], []],
    ids=["unknown-command", "unknown-config-command", "missing-path", "nothing"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: titan" in err
    assert "titan: " in err
    assert "Traceback" not in err


def test_subprocess_bad_file_exits_2_without_a_traceback(bad_file: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    result = subprocess.run(
        [sys.executable, "-m", "titan_trio", "config", "validate", str(bad_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for path in BAD_PATHS:
        assert f"  - {path}: " in result.stderr


# ----- the live example, and keys this version ignores --------------------------------

PRODUCTION_EXAMPLE = DEFAULT_JSON.parent / "production.example.json"


def test_shipped_production_example_fails_listing_every_placeholder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "validate", str(PRODUCTION_EXAMPLE)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert problems == [
        "  - api.token: expected a real value in live mode, got a placeholder (<hidden>)",
        "  - ipc.hmacSecret: expected a real value in live mode, got a placeholder (<hidden>)",
        "  - database.s3.bucket: expected a real value in live mode, got a placeholder "
        '("replace-with-your-bucket")',
    ]


def test_filled_in_production_example_passes_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(PRODUCTION_EXAMPLE.read_text())
    doc["api"]["token"] = "k7Qp2vX9mR4tW8yB1nE6hJ3sL5dF0gA2zC8"
    doc["ipc"]["hmacSecret"] = "Vb3Nq8Lr1Ty6Ui9Op2As5Df7Gh4Jk0Zx3Cv"
    doc["database"]["s3"]["bucket"] = "acme-trading-backups"
    path = tmp_path / "production.json"
    path.write_text(json.dumps(doc))
    assert main(["config", "validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK\n"
    assert err == ""  # its backup and S3 settings are used: nothing is ignored


def test_live_secrets_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As config/README.md says: leave them null in the file, set the variables."""
    doc = json.loads(PRODUCTION_EXAMPLE.read_text())
    doc["api"]["token"] = doc["ipc"]["hmacSecret"] = None
    doc["database"]["s3"]["bucket"] = None
    path = tmp_path / "production.json"
    path.write_text(json.dumps(doc))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "api.token: expected a value in live mode (in the file or TITAN_API_TOKEN)" in err
    assert "ipc.hmacSecret: expected a value in live mode" in err
    monkeypatch.setenv("TITAN_API_TOKEN", "k7Qp2vX9mR4tW8yB1nE6hJ3sL5dF0gA2zC8")
    monkeypatch.setenv("TITAN_IPC_HMAC_SECRET", "Vb3Nq8Lr1Ty6Ui9Op2As5Df7Gh4Jk0Zx3Cv")
    assert main(["config", "validate", str(path)]) == 0
    assert capsys.readouterr().out == "OK\n"
