"""The process-management files of ``ops/`` as the tools that read them see them: the pm2
ecosystem file loaded by node, the systemd unit by ``systemd-analyze``, the cron entry by
cron's own rules, the shell functions by bash (and zsh where installed), run against a
live service.

Choices the brief left open:

- ``systemd-analyze verify`` checks that ExecStart's binary exists and is executable, and
  needs the units the unit depends on. It runs with ``--root`` on a temporary tree holding
  a copy of this machine's system units, our unit in ``/etc/systemd/system`` and an
  executable at the unit's own ExecStart path, so the unit is verified exactly as shipped
  (no rewritten ExecStart). Any output counts as a failure: systemd reports unknown keys
  and bad values as warnings with exit code 0. Where systemd-analyze or the system units
  are missing the checks skip, naming what is missing.
- pm2 itself is not installed here (and cannot be without the internet): the file is
  loaded the way pm2 loads it (``require`` in node) and its keys are checked against the
  option names of pm2's schema, so a misspelt key, which pm2 ignores without a word,
  fails here.
- The shell functions that drive pm2, systemctl and journalctl are run against recording
  stand-ins on PATH; the ones that talk to the service run the real ``titan`` CLI against
  a real service process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import spawn, stop, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ECOSYSTEM = OPS / "pm2" / "ecosystem.config.js"
UNIT = OPS / "systemd" / "titan-execution.service"
CRON = OPS / "cron" / "titan-backup"
ALIASES = OPS / "shell" / "titan-aliases.sh"
GUIDE = ROOT.parent / "shared" / "OPERATIONS-GUIDE.md"

APP = "titan-execution"
TITAN_HOME = "/opt/titan"
VENV_TITAN = f"{TITAN_HOME}/.venv/bin/titan"
CONFIG = "/etc/titan/config.json"
# The service's whole stop: a drain of milliseconds, at most about 10 s with an emergency
# flatten waiting on a broker that does not answer (README, "Emergency flatten").
SHUTDOWN_S = 10

FUNCTIONS = (
    "titan-status",
    "titan-positions",
    "titan-equity",
    "titan-logs",
    "titan-restart",
    "titan-stop",
    "titan-start",
    "titan-flatten",
    "titan-backup",
)

# pm2's option names (lib/API/schema.json of pm2 5.x, with their aliases).
PM2_KEYS = {
    "name", "script", "args", "cwd", "interpreter", "exec_interpreter", "interpreter_args",
    "node_args", "exec_mode", "instances", "env", "max_memory_restart", "kill_timeout",
    "autorestart", "stop_exit_codes", "exp_backoff_restart_delay", "restart_delay",
    "min_uptime", "max_restarts", "watch", "ignore_watch", "out_file", "error_file",
    "log_file", "merge_logs", "combine_logs", "time", "log_date_format", "pid_file",
    "shutdown_with_message", "wait_ready", "listen_timeout", "cron_restart", "namespace",
    "uid", "gid", "user", "treekill", "vizion", "source_map_support", "disable_logs",
}  # fmt: skip


# ----- pm2 -------------------------------------------------------------------------------


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed, and CI must check the pm2 file")
        pytest.skip("node is not installed: the pm2 file cannot be loaded")
    return node


def load_ecosystem(**env: str) -> dict:
    node = node_or_skip()
    script = "console.log(JSON.stringify(require(process.argv[1])))"
    clean = {k: v for k, v in os.environ.items() if k not in ("TITAN_HOME", "TITAN_CONFIG")}
    done = subprocess.run(
        [node, "-e", script, str(ECOSYSTEM)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_pm2_file_runs_the_venvs_titan_with_a_memory_limit_and_a_patient_stop() -> None:
    apps = load_ecosystem()["apps"]
    assert [app["name"] for app in apps] == [APP]
    app = apps[0]
    assert set(app) <= PM2_KEYS, f"keys pm2 does not know: {set(app) - PM2_KEYS}"
    assert app["script"] == VENV_TITAN
    assert app["interpreter"] == "none"
    assert app["args"] == ["run", "--config", CONFIG]
    assert app["env"]["TITAN_CONFIG"] == CONFIG
    assert app["max_memory_restart"] == "500M"
    # pm2 sends SIGINT, then SIGKILL after kill_timeout: it must outlast the stop.
    assert app["kill_timeout"] > SHUTDOWN_S * 1000
    assert app["autorestart"] is True
    assert 2 in app["stop_exit_codes"], "a bad configuration must not restart in a loop"
    assert app["instances"] == 1 and app["exec_mode"] == "fork"
    assert app["out_file"].startswith("/") and app["error_file"].startswith("/")
    assert app["merge_logs"] is True
    assert Path(app["cwd"]).is_absolute()


def test_pm2_file_takes_its_paths_from_the_environment() -> None:
    app = load_ecosystem(TITAN_HOME="/srv/titan", TITAN_CONFIG="/srv/titan/live.json")["apps"][0]
    assert app["script"] == "/srv/titan/.venv/bin/titan"
    assert app["args"] == ["run", "--config", "/srv/titan/live.json"]
    assert app["env"]["TITAN_CONFIG"] == "/srv/titan/live.json"


# ----- systemd ---------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, repeated keys in order (systemd allows them)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_unit_stops_cleanly_restarts_on_failure_and_is_sandboxed() -> None:
    unit = unit_settings()
    assert one(unit, "Type") == "simple"
    assert one(unit, "User") == one(unit, "Group") == "titan"
    assert shlex.split(one(unit, "ExecStart")) == [VENV_TITAN, "run", "--config", CONFIG]
    assert f"TITAN_CONFIG={CONFIG}" in unit["Environment"]
    assert one(unit, "EnvironmentFile") == "-/etc/titan/titan.env"
    assert one(unit, "KillSignal") == "SIGINT"
    assert seconds(one(unit, "TimeoutStopSec")) > SHUTDOWN_S
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "MemoryMax") == "500M"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "UMask": "0077",
    }.items():
        assert one(unit, key) == value, key


def test_unit_lets_the_service_write_where_the_production_config_puts_its_files() -> None:
    """ProtectSystem=strict makes everything read-only but ReadWritePaths: the database,
    its backups, the log and the socket of ``config/production.example.json`` must lie in
    them, or the service cannot start under systemd."""
    writable = [Path(p.lstrip("-")) for p in one(unit_settings(), "ReadWritePaths").split()]
    doc = json.loads((ROOT / "config" / "production.example.json").read_text())
    for path in (
        Path(doc["database"]["path"]).parent,
        Path(doc["database"]["backupDir"]),
        Path(doc["logging"]["dir"]),
        Path(doc["ipc"]["socketPath"]).parent,
    ):
        assert any(path.is_relative_to(w) for w in writable), f"{path} is read-only"


def systemd_analyze_or_skip() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def system_units_or_skip() -> Path:
    for where in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (where / "sysinit.target").exists():
            return where
    pytest.skip("no system units (sysinit.target) to verify the unit against")


def verify_root(tmp_path: Path) -> Path:
    """A file system root for ``systemd-analyze --root``: this machine's system units,
    ours, and an executable where the unit's ExecStart expects the venv's titan."""
    root = tmp_path / "root"
    shutil.copytree(system_units_or_skip(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    binary = root / VENV_TITAN.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(stat.S_IRWXU)
    return root


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    tool = systemd_analyze_or_skip()
    root = verify_root(tmp_path)
    command = [tool, "verify", f"--root={root}", UNIT.name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # The check looks inside the root: without the venv's titan the same unit fails.
    (root / VENV_TITAN.lstrip("/")).unlink()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and VENV_TITAN in done.stderr


def test_systemd_rates_the_sandbox_exposure_low() -> None:
    """systemd's own review of the sandbox, 0 (locked down) to 10 (exposed); this unit
    is 1.5 today, with the network, writable-executable memory for libffi and /proc as
    what it keeps. A threshold of 20 means 2.0."""
    tool = systemd_analyze_or_skip()
    done = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "Unknown option" in done.stderr or "unrecognized option" in done.stderr:
        pytest.skip(f"this systemd-analyze cannot review a unit file: {done.stderr.strip()}")
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert done.returncode == 0 and overall, done.stdout[-2000:] + done.stderr
    assert float(overall[1]) <= 2.0


# ----- cron ------------------------------------------------------------------------------


def cron_lines() -> tuple[dict[str, str], list[list[str]]]:
    env: dict[str, str] = {}
    jobs: list[list[str]] = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            key, _, value = line.partition("=")
            env[key] = value
        else:
            jobs.append(line.split(None, 6))
    return env, jobs


def test_cron_backs_up_hourly_as_titan_with_the_services_config() -> None:
    # cron skips files in /etc/cron.d whose names have a dot or other odd characters.
    assert re.fullmatch(r"[A-Za-z0-9_-]+", CRON.name)
    env, jobs = cron_lines()
    assert len(jobs) == 1
    minute, hour, dom, month, dow, user, command = jobs[0]
    assert minute.isdigit() and 0 <= int(minute) <= 59
    assert (hour, dom, month, dow) == ("*", "*", "*", "*"), "once an hour, every hour"
    assert user == "titan"
    assert "%" not in command, "cron turns % into a newline"
    words = shlex.split(command)
    assert words[:4] == [VENV_TITAN, "backup", "--config", CONFIG]
    assert words[4].startswith(">>/") and words[5] == "2>&1", "output appended to a log"
    assert env["TITAN_CONFIG"] == CONFIG
    assert CRON.read_text().endswith("\n"), "cron ignores a last line without a newline"


def test_the_production_config_leaves_the_hourly_backup_to_cron() -> None:
    """ops/systemd/README.md installs the cron entry beside the unit: with the in-service
    schedule on as well, every hour would take two backups, and the service's own would
    make its copy on the disk (the unit's MemoryHigh leaves no room for it in memory),
    the path that slows the signal path most (docs/BENCHMARKS.md)."""
    doc = json.loads((ROOT / "config" / "production.example.json").read_text())
    assert doc["database"]["backupIntervalMin"] is None
    assert "ops/cron/titan-backup" in (OPS / "systemd" / "README.md").read_text()


# ----- the shell functions ---------------------------------------------------------------


def run_shell(
    script: str, *, shell: str = "bash", env: dict[str, str], before: str = ""
) -> subprocess.CompletedProcess:
    """``script`` in ``shell`` after sourcing the functions (and ``before`` that)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_") and k != "PATH"}
    return subprocess.run(
        [shell, "-c", f"{before}\nsource {shlex.quote(str(ALIASES))}\n{script}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        check=False,
    )


def shells() -> list[str]:
    return ["bash"] + (["zsh"] if shutil.which("zsh") else [])


def test_guide_appendix_names_are_the_ones_defined() -> None:
    if not GUIDE.exists():
        pytest.skip(f"{GUIDE} is not beside the checkout")
    appendix = GUIDE.read_text().split("## Appendix")[1]
    assert set(re.findall(r"^alias (titan-[a-z]+)=", appendix, re.M)) == set(FUNCTIONS)


@pytest.mark.parametrize("shell", shells())
def test_sourcing_defines_every_command_of_the_guide(shell: str) -> None:
    # The guide's aliases pasted into the shell earlier must not break the definitions
    # (bash expands aliases in scripts only with expand_aliases; zsh always does).
    guide = "shopt -s expand_aliases 2>/dev/null\n" + "\n".join(
        f"alias {name}='echo the guide'" for name in FUNCTIONS
    )
    done = run_shell(
        "\n".join(f"type {name}" for name in FUNCTIONS),
        shell=shell,
        env={"PATH": os.environ["PATH"]},
        before=guide,
    )
    assert done.returncode == 0, done.stderr
    for name in FUNCTIONS:
        assert f"{name} is a shell function" in done.stdout or re.search(
            rf"^{name} is a function", done.stdout, re.M
        ), done.stdout


def recorder(bin_dir: Path, name: str, log: Path, exit_code: int = 0) -> None:
    """A stand-in for ``name`` that appends its argv to ``log``."""
    path = bin_dir / name
    path.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {shlex.quote(str(log))}\nexit {exit_code}\n'
    )
    path.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("shell", shells())
def test_process_commands_drive_pm2_or_systemd(tmp_path: Path, shell: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for name in ("systemctl", "journalctl"):
        recorder(bin_dir, name, log)
    recorder(bin_dir, "pm2", log)
    path = f"{bin_dir}:{os.environ['PATH']}"
    script = "titan-restart; titan-stop; titan-start; titan-logs --nostream"

    done = run_shell(script, shell=shell, env={"PATH": path, "TITAN_HOME": "/srv/t"})
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "pm2 restart titan-execution",
        "pm2 stop titan-execution",
        "pm2 describe titan-execution",  # known to pm2: started by name
        "pm2 start titan-execution",
        "pm2 logs titan-execution --lines 50 --nostream",
    ]

    log.unlink()
    recorder(bin_dir, "pm2", log, exit_code=1)  # pm2 has never seen the app
    run_shell("titan-start", shell=shell, env={"PATH": path, "TITAN_HOME": "/srv/t"})
    assert log.read_text().splitlines() == [
        "pm2 describe titan-execution",
        "pm2 start /srv/t/ops/pm2/ecosystem.config.js --only titan-execution",
    ]

    log.unlink()
    done = run_shell(script, shell=shell, env={"PATH": path, "TITAN_PM": "systemd"})
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "systemctl restart titan-execution.service",
        "systemctl stop titan-execution.service",
        "systemctl start titan-execution.service",
        "journalctl --unit titan-execution.service --lines 50 --follow --nostream",
    ]

    done = run_shell("titan-stop", shell=shell, env={"PATH": path, "TITAN_PM": "runit"})
    assert done.returncode == 2 and "TITAN_PM must be pm2 or systemd" in done.stderr


