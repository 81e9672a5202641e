"""The IPC signal path of the whole service in-process, over its real Unix socket
(SPEC §5, §6): the success path, every reason code a strategy can provoke from outside,
pipelining, isolation between connections, and a restart.

Not reachable from outside yet, so not tested here: TRADING_HALTED (nothing sets the
router's trading state: no pause endpoint, no circuit breaker) and RATE_LIMITED (no
exchange rate limiter in front of the paper broker). BUSY needs more requests in progress
than the listener's max_pending (1024, not configurable): tests/ipc/test_listener.py
covers it with a small limit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio

from ipc.client import SignalClient
from tests.helpers import POLL_S, eventually, merge, service
from tests.ipc.wire import Wire, frame
from titan_trio.config import Config
from titan_trio.engine import Engine
from titan_trio.state import records

SECRET = "0123456789abcdef0123456789abcdef-secret"  # 40 characters

# A flat market (volatility 0): the touch does not move between PREPARE and CONFIRM, so
# the service's IOC entry at the touch always fills and tests do not depend on luck.
CALM: dict[str, Any] = {"simulation": {"intervalMs": 20, "volatilityPct": 0}}


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Callable[..., Config]:
    """A test config on a calm market; keyword sections are merged into it."""

    def make(**sections: Any) -> Config:
        return make_config(**merge(CALM, sections))

    return make


async def connect(engine: Engine) -> Wire:
    return await Wire.connect(engine.cfg.ipc.socket_path, engine.cfg.ipc.hmac_secret)


def prepare(
    engine: Engine,
    signal_id: str,
    symbol: str = "BTCUSDT",
    *,
    rid: str | int | None = None,
    direction: str = "LONG",
    stop_pct: float = 2.0,
    **fields: Any,
) -> dict[str, Any]:
    """A PREPARE around the current mid: entry zone ±1 %, stop ``stop_pct`` away."""
    quote = engine.hub.book.get(symbol)
    mid = float(quote.mid) if quote is not None else 100.0
    sign = 1 if direction == "LONG" else -1
    msg = {
        "type": "PREPARE",
        "id": rid if rid is not None else f"p-{signal_id}",
        "signal_id": signal_id,
        "source": "test-strategy",
        "symbol": symbol,
        "direction": direction,
        "entry_zone": {"min": round(mid * 0.99, 2), "max": round(mid * 1.01, 2)},
        "stop_loss": round(mid * (1 - sign * stop_pct / 100), 2),
        "take_profits": [round(mid * (1 + sign * 0.05), 2)],
        "confidence": 80,
        "leverage": 5,
        "timestamp": int(time.time() * 1000),
    }
    msg.update(fields)
    return msg


def confirm(signal_id: str, rid: str | int | None = None) -> dict[str, Any]:
    return {"type": "CONFIRM", "id": rid or f"c-{signal_id}", "signal_id": signal_id}


def abort(signal_id: str, rid: str | int | None = None) -> dict[str, Any]:
    return {"type": "ABORT", "id": rid or f"a-{signal_id}", "signal_id": signal_id}


def close(signal_id: str, symbol: str, reason: str | None = None) -> dict[str, Any]:
    msg = {"type": "CLOSE", "id": f"x-{signal_id}", "signal_id": signal_id, "symbol": symbol}
    if reason is not None:
        msg["reason"] = reason
    return msg


def ping(rid: str | int) -> dict[str, Any]:
    return {"type": "PING", "id": rid}


def check_reply(reply: dict[str, Any], rid: str | int | None) -> None:
    assert reply["id"] == rid, reply
    assert isinstance(reply["latency_us"], int) and reply["latency_us"] >= 0, reply


def ok(reply: dict[str, Any], status: str, request: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == status, reply
    check_reply(reply, request["id"])
    if "signal_id" in request:
        assert reply["signal_id"] == request["signal_id"]
    return reply


def rejected(
    reply: dict[str, Any], reason: str, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    assert reply["status"] == "rejected", reply
    assert reply["reason"] == reason, reply
    assert isinstance(reply["message"], str) and reply["message"].strip(), reply
    check_reply(reply, None if request is None else request["id"])
    if request is not None and "signal_id" in request:
        assert reply["signal_id"] == request["signal_id"], reply
    return reply


async def open_position(wire: Wire, engine: Engine, signal_id: str, symbol: str) -> None:
    """PREPARE + CONFIRM, then wait until the fill has reached the shadow state."""
    ok(await wire.request(p := prepare(engine, signal_id, symbol)), "prepared", p)
    reply = ok(await wire.request(c := confirm(signal_id)), "accepted", c)
    assert reply["order_status"] == "FILLED", reply
    await eventually(lambda: symbol in engine.shadow.positions)


# ----- the success path -----------------------------------------------------------------


async def test_prepare_confirm_close_opens_and_closes_a_position(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        request = prepare(engine, "happy-1", rid="r-prep")
        prepared = ok(await wire.request(request), "prepared", request)
        size = Decimal(prepared["size"])
        assert size > 0
        assert prepared["symbol"] == "BTCUSDT" and prepared["direction"] == "LONG"
        assert Decimal(prepared["risk_usd"]) <= Decimal("100")  # 1 % of 10,000 in phase 3
        assert prepared["expires_at"] > time.time() * 1000

        accepted = ok(await wire.request(c := confirm("happy-1", "r-conf")), "accepted", c)
        assert accepted["client_order_id"]
        assert accepted["order_status"] == "FILLED"
        assert Decimal(accepted["filled_qty"]) == size

        rec = await eventually(lambda: engine.shadow.positions.get("BTCUSDT"))
        assert rec.position.size == size
        assert rec.signal_id == "happy-1"
        # on the tick grid as the exchange holds it, never wider than asked
        asked = Decimal(str(request["stop_loss"]))
        assert rec.stop_loss == engine.instruments["BTCUSDT"].stop_price(asked, long=True)
        assert asked <= rec.stop_loss < asked + engine.instruments["BTCUSDT"].tick_size

        closed = ok(await wire.request(x := close("happy-1-exit", "BTCUSDT", "tp")), "closed", x)
        assert (
            closed["client_order_id"] and closed["client_order_id"] != accepted["client_order_id"]
        )
        await eventually(lambda: not engine.shadow.positions)

        async def trades() -> list[dict[str, Any]]:
            return await engine.store.call(records.list_trades, None, 10, None)

        with trio.fail_after(5):
            while not (recorded := await trades()):  # noqa: ASYNC110 - store thread
                await trio.sleep(POLL_S)
        assert len(recorded) == 1
        trade = recorded[0]
        assert trade["symbol"] == "BTCUSDT"
        assert trade["signal_id"] == "happy-1"
        assert Decimal(str(trade["qty"])) == size
        assert trade["close_reason"] == "CLOSE: tp"


async def test_short_entry_and_close(config: Callable[..., Config]) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        request = prepare(engine, "short-1", "ETHUSDT", direction="SHORT")
        ok(await wire.request(request), "prepared", request)
        ok(await wire.request(c := confirm("short-1")), "accepted", c)
        rec = await eventually(lambda: engine.shadow.positions.get("ETHUSDT"))
        assert rec.position.size < 0
        ok(await wire.request(x := close("short-1-exit", "ETHUSDT")), "closed", x)
        await eventually(lambda: not engine.shadow.positions)


async def test_ping_returns_pong_with_the_trading_state(config: Callable[..., Config]) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        for rid in ("ping-1", 2, "3"):
            reply = ok(await wire.request(ping(rid)), "pong", ping(rid))
            assert reply["trading_state"] == "ACTIVE"
            assert abs(reply["server_time"] - time.time() * 1000) < 60_000


async def test_fifty_pipelined_requests_get_fifty_replies_in_order(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        requests: list[dict[str, Any] | bytes] = []
        expected: list[tuple[str | int | None, str]] = []
        for i in range(10):
            requests += [
                prepare(engine, f"pipe-{i}", rid=i * 5),
                ping(f"ping-{i}"),
                abort(f"pipe-{i}", rid=i * 5 + 2),
                b"not json at all",
                confirm(f"never-{i}", rid=f"unknown-{i}"),
            ]
            expected += [
                (i * 5, "prepared"),
                (f"ping-{i}", "pong"),
                (i * 5 + 2, "aborted"),
                (None, "rejected"),
                (f"unknown-{i}", "rejected"),
            ]
        assert len(requests) == 50
        await wire.send(*requests)  # one send_all
        replies = await wire.replies(50)
        assert [(r["id"], r["status"]) for r in replies] == expected
        for reply, (rid, _status) in zip(replies, expected, strict=True):
            check_reply(reply, rid)
        assert {r["reason"] for r in replies if r["status"] == "rejected"} == {
            "INVALID_FRAME",
            "UNKNOWN_SIGNAL",
        }
        assert not engine.shadow.orders and not engine.router.intents


# ----- malformed input ------------------------------------------------------------------


async def test_invalid_frames_are_rejected_and_the_connection_stays_usable(
    config: Callable[..., Config],
) -> None:
    async with service(config(ipc={"maxFrameBytes": 256})) as engine, await connect(engine) as wire:
        for bad in (
            b"{not json",
            b"\xff\xfe\xfd",
            b"",
            b"   ",
            b'[{"type":"PING","id":1}]',
            b'{"type":"PING","id":"' + b"x" * 1000 + b'"}',  # over maxFrameBytes
        ):
            rejected(await wire.request(bad), "INVALID_FRAME")
            ok(await wire.request(ping("still-here")), "pong", ping("still-here"))
        assert engine.ipc is not None and engine.ipc.connections == 1


async def test_invalid_signals_are_rejected_with_the_field_named(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        mid = float(engine.hub.book.get("BTCUSDT").mid)
        cases = [
            (prepare(engine, "bad-stop", stop_loss=round(mid * 1.02, 2)), "stop_loss"),
            (
                prepare(engine, "bad-stop-short", direction="SHORT", stop_loss=round(mid * 0.9, 2)),
                "stop_loss",
            ),
            (prepare(engine, "bad-tp", take_profits=[round(mid * 0.9, 2)]), "take_profits"),
            (
                prepare(engine, "bad-zone", entry_zone={"min": mid * 1.01, "max": mid * 0.99}),
                "entry_zone",
            ),
        ]
        for request, field in cases:
            reply = rejected(await wire.request(request), "INVALID_SIGNAL", request)
            assert field in reply["message"]
        # CLOSE of a position that does not exist
        request = close("close-nothing", "BTCUSDT")
        rejected(await wire.request(request), "INVALID_SIGNAL", request)
        assert not engine.router.intents and not engine.shadow.orders


async def test_entry_against_an_open_position_is_invalid_signal(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        await open_position(wire, engine, "long-1", "BTCUSDT")
        request = prepare(engine, "short-onto-long", direction="SHORT")
        reply = rejected(await wire.request(request), "INVALID_SIGNAL", request)
        assert "CLOSE" in reply["message"]


async def test_schema_error_through_the_socket_is_invalid_signal(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        request = prepare(engine, "conf-200", confidence=200)
        reply = rejected(await wire.request(request), "INVALID_SIGNAL", request)
        assert "confidence" in reply["message"]


# ----- signed frames --------------------------------------------------------------------


async def test_signed_frames_are_checked(config: Callable[..., Config]) -> None:
    async with service(config(ipc={"hmacSecret": SECRET})) as engine, await connect(engine) as wire:
        ok(await wire.request(ping("signed")), "pong", ping("signed"))
        request = prepare(engine, "signed-1")
        ok(await wire.request(request), "prepared", request)

        forged = Wire(wire.stream, secret="not-the-secret-" + "x" * 30)
        # The id is echoed (from the unverified payload) so the client can match it.
        rejected(await forged.request(ping("forged")), "UNAUTHENTICATED", ping("forged"))
        tampered = frame(ping("a"), SECRET).replace(b'\\"a\\"', b'\\"b\\"')
        assert tampered != frame(ping("a"), SECRET)
        rejected(await wire.request(tampered.rstrip(b"\n")), "UNAUTHENTICATED", ping("b"))
        ok(await wire.request(ping("after")), "pong", ping("after"))


async def test_unsigned_frame_is_unauthenticated(config: Callable[..., Config]) -> None:
    async with service(config(ipc={"hmacSecret": SECRET})) as engine:
        async with await Wire.connect(engine.cfg.ipc.socket_path) as unsigned:
            request = prepare(engine, "unsigned-1")
            rejected(await unsigned.request(request), "UNAUTHENTICATED", request)


# ----- signal life cycle ----------------------------------------------------------------


async def test_prepare_twice_is_duplicate_signal(config: Callable[..., Config]) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        first = prepare(engine, "dup-1", rid="first")
        ok(await wire.request(first), "prepared", first)
        again = prepare(engine, "dup-1", rid="again")
        rejected(await wire.request(again), "DUPLICATE_SIGNAL", again)
        # still a duplicate once the first is gone: the journal remembers every id
        ok(await wire.request(a := abort("dup-1")), "aborted", a)
        late = prepare(engine, "dup-1", rid="late")
        rejected(await wire.request(late), "DUPLICATE_SIGNAL", late)
        # and for an id whose PREPARE was rejected
        unknown = prepare(engine, "dup-2", "DOGEUSDT")
        rejected(await wire.request(unknown), "UNKNOWN_SYMBOL", unknown)
        retry = prepare(engine, "dup-2", rid="retry")
        rejected(await wire.request(retry), "DUPLICATE_SIGNAL", retry)


async def test_confirm_twice_is_duplicate_signal_and_orders_once(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        # one after the other
        request = prepare(engine, "twice-1")
        size = Decimal(ok(await wire.request(request), "prepared", request)["size"])
        ok(await wire.request(confirm("twice-1", "one")), "accepted", confirm("twice-1", "one"))
        second = confirm("twice-1", "two")
        rejected(await wire.request(second), "DUPLICATE_SIGNAL", second)
        # pipelined in one write
        request = prepare(engine, "twice-2", "ETHUSDT")
        ok(await wire.request(request), "prepared", request)
        await wire.send(confirm("twice-2", "three"), confirm("twice-2", "four"))
        third, fourth = await wire.replies(2)
        ok(third, "accepted", confirm("twice-2", "three"))
        rejected(fourth, "DUPLICATE_SIGNAL", confirm("twice-2", "four"))

        await eventually(lambda: len(engine.shadow.positions) == 2)
        await trio.sleep(0.05)  # a second order, had one been sent, would have filled by now
        assert engine.shadow.positions["BTCUSDT"].position.size == size
        assert engine.broker is not None
        assert len(engine.broker.exchange.positions) == 2
        assert engine.broker.exchange.positions["BTCUSDT"].size == size


async def test_confirm_or_abort_of_a_signal_never_prepared_is_unknown(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        for request in (confirm("ghost", "c1"), abort("ghost", "a1"), confirm("ghost", 77)):
            rejected(await wire.request(request), "UNKNOWN_SIGNAL", request)
        assert not engine.shadow.orders


async def test_abort_then_confirm_is_rejected_and_places_nothing(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        request = prepare(engine, "abort-1")
        ok(await wire.request(request), "prepared", request)
        ok(await wire.request(a := abort("abort-1")), "aborted", a)
        reply = await wire.request(c := confirm("abort-1"))
        assert reply["status"] == "rejected"
        rejected(reply, reply["reason"], c)
        assert reply["reason"] in ("UNKNOWN_SIGNAL", "DUPLICATE_SIGNAL")
        # pipelined: ABORT and CONFIRM in one write
        request = prepare(engine, "abort-2")
        ok(await wire.request(request), "prepared", request)
        await wire.send(abort("abort-2"), confirm("abort-2"))
        aborted, refused = await wire.replies(2)
        ok(aborted, "aborted", abort("abort-2"))
        assert refused["status"] == "rejected", refused
        assert refused["reason"] in ("UNKNOWN_SIGNAL", "DUPLICATE_SIGNAL")
        assert not engine.shadow.orders and not engine.shadow.positions


async def test_confirm_after_the_prepare_ttl_is_expired(config: Callable[..., Config]) -> None:
    async with (
        service(config(execution={"prepareTtlMs": 50})) as engine,
        await connect(engine) as wire,
    ):
        request = prepare(engine, "slow-1")
        ok(await wire.request(request), "prepared", request)
        await trio.sleep(0.15)  # real time: the TTL is measured on the service's clock
        rejected(await wire.request(c := confirm("slow-1")), "EXPIRED", c)
        # the same outcome when the CONFIRM races the expiry sweep
        request = prepare(engine, "slow-2")
        ok(await wire.request(request), "prepared", request)
        await trio.sleep(0.06)
        rejected(await wire.request(c := confirm("slow-2")), "EXPIRED", c)
        assert not engine.shadow.orders and not engine.shadow.positions


@pytest.mark.parametrize("secret", [None, SECRET])
async def test_prepare_from_1970_or_the_future_is_expired_and_prepares_nothing(
    config: Callable[..., Config], secret: str | None
) -> None:
    cfg = config(ipc={"hmacSecret": secret}) if secret else config()
    async with service(cfg) as engine, await connect(engine) as wire:
        stale = prepare(engine, "stale-1", timestamp=0)
        reply = rejected(await wire.request(stale), "EXPIRED", stale)
        assert "1970-01-01T00:00:00.000Z" in reply["message"], reply
        assert "5000 ms" in reply["message"], reply
        future = prepare(engine, "future-1", timestamp=int(time.time() * 1000) + 60_000)
        reply = rejected(await wire.request(future), "EXPIRED", future)
        assert "ahead of the service's clock" in reply["message"], reply
        assert not engine.router.intents
        # Refused like any gate: the signal id is used up, and nothing can confirm it.
        reply = rejected(await wire.request(c := confirm("stale-1")), "UNKNOWN_SIGNAL", c)
        assert "EXPIRED" in reply["message"]
        again = prepare(engine, "stale-1", rid="again")
        rejected(await wire.request(again), "DUPLICATE_SIGNAL", again)
        assert not engine.shadow.orders
        # A signal made a moment ago is prepared as usual.
        fresh = prepare(engine, "fresh-1", timestamp=int(time.time() * 1000) - 1000)
        ok(await wire.request(fresh), "prepared", fresh)


async def test_max_signal_age_is_configurable(config: Callable[..., Config]) -> None:
    async with (
        service(config(ipc={"maxSignalAgeMs": 120_000})) as engine,
        await connect(engine) as wire,
    ):
        minute_old = prepare(engine, "old-1", timestamp=int(time.time() * 1000) - 60_000)
        ok(await wire.request(minute_old), "prepared", minute_old)
        too_old = prepare(engine, "old-2", timestamp=int(time.time() * 1000) - 180_000)
        reply = rejected(await wire.request(too_old), "EXPIRED", too_old)
        assert "120000 ms" in reply["message"], reply


async def test_unknown_symbol(config: Callable[..., Config]) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        request = prepare(engine, "doge-1", "DOGEUSDT")
        reply = rejected(await wire.request(request), "UNKNOWN_SYMBOL", request)
        assert "DOGEUSDT" in reply["message"]
        request = close("doge-exit", "DOGEUSDT")
        rejected(await wire.request(request), "UNKNOWN_SYMBOL", request)


# ----- risk gates -----------------------------------------------------------------------


async def test_max_positions_for_another_symbol(config: Callable[..., Config]) -> None:
    async with service(config(risk={"maxPositions": 1})) as engine, await connect(engine) as wire:
        await open_position(wire, engine, "mp-1", "BTCUSDT")
        request = prepare(engine, "mp-2", "ETHUSDT")
        reply = rejected(await wire.request(request), "MAX_POSITIONS", request)
        assert "1" in reply["message"]


async def test_max_positions_for_the_same_symbol_without_pyramiding(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        await open_position(wire, engine, "pyr-1", "BTCUSDT")
        request = prepare(engine, "pyr-2", "BTCUSDT")
        reply = rejected(await wire.request(request), "MAX_POSITIONS", request)
        assert "allowPyramiding" in reply["message"]


@pytest.mark.parametrize(
    ("risk", "reason"),
    [({"maxPositions": 1}, "MAX_POSITIONS"), ({"maxTotalLeverage": 0.5}, "LEVERAGE_CAP")],
)
async def test_confirm_right_after_a_fill_still_sees_the_new_position(
    config: Callable[..., Config], risk: dict[str, Any], reason: str
) -> None:
    async with service(config(risk=risk)) as engine, await connect(engine) as wire:
        first, second = prepare(engine, "gap-1"), prepare(engine, "gap-2", "ETHUSDT")
        ok(await wire.request(first), "prepared", first)
        ok(await wire.request(second), "prepared", second)
        ok(await wire.request(c := confirm("gap-1")), "accepted", c)
        # the strategy confirms its second signal as soon as the first is acknowledged
        reply = await wire.request(c := confirm("gap-2"))
        await trio.sleep(0.05)
        assert len(engine.shadow.positions) == 1, "the limit was breached"
        rejected(reply, reason, c)


async def test_leverage_cap_when_even_the_minimum_size_does_not_fit(
    config: Callable[..., Config],
) -> None:
    # 0.0001x of 10,000 USDT leaves 1 USDT of notional: less than one BTC step
    async with (
        service(config(risk={"maxTotalLeverage": 0.0001})) as engine,
        await connect(engine) as wire,
    ):
        request = prepare(engine, "lev-1")
        rejected(await wire.request(request), "LEVERAGE_CAP", request)


async def test_leverage_cap_at_confirm_when_the_account_filled_up(
    config: Callable[..., Config],
) -> None:
    async with (
        service(config(risk={"maxTotalLeverage": 0.5})) as engine,
        await connect(engine) as wire,
    ):
        # Both are sized on an empty account (about 5,000 USDT each: 0.5x of 10,000)...
        first, second = prepare(engine, "cap-1"), prepare(engine, "cap-2", "ETHUSDT")
        ok(await wire.request(first), "prepared", first)
        ok(await wire.request(second), "prepared", second)
        ok(await wire.request(c := confirm("cap-1")), "accepted", c)
        await eventually(lambda: "BTCUSDT" in engine.shadow.positions)
        # ...but once the first is held there is no room left for the second.
        reply = rejected(await wire.request(c := confirm("cap-2")), "LEVERAGE_CAP", c)
        assert "0.5" in reply["message"]
        assert list(engine.shadow.positions) == ["BTCUSDT"]


async def test_size_too_small(config: Callable[..., Config]) -> None:
    # risking 0.001 % of 10,000 USDT (0.10) with a 2 % stop buys far less than 0.001 BTC
    async with service(config(risk={"maxRiskPct": 0.001})) as engine, await connect(engine) as wire:
        request = prepare(engine, "tiny-1")
        rejected(await wire.request(request), "SIZE_TOO_SMALL", request)


async def test_stale_book_is_l2_stale(config: Callable[..., Config]) -> None:
    cfg = config(simulation={"intervalMs": 60_000}, execution={"l2": {"maxAgeMs": 1}})
    async with service(cfg) as engine, await connect(engine) as wire:
        await trio.sleep(0.01)  # the only quote, published at start, is now > 1 ms old
        request = prepare(engine, "stale-1")
        reply = rejected(await wire.request(request), "L2_STALE", request)
        assert "ms" in reply["message"]


async def test_wide_spread_is_spread_too_wide(config: Callable[..., Config]) -> None:
    cfg = config(execution={"l2": {"maxSpreadPct": 0.00001}})
    async with service(cfg) as engine, await connect(engine) as wire:
        request = prepare(engine, "wide-1")
        rejected(await wire.request(request), "SPREAD_TOO_WIDE", request)


async def test_estimated_slippage_too_high_at_prepare(config: Callable[..., Config]) -> None:
    cfg = config(execution={"l2": {"maxSlippagePct": 0.00001}})
    async with service(cfg) as engine, await connect(engine) as wire:
        request = prepare(engine, "slip-1")
        rejected(await wire.request(request), "SLIPPAGE_TOO_HIGH", request)


async def test_price_outside_the_entry_zone_at_confirm_is_slippage_too_high(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine, await connect(engine) as wire:
        mid = float(engine.hub.book.get("BTCUSDT").mid)
        request = prepare(
            engine,
            "zone-1",
            entry_zone={"min": round(mid * 0.95, 2), "max": round(mid * 0.96, 2)},
            stop_loss=round(mid * 0.94, 2),
        )
        ok(await wire.request(request), "prepared", request)
        reply = rejected(await wire.request(c := confirm("zone-1")), "SLIPPAGE_TOO_HIGH", c)
        assert "zone" in reply["message"]
        assert not engine.shadow.orders and not engine.shadow.positions


async def test_order_the_exchange_refuses_is_broker_rejected(
    config: Callable[..., Config],
) -> None:
    # At 1x per position, one entry sized to the cap uses the whole balance as margin;
    # the gates (50x total) let a second one through and the paper exchange refuses it.
    async with (
        service(config(risk={"phase3MaxLeverage": 1, "phase3RiskPct": 2})) as engine,
        await connect(engine) as wire,
    ):
        ok(await wire.request(p := prepare(engine, "margin-1", stop_pct=1.5)), "prepared", p)
        ok(await wire.request(c := confirm("margin-1")), "accepted", c)
        request = prepare(engine, "refused-1", "ETHUSDT", stop_pct=1.5)
        ok(await wire.request(request), "prepared", request)
        reply = rejected(await wire.request(c := confirm("refused-1")), "BROKER_REJECTED", c)
        assert "INSUFFICIENT_BALANCE" in reply["message"]
        # the refused entry holds no exposure and left no position
        await eventually(lambda: "BTCUSDT" in engine.shadow.positions)
        assert "ETHUSDT" not in engine.shadow.positions
        assert not [o for o in engine.shadow.orders.values() if o.symbol == "ETHUSDT"]


# ----- refusals in the log --------------------------------------------------------------


async def test_refused_prepare_and_confirm_are_logged_with_signal_symbol_reason_and_message(
    config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="titan.ipc")

    def logged(signal_id: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if f"signal={signal_id} " in r.getMessage()]

    async with service(config()) as engine, await connect(engine) as wire:
        unknown = prepare(engine, "log-1", "DOGEUSDT")
        reply = rejected(await wire.request(unknown), "UNKNOWN_SYMBOL", unknown)
        [line] = logged("log-1")
        assert line.levelno == logging.INFO
        assert line.getMessage().startswith(
            "refused PREPARE reason=UNKNOWN_SYMBOL signal=log-1 symbol=DOGEUSDT request=p-log-1"
        )
        assert f'message="{reply["message"]}"' in line.getMessage()

        # A CONFIRM names the symbol of its PREPARE; a halt is worth a WARNING.
        request = prepare(engine, "log-2", "ETHUSDT")
        ok(await wire.request(request), "prepared", request)
        await engine.risk.pause("the test")
        reply = rejected(await wire.request(c := confirm("log-2")), "TRADING_HALTED", c)
        assert reply["symbol"] == "ETHUSDT"
        [line] = logged("log-2")
        assert line.levelno == logging.WARNING
        assert line.getMessage().startswith(
            "refused CONFIRM reason=TRADING_HALTED signal=log-2 symbol=ETHUSDT"
        )
        # Accepted requests write no such line.
        ok(await wire.request(ping("fine")), "pong", ping("fine"))
        assert len([r for r in caplog.records if r.getMessage().startswith("refused")]) == 2


# ----- connections ----------------------------------------------------------------------


async def test_connections_beyond_the_limit_get_max_connections(
    config: Callable[..., Config],
) -> None:
    async with service(config(ipc={"maxConnections": 2})) as engine:
        assert engine.ipc is not None
        first, second = await connect(engine), await connect(engine)
        for wire in (first, second):  # both are accepted and served
            ok(await wire.request(ping("in")), "pong", ping("in"))
        async with await connect(engine) as third:
            reply = await third.reply()
            assert (reply["status"], reply["reason"]) == ("rejected", "MAX_CONNECTIONS")
            assert reply["id"] is None and "2" in reply["message"]
            assert await third.at_eof()
        # the two open connections are unaffected
        ok(await first.request(ping("still")), "pong", ping("still"))
        # and once one of them goes, a newcomer is served
        await second.aclose()
        await eventually(lambda: engine.ipc.connections < 2)
        async with await connect(engine) as fourth:
            ok(await fourth.request(ping("newcomer")), "pong", ping("newcomer"))
        await first.aclose()


async def test_max_connections_reply_has_latency_us(config: Callable[..., Config]) -> None:
    async with service(config(ipc={"maxConnections": 1})) as engine:
        async with await connect(engine) as first:
            ok(await first.request(ping("in")), "pong", ping("in"))
            async with await connect(engine) as second:
                rejected(await second.reply(), "MAX_CONNECTIONS")


async def test_idle_connections_do_not_lock_strategies_out(
    config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    """Every slot taken by a connection that says nothing: once they have been idle for
    ipc.idleTimeoutS they are closed, and a strategy gets in again."""
    caplog.set_level(logging.INFO, logger="titan.ipc")
    idle = {"maxConnections": 4, "maxConnectionsPerProcess": 4, "idleTimeoutS": 0.5}
    async with service(config(ipc=idle)) as engine:
        assert engine.ipc is not None
        squatters = [await connect(engine) for _ in range(4)]
        await eventually(lambda: engine.ipc.connections == 4)
        async with await connect(engine) as locked_out:
            rejected(await locked_out.reply(), "MAX_CONNECTIONS")
        for squatter in squatters:
            assert await squatter.at_eof()
            await squatter.aclose()
        async with await connect(engine) as strategy:
            ok(await strategy.request(ping("in")), "pong", ping("in"))
    closed = [r for r in caplog.records if "idle for 0.5 s" in r.getMessage()]
    assert len(closed) == 4 and all(r.levelno == logging.WARNING for r in closed)
    assert all(f"pid {os.getpid()} uid {os.getuid()}" in r.getMessage() for r in closed)


async def test_the_client_library_reconnects_after_an_idle_close(
    config: Callable[..., Config],
) -> None:
    async with service(config(ipc={"idleTimeoutS": 0.3})) as engine:
        assert engine.ipc is not None
        with SignalClient(engine.cfg.ipc.socket_path, timeout=5) as client:
            assert (await trio.to_thread.run_sync(client.ping)).status == "pong"
            await eventually(lambda: engine.ipc.connections == 0)  # closed as idle
            assert (await trio.to_thread.run_sync(client.ping)).status == "pong"


async def test_client_that_disconnects_without_reading_does_not_stop_the_service(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine:
        rude = await connect(engine)
        await rude.send(ping("fire-and-forget"))
        await rude.aclose()
        await trio.sleep(0.05)
        async with await connect(engine) as wire:
            ok(await wire.request(ping("next")), "pong", ping("next"))


async def test_invalid_utf8_inside_a_string_does_not_stop_the_service(
    config: Callable[..., Config],
) -> None:
    async with service(config()) as engine:
        async with await connect(engine) as wire:
            rejected(await wire.request(b'{"type":"\xff"}'), "INVALID_FRAME")
        async with await connect(engine) as wire:
            ok(await wire.request(ping("next")), "pong", ping("next"))


# ----- isolation ------------------------------------------------------------------------


async def test_a_bad_client_and_a_stalled_client_do_not_affect_the_others(
    config: Callable[..., Config],
) -> None:
    cfg = config(
        risk={"allowPyramiding": True, "maxPositions": 10},
        ipc={"maxConnectionsPerProcess": 16},  # every client here is this one process
    )
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    flood = 5000
    async with service(cfg) as engine:
        # One client sends garbage, then holds half a frame.
        bad = await connect(engine)
        await bad.send(b"\x00\x01garbage", b"{{{{", b"[]")
        for reply in await bad.replies(3):
            rejected(reply, "INVALID_FRAME")
        await bad.send_raw(b'{"type":"PING","id":"ha')
        # Another never reads its replies while sending thousands of requests.
        flooder = await connect(engine)
        pings = b"".join(frame(ping(i)) for i in range(flood))

        filled: dict[str, Decimal] = dict.fromkeys(symbols, Decimal(0))
        round_trips: list[float] = []

        async def strategy(n: int) -> None:
            symbol = symbols[n % 3]
            sid = f"iso-{n}"
            async with await connect(engine) as wire:
                started = trio.current_time()
                ok(await wire.request(ping(f"hello-{n}")), "pong", ping(f"hello-{n}"))
                round_trips.append(trio.current_time() - started)
                request = prepare(engine, sid, symbol, stop_pct=10.0)
                ok(await wire.request(request), "prepared", request)
                reply = ok(await wire.request(c := confirm(sid)), "accepted", c)
                assert reply["order_status"] == "FILLED", reply
                filled[symbol] += Decimal(reply["filled_qty"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flooder.send_raw, pings)  # blocks once the service stops reading
            await trio.sleep(0.1)  # let it fill the socket buffers
            with trio.fail_after(10):
                async with trio.open_nursery() as strategies:
                    for n in range(10):
                        strategies.start_soon(strategy, n)
            assert max(round_trips) < 1.0
            # The flooder really was stalled meanwhile: most of its replies are unsent.
            pongs = engine.metrics.registry.get_sample_value(
                "titan_signals_total", {"type": "PING", "outcome": "pong"}
            )
            assert pongs is not None and pongs < flood
            await eventually(
                lambda: all(
                    (rec := engine.shadow.positions.get(s)) is not None
                    and rec.position.size == filled[s]
                    for s in symbols
                )
            )
            # The stalled client loses nothing: every reply is there, in order.
            replies = await flooder.replies(flood, within_s=20)
            assert [r["id"] for r in replies] == list(range(flood))
        # The half frame, completed at last, is an ordinary request.
        await bad.send_raw(b'lf"}\n')
        ok(await bad.reply(), "pong", ping("half"))
        await bad.aclose()
        await flooder.aclose()


# ----- restart --------------------------------------------------------------------------


async def test_prepared_signal_does_not_survive_a_restart(config: Callable[..., Config]) -> None:
    cfg = config()
    async with service(cfg) as engine, await connect(engine) as wire:
        request = prepare(engine, "restart-1")
        ok(await wire.request(request), "prepared", request)

    async with service(cfg) as engine, await connect(engine) as wire:
        reply = await wire.request(c := confirm("restart-1"))
        assert reply["status"] == "rejected", reply
        assert reply["reason"] in ("EXPIRED", "UNKNOWN_SIGNAL")
        rejected(reply, reply["reason"], c)
        again = prepare(engine, "restart-1", rid="again")
        rejected(await wire.request(again), "DUPLICATE_SIGNAL", again)
        assert not engine.shadow.orders and not engine.shadow.positions
        assert engine.broker is not None and not engine.broker.exchange.positions


def put_a_file_at(path: str) -> None:
    """Someone deletes the socket file and leaves something else there."""
    os.unlink(path)
    with open(path, "w") as f:
        f.write("left here by something else")


async def test_health_sees_the_socket_file_gone_or_replaced_and_it_comes_back(
    make_config: Callable[..., Config],
) -> None:
    async with service(make_config()) as engine:
        path = engine.cfg.ipc.socket_path
        async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:

            async def ipc_health() -> tuple[str, str, str]:
                body = (await client.get("/api/health")).json()
                metrics = (await client.get("/metrics")).text
                line = next(
                    m for m in metrics.splitlines()
                    if m.startswith('titan_health_status{component="ipc"}')
                )  # fmt: skip
                return body["ipc"]["status"], body["ipc"]["socket_file"], line.split()[-1]

            assert await ipc_health() == ("healthy", "ours", "1.0")
            put_a_file_at(path)
            assert await ipc_health() == ("unhealthy", "replaced", "0.0")
            os.unlink(path)  # cleared: the service makes its socket again
            await eventually(
                lambda: engine.ipc is not None and engine.ipc.path_state().value == "ours"
            )
            assert await ipc_health() == ("healthy", "ours", "1.0")
            async with await Wire.connect(path) as wire:
                assert (await wire.request({"type": "PING", "id": 1}))["status"] == "pong"
