"""The IPC wire protocol (SPEC §5): messages, replies, reason codes, signing, decoding.

Shared by the service and by strategy processes; it imports nothing from the service and
nothing async, so a strategy can use it with plain sockets.

A frame is one line of UTF-8 JSON. Unsigned: the message object. Signed (required when
the service has a secret): ``{"payload": "<message as a JSON string>", "sig": "<hex
HMAC-SHA256 of the payload's UTF-8 bytes>"}``. Decoding never raises: it returns the
message or a ``FrameProblem`` that says which reason code to answer and why.
Unknown fields are refused (a typo in an optional field must not pass silently).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec


class Reason(enum.StrEnum):
    """Why a request was not carried out. Shared by replies, logs and metrics."""

    INVALID_FRAME = "INVALID_FRAME"
    INVALID_SIGNAL = "INVALID_SIGNAL"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    DUPLICATE_SIGNAL = "DUPLICATE_SIGNAL"
    UNKNOWN_SIGNAL = "UNKNOWN_SIGNAL"
    EXPIRED = "EXPIRED"
    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    TRADING_HALTED = "TRADING_HALTED"
    MAX_POSITIONS = "MAX_POSITIONS"
    LEVERAGE_CAP = "LEVERAGE_CAP"
    SIZE_TOO_SMALL = "SIZE_TOO_SMALL"
    L2_STALE = "L2_STALE"
    SPREAD_TOO_WIDE = "SPREAD_TOO_WIDE"
    SLIPPAGE_TOO_HIGH = "SLIPPAGE_TOO_HIGH"
    BROKER_REJECTED = "BROKER_REJECTED"
    RATE_LIMITED = "RATE_LIMITED"
    BUSY = "BUSY"
    MAX_CONNECTIONS = "MAX_CONNECTIONS"


class Status(enum.StrEnum):
    PREPARED = "prepared"
    ACCEPTED = "accepted"
    ABORTED = "aborted"
    CLOSED = "closed"
    PONG = "pong"
    REJECTED = "rejected"


RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | int
SignalId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Symbol = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{2,30}$")]
Price = Annotated[float, msgspec.Meta(gt=0)]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class EntryZone(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min: Price
    max: Price


class Prepare(_Message, tag="PREPARE"):
    id: RequestId
    signal_id: SignalId
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    symbol: Symbol
    direction: Literal["LONG", "SHORT"]
    entry_zone: EntryZone
    stop_loss: Price
    take_profits: Annotated[list[Price], msgspec.Meta(max_length=10)]
    confidence: Annotated[float, msgspec.Meta(ge=0, le=100)]
    leverage: Annotated[float, msgspec.Meta(gt=0, le=200)]
    timestamp: Annotated[int, msgspec.Meta(ge=0)] | None = None  # ms, the strategy's clock
    velocity: Annotated[float, msgspec.Meta(ge=0)] | None = None
    trap_type: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class Confirm(_Message, tag="CONFIRM"):
    id: RequestId
    signal_id: SignalId


class Abort(_Message, tag="ABORT"):
    id: RequestId
    signal_id: SignalId


class Close(_Message, tag="CLOSE"):
    id: RequestId
    signal_id: SignalId
    symbol: Symbol
    reason: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class Ping(_Message, tag="PING"):
    id: RequestId


Message = Prepare | Confirm | Abort | Close | Ping
MESSAGE_TYPES = ("PREPARE", "CONFIRM", "ABORT", "CLOSE", "PING")


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: str
    sig: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class Reply(msgspec.Struct, omit_defaults=True):
    """Every reply. ``reason`` and ``message`` explain a rejection; the other optional
    fields carry the details of success (see PROTOCOL.md). ``latency_us`` is set by the
    listener when the reply is written (-1 only on a reply that was never measured)."""

    id: str | int | None
    status: Status
    signal_id: str | None = None
    reason: Reason | None = None
    message: str | None = None
    # PREPARE
    symbol: str | None = None
    direction: str | None = None
    size: str | None = None
    entry_price: str | None = None
    notional: str | None = None
    risk_usd: str | None = None
    risk_pct: str | None = None
    leverage: str | None = None
    phase: int | None = None
    execution: str | None = None
    expires_at: int | None = None
    # CONFIRM / CLOSE
    client_order_id: str | None = None
    order_status: str | None = None
    filled_qty: str | None = None
    avg_price: str | None = None
    # CLOSE: the symbol's resting entry orders it cancelled first
    cancelled_orders: list[str] | None = None
    # PING
    trading_state: str | None = None
    server_time: int | None = None
    latency_us: int = -1


@dataclass(frozen=True, slots=True)
class FrameProblem:
    """A frame that cannot be carried out: answer ``reason`` with ``message``."""

    reason: Reason
    message: str
    request_id: str | int | None = None
    signal_id: str | None = None


_message_decoder = msgspec.json.Decoder(Message)
_envelope_decoder = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


def sign(payload: str, secret: str) -> str:
    """Lowercase hex HMAC-SHA256 of ``payload``'s UTF-8 bytes under ``secret``."""
    return hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).hexdigest()


def encode_message(message: Message | dict[str, Any], secret: str | None = None) -> bytes:
    """One frame (with its newline) for ``message``, signed when a secret is given."""
    body = _encoder.encode(message)
    if secret is None:
        return body + b"\n"
    payload = body.decode("utf-8")
    return _encoder.encode({"payload": payload, "sig": sign(payload, secret)}) + b"\n"


def encode_reply(reply: Reply) -> bytes:
    return _encoder.encode(reply) + b"\n"


