"""The ``titan`` commands that talk to a running service's ops API.

The base URL comes from ``--url`` or the configuration (``api.host``/``api.port`` with the
environment overrides). Operator actions send the bearer token (``--token``,
``TITAN_API_TOKEN`` or ``api.token``) and name the operator (user@host) so the service
logs who did what.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from titan_trio.config import load_config
from titan_trio.errors import TitanError

EXIT_OK, EXIT_FAIL = 0, 1


def print_json(data: Any) -> None:
    """JSON for a person: indented, and every number exactly as the service wrote it."""
    import msgspec

    text = msgspec.json.Encoder(decimal_format="number").encode(data)
    print(msgspec.json.format(text, indent=2).decode())


def base_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    cfg = load_config(args.config)
    host = cfg.api.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.api.port}"


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token", None):
        return args.token
    if os.environ.get("TITAN_API_TOKEN"):
        return os.environ["TITAN_API_TOKEN"]
    if args.url:
        return None
    return load_config(args.config).api.token


def request(
    args: argparse.Namespace, method: str, path: str, params: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One API call; TitanError (one line, no traceback) when it cannot be made or the
    service answers with an error."""
    import httpx

    url = base_url(args) + path
    headers = {}
    if method != "GET":
        token = _token(args)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        headers["X-Titan-Operator"] = f"{getpass.getuser()}@{socket.gethostname()} (titan cli)"
    try:
        response = httpx.request(method, url, params=params, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise TitanError(f"cannot reach the service at {url} ({exc}); is it running?") from None
    if response.status_code == 401:
        problem = "refused the" if "Authorization" in headers else "needs a"
        raise TitanError(
            f"the service {problem} bearer token (HTTP 401): give the service's api.token "
            "with --token, TITAN_API_TOKEN or api.token in --config"
        )
    if response.status_code == 429:
        wait = response.headers.get("Retry-After", "")
        wait = f"{wait} s" if wait.isascii() and wait.isdigit() else "a while"
        raise TitanError(
            "the service refuses operator commands from this address for now, after "
            f"repeated wrong or missing bearer tokens (HTTP 429): check the token, then "
            f"try again in {wait}"
        )
    try:
        body = json.loads(response.text, parse_float=Decimal)  # amounts exactly
    except ValueError:
        raise TitanError(f"{url} answered HTTP {response.status_code} without JSON") from None
    if response.status_code >= 400 and isinstance(body, dict) and "error" in body:
        raise TitanError(f"{body['error']}: {body.get('message', '')}")
    return response.status_code, body


def cmd_health(args: argparse.Namespace) -> int:
    _status, body = request(args, "GET", "/api/health")
    print_json(body)
    return EXIT_OK if body.get("status") in ("healthy", "degraded") else EXIT_FAIL


def simple_get(path: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        _status, body = request(args, "GET", path)
        print_json(body)
        return EXIT_OK

    return command


def cmd_trades(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.date:
        params["date"] = args.date
    if args.symbol:
        params["symbol"] = args.symbol
    _status, body = request(args, "GET", "/api/trades", params)
    print_json(body)
    return EXIT_OK


def _post(path: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        _status, body = request(args, "POST", path)
        print_json(body)
        return EXIT_OK

    return command


def cmd_breaker_reset(args: argparse.Namespace) -> int:
    params = {"trading_state": "REDUCING"} if args.reducing else None
    _status, body = request(args, "POST", "/api/risk/breaker/reset", params)
    print_json(body)
    return EXIT_OK


cmd_pause = _post("/api/trading/pause")
cmd_resume = _post("/api/trading/resume")
cmd_flatten = _post("/api/emergency/flatten-all")
cmd_reconcile = _post("/api/state/reconcile")
