"""Bybit v5 at the wire: what is signed is what is sent, the timestamp rule, and what
each answer proves about the order (EXCHANGES.md)."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from titan_trio.brokers.bybit.answers import Outcome, classify
from titan_trio.brokers.bybit.auth import (
    encode_body,
    query_string,
    signature,
    signed_headers,
    verify,
)
from titan_trio.brokers.bybit.clock import MARGIN_MS, ServerClock, accepted

KEY, SECRET = "XXXXXXXXXX", "YYYYYYYYYYYYYYYYYYYY"


def test_the_signature_is_hmac_sha256_of_timestamp_key_window_and_payload() -> None:
    body = encode_body({"category": "linear", "symbol": "BTCUSDT", "qty": "0.01"})
    assert body == b'{"category":"linear","symbol":"BTCUSDT","qty":"0.01"}'
    expected = hmac.new(
        SECRET.encode(), b"1658384314791XXXXXXXXXX5000" + body, hashlib.sha256
    ).hexdigest()
    headers = signed_headers(KEY, SECRET, 1658384314791, body)
    assert headers == {
        "X-BAPI-API-KEY": KEY,
        "X-BAPI-TIMESTAMP": "1658384314791",
        "X-BAPI-RECV-WINDOW": "5000",
        "X-BAPI-SIGN": expected,
        "X-BAPI-SIGN-TYPE": "2",
    }
    query = query_string({"category": "linear", "symbol": "BTCUSDT", "orderLinkId": None})
    assert query == "category=linear&symbol=BTCUSDT"  # what is not given is not sent
    assert signature(SECRET, 1, KEY, 5000, query) == signature(SECRET, 1, KEY, 5000, query.encode())


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=6))
def test_a_body_verifies_exactly_as_sent_and_not_once_changed(params: dict[str, str]) -> None:
    body = encode_body(params)
    headers = signed_headers(KEY, SECRET, 1700000000000, body)
    assert verify(headers, SECRET, body)
    assert not verify(headers, SECRET, body + b" ")  # other bytes: another signature
    assert not verify(headers, SECRET + "x", body)
    assert not verify({**headers, "X-BAPI-TIMESTAMP": "1700000000001"}, SECRET, body)


def test_the_window_refuses_a_clock_ahead_by_a_second_as_well_as_one_behind() -> None:
    server = 1_700_000_000_000
    assert accepted(server, server, 5000)
    assert accepted(server + 999, server, 5000)
    assert not accepted(server + 1000, server, 5000)  # ahead by a second: 10002
    assert accepted(server - 5000, server, 5000)
    assert not accepted(server - 5001, server, 5000)


@given(
    skew=st.integers(-3_600_000, 3_600_000),  # the local clock off by up to an hour
    rtt=st.integers(0, 800),  # the round trip the offset was measured over
    answered_at=st.floats(0, 1),  # where in it the server read its clock
    later=st.integers(0, 60_000),  # a request a minute after the sync
)
def test_timestamps_after_a_sync_are_accepted_whatever_the_local_clock_says(
    skew: int, rtt: int, answered_at: float, later: int
) -> None:
    local_sent = 1_700_000_000_000
    server_at_answer = local_sent + skew + int(rtt * answered_at)
    clock = ServerClock()
    clock.observe(local_sent, server_at_answer, local_sent + rtt)
    now_local = local_sent + rtt + later
    server_now = now_local + skew
    assert accepted(clock.timestamp(now_local), server_now, 5000), (clock, server_now)
    assert abs(clock.skew_ms - skew) <= rtt // 2 + 1
    assert clock.timestamp(now_local) <= server_now - MARGIN_MS + rtt // 2 + 1


def test_what_each_answer_proves_about_the_order() -> None:
    def outcome(status: int, body: object) -> Outcome:
        return classify(status, body).outcome

    ok = {"retCode": 0, "retMsg": "OK", "result": {"orderId": "1", "orderLinkId": "tte1"}}
    assert classify(200, ok).result == {"orderId": "1", "orderLinkId": "tte1"}
    assert outcome(200, ok) is Outcome.OK
    assert outcome(200, {"retCode": 110043, "retMsg": "leverage not modified"}) is Outcome.OK
    refused = classify(200, {"retCode": 110007, "retMsg": "ab not enough for new order"})
    assert (refused.outcome, refused.reason) == (Outcome.REJECTED, "INSUFFICIENT_BALANCE")
    assert refused.proven_not_taken and refused.message.startswith("110007: ")
    assert outcome(200, {"retCode": 110017, "retMsg": "x"}) is Outcome.REJECTED
    assert outcome(200, {"retCode": 110072, "retMsg": "OrderLinkedID is duplicate"}) is (
        Outcome.EXISTS
    )
    # nothing proven: the order stays in flight, settled by its id, never sent again
    for status, body in [
        (200, {"retCode": 10016, "retMsg": "Internal system error"}),
        (502, None),
        (504, "<html>gateway timeout</html>"),
        (200, None),  # a cut answer
        (200, {"result": {}}),  # no retCode
    ]:
        answer = classify(status, body)
        assert answer.outcome is Outcome.AMBIGUOUS and not answer.proven_not_taken, answer
    for status, body in [(429, None), (403, None), (200, {"retCode": 10006, "retMsg": "x"})]:
        assert outcome(status, body) is Outcome.RATE_LIMITED
    assert outcome(200, {"retCode": 10002, "retMsg": "invalid request, check time"}) is (
        Outcome.CLOCK
    )
    assert outcome(200, {"retCode": 10004, "retMsg": "error sign!"}) is Outcome.AUTH
    assert outcome(200, {"retCode": 110001, "retMsg": "order not exists"}) is Outcome.NOT_FOUND
    assert outcome(200, {"retCode": True}) is Outcome.AMBIGUOUS  # not a code
