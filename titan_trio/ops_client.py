"""The ``titan`` commands that talk to a running service's ops API.

The base URL comes from ``--url`` or the configuration (``api.host``/``api.port`` with the
environment overrides). Operator actions send the bearer token (``--token``,
``TITAN_API_TOKEN`` or ``api.token``) and name the operator (user@host) so the service
logs who did what.

Each command prints the answer for people (``titan_trio.cli_render``) or, with ``--json``,
exactly the API's JSON (every digit of every amount). Renderers take the API's own typed
structs (``titan_trio.api.schemas``), so a renderer never guesses at a field. An answer
that does not decode into its struct (a service of another version) is printed as JSON
with a one-line warning instead of refusing: an operator who just ran ``titan flatten``
must see what happened whatever the versions. The exit code is judged on the JSON itself,
so it is the same with and without ``--json``, and when the struct does not fit.

Exit codes, the same for every command (``titan --help`` and the README list them):
0 done; 1 the service answered but the state is bad or the request was refused (health
unhealthy or starting, a flatten or reconciliation that reports errors, a rejected
signal, any HTTP 4xx/5xx answer such as a wrong token); 2 bad arguments or
configuration; 3 the service cannot be reached or did not answer in time. 3 is apart
from 1 so that a script or a monitor can tell "the service is down" from "the service
says something is wrong" without reading the message.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from titan_trio import cli_render
from titan_trio.api import schemas
from titan_trio.config import load_config
from titan_trio.errors import TitanError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

EXIT_CODES_HELP = """\
exit codes:
  0  done (health: healthy or degraded)
  1  the service answered, but the state is bad or the request was refused: health
     unhealthy or starting, a flatten or reconciliation with errors, a rejected
     signal, an HTTP 4xx/5xx answer (a wrong or missing token: 401, 429)
  2  bad arguments or configuration
  3  the service cannot be reached or did not answer in time (is it running? check
     --url / api.port, or --socket / ipc.socketPath)"""


class UsageProblem(TitanError):
    """A bad argument found only when it is used (an unusable ``--url``): exit 2."""

    exit_code = EXIT_USAGE


class Unreachable(TitanError):
    """No answer from the service: nothing listens, or it did not answer in time. Exit 3."""

    exit_code = EXIT_UNREACHABLE


def exit_code_of(exc: TitanError) -> int:
    return getattr(exc, "exit_code", EXIT_FAIL)


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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def answer_statuses(method: str, path: str) -> frozenset[int]:
    """The HTTP statuses above 399 whose body is the endpoint's answer, not an error
    (health's 503: unhealthy or starting), from the API's route table."""
    for route in schemas.ROUTES:
        if (route.method, route.path) == (method, path):
            return frozenset(
                status for status, (_why, kind) in route.other.items() if kind is not schemas.Error
            )
    return frozenset()


def fetch(
    args: argparse.Namespace, method: str, path: str, params: dict[str, Any] | None = None
) -> tuple[int, str]:
    """One API call: (HTTP status, body text) of an answer that is not an error (a 2xx,
    or a status the route table gives an answer for). Every failure is a TitanError of
    one line carrying its exit code: Unreachable, UsageProblem, or a plain TitanError
    (exit 1) for an error answer."""
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
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise UsageProblem(f"cannot use the URL {url}: {_one_line(exc)}") from None
    except httpx.TimeoutException:
        raise Unreachable(
            f"no answer from the service at {url} within {args.timeout:g} s; is it "
            "overloaded or stuck? (--timeout to wait longer)"
        ) from None
    except httpx.HTTPError as exc:
        raise Unreachable(
            f"cannot reach the service at {url} ({_one_line(exc)}); is it running?"
        ) from None
    status = response.status_code
    if status == 401:
        problem = "refused the" if "Authorization" in headers else "needs a"
        raise TitanError(
            f"the service {problem} bearer token (HTTP 401): give the service's api.token "
            "with --token, TITAN_API_TOKEN or api.token in --config"
        )
    if status == 429:
        wait = response.headers.get("Retry-After", "")
        wait = f"{wait} s" if wait.isascii() and wait.isdigit() else "a while"
        raise TitanError(
            "the service refuses operator commands from this address for now, after "
            f"repeated wrong or missing bearer tokens (HTTP 429): check the token, then "
            f"try again in {wait}"
        )
    if status >= 400 and status not in answer_statuses(method, path):
        try:
            error = json.loads(response.text)
        except ValueError:
            error = None
        if isinstance(error, dict) and "error" in error:
            detail = " ".join(str(error.get("message", "")).split())
            raise TitanError(f"{error['error']} (HTTP {status}): {detail}")
        raise TitanError(f"{url} answered HTTP {status} without a JSON error")
    return status, response.text


def exact(text: str, url_path: str) -> Any:
    """The answer's JSON with every amount as an exact Decimal (a float would round)."""
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        raise TitanError(f"the service's answer to {url_path} is not JSON") from None


def request(
    args: argparse.Namespace, method: str, path: str, params: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One API call, its JSON read exactly (for callers that need a figure of it)."""
    status, text = fetch(args, method, path, params)
    return status, exact(text, path)


def decode_answer(text: str | bytes, kind: Any) -> Any:
    """The answer as the API's typed struct ``kind``. Numbers in untyped parts (health's
    component details, a breaker's figures) become Decimals too, so they print with the
    digits the service wrote (``7.1200``, not ``7.12``). msgspec.ValidationError when the
    answer does not fit ``kind``."""
    import msgspec

    return msgspec.json.Decoder(kind, float_hook=Decimal).decode(text)


# ----- the commands -------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCommand:
    """One ``titan`` subcommand that makes one API call: what it asks, the typed answer
    it expects, how a person reads it, and when the exit code says "bad"."""

    method: str
    path: str
    answer: Any  # the schemas struct (or list/dict of it) of the 200 answer
    render: Callable[[Any], str]
    failed: Callable[[Any], bool] = lambda _body: False  # on the JSON: "bad" means exit 1
    params: Callable[[argparse.Namespace], dict[str, Any] | None] = lambda _args: None

    def __call__(self, args: argparse.Namespace) -> int:
        import msgspec

        _status, text = fetch(args, self.method, self.path, self.params(args))
        body = exact(text, self.path)
        if args.as_json:
            print_json(body)
        else:
            try:
                typed = decode_answer(text, self.answer)
            except msgspec.ValidationError as exc:
                print(
                    f"titan: warning: the answer to {self.path} is not what this titan reads "
                    f"({exc}; another version?): printed as JSON",
                    file=sys.stderr,
                )
                print_json(body)
            else:
                print(self.render(typed))
        return EXIT_FAIL if self.failed(body) else EXIT_OK


def _field(body: Any, key: str) -> Any:
    return body.get(key) if isinstance(body, dict) else None


def _trades_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": args.limit}
    if args.date:
        params["date"] = args.date
    if args.symbol:
        params["symbol"] = args.symbol
    return params


def _breaker_params(args: argparse.Namespace) -> dict[str, Any] | None:
    return {"trading_state": "REDUCING"} if args.reducing else None


cmd_health = ApiCommand(
    "GET",
    "/api/health",
    schemas.Health,
    cli_render.render_health,
    failed=lambda body: _field(body, "status") not in ("healthy", "degraded"),
)
cmd_equity = ApiCommand("GET", "/api/state/equity", schemas.Equity, cli_render.render_equity)
cmd_positions = ApiCommand(
    "GET", "/api/state/positions", list[schemas.Position], cli_render.render_positions
)
cmd_orders = ApiCommand(
    "GET", "/api/state/orders", list[schemas.OpenOrder], cli_render.render_orders
)
cmd_market = ApiCommand(
    "GET", "/api/market", dict[str, schemas.MarketQuote], cli_render.render_market
)
cmd_risk = ApiCommand("GET", "/api/risk", schemas.Risk, cli_render.render_risk)
cmd_trades = ApiCommand(
    "GET", "/api/trades", list[schemas.Trade], cli_render.render_trades, params=_trades_params
)
cmd_pause = ApiCommand(
    "POST", "/api/trading/pause", schemas.TradingStateAnswer, cli_render.render_trading_state
)
cmd_resume = ApiCommand(
    "POST", "/api/trading/resume", schemas.TradingStateAnswer, cli_render.render_trading_state
)
cmd_breaker_reset = ApiCommand(
    "POST",
    "/api/risk/breaker/reset",
    schemas.BreakerReset,
    cli_render.render_breaker_reset,
    params=_breaker_params,
)


cmd_flatten = ApiCommand(
    "POST",
    "/api/emergency/flatten-all",
    schemas.Flattened,
    cli_render.render_flattened,
    failed=lambda body: bool(_field(body, "errors")),
)
cmd_reconcile = ApiCommand(
    "POST",
    "/api/state/reconcile",
    schemas.Reconciled,
    cli_render.render_reconciled,
    failed=lambda body: bool(_field(body, "errors")),
)
