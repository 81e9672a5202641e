"""The reconciler's diff: every kind of difference between the shadow state and the
broker, as a pure function over two snapshots."""

from __future__ import annotations

from decimal import Decimal as D

from tests.state.test_shadow import open_order
from titan_trio.domain.orders import Side
from titan_trio.domain.positions import Position
from titan_trio.state.drift import diff


def pos(symbol: str, size: str, entry: str = "100") -> Position:
    return Position(symbol, D(size), D(entry))


def test_equal_accounts_have_no_difference() -> None:
    held = {"BTCUSDT": pos("BTCUSDT", "0.1")}
    orders = {"c1": open_order("c1", Side.BUY, "s")}
    assert diff(held, dict(held), orders, dict(orders), D(10), D(10)) == []


def test_each_kind_of_difference_is_named_with_both_sides() -> None:
    found = diff(
        {"BTCUSDT": pos("BTCUSDT", "0.1"), "ETHUSDT": pos("ETHUSDT", "1"), "XRP": pos("XRP", "0")},
        {"BTCUSDT": pos("BTCUSDT", "0.3"), "SOLUSDT": pos("SOLUSDT", "-2", "180")},
        {"ours": open_order("ours", Side.BUY, "s")},
        {"theirs": open_order("theirs", Side.SELL, "t")},
        D("10000"),
        D("9999.5"),
    )
    assert [(d.kind, d.key) for d in found] == [
        ("position_size", "BTCUSDT"),
        ("position_only_here", "ETHUSDT"),
        ("position_only_at_broker", "SOLUSDT"),
        ("order_only_here", "ours"),
        ("order_only_at_broker", "theirs"),
        ("balance", "balance"),
    ]
    line = found[0].line()
    assert line.startswith("Reconciliation: position_size BTCUSDT")
    assert "here 0.1 @ 100" in line and "broker 0.3 @ 100" in line
