"""Decoding one IPC frame (SPEC §5): every message type, every way a frame can be wrong,
and signed frames. The reply to a bad frame must say which reason applies, which field is
wrong and why, and carry the request's id and signal_id whenever they can be read."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipc.protocol import (
    MESSAGE_TYPES,
    Abort,
    Close,
    Confirm,
    FrameProblem,
    Ping,
    Prepare,
    Reason,
    decode_frame,
)

SECRET = "k" * 40

# msgspec.ValidationError is a subclass of msgspec.DecodeError, and decode_frame catches
# DecodeError first: every schema problem is answered INVALID_FRAME "frame is not valid
# JSON" (ids dropped), and in signed mode an unsigned or malformed frame gets INVALID_FRAME
# instead of UNAUTHENTICATED.


def prepare(**changes: Any) -> dict[str, Any]:
    """A valid LONG PREPARE; ``changes`` replace fields (``...`` removes one)."""
    msg: dict[str, Any] = {
        "type": "PREPARE",
        "id": "req-1",
        "signal_id": "sig-1",
        "source": "unit",
        "symbol": "BTCUSDT",
        "direction": "LONG",
        "entry_zone": {"min": 100.0, "max": 101.0},
        "stop_loss": 99.0,
        "take_profits": [103.0, 105.0],
        "confidence": 70,
        "leverage": 5,
        "timestamp": 1_760_000_000_000,
    }
    msg.update(changes)
    return {k: v for k, v in msg.items() if v is not ...}


def short(**changes: Any) -> dict[str, Any]:
    base = {
        "direction": "SHORT",
        "entry_zone": {"min": 100.0, "max": 101.0},
        "stop_loss": 102.0,
        "take_profits": [98.0],
    }
    return prepare(**{**base, **changes})


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode()


def signed(payload: str, secret: str = SECRET) -> bytes:
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"payload": payload, "sig": sig}).encode()


def problem(frame: bytes, secret: str | None = None) -> FrameProblem:
    result = decode_frame(frame, secret)
    assert isinstance(result, FrameProblem), result
    assert result.message, "a rejection must say what was wrong"
    return result


# ----- valid messages -------------------------------------------------------------------


def test_prepare_decodes_with_every_field() -> None:
    msg = decode_frame(encode(prepare(velocity=1.5, trap_type="liquidity_sweep")))
    assert isinstance(msg, Prepare)
    assert (msg.id, msg.signal_id, msg.symbol, msg.direction) == (
        "req-1",
        "sig-1",
        "BTCUSDT",
        "LONG",
    )
    assert (msg.entry_zone.min, msg.entry_zone.max) == (100.0, 101.0)
    assert msg.stop_loss == 99.0
    assert msg.take_profits == [103.0, 105.0]
    assert (msg.confidence, msg.leverage, msg.velocity) == (70, 5, 1.5)
    assert msg.trap_type == "liquidity_sweep"


def test_short_prepare_decodes() -> None:
    msg = decode_frame(encode(short()))
    assert isinstance(msg, Prepare)
    assert msg.direction == "SHORT"
    assert msg.velocity is None and msg.trap_type is None


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"type":"CONFIRM","id":"c1","signal_id":"sig-1"}', Confirm),
        (b'{"type":"ABORT","id":2,"signal_id":"sig-1"}', Abort),
        (b'{"type":"CLOSE","id":"x","signal_id":"sig-2","symbol":"ETHUSDT"}', Close),
        (b'{"type":"CLOSE","id":"x","signal_id":"s:3","symbol":"SOLUSDT","reason":"tp1"}', Close),
        (b'{"type":"PING","id":7}', Ping),
        (b'{"id":"p","type":"PING"}', Ping),  # the tag need not come first
    ],
)
def test_other_message_types_decode(frame: bytes, kind: type) -> None:
    msg = decode_frame(frame)
    assert isinstance(msg, kind)
    assert msg.id == json.loads(frame)["id"]


# ----- INVALID_SIGNAL: every cause names its field --------------------------------------


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        pytest.param(prepare(stop_loss=...), "stop_loss", id="missing"),
        pytest.param(prepare(leverage="5"), "leverage", id="wrong-type"),
        pytest.param(
            prepare(entry_zone={"min": "x", "max": 101.0}),
            "entry_zone",
            id="wrong-type-nested",
        ),
        pytest.param(prepare(colour="red"), "colour", id="unknown-field"),
        pytest.param(prepare(confidence=101), "confidence", id="conf-101"),
        pytest.param(prepare(confidence=-1), "confidence", id="conf-neg"),
        pytest.param(prepare(leverage=0), "leverage", id="leverage-0"),
        pytest.param(prepare(direction="UP"), "direction", id="bad-direction"),
        pytest.param(prepare(signal_id="has space"), "signal_id", id="bad-sid"),
        pytest.param(prepare(stop_loss=100.5), "stop_loss", id="stop-inside-zone-long"),
        pytest.param(prepare(stop_loss=102.0), "stop_loss", id="stop-above-zone-long"),
        pytest.param(short(stop_loss=100.5), "stop_loss", id="stop-inside-zone-short"),
        pytest.param(short(stop_loss=99.0), "stop_loss", id="stop-below-zone-short"),
        pytest.param(prepare(take_profits=[100.5]), "take_profits", id="tp-in-zone-long"),
        pytest.param(prepare(take_profits=[104.0, 90.0]), "take_profits", id="tp-below-long"),
        pytest.param(short(take_profits=[100.5]), "take_profits", id="tp-in-zone-short"),
        pytest.param(short(take_profits=[110.0]), "take_profits", id="tp-above-short"),
        pytest.param(
            prepare(entry_zone={"min": 102.0, "max": 101.0}, stop_loss=100.0, take_profits=[]),
            "entry_zone",
            id="zone-min-above-max",
        ),
    ],
)
def test_invalid_signal_names_the_field_and_echoes_ids(msg: dict[str, Any], field: str) -> None:
    got = problem(encode(msg))
    assert got.reason is Reason.INVALID_SIGNAL, got
    assert field in got.message
    assert got.request_id == "req-1"
    if field != "signal_id":
        assert got.signal_id == msg["signal_id"]


@pytest.mark.parametrize("field", ["stop_loss", "leverage", "confidence"])
def test_non_finite_number_is_invalid_signal_naming_the_field(field: str) -> None:
    frame = encode(prepare(**{field: 12345.0})).replace(b"12345.0", b"1e999")
    got = problem(frame)
    assert got.reason is Reason.INVALID_SIGNAL, got
    assert field in got.message
    assert got.request_id == "req-1"


def test_unknown_type_lists_the_valid_types() -> None:
    got = problem(b'{"type":"BUY","id":"r9","signal_id":"s9"}')
    assert got.reason is Reason.INVALID_SIGNAL, got
    assert "BUY" in got.message
    assert all(kind in got.message for kind in MESSAGE_TYPES)
    assert (got.request_id, got.signal_id) == ("r9", "s9")


def test_missing_type_lists_the_valid_types() -> None:
    got = problem(b'{"id":"r9"}')
    assert got.reason is Reason.INVALID_SIGNAL, got
    assert "type" in got.message
    assert all(kind in got.message for kind in MESSAGE_TYPES)
    assert got.request_id == "r9"


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"CONFIRM","id":42}',
        b'{"type":"PING","id":42,"extra":1}',
        b'{"type":"CLOSE","id":42,"signal_id":"s","symbol":"btc"}',
    ],
)
def test_schema_errors_of_other_types_echo_the_request_id(frame: bytes) -> None:
    got = problem(frame)
    assert got.reason is Reason.INVALID_SIGNAL, got
    assert got.request_id == 42


def test_ids_that_cannot_be_read_are_not_echoed() -> None:
    # true is not a request id (ids are strings or integers): never echoed as one
    got = problem(encode(prepare(id=True, stop_loss=200.0)))
    assert got.request_id is None


# ----- INVALID_FRAME --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"{not json", "JSON"),
        (b'{"type":"PING","id":1', "JSON"),
        (b"\xff", "UTF-8"),
        (b"\xc3\x28", "UTF-8"),
        (b"", "empty"),
        (b"   ", "empty"),
    ],
)
def test_unreadable_frames_are_invalid_frame(frame: bytes, words: str) -> None:
    got = problem(frame)
    assert got.reason is Reason.INVALID_FRAME
    assert words in got.message
    assert got.request_id is None


@pytest.mark.parametrize(
    ("frame", "secret"),
    [
        (b'{"type":"PING","id":"\xff"}', None),
        (b'{"type":"CONFIRM","id":1,"signal_id":"a\xc3\x28"}', None),
        (b'{"payload":"\xff","sig":"' + b"0" * 64 + b'"}', SECRET),
        (b'{"payload":"\xff"}', SECRET),
    ],
)
def test_invalid_utf8_inside_a_string_is_invalid_frame(frame: bytes, secret: str | None) -> None:
    got = problem(frame, secret)
    assert got.reason is Reason.INVALID_FRAME
    assert "UTF-8" in got.message


@pytest.mark.parametrize("frame", [b"[1, 2]", b'"PING"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_invalid_frame(frame: bytes) -> None:
    assert problem(frame).reason is Reason.INVALID_FRAME


def test_json_array_message_says_an_object_is_expected() -> None:
    # Today the answer is "frame is not valid JSON", which is false and misleading.
    assert "object" in problem(b'[{"type":"PING","id":1}]').message


# ----- signed frames --------------------------------------------------------------------


def test_good_signature_is_accepted() -> None:
    msg = decode_frame(signed(json.dumps(prepare())), SECRET)
    assert isinstance(msg, Prepare)
    assert msg.signal_id == "sig-1"


def test_signature_is_over_the_payload_string_exactly() -> None:
    payload = '{"type": "PING",   "id": "spaced"}'
    msg = decode_frame(signed(payload), SECRET)
    assert isinstance(msg, Ping) and msg.id == "spaced"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(signed('{"type":"PING","id":1}', "other" * 8), id="other-secret"),
        pytest.param(
            json.dumps(
                {
                    "payload": '{"type":"PING","id":2}',
                    "sig": json.loads(signed('{"type":"PING","id":1}'))["sig"],
                }
            ).encode(),
            id="payload-changed",
        ),
        pytest.param(
            json.dumps(
                {"payload": '{"type":"PING","id":1}', "sig": "0" * 64},
            ).encode(),
            id="zeros",
        ),
    ],
)
def test_wrong_signature_is_unauthenticated(frame: bytes) -> None:
    got = problem(frame, SECRET)
    assert got.reason is Reason.UNAUTHENTICATED


def test_signature_off_by_one_hex_digit_is_unauthenticated() -> None:
    payload = '{"type":"PING","id":1}'
    good = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
    for position in (0, 31, 63):
        flipped = "0" if good[position] != "0" else "1"
        sig = good[:position] + flipped + good[position + 1 :]
        frame = json.dumps({"payload": payload, "sig": sig}).encode()
        assert problem(frame, SECRET).reason is Reason.UNAUTHENTICATED


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(encode(prepare()), id="unsigned-message"),
        pytest.param(b'{"type":"PING","id":1}', id="unsigned-ping"),
        pytest.param(b'{"payload":"{}"}', id="no-sig"),
        pytest.param(b'{"payload":{"type":"PING"},"sig":"' + b"0" * 64 + b'"}', id="payload-obj"),
        pytest.param(b'{"payload":"{}","sig":"abc"}', id="short-sig"),
        pytest.param(b'{"payload":"{}","sig":"' + b"A" * 64 + b'"}', id="uppercase-sig"),
        pytest.param(b'{"payload":"{}","sig":"' + b"0" * 64 + b'","x":1}', id="extra-key"),
    ],
)
def test_unsigned_or_malformed_envelope_is_unauthenticated(frame: bytes) -> None:
    got = problem(frame, SECRET)
    assert got.reason is Reason.UNAUTHENTICATED, got


def test_unsigned_frame_in_signed_mode_echoes_its_ids() -> None:
    got = problem(encode(prepare()), SECRET)
    assert (got.reason, got.request_id, got.signal_id) == (
        Reason.UNAUTHENTICATED,
        "req-1",
        "sig-1",
    )


def test_signed_frame_with_a_bad_message_inside_is_rejected_after_auth() -> None:
    got = problem(signed(json.dumps(prepare(stop_loss=100.5))), SECRET)
    assert got.reason is Reason.INVALID_SIGNAL
    assert "stop_loss" in got.message


def test_signed_frame_with_non_json_payload_is_invalid_frame() -> None:
    assert problem(signed("not json"), SECRET).reason is Reason.INVALID_FRAME


def test_not_json_in_signed_mode_is_invalid_frame() -> None:
    assert problem(b"{oops", SECRET).reason is Reason.INVALID_FRAME
    assert problem(b"\xff\xfe", SECRET).reason is Reason.INVALID_FRAME


# ----- decoding never raises ------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
message_keys = st.sampled_from(
    ["type", "id", "signal_id", "symbol", "entry_zone", "stop_loss", "leverage", "payload", "sig"]
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, arbitrary JSON, and valid messages with one field damaged."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "big-number"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    msg = prepare() if draw(st.booleans()) else {"type": "PING", "id": 1}
    key = draw(message_keys)
    if kind == "big-number":
        return encode({**msg, key: 7}).replace(b"7", draw(st.sampled_from([b"1e999", b"9" * 400])))
    msg[key] = draw(json_values)
    return encode(msg)


def check_decoded(result: object) -> None:
    if isinstance(result, FrameProblem):
        assert isinstance(result.reason, Reason)
        assert result.message
        assert result.request_id is None or isinstance(result.request_id, (str, int))
        assert result.signal_id is None or isinstance(result.signal_id, str)
    else:
        assert isinstance(result, (Prepare, Confirm, Abort, Close, Ping))


@settings(max_examples=400)
@given(frame=frames(), secret=st.one_of(st.none(), st.just(SECRET)), wrap=st.booleans())
@example(frame=b'{"type":"PING","id":1e999}', secret=None, wrap=False)
@example(frame=b'{"type":"PING","id":1e999}', secret=SECRET, wrap=False)
@example(frame=b'{"type":"PING","id":1e999}', secret=SECRET, wrap=True)
@example(frame=b'{"payload":"x","sig":1e999}', secret=SECRET, wrap=False)
@example(frame=b'{"id":' + b"9" * 5000 + b"}", secret=None, wrap=False)
def test_decode_frame_never_raises_on_utf8_text(
    frame: bytes, secret: str | None, wrap: bool
) -> None:
    """Every frame that is valid UTF-8 (JSON or not) gets a message or a problem."""
    text = frame.decode("utf-8", errors="replace")
    if wrap and secret is not None:
        check_decoded(decode_frame(signed(text, secret), secret))  # past the signature
    check_decoded(decode_frame(text.encode("utf-8"), secret))


@settings(max_examples=400)
@given(frame=frames(), secret=st.one_of(st.none(), st.just(SECRET)))
@example(frame=b'{"type":"PING","id":"\xff"}', secret=None)
def test_decode_frame_never_raises_on_any_bytes(frame: bytes, secret: str | None) -> None:
    check_decoded(decode_frame(frame, secret))
