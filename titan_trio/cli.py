"""The ``titan`` command.

``titan run`` starts the service; the API commands (health, equity, positions, orders,
trades, market, risk, and the operator actions pause, resume, flatten, reconcile, breaker
reset) ask the running service's API and print a table or a summary, or its JSON with
``--json`` (ops_client.py, cli_render.py); ``titan signal send`` sends one IPC message
(PREPARE, CONFIRM, ABORT, CLOSE, PING) and prints the reply as JSON (there ``--json``
already names the message to send, so the reply stays JSON: scripts and the tests read
it); ``titan config validate`` checks a file without starting anything. Errors are one
clear line on stderr and an exit code, never a traceback: 1 the service answered but
the state is bad or the request was refused, 2 bad configuration or arguments, 3 the
service cannot be reached (ops_client.EXIT_CODES_HELP, printed by ``titan --help``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from titan_trio import __version__
from titan_trio.clock import iso_utc
from titan_trio.config import Config, default_config_path, ignored_settings, load_config
from titan_trio.credentials_cli import add_commands as add_credentials_commands
from titan_trio.errors import ConfigError, StartupError, TitanError
from titan_trio.ops_client import (
    EXIT_CODES_HELP,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    Unreachable,
    cmd_breaker_reset,
    cmd_equity,
    cmd_flatten,
    cmd_health,
    cmd_market,
    cmd_orders,
    cmd_pause,
    cmd_positions,
    cmd_reconcile,
    cmd_resume,
    cmd_risk,
    cmd_trades,
    exit_code_of,
    print_json,
    request,
)

if TYPE_CHECKING:
    from titan_trio.engine import InstanceLock


def _fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"titan: {message}", file=sys.stderr)
    return code


# ----- run ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from titan_trio.engine import InstanceLock
    from titan_trio.logs import setup_logging

    cfg = load_config(args.config)
    # The instance lock first: a second start is refused before it opens a log or a
    # database, so the running instance's files never hear of it (stderr only).
    lock = InstanceLock(cfg.database.path)
    lock.acquire()
    try:
        try:
            logs = setup_logging(cfg.logging.level, cfg.logging.dir)
        except OSError as exc:
            raise StartupError(
                f"cannot open the log in {cfg.logging.dir}: {exc.strerror} ({exc.filename})"
            ) from None
        try:
            return _run(cfg, args.config, lock)
        finally:
            logs.stop()
    finally:
        lock.release()


def _run(cfg: Config, config_path: str, lock: InstanceLock | None = None) -> int:
    import trio

    from titan_trio.engine import run_service

    log = logging.getLogger("titan")
    log.info("starting titan-execution %s with %s", __version__, config_path)
    for line in ignored_settings(cfg):
        log.warning("%s", line)
    try:
        trio.run(run_service, cfg, lock)
    except BaseException as exc:  # report every leaf once; a traceback only for a bug
        leaves = [e for e in _leaves(exc) if not isinstance(e, KeyboardInterrupt)]
        if not leaves:
            return EXIT_OK
        # What failed in cleanup after the stop began is a consequence: logged first, so
        # that the last line names what stopped the service.
        consequences = [e for e in leaves if _raised_while_stopping(e)]
        for leaf in consequences:
            if isinstance(leaf, TitanError):
                log.error("while stopping: %s", leaf)
            else:
                log.error("while stopping, an unexpected error (a bug): %r", leaf, exc_info=leaf)
        for leaf in leaves:
            if leaf in consequences:
                continue
            if isinstance(leaf, StartupError):
                log.error("start-up failed: %s", leaf)
            elif isinstance(leaf, TitanError):
                log.critical("stopped: %s", leaf)
            else:
                log.critical("stopped by an unexpected error (a bug): %r", leaf, exc_info=leaf)
        return EXIT_FAIL
    return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _raised_while_stopping(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a cancellation (or Ctrl-C) was unwinding: by a
    task's cleanup once the service had begun to stop, not by what stopped it."""
    import trio

    context, seen = exc.__context__, set()
    while context is not None and id(context) not in seen:
        if isinstance(context, (trio.Cancelled, KeyboardInterrupt)):
            return True
        seen.add(id(context))
        context = context.__context__
    return False


