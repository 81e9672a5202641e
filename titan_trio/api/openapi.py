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
_UNAUTHORIZED = _json(
    "Missing or wrong bearer token (only when api.token is set)",
    _ERROR["content"]["application/json"]["schema"],
)
_THROTTLED = _json(
    "Too many wrong or missing tokens from this address: refused, token unchecked, for "
    "the seconds in Retry-After",
    _ERROR["content"]["application/json"]["schema"],
)
_BAD_QUERY = _json(
    "An unknown, repeated, empty or malformed query parameter (every endpoint refuses "
    "parameters it does not list)",
    _ERROR["content"]["application/json"]["schema"],
)


def _mutating(summary: str, ok: str, **extra: Any) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {"200": _json(ok), "401": _UNAUTHORIZED, "429": _THROTTLED, **extra},
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "info": {"title": "Titan Execution Service ops API", "version": __version__},
    "paths": {
        "/api/health": {
            "get": {
                "summary": "Health of the service and its components",
                "responses": {
                    "200": _json("healthy or degraded"),
                    "503": _json(
                        "unhealthy, or starting (the first reconciliation has not finished)"
                    ),
                },
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
                "summary": (
                    "The price book: the venue's bid, ask, last, age and source per "
                    "symbol, and every feed's quote under sources"
                ),
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
                        "description": "ASCII digits",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {
                        "name": "symbol",
                        "in": "query",
                        "description": "one of the configured symbols",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {"200": _json("Trades", _ARRAY)},
            }
        },
        "/api/risk": {
            "get": {
                "summary": "Limits, phase, trading state, breaker state and why it tripped",
                "responses": {"200": _json("Risk")},
            }
        },
        "/api/trading/pause": _mutating(
            "Stop new entries (REDUCING: exits still pass)", "The new trading state"
        ),
        "/api/trading/resume": _mutating(
            "Allow new entries again (ACTIVE)",
            "The new trading state",
            **{"409": _json("The circuit breaker is tripped: reset it first")},
        ),
        "/api/risk/breaker/reset": {
            "post": {
                **_mutating(
                    "Clear a tripped circuit breaker (operator only); peak equity and the "
                    "day's starting equity become the current equity, the losing streak 0",
                    "Whether it was tripped",
                )["post"],
                "parameters": [
                    {
                        "name": "trading_state",
                        "in": "query",
                        "required": False,
                        "description": "the state after the reset (default ACTIVE)",
                        "schema": {"type": "string", "enum": ["ACTIVE", "REDUCING"]},
                    }
                ],
            }
        },
        "/api/state/reconcile": _mutating(
            "Compare the account with the broker now and heal the differences",
            "The differences found and what was done about each",
        ),
        "/api/emergency/flatten-all": _mutating(
            "Cancel every open order, close every position at market, HALT trading",
            "What was cancelled and closed",
        ),
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

for _item in OPENAPI["paths"].values():
    for _operation in _item.values():
        _operation["responses"]["400"] = _BAD_QUERY
