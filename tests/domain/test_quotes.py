"""The walk of an order through a book's levels, shared by the L2 gate and paper fills."""

from __future__ import annotations

from decimal import Decimal as D

from titan_trio.domain.quotes import LevelTake, walk_levels

ASKS = [(D("100.1"), D("5")), (D("100.2"), D("0")), (D("100.3"), D("5")), (D("100.5"), D("10"))]
BIDS = [(D("99.9"), D("5")), (D("99.8"), D("5"))]


def test_takes_level_by_level_best_first_and_skips_empty_levels() -> None:
    takes, left = walk_levels(ASKS, D("7"), buying=True)
    assert takes == [LevelTake(0, D("100.1"), D("5")), LevelTake(2, D("100.3"), D("2"))]
    assert left == 0


def test_reports_what_the_book_cannot_give() -> None:
    takes, left = walk_levels(BIDS, D("12"), buying=False)
    assert [(t.price, t.qty) for t in takes] == [(D("99.9"), D("5")), (D("99.8"), D("5"))]
    assert left == D("2")


def test_stops_at_the_limit_price() -> None:
    takes, left = walk_levels(ASKS, D("20"), buying=True, limit=D("100.3"))
    assert [(t.price, t.qty) for t in takes] == [(D("100.1"), D("5")), (D("100.3"), D("5"))]
    assert left == D("10")
    takes, left = walk_levels(BIDS, D("8"), buying=False, limit=D("99.9"))
    assert [(t.price, t.qty) for t in takes] == [(D("99.9"), D("5"))]
    assert left == D("3")
    assert walk_levels(ASKS, D("1"), buying=True, limit=D("100.0")) == ([], D("1"))


def test_nothing_asked_nothing_taken() -> None:
    assert walk_levels(ASKS, D("0"), buying=True) == ([], D("0"))
    assert walk_levels([], D("3"), buying=True) == ([], D("3"))