# ----- config -------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.path)  # raises ConfigError listing every problem
    for line in ignored_settings(cfg):  # valid, but the operator should know
        print(f"titan: warning: {line}", file=sys.stderr)
    print("OK")
    return EXIT_OK


# ----- restore and database maintenance (maintenance/) ----------------------------------


def cmd_restore(args: argparse.Namespace) -> int:
    from titan_trio.maintenance.restore import run_restore

    cfg = load_config(args.config)
    run_restore(
        cfg,
        list_only=args.list,
        latest=args.latest,
        from_s3_flag=args.from_s3 is not None,
        s3_key=args.from_s3 or None,
        path=args.path,
        confirm=None if args.yes or not sys.stdin.isatty() else _ask,
    )
    return EXIT_OK


def _ask(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_db(args: argparse.Namespace) -> int:
    from titan_trio.maintenance import dbtools

    cfg = load_config(args.config)
    db = dbtools.resolve_db(cfg.database.path)
    if args.db_command == "check":
        report = dbtools.check(db)
        dbtools.print_check(db, report)
        return EXIT_OK if report.ok else EXIT_FAIL
    if args.db_command == "analyze":
        dbtools.analyze(db)
        print(f"analyzed {db}")
    elif args.db_command == "vacuum":
        dbtools.vacuum(db, online=args.online)
    else:
        dbtools.print_stats(dbtools.stats(db))
    return EXIT_OK


# ----- signals over IPC ---------------------------------------------------------------

SIGNAL_TYPES = ("PREPARE", "CONFIRM", "ABORT", "CLOSE", "PING")
# argparse dest -> the flag, for messages that name it
_SIGNAL_FLAGS = {
    "signal_id": "--signal-id",
    "symbol": "--symbol",
    "direction": "--direction",
    "entry_min": "--entry-min",
    "entry_max": "--entry-max",
    "stop_loss": "--stop-loss",
    "take_profit": "--take-profit",
    "confidence": "--confidence",
    "leverage": "--leverage",
    "source": "--source",
    "velocity": "--velocity",
    "trap_type": "--trap-type",
    "reason": "--reason",
}
# per type: (required, optional) flags, by dest
_SIGNAL_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "PREPARE": (
        (
            "symbol",
            "direction",
            "entry_min",
            "entry_max",
            "stop_loss",
            "confidence",
            "leverage",
        ),
        ("take_profit", "signal_id", "source", "velocity", "trap_type"),
    ),
    "CONFIRM": (("signal_id",), ()),
    "ABORT": (("signal_id",), ()),
    "CLOSE": (("symbol",), ("signal_id", "reason")),
    "PING": ((), ()),
}


class _UsageError(Exception):
    pass


def _signal_message(args: argparse.Namespace) -> dict[str, Any]:
    """The message the flags describe; _UsageError names a missing or stray flag."""
    given = [dest for dest in _SIGNAL_FLAGS if getattr(args, dest) is not None]
    if args.json is not None:
        if given:
            raise _UsageError(f"{_SIGNAL_FLAGS[given[0]]} cannot be combined with --json")
        try:
            message = json.loads(args.json)
        except ValueError as exc:
            raise _UsageError(f"--json: not valid JSON ({exc})") from None
        if not isinstance(message, dict):
            raise _UsageError(f"--json: expected a JSON object, got {type(message).__name__}")
        return message
    kind = args.type
    required, optional = _SIGNAL_ARGS[kind]
    missing = [_SIGNAL_FLAGS[d] for d in required if getattr(args, d) is None]
    if missing:
        raise _UsageError(f"--type {kind} needs {', '.join(missing)}")
    stray = [_SIGNAL_FLAGS[d] for d in given if d not in required and d not in optional]
    if stray:
        raise _UsageError(f"{', '.join(stray)} does not apply to --type {kind}")
    if kind == "PING":
        return {"type": "PING"}
    if kind in ("CONFIRM", "ABORT"):
        return {"type": kind, "signal_id": args.signal_id}

    from ipc.client import close_message, prepare_message

    signal_id = args.signal_id
    if signal_id is None:
        signal_id = f"cli-{int(time.time() * 1000)}-{secrets.token_hex(3)}"
        print(f"signal_id: {signal_id}", file=sys.stderr)
    if kind == "CLOSE":
        return close_message(signal_id, args.symbol, args.reason)
    return prepare_message(
        signal_id,
        args.symbol,
        args.direction,
        (args.entry_min, args.entry_max),
        args.stop_loss,
        args.take_profit or [],  # the protocol allows none: the position keeps its stop
        args.confidence,
        args.leverage,
        source=args.source or "cli",
        velocity=args.velocity,
        trap_type=args.trap_type,
    )


