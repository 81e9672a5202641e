"""OpenAPI 3 description of the ops API, served at /api/openapi.json, generated from the
route table and the answer structs of api/schemas.py: the routes the app serves, their
parameters, answers and refusals come from the same objects the handlers use.

Amounts are Decimals encoded as exact JSON numbers, so their schema is ``number`` (msgspec
would describe a Decimal as a string).
"""

from __future__ import annotations

from typing import Any

import msgspec

from titan_trio import __version__
from titan_trio.api.schemas import ROUTES, Error, Route

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
BAD_QUERY = (
    "An unknown, repeated, empty or malformed query parameter (every endpoint refuses "
    "parameters it does not list)"
)
UNAUTHORIZED = "Missing or wrong bearer token (only when api.token is set)"
THROTTLED = (
    "Too many wrong or missing tokens from this address: refused, token unchecked, for the "
    "seconds in Retry-After"
)


def _numbers(node: Any) -> Any:
    """Decimals as JSON numbers (how the API encodes them)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "decimal":
            return {"type": "number"}
        return {k: _numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers(v) for v in node]
    return node


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_openapi() -> dict[str, Any]:
    types: list[Any] = [Error]
    for route in ROUTES:
        if route.answer is not None:
            types.append(route.answer)
        types += [t for _why, t in route.other.values()]
    found, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(_key, types), _numbers(list(found)), strict=True))
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema_of)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Titan Execution Service ops API", "version": __version__},
        "components": {
            "schemas": _numbers(components),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }


def _key(t: Any) -> str:
    return repr(t)


def _operation(route: Route, schema_of: dict[str, Any]) -> dict[str, Any]:
    if route.answer is None:
        ok = {
            "description": route.summary,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    else:
        ok = _json(route.summary, schema_of[_key(route.answer)])
    responses: dict[str, Any] = {"200": ok, "400": _json(BAD_QUERY, _ERROR_REF)}
    for code, (why, t) in route.other.items():
        responses[str(code)] = _json(why, schema_of[_key(t)])
    operation: dict[str, Any] = {"summary": route.summary, "responses": responses}
    if route.mutating:
        operation["security"] = [{"bearer": []}]
        responses["401"] = _json(UNAUTHORIZED, _ERROR_REF)
        responses["429"] = _json(THROTTLED, _ERROR_REF)
    if route.params:
        operation["parameters"] = [
            {
                "name": p.name,
                "in": "query",
                "required": False,
                "description": p.description,
                "schema": p.schema,
            }
            for p in route.params
        ]
    return operation


OPENAPI: dict[str, Any] = build_openapi()
