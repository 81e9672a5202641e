"""The order state machine (SPEC §6) and Order.apply_fill."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from titan_trio.domain.orders import (
    TERMINAL,
    TRANSITIONS,
    Order,
    OrderEventKind,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)
from titan_trio.errors import IllegalTransition

S = OrderStatus
D = Decimal

ALL = list(S)
LEGAL = [(a, b) for a in ALL for b in ALL if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a in ALL for b in ALL if b not in TRANSITIONS[a]]


def make_order(status: OrderStatus = S.PENDING_SUBMIT, qty: str = "1.0") -> Order:
    return Order(
        client_order_id="c-1",
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        qty=D(qty),
        price=D("100"),
        status=status,
        updated_ms=1,
    )


def _ids(pairs: list[tuple[OrderStatus, OrderStatus]]) -> list[str]:
    return [f"{a.value}->{b.value}" for a, b in pairs]


# ----- the table itself ---------------------------------------------------------------


def test_every_status_has_an_entry_and_terminal_states_are_dead_ends() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {s for s, targets in TRANSITIONS.items() if not targets} == set(TERMINAL)
    assert TERMINAL == {S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED, S.DENIED}
    for s in S:
        assert s.is_terminal is (s in TERMINAL)
        assert s.is_open is (s not in TERMINAL)


def test_spec_transitions_are_present() -> None:
    # The ones the service relies on, written out independently of the table.
    expected_legal = [
        (S.PENDING_SUBMIT, S.SUBMITTED),
        (S.PENDING_SUBMIT, S.REJECTED),
        (S.PENDING_SUBMIT, S.DENIED),  # refused by our own checks, never sent
        (S.SUBMITTED, S.ACCEPTED),
        (S.SUBMITTED, S.FILLED),
        (S.ACCEPTED, S.PARTIALLY_FILLED),
        (S.PARTIALLY_FILLED, S.PARTIALLY_FILLED),
        (S.PARTIALLY_FILLED, S.FILLED),
        (S.ACCEPTED, S.PENDING_CANCEL),
        (S.PENDING_CANCEL, S.CANCELED),
        (S.PENDING_CANCEL, S.FILLED),  # cancel lost the race against a fill
        (S.PENDING_CANCEL, S.ACCEPTED),  # cancel refused
    ]
    for a, b in expected_legal:
        assert b in TRANSITIONS[a], f"{a} -> {b}"


# ----- transition() -------------------------------------------------------------------


@pytest.mark.parametrize(("start", "target"), LEGAL, ids=_ids(LEGAL))
def test_legal_transition(start: OrderStatus, target: OrderStatus) -> None:
    order = make_order(start)
    order.transition(target, now_ms=42)
    assert order.status is target
    assert order.history == [start]
    assert order.updated_ms == 42


def test_transition_without_time_keeps_updated_ms() -> None:
    order = make_order()
    order.transition(S.SUBMITTED)
    assert order.updated_ms == 1


@pytest.mark.parametrize(("start", "target"), ILLEGAL, ids=_ids(ILLEGAL))
def test_illegal_transition_raises_and_changes_nothing(
    start: OrderStatus, target: OrderStatus
) -> None:
    order = make_order(start)
    before = copy.deepcopy(order)
    with pytest.raises(IllegalTransition):
        order.transition(target, now_ms=42)
    assert order == before
    assert order.status is start


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (S.FILLED, S.CANCELED),
        (S.PENDING_SUBMIT, S.FILLED),
        (S.PENDING_SUBMIT, S.ACCEPTED),
        (S.CANCELED, S.FILLED),
        (S.EXPIRED, S.ACCEPTED),
        (S.ACCEPTED, S.SUBMITTED),
        (S.ACCEPTED, S.REJECTED),
    ]
    + [(S.REJECTED, s) for s in S],
)
def test_named_illegal_transitions(start: OrderStatus, target: OrderStatus) -> None:
    order = make_order(start)
    with pytest.raises(IllegalTransition, match=f"{start} -> {target}"):
        order.transition(target)
    assert order.status is start
    assert order.history == []


# ----- apply_fill ---------------------------------------------------------------------


def test_partial_then_full_fill_moves_status_and_average_price() -> None:
    order = make_order(S.ACCEPTED, qty="1.0")
    order.apply_fill(D("0.4"), D("100"), now_ms=10)
    assert order.status is S.PARTIALLY_FILLED
    assert order.filled_qty == D("0.4")
    assert order.remaining_qty == D("0.6")
    assert order.avg_fill_price == D("100")
    assert order.updated_ms == 10

    order.apply_fill(D("0.6"), D("110"), now_ms=20)
    # (0.4 * 100 + 0.6 * 110) / 1.0 = (40 + 66) / 1 = 106
    assert order.status is S.FILLED
    assert order.filled_qty == D("1.0")
    assert order.remaining_qty == 0
    assert order.avg_fill_price == D("106")
    assert order.history == [S.ACCEPTED, S.PARTIALLY_FILLED]
    assert order.updated_ms == 20


def test_three_partial_fills_average() -> None:
    order = make_order(S.SUBMITTED, qty="2")
    order.apply_fill(D("0.5"), D("100"))
    order.apply_fill(D("0.5"), D("104"))
    assert order.status is S.PARTIALLY_FILLED
    assert order.avg_fill_price == D("102")
    order.apply_fill(D("1"), D("110"))
    # (50 + 52 + 110) / 2 = 106
    assert order.avg_fill_price == D("106")
    assert order.status is S.FILLED


def test_single_full_fill() -> None:
    order = make_order(S.ACCEPTED, qty="0.010")
    order.apply_fill(D("0.010"), D("30000.1"))
    assert order.status is S.FILLED
    assert order.avg_fill_price == D("30000.1")
    assert order.history == [S.ACCEPTED]


def test_fill_while_cancel_pending_wins_the_race() -> None:
    order = make_order(S.PENDING_CANCEL)
    order.apply_fill(D("1.0"), D("99"))
    assert order.status is S.FILLED


@pytest.mark.parametrize("qty", ["1.1", "1.0000001", "5"])
def test_overfill_is_refused(qty: str) -> None:
    order = make_order(S.ACCEPTED, qty="1.0")
    before = copy.deepcopy(order)
    with pytest.raises(IllegalTransition, match="exceeds remaining"):
        order.apply_fill(D(qty), D("100"))
    assert order == before


def test_overfill_after_partial_is_refused() -> None:
    order = make_order(S.ACCEPTED, qty="1.0")
    order.apply_fill(D("0.4"), D("100"))
    before = copy.deepcopy(order)
    with pytest.raises(IllegalTransition):
        order.apply_fill(D("0.7"), D("100"))
    assert order == before
    assert order.filled_qty == D("0.4")
    assert order.status is S.PARTIALLY_FILLED


@pytest.mark.parametrize("qty", ["0", "-0.1", "-1"])
def test_non_positive_fill_is_refused(qty: str) -> None:
    order = make_order(S.ACCEPTED, qty="1.0")
    before = copy.deepcopy(order)
    with pytest.raises(IllegalTransition, match="not positive"):
        order.apply_fill(D(qty), D("100"))
    assert order == before


@pytest.mark.parametrize("status", [S.PENDING_SUBMIT, S.CANCELED, S.REJECTED, S.EXPIRED])
def test_fill_in_a_state_that_cannot_fill_is_refused(status: OrderStatus) -> None:
    order = make_order(status, qty="1.0")
    before = copy.deepcopy(order)
    with pytest.raises(IllegalTransition):
        order.apply_fill(D("0.5"), D("100"))
    assert order == before


def test_fill_of_filled_order_is_refused() -> None:
    order = make_order(S.ACCEPTED, qty="1.0")
    order.apply_fill(D("1.0"), D("100"))
    before = copy.deepcopy(order)
    with pytest.raises(IllegalTransition):
        order.apply_fill(D("0.1"), D("100"))
    assert order == before


# ----- property -----------------------------------------------------------------------


@given(start=st.sampled_from(ALL), data=st.data())
def test_random_transition_sequences_respect_the_table(
    start: OrderStatus, data: st.DataObject
) -> None:
    order = make_order(start)
    expected_history: list[OrderStatus] = []
    steps = data.draw(st.integers(min_value=0, max_value=25), label="steps")
    for _ in range(steps):
        prev = order.status
        legal = sorted(TRANSITIONS[prev])
        # Mostly walk legal edges (to reach deep states), sometimes try anything.
        if legal and data.draw(st.booleans(), label="legal?"):
            target = data.draw(st.sampled_from(legal), label="target")
        else:
            target = data.draw(st.sampled_from(ALL), label="target")
        try:
            order.transition(target)
        except IllegalTransition:
            assert target not in TRANSITIONS[prev]
            assert order.status is prev
        else:
            assert not prev.is_terminal, f"left terminal {prev} for {target}"
            assert order.status is target
            assert target in TRANSITIONS[prev]
            expected_history.append(prev)
        assert order.history == expected_history
        if prev.is_terminal:
            assert order.status is prev


# ----- events (Order.apply) -------------------------------------------------------------

K = OrderEventKind


def test_a_stale_accepted_after_filled_is_refused_and_changes_nothing() -> None:
    order = make_order(S.SUBMITTED)
    assert order.apply(OrderUpdate(K.FILLED, 5, D("1.0"), D("100")))
    assert order.status is S.FILLED
    before = copy.deepcopy(order)
    assert not order.apply(OrderUpdate(K.ACCEPTED, 6, D("0"), exchange_order_id="x"))
    assert order == before


def test_cumulative_fills_move_status_and_never_go_back() -> None:
    order = make_order(S.SUBMITTED)
    assert order.apply(OrderUpdate(K.ACCEPTED, 2))
    assert order.apply(OrderUpdate(K.FILLED, 3, D("0.4"), D("100")))
    assert order.status is S.PARTIALLY_FILLED and order.filled_qty == D("0.4")
    assert not order.apply(OrderUpdate(K.FILLED, 4, D("0.2"), D("100")))  # an older view
    assert order.filled_qty == D("0.4")
    assert order.apply(OrderUpdate(K.FILLED, 5, D("1.0"), D("100.5")))
    assert order.status is S.FILLED


def test_a_cancel_request_is_pending_until_the_exchange_answers() -> None:
    order = make_order(S.ACCEPTED)
    assert order.apply(OrderUpdate(K.CANCEL_REQUESTED, 2))
    assert order.status is S.PENDING_CANCEL and order.status.is_open
    assert order.apply(OrderUpdate(K.CANCEL_REFUSED, 3))  # the exchange kept it
    assert order.status is S.ACCEPTED
    assert order.apply(OrderUpdate(K.CANCEL_REQUESTED, 4))
    assert order.apply(OrderUpdate(K.FILLED, 5, D("1.0"), D("100")))  # lost the race
    assert order.status is S.FILLED


def test_a_local_refusal_is_denied_not_rejected() -> None:
    order = make_order()
    assert order.apply(OrderUpdate(K.DENIED, 2, reason="trading is HALTED"))
    assert order.status is S.DENIED and order.reject_reason == "trading is HALTED"
    assert not make_order(S.SUBMITTED).apply(OrderUpdate(K.DENIED, 2))  # it was sent


def test_a_snapshot_stands_for_the_event_of_its_status() -> None:
    for status, kind in (
        (S.SUBMITTED, K.SUBMITTED),
        (S.ACCEPTED, K.ACCEPTED),
        (S.PARTIALLY_FILLED, K.FILLED),
        (S.FILLED, K.FILLED),
        (S.PENDING_CANCEL, K.CANCEL_REQUESTED),
        (S.CANCELED, K.CANCELED),
        (S.REJECTED, K.REJECTED),
        (S.EXPIRED, K.EXPIRED),
        (S.DENIED, K.DENIED),
    ):
        assert OrderUpdate.from_snapshot(make_order(status)).kind is kind


updates = st.builds(
    OrderUpdate,
    kind=st.sampled_from(list(K)),
    ts_ms=st.integers(0, 10),
    filled_qty=st.one_of(st.none(), st.sampled_from([D(0), D("0.3"), D("0.6"), D("1.0")])),
)


@given(st.lists(updates, max_size=12))
def test_no_event_sequence_reopens_a_final_order_or_takes_fills_back(
    sequence: list[OrderUpdate],
) -> None:
    order = make_order()
    for update in sequence:
        before = (order.status, order.filled_qty)
        steps = len(order.history)
        applied = order.apply(update)
        if before[0].is_terminal or not applied:
            assert not applied and (order.status, order.filled_qty) == before
        assert order.filled_qty >= before[1]
        path = [*order.history[steps:], order.status]  # every step it took, legal
        for a, b in zip([before[0], *path], path, strict=False):
            assert a is b or b in TRANSITIONS[a]


def test_an_exchange_answer_about_an_unrecorded_send_implies_it_was_sent() -> None:
    order = make_order()  # PENDING_SUBMIT: journaled, the send not recorded
    assert order.apply(OrderUpdate(K.ACCEPTED, 2))
    assert order.status is S.ACCEPTED and order.history == [S.PENDING_SUBMIT, S.SUBMITTED]
    unsent = make_order()
    assert unsent.apply(OrderUpdate(K.EXPIRED, 2, reason="never sent"))
    assert unsent.status is S.EXPIRED and unsent.history == [S.PENDING_SUBMIT]  # no fake send


def test_a_cancel_request_for_an_order_not_yet_sent_is_refused() -> None:
    order = make_order()  # journaled, about to be sent (or denied)
    assert not order.apply(OrderUpdate(K.CANCEL_REQUESTED, 2))
    assert order.status is S.PENDING_SUBMIT
    order.transition(S.DENIED, 3)  # our own gate can still refuse it