# --at-market, as fractions of the mid: the zone is wide enough that the market is still
# in it when a person types the CONFIRM seconds later (execution.prepareTtlMs allows 10 s)
AT_MARKET_ZONE = Decimal("0.005")  # entry zone half-width
AT_MARKET_STOP = Decimal("0.01")  # stop loss distance
AT_MARKET_TARGET = Decimal("0.02")  # take profit distance


def _fill_from_market(args: argparse.Namespace) -> None:
    """--at-market: the PREPARE prices not given, around the service's current mid."""
    if args.type != "PREPARE" or not args.symbol or not args.direction:
        raise _UsageError("--at-market needs --type PREPARE with --symbol and --direction")
    _status, market = request(args, "GET", "/api/market")
    quote = market.get(args.symbol) if isinstance(market, dict) else None
    if quote is None:
        raise _UsageError(f"the service has no market for {args.symbol}")
    mid = (Decimal(str(quote["bid"])) + Decimal(str(quote["ask"]))) / 2
    sign = 1 if args.direction == "LONG" else -1

    def price(offset: Decimal) -> float:
        return float((mid * (1 + offset)).quantize(Decimal("0.00001")))

    if args.entry_min is None:
        args.entry_min = price(-AT_MARKET_ZONE)
    if args.entry_max is None:
        args.entry_max = price(AT_MARKET_ZONE)
    if args.stop_loss is None:
        args.stop_loss = price(-sign * AT_MARKET_STOP)
    if not args.take_profit:
        args.take_profit = [price(sign * AT_MARKET_TARGET)]
    print(
        f"at market: mid {mid.normalize()}, entry {args.entry_min}-{args.entry_max}, stop "
        f"{args.stop_loss}, take profit {', '.join(str(t) for t in args.take_profit)}",
        file=sys.stderr,
    )


REPLY_MOMENTS = ("expires_at", "server_time")  # epoch ms on the wire (PROTOCOL.md)


def _for_people(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply as a person reads it: its moments in ISO 8601 UTC, like the API's and the
    log's (the protocol itself carries epoch milliseconds)."""
    return {
        k: iso_utc(v) if k in REPLY_MOMENTS and isinstance(v, int) else v for k, v in reply.items()
    }


def cmd_signal_send(args: argparse.Namespace) -> int:
    import msgspec

    from ipc.client import (
        IpcClientError,
        IpcConnectError,
        IpcConnectionLost,
        IpcTimeout,
        SignalClient,
    )

    try:
        if args.at_market:
            _fill_from_market(args)
        message = _signal_message(args)
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    cfg = load_config(args.config)
    path = args.socket or cfg.ipc.socket_path
    client = SignalClient(path, cfg.ipc.hmac_secret, timeout=args.timeout)
    try:
        reply = client.request(message)
    except IpcConnectError as exc:
        raise Unreachable(
            f"cannot reach the service at {path}: {exc.detail}; is it running?"
        ) from None
    except IpcTimeout:
        raise Unreachable(
            f"no reply from the service at {path} within {args.timeout:g} s; the request may "
            "have been carried out: check before sending it again with the same signal id"
        ) from None
    except IpcConnectionLost as exc:  # no answer, as for a timeout
        raise Unreachable(f"{exc}; check before sending it again with the same signal id") from None
    except IpcClientError as exc:
        raise TitanError(f"{exc}; check before sending it again with the same signal id") from None
    finally:
        client.disconnect()
    print_json(_for_people(msgspec.to_builtins(reply)))
    return EXIT_FAIL if reply.status == "rejected" else EXIT_OK


# ----- parser -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 with one line, as for bad config
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(message, EXIT_USAGE))


