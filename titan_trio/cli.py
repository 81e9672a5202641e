"""The ``titan`` command.

``titan run`` starts the service; the read commands (health, equity, positions, trades,
market) ask the running service's API and print its JSON; ``titan config validate``
checks a file without starting anything. Errors are one clear line on stderr and a
non-zero exit code, never a traceback: 2 for bad configuration or arguments, 1 for
everything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from titan_trio import __version__
from titan_trio.config import Config, default_config_path, load_config
from titan_trio.errors import ConfigError, StartupError, TitanError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"titan: {message}", file=sys.stderr)
    return code


# ----- run ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from titan_trio.engine import run_service
    from titan_trio.logs import setup_logging

    cfg = load_config(args.config)
    setup_logging(cfg.logging.level, cfg.logging.dir)
    log = logging.getLogger("titan")
    log.info("starting titan-execution %s with %s", __version__, args.config)
    try:
        trio.run(run_service, cfg)
    except BaseException as exc:  # report every leaf once; a traceback only for a bug
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return EXIT_OK
        for leaf in leaves:
            if isinstance(leaf, StartupError):
                log.error("start-up failed: %s", leaf)
            elif isinstance(leaf, TitanError):
                log.critical("stopped: %s", leaf)
            elif not isinstance(leaf, KeyboardInterrupt):
                log.critical("stopped by an unexpected error (a bug): %r", leaf, exc_info=leaf)
        return EXIT_FAIL
    return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


# ----- config -------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    load_config(args.path)  # raises ConfigError listing every problem
    print("OK")
    return EXIT_OK


# ----- API clients --------------------------------------------------------------------


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    cfg: Config = load_config(args.config)
    host = cfg.api.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.api.port}"


def _get(args: argparse.Namespace, path: str, params: dict[str, Any] | None = None) -> Any:
    import httpx

    url = _base_url(args) + path
    try:
        response = httpx.get(url, params=params, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise TitanError(f"cannot reach the service at {url} ({exc}); is it running?") from None
    try:
        body = response.json()
    except ValueError:
        raise TitanError(f"{url} answered HTTP {response.status_code} without JSON") from None
    if response.status_code >= 400 and isinstance(body, dict) and "error" in body:
        raise TitanError(f"{body['error']}: {body.get('message', '')}")
    return response.status_code, body


def cmd_health(args: argparse.Namespace) -> int:
    _status, body = _get(args, "/api/health")
    _print_json(body)
    return EXIT_OK if body.get("status") in ("healthy", "degraded") else EXIT_FAIL


def _simple_get(path: str):
    def command(args: argparse.Namespace) -> int:
        _status, body = _get(args, path)
        _print_json(body)
        return EXIT_OK

    return command


def cmd_trades(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.date:
        params["date"] = args.date
    if args.symbol:
        params["symbol"] = args.symbol
    _status, body = _get(args, "/api/trades", params)
    _print_json(body)
    return EXIT_OK


# ----- parser -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 with one line, as for bad config
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(message, EXIT_USAGE))


def build_parser() -> _Parser:
    parser = _Parser(prog="titan", description="Titan Execution Service")
    parser.add_argument("--version", action="version", version=f"titan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            default=default_config_path(),
            help="configuration file (default: $TITAN_CONFIG or config/default.json)",
        )

    def api_client(p: argparse.ArgumentParser) -> None:
        with_config(p)
        p.add_argument("--url", help="the service's API base URL (default: from the config)")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")

    p = sub.add_parser("run", help="run the service in the foreground")
    with_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    v = config_sub.add_parser("validate", help="validate a configuration file")
    v.add_argument("path")
    v.set_defaults(func=cmd_config_validate)

    p = sub.add_parser("health", help="the service's health (exit 1 when unhealthy)")
    api_client(p)
    p.set_defaults(func=cmd_health)
    for name, path, text in (
        ("equity", "/api/state/equity", "equity, P&L and drawdown"),
        ("positions", "/api/state/positions", "open positions"),
        ("orders", "/api/state/orders", "open orders"),
        ("market", "/api/market", "the price book"),
    ):
        p = sub.add_parser(name, help=text)
        api_client(p)
        p.set_defaults(func=_simple_get(path))
    p = sub.add_parser("trades", help="closed trades, newest first")
    api_client(p)
    p.add_argument("--date", help="UTC day the trades closed, YYYY-MM-DD")
    p.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    p.add_argument("--symbol", help="only this symbol")
    p.set_defaults(func=cmd_trades)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TitanError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
