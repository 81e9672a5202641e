"""The ops API against its own description: requests drawn from /api/openapi.json (every
route and method, valid and malformed query parameters, with and without the token, and
routes and methods it does not have) must never get a 5xx, and every JSON answer must fit
the schema the document gives for its status (404 and 405 answer the Error schema).

Built on hypothesis and jsonschema (schemathesis does the same, with more machinery).
The service runs as its own process; requests are plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port
from tests.helpers import spawn, stop, wait_healthy

pytestmark = pytest.mark.slow
TOKEN = "property-token-" + "p" * 24


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("property")
    port = free_port()
    doc = {
        "api": {"port": port, "token": TOKEN},
        "ipc": {"socketPath": str(tmp / "t.sock")},
        "database": {"path": str(tmp / "t.db")},
        "simulation": {"intervalMs": 50},
        "logging": {"dir": str(tmp / "logs")},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(doc))
    proc = spawn(path, tmp)
    try:
        wait_healthy(port, proc)
        url = f"http://127.0.0.1:{port}"
        yield url, httpx.get(f"{url}/api/openapi.json", timeout=5).json()
    finally:
        stop(proc)


def inline(node: Any, components: dict[str, Any]) -> Any:
    """The schema with every $ref replaced by what it names."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return inline(components[ref.rsplit("/", 1)[-1]], components)
        return {k: inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, components) for v in node]
    return node


JUNK = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "-1", "0", "1e9", "2026-02-30", "ACTIVE", "HALTED", "%00", "BTCUSDT"]),
    st.integers(-5, 5000).map(str),
)


def query_for(operation: dict[str, Any]) -> st.SearchStrategy[list[tuple[str, str]]]:
    params = [p["name"] for p in operation.get("parameters", [])]
    names = (
        st.sampled_from([*params, "x", "limit", "date", "_"])
        if params
        else st.sampled_from(["x", "limit", "_"])
    )
    return st.lists(st.tuples(names, JUNK), max_size=3)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_5xx_and_every_answer_fits_its_schema(
    live: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    url, spec = live
    components = spec["components"]["schemas"]
    paths = spec["paths"]
    path = data.draw(st.sampled_from([*paths, "/api/nothing", "/api/state"]), label="path")
    documented = paths.get(path, {})
    method = data.draw(
        st.sampled_from([*(m.upper() for m in documented), "GET", "POST", "PUT", "DELETE"]),
        label="method",
    )
    operation = documented.get(method.lower(), {})
    query = data.draw(query_for(operation), label="query")
    auth = data.draw(st.sampled_from([None, f"Bearer {TOKEN}", "Bearer wrong", "Basic x"]))
    headers = {} if auth is None else {"Authorization": auth}
    answer = httpx.request(method, url + path, params=query, headers=headers, timeout=30)
    assert answer.status_code < 500, (method, path, query, answer.text)
    if "json" not in answer.headers.get("content-type", ""):
        assert path == "/metrics" and answer.status_code == 200
        return
    responses = operation.get("responses", {})
    documented_answer = responses.get(str(answer.status_code))
    if documented_answer is None:
        assert answer.status_code in (404, 405, 429, 401), (method, path, answer.status_code)
        schema = components["Error"]
    else:
        schema = documented_answer["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), inline(schema, components))


def test_every_route_is_described_with_its_answer(live: tuple[str, dict[str, Any]]) -> None:
    _url, spec = live
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert "200" in operation["responses"], (method, path)
            if operation.get("security"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
    assert set(spec["components"]["schemas"]) >= {"Error", "Health", "Equity", "Position", "Risk"}