def decode_reply(line: bytes) -> Reply:
    return msgspec.json.decode(line, type=Reply)


def _ids(raw: Any) -> tuple[str | int | None, str | None]:
    """The request and signal ids of a frame that failed validation, for the reply."""
    if not isinstance(raw, dict):
        return None, None
    rid = raw.get("id")
    sid = raw.get("signal_id")
    rid = rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
    if isinstance(rid, str) and len(rid) > 128:
        rid = None
    sid = sid if isinstance(sid, str) and len(sid) <= 64 else None
    return rid, sid


def _validation_message(exc: msgspec.ValidationError, raw: Any) -> str:
    text = str(exc).replace("`", "")
    if "Invalid value" in text and text.endswith("at $.type"):
        kind = raw.get("type") if isinstance(raw, dict) else None
        return f"unknown message type {kind!r}; expected one of {', '.join(MESSAGE_TYPES)}"
    if text == "Object missing required field type":
        return f"missing field 'type'; expected one of {', '.join(MESSAGE_TYPES)}"
    where = ""
    if " - at $." in text:
        text, where = text.split(" - at $.", 1)
        where += "."
    for pattern, wording in (
        (r"^Object missing required field (\S+)$", "missing required field"),
        (r"^Object contains unknown field (\S+)$", "unknown field"),
    ):
        found = re.match(pattern, text)
        if found:
            return f"{where}{found.group(1)}: {wording}"
    if where:
        return f"{where[:-1]}: {text[0].lower()}{text[1:]}"
    return text[0].lower() + text[1:]


def _semantic_problem(msg: Message) -> str | None:
    if isinstance(msg, Prepare):
        numbers = [
            msg.entry_zone.min,
            msg.entry_zone.max,
            msg.stop_loss,
            msg.confidence,
            msg.leverage,
            *msg.take_profits,
        ]
        if msg.velocity is not None:
            numbers.append(msg.velocity)
        if not all(math.isfinite(x) for x in numbers):
            return "numbers must be finite"
        zone = msg.entry_zone
        if zone.min > zone.max:
            return f"entry_zone: min {zone.min} is above max {zone.max}"
        if msg.direction == "LONG":
            if msg.stop_loss >= zone.min:
                return (
                    f"stop_loss: {msg.stop_loss} must be below the entry zone "
                    f"({zone.min}-{zone.max}) for a LONG"
                )
            bad = [tp for tp in msg.take_profits if tp <= zone.max]
            if bad:
                return f"take_profits: {bad[0]} must be above the entry zone for a LONG"
        else:
            if msg.stop_loss <= zone.max:
                return (
                    f"stop_loss: {msg.stop_loss} must be above the entry zone "
                    f"({zone.min}-{zone.max}) for a SHORT"
                )
            bad = [tp for tp in msg.take_profits if tp >= zone.min]
            if bad:
                return f"take_profits: {bad[0]} must be below the entry zone for a SHORT"
    return None


def decode_frame(frame: bytes, secret: str | None = None) -> Message | FrameProblem:
    """Turn one line (without its newline) into a message, or say what is wrong.
    Never raises, whatever the bytes."""
    try:
        return _decode(frame, secret)
    except UnicodeError:  # msgspec checks UTF-8 lazily inside strings
        return FrameProblem(Reason.INVALID_FRAME, "frame is not valid UTF-8")


def _loose(frame: bytes) -> Any:
    """The frame as plain JSON, or None: only to echo ids in a rejection (the stdlib
    parser, which also reads numbers too large for a float, as infinity)."""
    try:
        return json.loads(frame)
    except (ValueError, RecursionError):
        return None


def _decode(frame: bytes, secret: str | None) -> Message | FrameProblem:
    # msgspec.ValidationError is a DecodeError: it must be caught first.
    if secret is not None:
        try:
            envelope = _envelope_decoder.decode(frame)
        except msgspec.ValidationError:
            raw = _loose(frame)
            if raw is None:
                return _undecodable(frame)
            rid, sid = _ids(raw)
            return FrameProblem(
                Reason.UNAUTHENTICATED,
                'frames must be signed: {"payload": "<message JSON>", "sig": "<hex hmac>"}',
                rid,
                sid,
            )
        except msgspec.DecodeError:
            return _undecodable(frame)
        payload = envelope.payload.encode("utf-8")
        expected = sign(envelope.payload, secret)
        if not hmac.compare_digest(expected, envelope.sig):
            rid, sid = _ids(_loose(payload))
            return FrameProblem(
                Reason.UNAUTHENTICATED, "signature does not match the payload", rid, sid
            )
        frame = payload
    try:
        msg = _message_decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raw = _loose(frame)
        if not isinstance(raw, dict):
            kind = "an unreadable value" if raw is None else type(raw).__name__
            return FrameProblem(Reason.INVALID_FRAME, f"a frame must be a JSON object, got {kind}")
        rid, sid = _ids(raw)
        return FrameProblem(Reason.INVALID_SIGNAL, _validation_message(exc, raw), rid, sid)
    except msgspec.DecodeError:
        return _undecodable(frame)
    problem = _semantic_problem(msg)
    if problem is not None:
        return FrameProblem(Reason.INVALID_SIGNAL, problem, msg.id, getattr(msg, "signal_id", None))
    return msg


def _undecodable(frame: bytes) -> FrameProblem:
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return FrameProblem(Reason.INVALID_FRAME, "frame is not valid UTF-8")
    if not frame.strip():
        return FrameProblem(Reason.INVALID_FRAME, "empty frame")
    return FrameProblem(Reason.INVALID_FRAME, "frame is not valid JSON")