def _utc_day(text: str) -> str:
    """--date: checked here, so a typo is a usage error (exit 2), not an HTTP 400."""
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None
    if len(text) != len("YYYY-MM-DD"):
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}")
    return text


def _trades_limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a whole number 1-1000, got {text!r}")
    return int(text)


def build_parser() -> _Parser:
    parser = _Parser(
        prog="titan",
        description="Titan Execution Service",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
        p.add_argument("--token", help="API bearer token (default: $TITAN_API_TOKEN or api.token)")
        p.add_argument(
            "--json",
            dest="as_json",
            action="store_true",
            help="print the API's JSON answer as it is (every digit of every amount)",
        )

    def api_parser(parent: Any, name: str, text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        api_client(p)
        return p

    p = sub.add_parser("run", help="run the service in the foreground")
    with_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    v = config_sub.add_parser("validate", help="validate a configuration file")
    v.add_argument("path")
    v.set_defaults(func=cmd_config_validate)

    for name, func, text in (
        ("health", cmd_health, "the service's health (exit 1 when unhealthy or still starting)"),
        ("equity", cmd_equity, "equity, P&L, drawdown, phase, trading state and breaker"),
        ("positions", cmd_positions, "open positions with their stops and targets"),
        ("orders", cmd_orders, "open orders"),
        ("market", cmd_market, "the price book: the venue's quote and every feed's"),
        ("risk", cmd_risk, "limits, phase, trading state and the circuit breaker"),
    ):
        p = api_parser(sub, name, text)
        p.set_defaults(func=func)
    p = api_parser(sub, "trades", "closed trades, newest first")
    p.add_argument("--date", type=_utc_day, help="UTC day the trades closed, YYYY-MM-DD")
    p.add_argument("--limit", type=_trades_limit, default=100, help="at most this many (1-1000)")
    p.add_argument("--symbol", help="only this symbol")
    p.set_defaults(func=cmd_trades)

    for name, func, text in (
        ("pause", cmd_pause, "stop new entries (exits still pass)"),
        ("resume", cmd_resume, "allow new entries again"),
        (
            "flatten",
            cmd_flatten,
            "EMERGENCY: cancel all orders, close all positions, halt (exit 1 on errors)",
        ),
        (
            "reconcile",
            cmd_reconcile,
            "compare the account with the broker now; heal and list (exit 1 on errors)",
        ),
    ):
        p = api_parser(sub, name, text)
        p.set_defaults(func=func)
    p = sub.add_parser("breaker", help="the circuit breaker")
    breaker_sub = p.add_subparsers(dest="breaker_command", required=True, parser_class=_Parser)
    b = api_parser(
        breaker_sub,
        "reset",
        "clear a tripped circuit breaker, re-basing peak and day-start equity on now",
    )
    b.add_argument(
        "--reducing",
        action="store_true",
        help="leave trading REDUCING (exits only) instead of ACTIVE",
    )
    b.set_defaults(func=cmd_breaker_reset)

    from titan_trio.maintenance.backup_cli import add_backup_parser

    add_backup_parser(sub, with_config)

    p = sub.add_parser(
        "restore",
        help="restore the database from a backup (the service stopped)",
        description="Restore the database from a backup: verified first (checksum, "
        "decompression, integrity), the current database kept as "
        "<db>.before-restore-<stamp> with its -wal and -shm, then swapped in atomically. "
        "Refused while the service runs. Exit 1 when refused or failed (the database "
        "then is as it was).",
    )
    with_config(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--list", action="store_true", help="list local (and S3) backups")
    which.add_argument("--latest", action="store_true", help="the newest local backup")
    which.add_argument(
        "--from-s3",
        nargs="?",
        const="",
        metavar="KEY",
        help="download from S3 (database.s3): KEY, or the newest",
    )
    which.add_argument("path", nargs="?", help="a backup file, backup-*.db.gz")
    p.add_argument("--yes", action="store_true", help="do not ask on a terminal")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("db", help="database maintenance: check, analyze, vacuum, stats")
    db_sub = p.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    for name, text in (
        ("check", "integrity and foreign keys, read-only (exit 1 on a problem); fine online"),
        ("analyze", "update the query planner's statistics (ANALYZE); fine online"),
        (
            "vacuum",
            "reclaim free pages (VACUUM); refused while the service runs unless --online",
        ),
        ("stats", "table sizes and rows, page size, the WAL and its last checkpoint"),
    ):
        d = db_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        with_config(d)
        d.set_defaults(func=cmd_db)
        if name == "vacuum":
            d.add_argument(
                "--online",
                action="store_true",
                help="vacuum beside the running service: its commits wait for the whole "
                "vacuum (it holds the write lock), and fail after 5 s",
            )

    add_credentials_commands(sub)

    p = sub.add_parser("signal", help="send signals to the service over IPC")
    signal_sub = p.add_subparsers(dest="signal_command", required=True, parser_class=_Parser)
    s = signal_sub.add_parser(
        "send",
        help="send one message and print the reply (exit 1 when rejected)",
        description="Send one IPC message and print the reply as JSON. Exit 0 unless the "
        "reply is 'rejected' (1), the flags are wrong (2) or the service cannot be reached "
        "or does not answer in time (3).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with_config(s)
    s.add_argument("--socket", help="the IPC socket (default: ipc.socketPath of the config)")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--type", type=str.upper, choices=SIGNAL_TYPES, help="message type")
    what.add_argument("--json", metavar="MESSAGE", help="send this JSON object as it is")
    s.add_argument("--signal-id", help="signal id (PREPARE, CLOSE: generated when omitted)")
    s.add_argument("--symbol", help="PREPARE, CLOSE: e.g. BTCUSDT")
    s.add_argument("--direction", type=str.upper, choices=("LONG", "SHORT"), help="PREPARE")
    s.add_argument("--entry-min", type=float, metavar="PRICE", help="PREPARE: entry zone low")
    s.add_argument("--entry-max", type=float, metavar="PRICE", help="PREPARE: entry zone high")
    s.add_argument("--stop-loss", type=float, metavar="PRICE", help="PREPARE")
    s.add_argument(
        "--take-profit",
        type=float,
        action="append",
        metavar="PRICE",
        help="PREPARE: a take-profit price (repeat for several, up to 10; none is allowed)",
    )
    s.add_argument("--confidence", type=float, help="PREPARE: 0-100")
    s.add_argument("--leverage", type=float, help="PREPARE: maximum leverage for the position")
    s.add_argument("--source", help="PREPARE: the sender's name (default: cli)")
    s.add_argument("--velocity", type=float, help="PREPARE (optional)")
    s.add_argument("--trap-type", help="PREPARE (optional)")
    s.add_argument("--reason", help="CLOSE: why (recorded on the trade)")
    s.add_argument(
        "--at-market",
        action="store_true",
        help="PREPARE: take the entry zone, stop loss and take profit not given from the "
        "service's current market (GET /api/market): zone +-0.5 %% around the mid, stop "
        "1 %% and take profit 2 %% from it, on the side the direction needs",
    )
    s.set_defaults(func=cmd_signal_send, url=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # The reader went away (`titan market | head`): what it wanted it has. Later
        # writes, and the flush at exit, go nowhere instead of raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TitanError as exc:
        return _fail(str(exc), exit_code_of(exc))
    except KeyboardInterrupt:
        return EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
