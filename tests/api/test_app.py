"""The ops API's query strings through the real service on loopback: one strict parser
for every endpoint, a 400 naming the parameter for anything else, and no query string
that makes any endpoint answer 5xx."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import service
from titan_trio.api.app import PROBES, query_specs
from titan_trio.api.openapi import OPENAPI
from titan_trio.config import Config

ROUTES = sorted(
    (method.upper(), path) for path, item in OPENAPI["paths"].items() for method in item
)


def assert_refused(response: httpx.Response, error: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == error, body
    for word in words:
        assert word in body["message"], body


async def test_digits_of_other_scripts_are_refused_with_400(
    make_config: Callable[..., Config],
) -> None:
    async with (
        service(make_config()) as engine,
        httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client,
    ):
        for limit in ("²", "١٠", "１０"):
            response = await client.get("/api/trades", params={"limit": limit})
            assert_refused(response, "invalid_limit", "limit must be", "ASCII digits")
        response = await client.get("/api/trades", params={"date": "٢٠٢٦-٠١-٠١"})
        assert_refused(response, "invalid_date", "date must be", "YYYY-MM-DD")
        response = await client.post(
            "/api/risk/breaker/reset", params={"trading_state": "reducing"}
        )
        assert_refused(response, "invalid_trading_state", "one of ACTIVE, REDUCING")
        assert (await client.get("/api/trades", params={"limit": "10"})).json() == []


async def test_every_endpoint_refuses_unknown_parameters(
    make_config: Callable[..., Config],
) -> None:
    async with (
        service(make_config()) as engine,
        httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client,
    ):
        for method, path in ROUTES:
            response = await client.request(method, path, params={"limt": "5"})
            if path in PROBES:  # a monitor's cache-buster must not turn a probe red
                assert response.status_code == 200, (path, response.text)
            else:
                assert_refused(response, "unknown_parameter", "'limt'", "this endpoint takes")
        assert not engine.shadow.orders and engine.risk.trading_state.value == "ACTIVE"


def test_the_parameters_parsed_are_the_ones_described() -> None:
    specs = query_specs(["BTCUSDT"])
    for _method, path in ROUTES:
        described = [
            p["name"]
            for operation in OPENAPI["paths"][path].values()
            for p in operation.get("parameters", [])
        ]
        assert sorted(described) == sorted(specs.get(path, {})), path


# Digits of any script: "١٠" is decimal (int() reads it), "²" only a digit (int() fails).
_DIGITS = st.text(st.characters(categories=["Nd", "No"]).filter(str.isdigit), min_size=1)
_VALUES = (
    _DIGITS
    | st.integers(-5, 2000).map(str)
    | st.text(max_size=12)
    | st.sampled_from(["2026-02-29", "2026-01-01", "BTCUSDT", "REDUCING", "%ZZ", "%FF", ""])
)
_NAMES = st.text(max_size=8)
_RAW = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"))


def encoded(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='%')}={quote(v, safe='%')}" for k, v in pairs)


def query_cases() -> list[tuple[str, str, st.SearchStrategy[str], int]]:
    """(method, path, query strings, examples): for every endpoint, any query string; and
    for each parameter it takes, that parameter alone with any value (so that a bad value
    is not hidden behind an unknown name in the same query)."""
    specs = query_specs(["BTCUSDT"])
    cases = []
    for method, path in ROUTES:
        names = st.sampled_from(sorted(specs[path])) | _NAMES if path in specs else _NAMES
        anything = st.lists(st.tuples(names, _VALUES), max_size=4).map(encoded) | _RAW
        cases.append((method, path, anything, 30))
        for name in specs.get(path, {}):
            alone = _VALUES.map(lambda value, name=name: encoded([(name, value)]))
            cases.append((method, path, alone, 100))
    return cases


def never_5xx(
    client: httpx.Client, method: str, path: str, queries: st.SearchStrategy[str], examples: int
) -> set[int]:
    """The status codes ``path`` answered to ``examples`` query strings; fails on a 5xx."""
    answered: set[int] = set()

    @settings(max_examples=examples)
    @given(query=queries)
    def check(query: str) -> None:
        response = client.request(method, f"{path}?{query}")
        answered.add(response.status_code)
        assert response.status_code < 500, (method, path, query, response.text)
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "message"}

    check()
    return answered


async def test_no_query_string_makes_an_endpoint_answer_5xx(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="titan.api")
    async with service(make_config()) as engine:
        base_url = engine.api_url
        assert base_url is not None

        def check_every_endpoint() -> set[int]:
            answered: set[int] = set()
            with httpx.Client(base_url=base_url, timeout=10) as client:
                for case in query_cases():
                    answered |= never_5xx(client, *case)
            return answered

        answered = await trio.to_thread.run_sync(check_every_endpoint)
    assert 400 in answered and 200 in answered
    assert "API error" not in caplog.text
