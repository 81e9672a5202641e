"""Bybit v5 REST (category=linear) on the fake: authentication, per-endpoint rate limits,
the endpoints, and the request faults.

Authentication is checked here from the documented rule alone (EXCHANGES.md): the
signed string is ``timestamp + apiKey + recvWindow + payload``, payload being the raw
query string of a GET or the exact body bytes of a POST, signed with lowercase hex
HMAC-SHA256; a request is accepted when
``server_time - recv_window <= timestamp < server_time + 1000``. Checked in the order
key (10003), timestamp (10002), signature (10004); the 10002 message carries the
server's time the way Bybit writes it.

Choices where the documents leave room:
- Every refusal is HTTP 200 with a retCode (Bybit's envelope); an unknown path is
  HTTP 404 with retCode 10017.
- Rate limits are counted per endpoint for the one account (every key is the same UID),
  in a sliding one-second window on the fake's unshifted clock; a refused request does
  not count. ``X-Bapi-Limit-Reset-Timestamp`` is when the oldest counted request leaves
  the window.
- Stream messages of a request are queued before its answer is written, so a lost or
  delayed answer still has its private messages on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tests.fakes.account import Order, Refusal
from tests.fakes.faults import AFTER_KINDS, REFUSED_KINDS
from tests.fakes.wire import HttpAnswer, HttpRequest

if TYPE_CHECKING:
    from tests.fakes.exchange import FakeExchange

ORDER_LIMIT = 10
QUERY_LIMIT = 50
OTHER_LIMIT = 10
LIMITS = {
    "/v5/order/create": ORDER_LIMIT,
    "/v5/order/amend": ORDER_LIMIT,
    "/v5/order/cancel": ORDER_LIMIT,
    "/v5/order/cancel-all": ORDER_LIMIT,
    "/v5/order/realtime": QUERY_LIMIT,
    "/v5/position/list": QUERY_LIMIT,
    "/v5/account/wallet-balance": QUERY_LIMIT,
}
WINDOW_MS = 1000


class RateLimited(Refusal):
    """10006 from the per-endpoint limiter, with the limit headers to answer with."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        super().__init__(10006, "Too many visits!")
        self.headers = headers


def envelope(code: int, message: str, result: Any, now_ms: int) -> dict[str, Any]:
    return {"retCode": code, "retMsg": message, "result": result, "retExtInfo": {}, "time": now_ms}


