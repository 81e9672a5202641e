"""The fake's control API under ``/fake/`` (plain JSON, no auth), for tests that drive a
fake running in another process:

- ``POST /fake/price`` ``{"symbol", "bid", "ask"?}``: as ``FakeExchange.set_price``;
- ``POST /fake/fault`` ``{"kind", ...args}``: as ``FakeExchange.fault``;
- ``POST /fake/clear``: remove every fault (the account is kept);
- ``GET /fake/state``: ``FakeExchange.state()``.

Mistakes answer HTTP 400 with ``{"error": ...}``; control requests never go through the
exchange's own faults.
"""

from __future__ import annotations

import json
from decimal import InvalidOperation
from typing import TYPE_CHECKING, Any

from tests.fakes.faults import FaultError
from tests.fakes.wire import HttpAnswer, HttpRequest

if TYPE_CHECKING:
    from tests.fakes.exchange import FakeExchange


class ControlApi:
    def __init__(self, exchange: FakeExchange) -> None:
        self.exchange = exchange

    def handle(self, request: HttpRequest) -> HttpAnswer:
        route = (request.method, request.path)
        if route == ("GET", "/fake/state"):
            return HttpAnswer.json(self.exchange.state())
        if route == ("POST", "/fake/clear"):
            self.exchange.fault("clear")
            return HttpAnswer.json({"ok": True})
        if route not in (("POST", "/fake/price"), ("POST", "/fake/fault")):
            return HttpAnswer.json(
                {"error": f"no control route {request.method} {request.path}"}, 404
            )
        try:
            doc = json.loads(request.body or b"{}")
        except ValueError:
            return HttpAnswer.json({"error": "body must be JSON"}, 400)
        if not isinstance(doc, dict):
            return HttpAnswer.json({"error": "body must be a JSON object"}, 400)
        try:
            if request.path == "/fake/price":
                self._price(doc)
            else:
                args: dict[str, Any] = dict(doc)
                kind = args.pop("kind", None)
                if not isinstance(kind, str):
                    raise FaultError("kind is required")
                self.exchange.fault(kind, **args)
        except (FaultError, KeyError, ValueError, InvalidOperation, TypeError) as exc:
            return HttpAnswer.json({"error": str(exc) or type(exc).__name__}, 400)
        return HttpAnswer.json({"ok": True})

    def _price(self, doc: dict[str, Any]) -> None:
        symbol, bid = doc.get("symbol"), doc.get("bid")
        if not isinstance(symbol, str) or bid is None:
            raise ValueError("symbol and bid are required")
        self.exchange.set_price(
            symbol, str(bid), None if doc.get("ask") is None else str(doc["ask"])
        )