@pytest.mark.parametrize("shell", shells())
def test_api_commands_use_the_checkouts_titan_with_the_config(tmp_path: Path, shell: str) -> None:
    """TITAN_HOME's venv first; the config always passed; arguments go through."""
    log = tmp_path / "calls"
    venv_bin = tmp_path / "home" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    recorder(venv_bin, "titan", log)
    env = {"PATH": os.environ["PATH"], "TITAN_HOME": str(tmp_path / "home")}
    done = run_shell(
        "titan-backup --verify; titan-flatten; TITAN_CONFIG=/x.json titan-status",
        shell=shell,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        f"titan backup --verify --config {CONFIG}",
        f"titan flatten --config {CONFIG}",
        "titan health --config /x.json",
    ]
    # No CLI anywhere: one line that says where it looked.
    done = run_shell("titan-equity", shell=shell, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 127
    assert "no CLI at /opt/titan/.venv/bin/titan and none on PATH" in done.stderr


@pytest.mark.slow
def test_status_positions_and_equity_answer_from_a_live_service(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "titan").exists(), f"the titan CLI is not installed in {venv_bin}"
    port = free_port()
    config = config_file(api={"port": port})
    env = {
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "TITAN_CONFIG": str(config),
        "TITAN_HOME": str(tmp_path / "no-checkout-here"),  # so PATH's titan is used
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    service = spawn(config, tmp_path)
    try:
        wait_healthy(port, service)
        # A position to show: the CLI signs nothing here (paper mode, no HMAC secret).
        for args in (
            [
                *("--type", "PREPARE", "--symbol", "BTCUSDT", "--direction", "LONG"),
                *("--at-market", "--confidence", "80", "--leverage", "2", "--signal-id", "ops-1"),
            ],
            ["--type", "CONFIRM", "--signal-id", "ops-1"],
        ):
            sent = subprocess.run(
                [str(venv_bin / "titan"), "signal", "send", "--config", str(config), *args],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **env},
                check=False,
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr

        answers = {}
        for name in ("titan-status", "titan-positions", "titan-equity"):
            done = run_shell(name, env=env)
            assert done.returncode == 0, f"{name}: {done.stderr}"
            assert "Traceback" not in done.stderr
            answers[name] = done.stdout
        assert "healthy" in answers["titan-status"]
        assert "BTCUSDT" in answers["titan-positions"]
        assert "LONG" in answers["titan-positions"]
        assert re.search(r"equity", answers["titan-equity"], re.I)
        assert re.search(r"drawdown", answers["titan-equity"], re.I)

        done = run_shell("titan-flatten", env=env)
        assert done.returncode == 0, done.stderr
        assert "HALTED" in run_shell("titan-equity", env=env).stdout
    finally:
        code, _took, out = stop(service)
    assert code == 0, out