class BybitRest:
    def __init__(self, exchange: FakeExchange) -> None:
        self.exchange = exchange
        self.account = exchange.account
        self._windows: dict[str, deque[int]] = {}
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
            ("GET", "/v5/market/time"): self._time,
            ("GET", "/v5/market/instruments-info"): self._instruments,
            ("GET", "/v5/market/tickers"): self._tickers,
            ("POST", "/v5/order/create"): lambda p: _ids(self.account.create(p)),
            ("POST", "/v5/order/amend"): lambda p: _ids(self.account.amend(p)),
            ("POST", "/v5/order/cancel"): lambda p: _ids(self.account.cancel(p)),
            ("POST", "/v5/order/cancel-all"): self._cancel_all,
            ("GET", "/v5/order/realtime"): self._realtime,
            ("GET", "/v5/execution/list"): self._executions,
            ("GET", "/v5/position/list"): self._positions,
            ("POST", "/v5/position/set-leverage"): self._set_leverage,
            ("POST", "/v5/position/trading-stop"): self._trading_stop,
            ("GET", "/v5/account/wallet-balance"): self._wallet,
        }

    async def handle(self, request: HttpRequest) -> HttpAnswer:
        path = request.path
        fault = self.exchange.faults.take(path, REFUSED_KINDS)
        if fault is not None and fault.kind == "http_5xx":
            body = f"<html><body><h1>{fault.status} Bad Gateway</h1></body></html>".encode()
            return HttpAnswer(fault.status, body, [("Content-Type", "text/html")])
        if fault is not None:  # rate_limit
            headers = _limit_headers(
                LIMITS.get(path, OTHER_LIMIT), 0, self.exchange.clock_ms() + 1000
            )
            doc = self._envelope(10006, "Too many visits!", {})
            self._record_refusal(path, Refusal(10006, "Too many visits!"))
            return HttpAnswer.json(doc, 429 if fault.http else 200, headers)
        handler = self.routes.get((request.method, path))
        if handler is None:
            return HttpAnswer.json(
                self._envelope(10017, f"route not found: {request.method} {path}", {}), 404
            )
        headers: list[tuple[str, str]] = []
        try:
            if not path.startswith("/v5/market/"):
                self._authenticate(request)
                headers = self._count(path)
            result = handler(self._params(request))
            answer = HttpAnswer.json(self._envelope(0, "OK", result), headers=headers)
        except Refusal as refusal:
            self._record_refusal(path, refusal)
            if isinstance(refusal, RateLimited):
                headers = refusal.headers
            answer = HttpAnswer.json(
                self._envelope(refusal.code, refusal.message, {}), headers=headers
            )
        self.exchange.flush_account()
        after = self.exchange.faults.take(path, AFTER_KINDS)
        if after is not None and after.kind == "lose_ack":
            answer.drop = True
        elif after is not None and after.kind == "delay_ack":
            answer.delay_s = after.seconds
        elif after is not None:  # server_error_after
            answer = HttpAnswer.json(
                self._envelope(10016, "Internal system error.", {}), headers=headers
            )
        return answer

    def _record_refusal(self, path: str, refusal: Refusal) -> None:
        self.exchange.refused.append(
            {
                "path": path,
                "retCode": refusal.code,
                "retMsg": refusal.message,
                "time": self.exchange.server_ms(),
            }
        )

    def _envelope(self, code: int, message: str, result: Any) -> dict[str, Any]:
        return envelope(code, message, result, self.exchange.server_ms())

    # -- authentication and limits -------------------------------------------------------

    def _authenticate(self, request: HttpRequest) -> None:
        headers = request.headers
        key = headers.get("x-bapi-api-key", "")
        secret = self.exchange.keys.get(key)
        if secret is None:
            raise Refusal(10003, "API key is invalid.")
        timestamp_text = headers.get("x-bapi-timestamp", "")
        window_text = headers.get("x-bapi-recv-window", "5000")
        try:
            timestamp, window = int(timestamp_text), int(window_text)
        except ValueError as exc:
            raise Refusal(
                10002, "invalid request, please check your timestamp and recv_window param"
            ) from exc
        server = self.exchange.server_ms()
        if not server - window <= timestamp < server + 1000:
            raise Refusal(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{timestamp}],server_timestamp[{server}],recv_window[{window}]",
            )
        payload = request.query.encode() if request.method == "GET" else request.body
        signed = f"{timestamp_text}{key}{window_text}".encode() + payload
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("x-bapi-sign", "")):
            raise Refusal(10004, f"error sign! origin_string[{signed.decode(errors='replace')}]")

    def _count(self, path: str) -> list[tuple[str, str]]:
        limit = LIMITS.get(path, OTHER_LIMIT)
        now = self.exchange.clock_ms()
        window = self._windows.setdefault(path, deque())
        while window and window[0] <= now - WINDOW_MS:
            window.popleft()
        if len(window) >= limit:
            raise RateLimited(_limit_headers(limit, 0, window[0] + WINDOW_MS))
        window.append(now)
        return _limit_headers(limit, limit - len(window), window[0] + WINDOW_MS)

    def _params(self, request: HttpRequest) -> dict[str, Any]:
        if request.method == "GET":
            return {k: v[0] for k, v in parse_qs(request.query, keep_blank_values=True).items()}
        try:
            doc = json.loads(request.body)
        except ValueError as exc:
            raise Refusal(10001, "params error: the body is not JSON") from exc
        if not isinstance(doc, dict):
            raise Refusal(10001, "params error: the body must be a JSON object")
        return doc

    # -- endpoints ---------------------------------------------------------------------

    def _time(self, params: dict[str, Any]) -> dict[str, str]:
        now = self.exchange.server_ms()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    def _instruments(self, params: dict[str, Any]) -> dict[str, Any]:
        _category(params)
        symbol = params.get("symbol")
        items = [
            i.as_bybit() for s, i in self.exchange.market.instruments.items() if symbol in (None, s)
        ]
        return {"category": "linear", "list": items, "nextPageCursor": ""}

    def _tickers(self, params: dict[str, Any]) -> dict[str, Any]:
        _category(params)
        symbol = params.get("symbol")
        snapshots = [
            self.exchange.public_snapshot(f"tickers.{s}")["data"]
            for s in self.exchange.market.quotes
        ]
        return {
            "category": "linear",
            "list": [t for t in snapshots if symbol in (None, t["symbol"])],
        }

    def _cancel_all(self, params: dict[str, Any]) -> dict[str, Any]:
        _category(params)
        cancelled = self.account.cancel_all(params)
        return {"list": [_ids(order) for order in cancelled], "success": "1"}

    def _realtime(self, params: dict[str, Any]) -> dict[str, Any]:
        _category(params)
        symbol, order_id, link_id = (
            params.get("symbol"),
            params.get("orderId"),
            params.get("orderLinkId"),
        )
        settle, base = params.get("settleCoin"), params.get("baseCoin")
        if not any((symbol, order_id, link_id, settle, base)):
            raise Refusal(
                10001,
                "params error: symbol, baseCoin, settleCoin, orderId or orderLinkId is required",
            )
        open_only = str(params.get("openOnly", "0"))
        orders = sorted(self.account.orders.values(), key=lambda o: o.created_ms, reverse=True)
        chosen = []
        for order in orders:
            if (order_id and order.order_id != order_id) or (
                link_id and order.order_link_id != link_id
            ):
                continue
            if not (order_id or link_id) and order.is_open != (open_only == "0"):
                continue
            if (symbol and order.symbol != symbol) or (
                base and order.symbol.removesuffix("USDT") != base
            ):
                continue
            if settle and settle != "USDT":
                continue
            chosen.append(order.view())
        page, cursor = _page(chosen, params, default=20, maximum=50)
        return {"category": "linear", "list": page, "nextPageCursor": cursor}

    def _executions(self, params: dict[str, Any]) -> dict[str, Any]:
        _category(params)
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        chosen = []
        for execution in reversed(self.account.executions):
            if params.get("symbol") and execution.symbol != params["symbol"]:
                continue
            if params.get("orderId") and execution.order_id != params["orderId"]:
                continue
            if params.get("orderLinkId") and execution.order_link_id != params["orderLinkId"]:
                continue
            if (start is not None and execution.exec_time < start) or (
                end is not None and execution.exec_time > end
            ):
                continue
            chosen.append(execution.doc)
        page, cursor = _page(chosen, params, default=50, maximum=100)
        return {"category": "linear", "list": page, "nextPageCursor": cursor}

    def _positions(self, params: dict[str, Any]) -> dict[str, Any]:
        _category(params)
        symbol, settle = params.get("symbol"), params.get("settleCoin")
        if symbol:
            if symbol not in self.exchange.market.quotes:
                raise Refusal(10001, "params error: symbol invalid")
            items = [self.account.position_view(symbol)]
        elif settle:
            held = [s for s, p in self.account.positions.items() if p.size and settle == "USDT"]
            items = [self.account.position_view(s) for s in held]
        else:
            raise Refusal(10001, "params error: symbol or settleCoin is required")
        return {"category": "linear", "list": items, "nextPageCursor": ""}

    def _set_leverage(self, params: dict[str, Any]) -> dict[str, Any]:
        self.account.set_leverage(params)
        return {}

    def _trading_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        self.account.trading_stop(params)
        return {}

    def _wallet(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("accountType") != "UNIFIED":
            raise Refusal(10001, "accountType only support UNIFIED")
        return {"list": [self.account.wallet_view()]}


def _ids(order: Order) -> dict[str, str]:
    return {"orderId": order.order_id, "orderLinkId": order.order_link_id}


def _category(params: dict[str, Any]) -> None:
    if params.get("category") != "linear":
        raise Refusal(10001, "params error: category only support linear")


def _int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise Refusal(10001, f"params error: {name} invalid") from exc


def _page(
    items: list[Any], params: dict[str, Any], default: int, maximum: int
) -> tuple[list[Any], str]:
    """Cursor paging: the cursor is the offset of the next page, "" after the last."""
    limit = _int_param(params, "limit") or default
    if not 1 <= limit <= maximum:
        raise Refusal(10001, f"params error: limit must be 1..{maximum}")
    offset = _int_param(params, "cursor") or 0
    page = items[offset : offset + limit]
    return page, str(offset + limit) if offset + limit < len(items) else ""


def _limit_headers(limit: int, remaining: int, reset_ms: int) -> list[tuple[str, str]]:
    return [
        ("X-Bapi-Limit", str(limit)),
        ("X-Bapi-Limit-Status", str(remaining)),
        ("X-Bapi-Limit-Reset-Timestamp", str(reset_ms)),
    ]
