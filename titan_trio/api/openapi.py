"""OpenAPI 3 description of the ops API, served at /api/openapi.json.

Kept beside the routes it describes; a test checks that every route the app serves is
listed here and nothing else.
"""

from __future__ import annotations

from typing import Any

from titan_trio import __version__


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


_ERROR = _json(
    "Error",
    {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
)
_ARRAY = {"type": "array", "items": {"type": "object"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Titan Execution Service ops API", "version": __version__},
    "paths": {
        "/api/health": {
            "get": {
                "summary": "Health of the service and its components",
                "responses": {"200": _json("healthy or degraded"), "503": _json("unhealthy")},
            }
        },
        "/api/state/equity": {
            "get": {
                "summary": "Equity, balance, P&L, peak, drawdown, phase, trading state",
                "responses": {"200": _json("Equity")},
            }
        },
        "/api/state/positions": {
            "get": {
                "summary": "Open positions",
                "responses": {"200": _json("Positions", _ARRAY)},
            }
        },
        "/api/state/orders": {
            "get": {
                "summary": "Open orders",
                "responses": {"200": _json("Orders", _ARRAY)},
            }
        },
        "/api/market": {
            "get": {
                "summary": "The price book: bid, ask, last, age and source per symbol",
                "responses": {"200": _json("Price book")},
            }
        },
        "/api/trades": {
            "get": {
                "summary": "Closed trades, newest first",
                "parameters": [
                    {
                        "name": "date",
                        "in": "query",
                        "schema": {"type": "string", "format": "date"},
                        "description": "UTC day the trade closed, YYYY-MM-DD",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {"name": "symbol", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("Trades", _ARRAY), "400": _ERROR},
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json("OpenAPI document")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
}
