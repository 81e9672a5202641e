"""The query-string parser on its own: strict values, unknown and repeated parameters
refused with the parameter named, and no input that makes it raise anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from titan_trio.api.query import IsoDate, OneOf, QueryError, WholeNumber, parse_query

SPEC = {
    "date": IsoDate(),
    "limit": WholeNumber(1, 1000, default=100),
    "symbol": OneOf(("BTCUSDT", "ETHUSDT")),
}


def refusal(pairs: list[tuple[str, str]]) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse_query(MultiDict(pairs), SPEC)
    return info.value


def test_defaults_and_good_values() -> None:
    assert parse_query(MultiDict(), SPEC) == {"date": None, "limit": 100, "symbol": None}
    good = [("date", "2024-02-29"), ("limit", "0020"), ("symbol", "ETHUSDT")]
    assert parse_query(MultiDict(good), SPEC) == {
        "date": "2024-02-29",
        "limit": 20,
        "symbol": "ETHUSDT",
    }


@pytest.mark.parametrize(
    "raw",
    ["²", "١٠", "１０", "-5", "+5", " 5", "5 ", "5\n", "1e3", "0", "1001", "9" * 5000, "0x10"],
)
def test_limit_takes_only_ascii_digits_within_bounds(raw: str) -> None:
    error = refusal([("limit", raw)])
    assert error.error == "invalid_limit"
    assert error.message.startswith("limit must be a whole number from 1 to 1000 in ASCII")
    assert len(error.message) < 200  # a long value is cut, not echoed whole


@pytest.mark.parametrize(
    "raw", ["2026-13-01", "2023-02-29", "0000-01-01", "２０２６-01-01", "2026-1-1", "2026-01-01\n"]
)
def test_date_is_an_existing_day_in_ascii_digits(raw: str) -> None:
    error = refusal([("date", raw)])
    assert error.error == "invalid_date" and error.message.startswith("date must be")


def test_symbol_is_one_of_the_configured_ones() -> None:
    error = refusal([("symbol", "btcusdt")])
    assert error.message == "symbol must be one of BTCUSDT, ETHUSDT, got 'btcusdt'"


def test_unknown_repeated_and_empty_parameters_are_refused() -> None:
    unknown = refusal([("limt", "5")])
    assert unknown.error == "unknown_parameter"
    assert unknown.message == (
        "unknown query parameter 'limt'; this endpoint takes: date, limit, symbol"
    )
    with pytest.raises(QueryError) as nothing:
        parse_query(MultiDict([("x", "")]), {})
    assert "this endpoint takes: no query parameters" in nothing.value.message
    assert refusal([("limit", "5"), ("limit", "6")]).message == (
        "limit is given 2 times; give it once"
    )
    assert refusal([("symbol", "")]).error == "invalid_symbol"


@given(st.lists(st.tuples(st.sampled_from(["date", "limit", "symbol"]) | st.text(), st.text())))
def test_any_query_is_parsed_or_refused_with_a_query_error(pairs: list[tuple[str, str]]) -> None:
    try:
        values = parse_query(MultiDict(pairs), SPEC)
    except QueryError as exc:
        assert exc.error == "unknown_parameter" or exc.error.startswith("invalid_")
        return
    assert 1 <= values["limit"] <= 1000


@given(st.text())
def test_a_whole_number_is_exactly_ascii_digits_in_range(raw: str) -> None:
    number = WholeNumber(1, 1000)
    expected = raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 1000
    try:
        assert number.parse("limit", raw) == int(raw) and expected
    except QueryError:
        assert not expected
