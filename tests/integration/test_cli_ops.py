"""The operator's commands against a real service process, as the runbook uses them:
what a person reads by default, the API's JSON with ``--json``, and one line with the
documented exit code when something is wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import exact, spawn, stop, wait_healthy

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
        code, out, err = titan("pause", config=config, env={"TITAN_API_TOKEN": WRONG})
        assert (code, out) == (1, "") and err.count("\n") == 1
        assert "refused the bearer token (HTTP 401)" in err
        code, out, _err = titan("pause", "--json", config=config)
        assert code == 0 and json.loads(out) == {"trading_state": "REDUCING"}
        code, out, _err = titan("risk", "--json", config=config)
        risk = json.loads(out)
        assert risk["trading_state"] == "REDUCING"
        assert risk["history"][-1]["action"] == "pause"
        assert "titan cli" in risk["history"][-1]["by"]
        code, out, _err = titan("risk", config=config)
        assert code == 0 and out.startswith("trading ") and "REDUCING" in out.splitlines()[0]
        assert re.search(r"recent actions .* pause by .*titan cli", out), out
        code, out, _err = titan("resume", config=config)
        assert (code, out) == (0, "trading is ACTIVE (entries and exits allowed)\n")
        code, out, _err = titan("flatten", config=config)
        assert code == 0
        assert out == "nothing to do: no open orders or positions; trading is HALTED\n"
        code, out, _err = titan("breaker", "reset", "--json", config=config)
        assert code == 0 and json.loads(out)["reset"] is False
        code, out, _err = titan("breaker", "reset", config=config)
        assert code == 0 and out.startswith("the circuit breaker was not tripped; nothing")
        code, out, _err = titan("equity", "--json", config=config)
        assert json.loads(out)["trading_state"] == "HALTED"
        code, out, _err = titan("equity", config=config)
        assert re.search(r"^trading +HALTED ", out, re.M), out
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
        assert code == 0 and out.startswith("healthy (titan ")
    finally:
        code, _took, out = stop(service)
    assert code == 0, out
    assert "client 127.0.0.1 gave 5 wrong or missing bearer tokens in a row" in out


def test_commands_say_when_the_service_is_not_running(
    config_file: Callable[..., Path],
) -> None:
    config = config_file(api={"port": free_port()})
    for command in (["health"], ["pause"], ["flatten"], ["breaker", "reset"], ["trades"]):
        code, out, err = titan(*command, config=config)
        assert (code, out) == (3, ""), command
        assert err.count("\n") == 1
        assert "cannot reach the service" in err and "is it running?" in err


def api_json(port: int, path: str) -> Any:
    return exact(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5))


def test_tables_for_people_and_the_apis_json_with_json(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    port = free_port()
    config = config_file(api={"port": port, "token": TOKEN})
    service = spawn(config, tmp_path)
    try:
        wait_healthy(port, service)
        code, out, _err = titan("positions", config=config)
        assert (code, out) == (0, "no open positions\n")
        code, out, _err = titan("orders", config=config)
        assert (code, out) == (0, "no open orders\n")
        code, out, _err = titan("trades", config=config)
        assert (code, out) == (0, "no closed trades\n")

        for step in (
            ["--type", "PREPARE", "--symbol", "BTCUSDT", "--direction", "LONG", "--at-market"],
            ["--type", "CONFIRM"],
        ):
            extra = ["--confidence", "80", "--leverage", "5"] if step[1] == "PREPARE" else []
            code, out, err = titan("signal", "send", *step, *extra, "--signal-id", "p-1",
                                   config=config)  # fmt: skip
            assert code == 0, out + err
        [position] = api_json(port, "/api/state/positions")

        code, out, _err = titan("positions", config=config)
        header, row, footer = out.splitlines()
        assert header.split()[:8] == [
            "SYMBOL", "SIDE", "SIZE", "ENTRY", "MARK", "UNREALIZED", "LEV", "STOP"
        ]  # fmt: skip
        cells = row.split()
        assert cells[:4] == ["BTCUSDT", "LONG", str(position["size"]),
                             str(position["entry_price"])]  # fmt: skip
        assert cells[7] == str(position["stop_loss"]) and "p-1" in cells
        assert footer.startswith("1 position, unrealized P&L ")
        code, out, _err = titan("positions", "--json", config=config)
        [printed] = json.loads(out, parse_float=Decimal)
        moving = ("mark_price", "unrealized_pnl")  # the market moves between the two reads
        assert {k: v for k, v in printed.items() if k not in moving} == {
            k: v for k, v in position.items() if k not in moving
        }

        code, out, _err = titan("orders", config=config)
        [take_profit] = api_json(port, "/api/state/orders")
        assert take_profit["client_order_id"] in out and "reduce-only" in out
        code, out, _err = titan("orders", "--json", config=config)
        assert json.loads(out, parse_float=Decimal) == [take_profit]

        code, out, err = titan("signal", "send", "--type", "CLOSE", "--symbol", "BTCUSDT",
                               "--signal-id", "p-1-close", "--reason", "cli test",
                               config=config)  # fmt: skip
        assert code == 0, out + err
        deadline = time.monotonic() + 10
        while not (trades := api_json(port, "/api/trades")) and time.monotonic() < deadline:
            time.sleep(0.05)
        code, out, _err = titan("trades", config=config)
        header, row, footer = out.splitlines()
        assert "NET P&L" in header and row.split()[2:4] == ["BTCUSDT", "LONG"]
        assert row.endswith("CLOSE: cli test") and footer.startswith("1 trade, net P&L ")
        code, out, _err = titan("trades", "--json", "--limit", "5", config=config)
        assert json.loads(out, parse_float=Decimal) == trades

        code, out, _err = titan("health", config=config)
        lines = out.splitlines()
        assert code == 0 and lines[0].startswith("healthy (titan ")
        assert [line.split()[:2] for line in lines[1:5]] == [
            ["websocket", "healthy"], ["database", "healthy"], ["ipc", "healthy"],
            ["broker", "healthy"],
        ]  # fmt: skip
        code, out, _err = titan("health", "--json", config=config)
        assert code == 0 and set(json.loads(out)) == set(api_json(port, "/api/health"))
        code, out, _err = titan("market", config=config)
        assert code == 0 and out.split()[:2] == ["SYMBOL", "SOURCE"]
        assert [line.split()[0] for line in out.splitlines()[1:]] == [
            "BTCUSDT", "ETHUSDT", "SOLUSDT"
        ]  # fmt: skip
        code, out, _err = titan("reconcile", config=config)
        assert (code, out) == (0, "no differences\n")
    finally:
        code, _took, out = stop(service)
    assert code == 0, out
