"""How the API commands fail: one line on stderr, no traceback, and the documented exit
code (0 ok, 1 the service answered "bad" or refused, 2 bad arguments or configuration, 3
the service cannot be reached or did not answer in time).

Answers a live service rarely gives (a 500, a proxy's HTML page, a silent socket) come
from a small HTTP server on loopback that answers what each test tells it to; the
commands against a real service are in tests/integration/test_cli_ops.py."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from tests.test_cli_render import HEALTHY_PAPER
from titan_trio import cli

Canned = dict[tuple[str, str], tuple[int, str, str]]  # (method, path) -> status, type, body


@pytest.fixture
def api() -> Iterator[tuple[str, Canned]]:
    """A base URL and the answers it gives, by (method, path); edit the dict in a test."""
    answers: Canned = {}

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            path = self.path.split("?", 1)[0]
            status, kind, body = answers.get((self.command, path), (404, "text/plain", "?"))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("titan: "), err
    return err


def test_nothing_listening_is_exit_3_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["health"], ["positions", "--json"], ["flatten"], ["breaker", "reset"]):
        code, out, err = run(capsys, *command, "--url", url)
        assert (code, out) == (3, ""), command
        assert one_line(err).startswith(f"titan: cannot reach the service at {url}/api/")
        assert err.rstrip().endswith("is it running?")


def test_a_service_that_does_not_answer_is_exit_3_naming_the_wait(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, out, err = run(capsys, "equity", "--url", url, "--timeout", "0.2")
    assert (code, out) == (3, "")
    assert one_line(err) == (
        f"titan: no answer from the service at {url}/api/state/equity within 0.2 s; is it "
        "overloaded or stuck? (--timeout to wait longer)\n"
    )


def test_error_answers_are_exit_1_with_the_services_message(
    api: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers = api
    answers["GET", "/api/risk"] = (
        500,
        "application/json",
        '{"error":"internal_error","message":"the service failed to answer; see logs"}',
    )
    answers["POST", "/api/trading/resume"] = (
        409,
        "application/json",
        '{"error":"conflict","message":"the circuit breaker is tripped:\\nreset it first"}',
    )
    answers["GET", "/api/state/orders"] = (502, "text/html", "<html>Bad Gateway</html>")
    code, out, err = run(capsys, "risk", "--url", url)
    assert (code, out) == (1, "")
    assert one_line(err) == (
        "titan: internal_error (HTTP 500): the service failed to answer; see logs\n"
    )
    code, out, err = run(capsys, "resume", "--url", url, "--token", "t")
    assert (code, out) == (1, "")
    assert one_line(err) == (
        "titan: conflict (HTTP 409): the circuit breaker is tripped: reset it first\n"
    )
    code, out, err = run(capsys, "orders", "--url", url)
    assert (code, out) == (1, "")
    assert (
        one_line(err) == f"titan: {url}/api/state/orders answered HTTP 502 without a JSON error\n"
    )


def test_unhealthy_prints_the_summary_and_exits_1_with_or_without_json(
    api: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers = api
    body = json.dumps({**HEALTHY_PAPER, "status": "unhealthy"})
    answers["GET", "/api/health"] = (503, "application/json", body)
    code, out, err = run(capsys, "health", "--url", url)
    assert (code, err) == (1, "")
    assert out.startswith("unhealthy (titan 0.1.0")
    code, out, err = run(capsys, "health", "--url", url, "--json")
    assert (code, err) == (1, "")
    assert json.loads(out) == json.loads(body)
    answers["GET", "/api/health"] = (200, "application/json", json.dumps(HEALTHY_PAPER))
    code, out, _err = run(capsys, "health", "--url", url)
    assert code == 0 and out.startswith("healthy")


def test_a_flatten_or_reconciliation_with_errors_exits_1(
    api: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers = api
    answers["POST", "/api/emergency/flatten-all"] = (
        200,
        "application/json",
        '{"cancelled_orders":[],"closed_positions":[],"errors":["cancel tt1: timeout"],'
        '"trading_state":"HALTED","message":"cancelled 0 orders, closed 0 positions"}',
    )
    answers["POST", "/api/state/reconcile"] = (
        200,
        "application/json",
        '{"differences":[],"actions":[],"errors":[],"message":"no differences"}',
    )
    code, out, _err = run(capsys, "flatten", "--url", url)
    assert code == 1 and "error: cancel tt1: timeout" in out
    code, out, _err = run(capsys, "flatten", "--url", url, "--json")
    assert code == 1 and json.loads(out)["errors"] == ["cancel tt1: timeout"]
    code, out, _err = run(capsys, "reconcile", "--url", url)
    assert (code, out) == (0, "no differences\n")


def test_an_answer_of_another_shape_is_shown_as_json_with_a_warning(
    api: tuple[str, Canned], capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers = api
    answers["GET", "/api/state/positions"] = (
        200,
        "application/json",
        '[{"symbol":"BTCUSDT","quantity":0.010}]',
    )
    code, out, err = run(capsys, "positions", "--url", url)
    assert code == 0
    assert json.loads(out) == [{"symbol": "BTCUSDT", "quantity": 0.01}]
    assert '"quantity": 0.010' in out  # the digits as sent
    assert one_line(err).startswith("titan: warning: the answer to /api/state/positions is not")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["trades", "--date", "2026-13-01"], "--date"),
        (["trades", "--date", "20261101"], "--date"),
        (["trades", "--limit", "0"], "--limit"),
        (["trades", "--limit", "1001"], "--limit"),
        (["health", "--url", "ftp://127.0.0.1:1"], "cannot use the URL ftp://127.0.0.1:1"),
        (["equity", "--config", "/nonexistent/titan.json"], "/nonexistent/titan.json"),
    ],
)
def test_bad_arguments_and_configuration_are_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert named in err


def test_the_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["positions", "--help"], ["signal", "send", "--help"]):
        code, out, _err = run(capsys, *argv)
        assert code == 0
        codes = out[out.index("exit codes:") :]
        for line in ("0  done", "1  the service answered", "2  bad arguments", "3  the service"):
            assert line in codes, (argv, line)
