"""``titan signal send`` as a user runs it: a real subprocess talking to the service,
which runs in-process (the subprocess is awaited with trio.run_process, no threads)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tests.conftest import free_port
from titan_trio.config import Config, load_config
from titan_trio.engine import Engine

SECRET = "s" * 40
CLI_TIMEOUT_S = 30.0


async def titan(*args: str) -> tuple[int, str, str]:
    """Run ``python -m titan_trio ARGS``; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
    with trio.fail_after(CLI_TIMEOUT_S):
        done = await trio.run_process(
            [sys.executable, "-m", "titan_trio", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@asynccontextmanager
async def service(config: Path) -> AsyncIterator[Engine]:
    cfg: Config = load_config(config, environ={})
    async with trio.open_nursery() as nursery:
        engine: Engine = await nursery.start(Engine(cfg).run)
        await engine.reconciler.ready.wait()  # entries are taken from here on
        yield engine
        nursery.cancel_scope.cancel()


def send(config: Path, *args: str) -> tuple[str, ...]:
    return ("signal", "send", "--config", str(config), *args)


def reply_of(out: str) -> dict[str, Any]:
    body = json.loads(out)
    assert isinstance(body, dict)
    return body


async def test_ping_prints_pong(config_file: Callable[..., Path]) -> None:
    config = config_file()
    async with service(config):
        code, out, err = await titan(*send(config, "--type", "PING"))
        assert code == 0, err
        reply = reply_of(out)
        assert reply["status"] == "pong"
        assert reply["trading_state"] == "ACTIVE"
        assert out.startswith("{\n  ")  # indented

        code, out, err = await titan(*send(config, "--json", '{"type":"PING","id":1}'))
        assert code == 0, err
        assert reply_of(out)["id"] == 1


async def test_prepare_confirm_and_a_rejection(config_file: Callable[..., Path]) -> None:
    config = config_file()
    async with service(config) as engine:
        quote = engine.hub.book.get("ETHUSDT")
        assert quote is not None
        ask = float(quote.ask)
        prepare = (
            "--type",
            "PREPARE",
            "--symbol",
            "ETHUSDT",
            "--direction",
            "LONG",
            # wide: the price moves between the two subprocesses
            "--entry-min",
            f"{ask * 0.99:.2f}",
            "--entry-max",
            f"{ask * 1.01:.2f}",
            "--stop-loss",
            f"{ask * 0.98:.2f}",
            "--take-profit",
            f"{ask * 1.02:.2f}",
            "--take-profit",
            f"{ask * 1.03:.2f}",
            "--confidence",
            "80",
            "--leverage",
            "10",
        )
        code, out, err = await titan(*send(config, *prepare))
        assert code == 0, err
        prepared = reply_of(out)
        assert prepared["status"] == "prepared", prepared
        generated = prepared["signal_id"]
        assert generated.startswith("cli-")
        assert generated in err  # the generated id is shown

        code, out, err = await titan(*send(config, "--type", "CONFIRM", "--signal-id", generated))
        assert code == 0, err
        assert reply_of(out)["status"] == "accepted"

        code, out, err = await titan(*send(config, "--type", "CONFIRM", "--signal-id", generated))
        assert code == 1
        rejected = reply_of(out)
        assert (rejected["status"], rejected["reason"]) == ("rejected", "DUPLICATE_SIGNAL")
        assert "Traceback" not in err


async def test_prepare_without_take_profit_is_allowed(config_file: Callable[..., Path]) -> None:
    """The protocol takes 0-10 take-profit prices; the CLI does not demand one."""
    config = config_file()
    async with service(config) as engine:
        quote = engine.hub.book.get("BTCUSDT")
        assert quote is not None
        ask = float(quote.ask)
        code, out, err = await titan(
            *send(
                config,
                *("--type", "PREPARE", "--symbol", "BTCUSDT", "--direction", "LONG"),
                *("--entry-min", f"{ask * 0.99:.1f}", "--entry-max", f"{ask * 1.01:.1f}"),
                *("--stop-loss", f"{ask * 0.98:.1f}", "--confidence", "60", "--leverage", "5"),
            )
        )
        assert code == 0, err
        assert reply_of(out)["status"] == "prepared"


async def test_signed_frames_use_the_configured_secret(config_file: Callable[..., Path]) -> None:
    config = config_file(ipc={"hmacSecret": SECRET})
    async with service(config):
        code, out, err = await titan(*send(config, "--type", "PING"))
        assert code == 0, err
        assert reply_of(out)["status"] == "pong"
        # the same service with a config that has no secret: refused, exit 1
        code, out, _err = await titan(*send(config_file("plain.json"), "--type", "PING"))
        assert code == 1
        assert reply_of(out)["reason"] == "UNAUTHENTICATED"


async def test_missing_flag_is_a_usage_error_naming_it(config_file: Callable[..., Path]) -> None:
    config = config_file()
    code, out, err = await titan(
        *send(
            config,
            *("--type", "PREPARE", "--symbol", "BTCUSDT", "--direction", "LONG"),
            *("--entry-min", "95000", "--entry-max", "95100", "--take-profit", "96000"),
            *("--confidence", "80", "--leverage", "10"),
        )
    )
    assert code == 2
    assert out == ""
    assert "--stop-loss" in err
    assert err.count("\n") == 1 and "Traceback" not in err

    code, _out, err = await titan(*send(config, "--type", "CONFIRM"))
    assert code == 2 and "--signal-id" in err
    code, _out, err = await titan(*send(config, "--type", "CLOSE", "--signal-id", "x"))
    assert code == 2 and "--symbol" in err
    code, _out, err = await titan(*send(config, "--type", "PING", "--stop-loss", "1"))
    assert code == 2 and "--stop-loss" in err
    code, _out, err = await titan(*send(config))
    assert code == 2 and "--type" in err


async def test_unreachable_service_exits_3_with_one_line(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    config = config_file()
    nowhere = str(tmp_path / "nobody-listens.sock")
    code, out, err = await titan(*send(config, "--socket", nowhere, "--type", "PING"))
    assert code == 3
    assert out == ""
    assert err.startswith(f"titan: cannot reach the service at {nowhere}: ")
    assert "is it running?" in err
    assert err.count("\n") == 1 and "Traceback" not in err


async def test_at_market_prepares_around_the_current_price_so_the_readme_example_works(
    config_file: Callable[..., Path],
) -> None:
    config = config_file(api={"port": free_port()})  # the CLI asks the API for the market
    async with service(config) as engine:
        code, out, err = await titan(
            *send(
                config,
                "--type", "PREPARE", "--symbol", "BTCUSDT", "--direction", "SHORT",
                "--at-market", "--confidence", "80", "--leverage", "5", "--signal-id", "m-1",
            )
        )  # fmt: skip
        assert code == 0, (out, err)
        assert reply_of(out)["status"] == "prepared"
        assert reply_of(out)["expires_at"].endswith("Z")  # ISO 8601 UTC for a person
        assert "at market: mid" in err
        mid = engine.hub.book.get("BTCUSDT").mid
        message = engine.router.intents["m-1"].message
        assert message.stop_loss > mid > message.take_profits[0]  # a SHORT
        assert message.entry_zone.min < mid < message.entry_zone.max
        code, out, err = await titan(*send(config, "--type", "CONFIRM", "--signal-id", "m-1"))
        assert code == 0 and reply_of(out)["status"] == "accepted", (out, err)
        code, out, err = await titan(
            *send(config, "--type", "CONFIRM", "--signal-id", "x", "--at-market")
        )
        assert code == 2 and "--at-market needs --type PREPARE" in err
