"""The operator's commands against a real service process, as the runbook uses them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import spawn, stop, wait_healthy

pytestmark = pytest.mark.slow
TOKEN = "cli-test-token-0123456789abcdef-0123456789"
WRONG = "not-the-cli-test-token-0123456789abcdef"


def titan(*args: str, config: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "titan_trio", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def test_pause_resume_flatten_and_breaker_reset(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    port = free_port()
    config = config_file(api={"port": port, "token": TOKEN})
    service = spawn(config, tmp_path)
    try:
        wait_healthy(port, service)
        # The token from the config is used; a wrong one from the environment is refused.
        code, _out, err = titan("pause", config=config, env={"TITAN_API_TOKEN": WRONG})
        assert code == 1 and "refused the bearer token (HTTP 401)" in err
        code, out, _err = titan("pause", config=config)
        assert code == 0 and json.loads(out) == {"trading_state": "REDUCING"}
        code, out, _err = titan("risk", config=config)
        risk = json.loads(out)
        assert risk["trading_state"] == "REDUCING"
        assert risk["history"][-1]["action"] == "pause"
        assert "titan cli" in risk["history"][-1]["by"]
        code, out, _err = titan("resume", config=config)
        assert code == 0 and json.loads(out) == {"trading_state": "ACTIVE"}
        code, out, _err = titan("flatten", config=config)
        flat = json.loads(out)
        assert code == 0 and flat["trading_state"] == "HALTED"
        assert flat["message"].startswith("nothing to do")
        code, out, _err = titan("breaker", "reset", config=config)
        assert code == 0 and json.loads(out)["reset"] is False
        code, out, _err = titan("equity", config=config)
        assert json.loads(out)["trading_state"] == "HALTED"
    finally:
        code, _took, out = stop(service)
    assert code == 0, out
    assert "trading paused by" in out and "emergency flatten requested by" in out


def test_repeated_wrong_tokens_are_throttled_with_a_clear_message(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    port = free_port()
    config = config_file(api={"port": port, "token": TOKEN})
    service = spawn(config, tmp_path)
    try:
        wait_healthy(port, service)
        # Five refusals, then 429 for 1 s, doubling with each refusal after it: a command
        # lands inside one within a few attempts however slowly the commands start.
        refused = 0
        while refused < 12:
            code, _out, err = titan("pause", config=config, env={"TITAN_API_TOKEN": WRONG})
            assert code == 1
            if "HTTP 429" in err:
                break
            assert "refused the bearer token (HTTP 401)" in err
            refused += 1
        assert 5 <= refused < 12, err
        assert "refuses operator commands from this address" in err
        assert re.search(r"try again in [0-9]+ s", err), err
        code, out, _err = titan("health", config=config)  # reads are never throttled
        assert code == 0 and json.loads(out)["status"] == "healthy"
    finally:
        code, _took, out = stop(service)
    assert code == 0, out
    assert "client 127.0.0.1 gave 5 wrong or missing bearer tokens in a row" in out


def test_commands_say_when_the_service_is_not_running(
    config_file: Callable[..., Path],
) -> None:
    config = config_file(api={"port": free_port()})
    for command in (["health"], ["pause"], ["flatten"], ["breaker", "reset"], ["trades"]):
        code, _out, err = titan(*command, config=config)
        assert code == 1, command
        assert "cannot reach the service" in err and "is it running?" in err
