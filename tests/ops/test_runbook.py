"""ops/RUNBOOK.md: every command in it is checked, and every one that can run here runs.

How the commands are read: each fenced ```bash block is split into commands by a small
shell lexer (quotes, ``$(...)``, subshells and backslash continuations keep a command
whole, so a multi-line SQL string or jq filter is one command). A command ending in a
``# needs: X`` comment is skipped when run; the markers are the runbook's own table
(``MARKERS``), an unknown one is a failure, and ``tool:NAME`` skips only where NAME is
not installed (CI may lack procps or iproute2). The skipped commands are counted and
printed.

Static checks, on every command, skipped ones included (fast, not slow):
- every table named in a ``sqlite3`` command exists in the schema the service creates;
- every ``$API/...`` path is a route of ``titan_trio/api/schemas.py`` ROUTES;
- every ``titan`` subcommand exists in ``titan --help``, except those of issue 13
  (``backup``, ``restore``, ``db``, ``credentials``), which must be marked
  ``# needs: issue-13``; a marked command whose subcommand exists by now fails, so the
  marker is removed when issue 13 lands;
- every ``curl`` fails on an HTTP error (``-f`` or ``--fail-with-body``);
- the alert sections carry exactly the headings the alert rules link to.

Run (slow): a service as a process of its own (loopback port, api.token set, simulated
market), an installation directory as the runbook expects (``TITAN_HOME`` with ``.venv``
and ``ops``), one backup in ``database.backupDir``. Each block runs as one bash script,
``set -euo pipefail``, after the variables block, with only ``TITAN_HOME``,
``TITAN_CONFIG`` and ``TITAN_DATA`` set: the rest (DB, API, TOKEN, ...) is derived by the
runbook's own header from the configuration, so that derivation is tested too. Before
each block the test puts the service back as a block expects it: trading ACTIVE (an
earlier block may have flattened or paused) and a BTCUSDT position open (opened with
``titan signal send --type PREPARE --at-market`` and CONFIRM). A block fails on a
non-zero exit, or output naming a missing endpoint, table or file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import spawn, stop, wait_healthy
from titan_trio.api.schemas import ROUTES
from titan_trio.state.schema import open_database

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "ops" / "RUNBOOK.md"
TOKEN = "runbook-test-token-0123456789abcdef"
BLOCK_TIMEOUT_S = 120
SYMBOL = "BTCUSDT"  # the position the runbook's commands find open (its CLOSE names it)

MARKERS = {
    "pm2",
    "systemd",
    "internet",
    "prometheus",
    "interactive",
    "stopped-service",
    "issue-13",
}
ISSUE_13 = {"backup", "restore", "db", "credentials"}
ALERT_HEADINGS = [
    "## Alert: WebSocket disconnected",
    "## Alert: Order fill rate low",
    "## Alert: Order latency high",
    "## Alert: Drawdown high",
    "## Alert: System unhealthy",
    "## Alert: Backup stale",
]
# Output that means a command referred to something that does not exist, even where the
# command itself exited 0 (a pipeline's last stage, a `|| true`).
MISSING = ("no endpoint", "no such table", "No such file or directory")


# ----- reading the runbook ----------------------------------------------------------------


@dataclass
class Command:
    code: str  # the command without comments
    text: str  # as written
    needs: str | None  # the marker, if any


@dataclass
class Block:
    heading: str
    text: str
    commands: list[Command]


_NEEDS = re.compile(r"needs:\s*(\S+)")


def split_commands(script: str) -> list[Command]:
    """The commands of a block: one per line at the top level, a line continued by a
    backslash or inside quotes, ``$(...)`` or ``( ... )`` belonging to its command.
    Comments are dropped from ``code``; the last ``needs:`` comment is the marker."""
    commands: list[Command] = []
    code: list[str] = []
    text: list[str] = []
    comments: list[str] = []
    stack: list[str] = []  # open contexts: '"', "$(", "("
    i, n = 0, len(script)

    def flush() -> None:
        body = "".join(code).strip()
        if body:
            needs = None
            for comment in comments:
                if found := _NEEDS.search(comment):
                    needs = found.group(1)
            commands.append(Command(body, "".join(text).strip(), needs))
        code.clear()
        text.clear()
        comments.clear()

    while i < n:
        c = script[i]
        top = stack[-1] if stack else None
        if c == "\\" and i + 1 < n:
            pair = script[i : i + 2]
            code.append(" " if pair == "\\\n" else pair)
            text.append(pair)
            i += 2
            continue
        if top == '"':
            if c == '"':
                stack.pop()
            elif script.startswith("$(", i):
                stack.append("$(")
                code.append("$(")
                text.append("$(")
                i += 2
                continue
            code.append(c)
            text.append(c)
            i += 1
            continue
        if c == "'":
            end = script.index("'", i + 1)
            code.append(script[i : end + 1])
            text.append(script[i : end + 1])
            i = end + 1
            continue
        if c == "#" and (i == 0 or script[i - 1] in " \t\n;(|&"):
            end = script.find("\n", i)
            end = n if end == -1 else end
            comments.append(script[i:end])
            text.append(script[i:end])
            i = end
            continue
        if c == '"':
            stack.append('"')
        elif script.startswith("$(", i):
            stack.append("$(")
            code.append("$(")
            text.append("$(")
            i += 2
            continue
        elif c == "(":
            stack.append("(")
        elif c == ")" and top in ("$(", "("):
            stack.pop()
        elif c == "\n" and not stack:
            flush()
            i += 1
            continue
        code.append(c)
        text.append(c)
        i += 1
    assert not stack, f"unbalanced {stack[-1]!r} in a runbook block:\n{script}"
    flush()
    return commands


def read_blocks() -> list[Block]:
    blocks: list[Block] = []
    heading = ""
    lines = RUNBOOK.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"#{1,6} ", line):
            heading = line
        if line.strip() == "```bash":
            end = lines.index("```", i + 1)
            body = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(heading, body, split_commands(body)))
            i = end
        i += 1
    return blocks


def all_commands() -> list[Command]:
    return [command for block in read_blocks() for command in block.commands]


def skipped_because(command: Command) -> str | None:
    """Why the command is not run here, or None when it runs."""
    if command.needs is None:
        return None
    if command.needs.startswith("tool:"):
        name = command.needs.removeprefix("tool:")
        return None if shutil.which(name) else command.needs
    return command.needs


# ----- static checks ------------------------------------------------------------------------


def test_the_lexer_keeps_quoted_and_continued_lines_in_one_command() -> None:
    script = (
        'a "x\ny" # c1\n'
        "b \\\n  c # needs: pm2\n"
        "( umask 077\n  d )\n"
        'e "$(f "g" \'h)\')"\n'
        "# only a comment\n"
    )
    commands = split_commands(script)
    assert [c.code for c in commands] == [
        'a "x\ny"',
        "b    c",
        "( umask 077\n  d )",
        'e "$(f "g" \'h)\')"',
    ]
    assert [c.needs for c in commands] == [None, "pm2", None, None]


def test_every_marker_is_known() -> None:
    unknown = {
        c.needs
        for c in all_commands()
        if c.needs is not None and c.needs not in MARKERS and not c.needs.startswith("tool:")
    }
    assert not unknown, f"unknown markers in ops/RUNBOOK.md: {sorted(unknown)}"
    # a marker is a comment on a command, never in the middle of one
    for command in all_commands():
        if command.needs is not None:
            assert command.text.rstrip().endswith(f"needs: {command.needs}"), command.text


def test_the_alert_sections_have_the_headings_the_rules_link_to() -> None:
    lines = RUNBOOK.read_text().splitlines()
    alerts = [line for line in lines if line.startswith("## Alert:")]
    assert alerts == ALERT_HEADINGS


def schema_tables(tmp_path: Path) -> set[str]:
    entities = open_database(str(tmp_path / "schema.db"))
    entities.db.disconnect()
    with sqlite3.connect(tmp_path / "schema.db") as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+([A-Za-z_]\w*)", re.IGNORECASE)


def test_every_table_the_runbook_queries_exists(tmp_path: Path) -> None:
    tables = schema_tables(tmp_path)
    used: dict[str, str] = {}
    for command in all_commands():
        if "sqlite3" not in command.code:
            continue
        for name in _TABLE.findall(command.code):
            if not name.lower().startswith("pragma_"):  # table-valued pragma functions
                used.setdefault(name, command.text)
    assert {"orders", "trades", "signals", "equity_snapshots", "kv"} <= used.keys()
    missing = {name: text for name, text in used.items() if name not in tables}
    assert not missing, f"tables not in the schema {sorted(tables)}: {missing}"


def test_every_api_path_is_a_route() -> None:
    routes = {route.path for route in ROUTES}
    used: dict[str, str] = {}
    for command in all_commands():
        for path in re.findall(r"\$API(/[\w./-]*)", command.code):
            used.setdefault(path, command.text)
        assert "localhost:8080" not in command.code, f"use $API: {command.text}"
    assert {"/api/health", "/api/state/positions", "/metrics"} <= used.keys()
    unknown = {path: text for path, text in used.items() if path not in routes}
    assert not unknown, f"not routes of the API: {unknown}"


def titan_subcommands() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "titan_trio", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = re.search(r"\{([a-z,-]+)\}", done.stdout)
    assert found, done.stdout
    return set(found.group(1).split(","))


# `titan` where a command starts: the line's start, after ; | & ( or then/do/else.
_TITAN = re.compile(r"(?:^|[;|&(]|\b(?:then|do|else)\s)\s*titan\s+([a-z][\w-]*)", re.MULTILINE)


# The shortcuts of ops/shell that run a titan subcommand: `titan-backup() { _titan_cli backup`.
_SHORTCUT = re.compile(r"^(titan-[\w-]+)\(\)\s*\{\s*_titan_cli\s+([a-z][\w-]*)", re.MULTILINE)


def subcommands_of(code: str) -> set[str]:
    """The titan subcommands a command runs, directly or through a shortcut."""
    shortcuts = dict(_SHORTCUT.findall((REPO / "ops" / "shell" / "titan-aliases.sh").read_text()))
    assert shortcuts.get("titan-backup") == "backup", shortcuts
    found = set(_TITAN.findall(code))
    for name, sub in shortcuts.items():
        if re.search(rf"(?:^|[;|&(]|\b(?:then|do|else)\s)\s*{name}\b", code, re.MULTILINE):
            found.add(sub)
    return found


def test_every_titan_subcommand_exists_or_is_marked_for_issue_13() -> None:
    known = titan_subcommands()
    used: set[str] = set()
    for command in all_commands():
        subcommands = subcommands_of(command.code)
        used |= subcommands
        unknown = subcommands - known
        assert unknown <= ISSUE_13, f"no such titan subcommand {sorted(unknown)}: {command.text}"
        if unknown:
            assert command.needs == "issue-13", f"mark it # needs: issue-13: {command.text}"
        if command.needs == "issue-13":
            assert unknown, f"titan has {sorted(subcommands)}: remove the marker: {command.text}"
    # the runbook names each of them, so this check does not pass for want of use
    assert ISSUE_13 <= used
    assert {"health", "positions", "flatten", "resume", "signal"} <= used


def test_every_curl_fails_on_an_http_error() -> None:
    for command in all_commands():
        for call in re.findall(r"\bcurl\s[^|;)]*", command.code):
            assert re.search(r"\s-[a-zA-Z]*f[a-zA-Z]*\b|--fail-with-body\b", call), (
                f"curl without -f or --fail-with-body: {command.text}"
            )


# ----- running the commands against a live service --------------------------------------


@dataclass
class Installation:
    home: Path  # TITAN_HOME: .venv and ops, as the runbook expects of /opt/titan
    data: Path  # TITAN_DATA: the service's working directory
    config: Path
    db: Path
    port: int
    workdir: Path  # where the blocks run (they write report files to the current directory)


def make_backup(db: Path, backups: Path) -> None:
    """One backup as the runbook names them (what the hourly job will leave), so the
    checks of backups have one to look at before the runbook's own manual backup."""
    backups.mkdir(mode=0o700, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%S")
    copy = backups / f".backup-{stamp}.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    name = f"backup-{stamp}.db.gz"
    (backups / name).write_bytes(gzip.compress(copy.read_bytes()))
    copy.unlink()
    digest = hashlib.sha256((backups / name).read_bytes()).hexdigest()
    (backups / f"{name}.sha256").write_text(f"{digest}  {name}\n")


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    root = tmp_path_factory.mktemp("runbook")
    home, data, workdir = root / "home", root / "data", root / "work"
    for d in (home, data, workdir):
        d.mkdir()
    (home / ".venv").symlink_to(sys.prefix)  # the virtualenv of this test run
    (home / "ops").symlink_to(REPO / "ops")
    port = free_port()
    db = data / "titan_execution.db"
    config = root / "config.json"
    config.write_text(
        json.dumps(
            {
                "api": {"host": "127.0.0.1", "port": port, "token": TOKEN},
                "ipc": {"socketPath": str(data / "titan-ipc.sock")},
                # relative, as in the default config: the runbook resolves it in TITAN_DATA
                "database": {"path": "titan_execution.db", "backupDir": "backups"},
                "simulation": {"intervalMs": 20},
                "logging": {"level": "INFO", "dir": str(data / "logs")},
            }
        )
    )
    proc = spawn(config, data)
    try:
        wait_healthy(port, proc)
        make_backup(db, data / "backups")
        yield Installation(home, data, config, db, port, workdir)
    finally:
        code, _elapsed, out = stop(proc)
        assert code == 0, out


def block_env(inst: Installation) -> dict[str, str]:
    """The environment of an operator's shell: only where things are; nothing the
    runbook's header derives, and nothing of the test's own environment that would
    change what the service or the CLI read."""
    derived = {"DB", "API", "TOKEN", "BACKUPS", "LOGS", "PROM", "GRAFANA"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_") and k not in derived}
    env.update(
        TITAN_HOME=str(inst.home),
        TITAN_CONFIG=str(inst.config),
        TITAN_DATA=str(inst.data),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def titan(inst: Installation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "titan_trio", *args, "--config", str(inst.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def prepare_service(inst: Installation, opened: list[int]) -> None:
    """Trading ACTIVE and a BTCUSDT position open, as each block expects the service."""
    api = f"http://127.0.0.1:{inst.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    risk = httpx.get(f"{api}/api/risk", timeout=10).json()
    if risk["breaker"]["tripped"]:
        httpx.post(f"{api}/api/risk/breaker/reset", headers=auth, timeout=10).raise_for_status()
    elif risk["trading_state"] != "ACTIVE":
        httpx.post(f"{api}/api/trading/resume", headers=auth, timeout=10).raise_for_status()
    positions = httpx.get(f"{api}/api/state/positions", timeout=10).json()
    if any(p["symbol"] == SYMBOL for p in positions):
        return
    signal_id = f"runbook-{len(opened)}-{time.monotonic_ns()}"
    for args in (
        ["--type", "PREPARE", "--symbol", SYMBOL, "--direction", "LONG", "--at-market"],
        ["--type", "CONFIRM"],
    ):
        extra = ["--confidence", "80", "--leverage", "5"] if "PREPARE" in args else []
        done = titan(inst, "signal", "send", *args, *extra, "--signal-id", signal_id)
        assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 10
    while not any(
        p["symbol"] == SYMBOL for p in httpx.get(f"{api}/api/state/positions", timeout=10).json()
    ):
        assert time.monotonic() < deadline, "the position did not open"
        time.sleep(0.05)
    opened.append(1)


def script_of(header: Block, block: Block) -> tuple[str, list[Command], list[Command]]:
    """The bash script of a block (the header first), with the commands it runs and
    those it skips."""
    run: list[Command] = []
    skipped: list[Command] = []
    body = block.text
    for command in block.commands:
        why = skipped_because(command)
        if why is None:
            run.append(command)
        else:
            skipped.append(command)
            assert body.count(command.text) >= 1, command.text
            body = body.replace(command.text, f": skipped, needs {why}", 1)
    head = "" if block is header else header.text
    return f"set -euo pipefail\n{head}\n{body}", run, skipped


@pytest.mark.slow
def test_every_runnable_command_of_the_runbook_runs(installation: Installation) -> None:
    blocks = read_blocks()
    header = blocks[0]
    assert "TITAN_CONFIG" in header.text and "DB=" in header.text, "the variables come first"
    env = block_env(installation)
    opened: list[int] = []
    ran: list[Command] = []
    skipped: dict[str, list[str]] = {}
    failures: list[str] = []
    for block in blocks:
        prepare_service(installation, opened)
        script, run, skip = script_of(header, block)
        ran += run
        for command in skip:
            skipped.setdefault(skipped_because(command) or "", []).append(
                command.code.splitlines()[0]
            )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=installation.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        output = done.stdout + done.stderr
        named = [m for m in MISSING if m in output]
        if done.returncode != 0 or named:
            failures.append(
                f"--- {block.heading}: exit {done.returncode}"
                f"{', output names ' + repr(named) if named else ''}\n{output[-3000:]}"
            )
    total_skipped = sum(len(v) for v in skipped.values())
    print(
        f"\nops/RUNBOOK.md: {len(blocks)} blocks, {len(ran)} commands run, "
        f"{total_skipped} skipped; {len(opened)} positions opened for them"
    )
    for why, commands in sorted(skipped.items()):
        print(f"  skipped, needs {why}: {len(commands)}")
        for line in commands:
            print(f"    {line}")
    assert not failures, "\n".join(failures)
    # the run did something: most of the runbook ran, and every block had its service
    assert len(ran) > total_skipped
    assert opened, "no block needed a new position: the flatten procedures did not run"
    health = httpx.get(f"http://127.0.0.1:{installation.port}/api/health", timeout=10).json()
    assert health["status"] == "healthy"
