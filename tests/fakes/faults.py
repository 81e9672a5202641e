"""The fault plan of the fake exchange: what goes wrong, where, and for how long.

Request faults are keyed by the exact request path (no query) and consumed one request at
a time, so a test says "the next two creates answer 502" and gets exactly that. Two
families differ in what the exchange did:

- *refused* faults (``http_5xx``, ``rate_limit``) answer before anything is carried out,
  like a gateway or a limiter in front of the exchange;
- *after* faults (``lose_ack``, ``delay_ack``, ``server_error_after``) carry the request
  out (order created, matched, streamed) and only then spoil the answer: the ambiguous
  outcomes a client must settle by asking again.

Timed faults (``stall_ws``, ``private_silent``) are deadlines on trio's clock, so tests on
a MockClock can run them too. ``drop_ws`` is an action, not a state, and lives with the
connections (see exchange.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

CHANNELS = ("binance", "bybit_public", "bybit_private")
REFUSED_KINDS = ("http_5xx", "rate_limit")
AFTER_KINDS = ("lose_ack", "delay_ack", "server_error_after")


class FaultError(ValueError):
    """A fault request the fake does not understand (answered 400 on the control API)."""


@dataclass
class RequestFault:
    kind: str
    path: str
    remaining: int
    status: int = 502
    http: bool = False
    seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "remaining": self.remaining,
            "status": self.status,
            "http": self.http,
            "seconds": self.seconds,
        }


@dataclass
class FaultPlan:
    request_faults: list[RequestFault] = field(default_factory=list)
    stalls: dict[str, float] = field(default_factory=dict)
    private_silent_until: float = 0.0
    clock_offset_ms: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    def add_request_fault(self, kind: str, args: dict[str, Any]) -> RequestFault:
        default_path = "/v5/order/create" if kind == "lose_ack" else None
        path = args.get("path", default_path)
        if not isinstance(path, str) or not path.startswith("/"):
            raise FaultError(f"{kind} needs a path such as /v5/order/create")
        fault = RequestFault(
            kind=kind,
            path=path,
            remaining=_positive_int(args.get("count", 1), "count"),
            status=_positive_int(args.get("status", 502), "status"),
            http=bool(args.get("http", False)),
            seconds=_seconds(args.get("seconds", 0.0)),
        )
        self.request_faults.append(fault)
        return fault

    def take(self, path: str, kinds: tuple[str, ...]) -> RequestFault | None:
        """The first armed fault of these kinds on this path, with one use consumed."""
        for fault in self.request_faults:
            if fault.path == path and fault.kind in kinds and fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.request_faults.remove(fault)
                return fault
        return None

    def stall(self, channel: str, seconds: float) -> None:
        for name in _channels(channel):
            self.stalls[name] = trio.current_time() + seconds
        self._wake()

    async def wait_unstalled(self, channel: str) -> None:
        """Return once the channel may send again; a stall changed or cleared while
        waiting is seen at once."""
        while (until := self.stalls.get(channel, 0.0)) > trio.current_time():
            with trio.move_on_at(until):
                await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def private_silent(self) -> bool:
        return self.private_silent_until > trio.current_time()

    def clear(self) -> None:
        self.request_faults.clear()
        self.stalls.clear()
        self.private_silent_until = 0.0
        self.clock_offset_ms = 0
        self._wake()

    def describe(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "requests": [fault.describe() for fault in self.request_faults],
            "stalled": {name: until - now for name, until in self.stalls.items() if until > now},
            "private_silent_s": max(0.0, self.private_silent_until - now),
            "clock_offset_ms": self.clock_offset_ms,
        }


def _channels(channel: str) -> tuple[str, ...]:
    if channel == "all":
        return CHANNELS
    if channel not in CHANNELS:
        raise FaultError(f"unknown channel {channel!r}: one of {', '.join(CHANNELS)} or all")
    return (channel,)


def channels(channel: str) -> tuple[str, ...]:
    """The channels a fault names (``all`` is every one)."""
    return _channels(channel)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultError(f"{name} must be a positive integer")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultError("seconds must be a number >= 0")
    return float(value)
