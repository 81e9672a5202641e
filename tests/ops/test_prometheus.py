"""The Prometheus and Alertmanager files of ops/ checked by the tools that will load them,
and against the service that will be scraped.

- ``promtool check config`` / ``check rules`` / ``test rules`` and ``amtool
  check-config``: what Prometheus and Alertmanager would refuse at start.
- Routing is asked of amtool itself (``config routes test --verify.receivers``), so the
  test checks what Alertmanager will do, not what the YAML looks like.
- A live scrape of a freshly started service goes through ``promtool check metrics``
  (naming and typing conventions), and every metric the rules read must be in it; a rule
  on a metric the service does not export would never fire, silently.
- The same live scrape, held unchanged for three hours, is turned into a promtool unit
  test expecting no alert at all: "nothing fires on a fresh healthy service" checked on
  the real exposition (NaN fill rate, empty histogram, feed ages) rather than on values
  written by hand. A second run with one value pushed over its threshold must fail, so
  this check cannot pass vacuously.
- (slow) A real Alertmanager runs the example configuration, with local stand-ins for
  Slack and PagerDuty: a critical reaches both, its warning is inhibited, another
  warning reaches Slack, and the message templates render the descriptions.

promtool and amtool come from Debian's ``prometheus`` and ``prometheus-alertmanager``
packages. Without them the tests skip, except under CI (environment variable CI set),
where a missing tool is a failure: CI must not go green by skipping.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.helpers import eventually, service
from titan_trio.config import Config

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "ops" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "titan.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "titan.rules.test.yml"
ALERTMANAGER_YML = REPO / "ops" / "alertmanager" / "alertmanager.yml"
RUNBOOK = REPO / "ops" / "RUNBOOK.md"
TOOL_TIMEOUT_S = 60
HELD_MINUTES = 180  # how long the fresh service's scrape is held in the generated rule test
JOB_LABELS = {"job": "titan-execution", "instance": "localhost:8080"}  # added by Prometheus

# The operations guide's alerts: (alert name, severity) pairs the rules must define.
GUIDE_ALERTS = {
    ("TitanWebSocketDisconnected", "critical"),
    ("TitanOrderFillRateLow", "warning"),
    ("TitanOrderFillRateLow", "critical"),
    ("TitanOrderLatencyHigh", "warning"),
    ("TitanDrawdownHigh", "warning"),
    ("TitanDrawdownHigh", "critical"),
    ("TitanSystemUnhealthy", "critical"),
    ("TitanBackupStale", "warning"),
}
# Series Prometheus makes itself, not the service.
PROMETHEUS_SERIES = {"up"}
# Metrics the rules read that the service does not export yet; the rule is written to
# stay silent while the series is absent. Remove a name once the service exports it.
AWAITED: dict[str, str] = {}


def tool(name: str, package: str) -> str:
    """The tool's path; a skip naming the Debian package when it is missing, or a
    failure under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: apt-get install {package}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool() -> str:
    return tool("promtool", "prometheus")


def amtool() -> str:
    return tool("amtool", "prometheus-alertmanager")


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
        cwd=REPO,
    )


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, (
        f"{done.args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers outside label matchers and
    string literals, not followed by "(" (functions, aggregations), not in a grouping
    clause, not an operator keyword. Enough for rule files; the test below pins the
    names it finds in ours, so a miss shows."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = _GROUPING.sub("", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations: [5m]
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def exported_samples(exposition: str) -> dict[str, str]:
    """Every sample name of an exposition (histogram buckets included), with its
    family's type."""
    return {
        sample.name: family.type
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def exported_families(exposition: str) -> dict[str, str]:
    """Every metric family declared (with or without samples), by name, with its type."""
    return {family.name: family.type for family in text_string_to_metric_families(exposition)}


# ----- the files, checked by the tools ---------------------------------------------------


def test_prometheus_config_is_valid_and_scrapes_the_service() -> None:
    assert_ok(run([promtool(), "check", "config", str(PROMETHEUS_YML)]))
    config = load(PROMETHEUS_YML)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "titan-execution"  # the rules' up{job=...} depends on it
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"] == [{"targets": ["localhost:8080"]}]
    assert [(PROMETHEUS_DIR / f).resolve() for f in config["rule_files"]] == [RULES]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["localhost:9093"]}]


def test_rules_pass_promtool_check_with_lint_fatal() -> None:
    done = run([promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(RULES)])
    assert_ok(done)
    assert "SUCCESS" in done.stdout


def test_rule_unit_tests_pass() -> None:
    done = run([promtool(), "test", "rules", str(RULE_TESTS)])
    assert_ok(done)
    assert "SUCCESS" in done.stdout


def test_every_alert_of_the_guide_has_a_rule_with_summary_value_and_runbook() -> None:
    found = {(r["alert"], r["labels"]["severity"]) for r in rules()}
    assert found == GUIDE_ALERTS
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations["summary"].strip()
        assert annotations["runbook_url"].startswith("ops/RUNBOOK.md#alert-"), rule["alert"]
        if rule["expr"].strip() != 'up{job="titan-execution"} == 0':  # its value is always 0
            assert "$value" in annotations["description"], rule["alert"]
    # every alert the unit tests make fire is one of the rules (no test of a stale name)
    tested = {
        case["alertname"]
        for test in load(RULE_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == {name for name, _ in GUIDE_ALERTS}


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lowercase, punctuation other than '-' and
    '_' dropped, each space a '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_runbook_url_names_a_heading_of_the_runbook() -> None:
    if not RUNBOOK.exists():
        pytest.skip("ops/RUNBOOK.md is not in this tree yet")
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }
    wanted = {r["annotations"]["runbook_url"].split("#", 1)[1] for r in rules()}
    assert wanted <= anchors, f"no heading in ops/RUNBOOK.md for {sorted(wanted - anchors)}"


def test_alertmanager_config_is_valid() -> None:
    done = run([amtool(), "check-config", str(ALERTMANAGER_YML)])
    assert_ok(done)
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["alertname=TitanDrawdownHigh", "severity=critical"], "slack-critical,pager"),
        (["alertname=TitanSystemUnhealthy", "severity=critical"], "slack-critical,pager"),
        (["alertname=TitanDrawdownHigh", "severity=warning"], "slack-warnings"),
        (["alertname=TitanBackupStale", "severity=warning"], "slack-warnings"),
    ],
)
def test_alertmanager_routes_critical_to_slack_and_pager_and_warnings_to_slack(
    labels: list[str], receivers: str
) -> None:
    done = run(
        [
            amtool(),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_YML}",
            f"--verify.receivers={receivers}",
            *labels,
        ]
    )
    assert_ok(done)


def test_alertmanager_sends_to_titan_alerts_and_mutes_a_warning_under_its_critical() -> None:
    config = load(ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in config["receivers"]}
    for name in ("slack-critical", "slack-warnings"):
        assert [c["channel"] for c in receivers[name]["slack_configs"]] == ["#titan-alerts"]
    assert receivers["pager"]["pagerduty_configs"]
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert inhibit["target_matchers"] == ['severity="warning"']
    assert "alertname" in inhibit["equal"]


# ----- against the live service ----------------------------------------------------------


async def scrape_fresh_service(cfg: Config) -> str:
    """/metrics of a service just started, once every feed has delivered a message
    (before that a feed's age is +Inf, which the unit tests cover by hand)."""
    async with service(cfg) as engine, httpx.AsyncClient(base_url=engine.api_url) as client:
        await eventually(lambda: engine.health()["status"] == "healthy", limit_s=10)
        response = await client.get("/metrics")
        assert response.status_code == 200
        return response.text


@pytest.fixture
def promtool_path() -> str:
    """promtool, looked up before trio runs the test: a skip raised inside the test's
    nursery would lose its message."""
    return promtool()


@pytest.fixture
async def fresh_exposition(make_config: Callable[..., Config]) -> str:
    return await scrape_fresh_service(make_config())


async def test_live_scrape_passes_promtool_check_metrics(
    promtool_path: str, fresh_exposition: str
) -> None:
    done = await trio.run_process(
        [promtool_path, "check", "metrics"],
        stdin=fresh_exposition.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    problems = (done.stdout + done.stderr).decode().strip()
    assert done.returncode == 0 and not problems, problems


def test_metric_names_finds_every_name_of_our_rules() -> None:
    names = set().union(*(metric_names(r["expr"]) for r in rules()))
    assert names == {
        "titan_ws_last_message_age_seconds",
        "titan_order_fill_rate",
        "titan_order_latency_seconds_bucket",
        "titan_drawdown_percent",
        "titan_health_status",
        "up",
        "titan_backup_last_success_timestamp_seconds",
    }


async def test_every_metric_the_rules_read_is_exported(fresh_exposition: str) -> None:
    samples = exported_samples(fresh_exposition)
    families = exported_families(fresh_exposition)
    used = set().union(*(metric_names(r["expr"]) for r in rules())) - PROMETHEUS_SERIES
    missing = {name for name in used if name not in samples} - set(AWAITED)
    assert not missing, f"rules read metrics the service does not export: {sorted(missing)}"
    for name in set(AWAITED) & set(families):
        assert families[name] == "gauge", f"{name} is exported as a {families[name]}"
    # the health components the unhealthy rule watches are among those exported
    components = {
        s.labels["component"]
        for f in text_string_to_metric_families(fresh_exposition)
        if f.name == "titan_health_status"
        for s in f.samples
    }
    assert {"database", "broker"} <= components


def series_value(value: float) -> str:
    """A value in promtool's series notation, repeated for the whole test ("+0x").
    NaN+0 is NaN and Inf+0 is Inf, which is why the increment form is used."""
    if math.isnan(value):
        text = "NaN"
    elif math.isinf(value):
        text = "+Inf" if value > 0 else "-Inf"
    else:
        text = repr(value)
    return f"{text}+0x{HELD_MINUTES}"


def held_exposition_test(exposition: str, override: dict[str, float] | None = None) -> dict:
    """A promtool rule test: every sample of ``exposition`` (with the labels Prometheus
    adds, and up=1) held for HELD_MINUTES, and no alert expected at any time."""
    override = override or {}
    series = [{"series": _selector("up", JOB_LABELS), "values": series_value(1.0)}]
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            value = override.get(sample.name, sample.value)
            series.append(
                {
                    "series": _selector(sample.name, {**sample.labels, **JOB_LABELS}),
                    "values": series_value(value),
                }
            )
    alertnames = sorted({r["alert"] for r in rules()})
    times = ["0s", "1m", "5m", "15m", "1h", f"{HELD_MINUTES}m"]
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "name": "a freshly started healthy service, as scraped, held unchanged",
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": t, "alertname": name, "exp_alerts": []}
                    for name in alertnames
                    for t in times
                ],
            }
        ],
    }


def _selector(name: str, labels: dict[str, str]) -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    inner = ",".join(f"{k}={quoted(v)}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


async def test_no_alert_fires_on_a_fresh_service_held_for_three_hours(
    promtool_path: str, fresh_exposition: str, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh.test.yml"
    fresh.write_text(yaml.safe_dump(held_exposition_test(fresh_exposition)))
    done = await trio.run_process(
        [promtool_path, "test", "rules", str(fresh)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()

    # the same check with the drawdown over 7 %: it must see the alert
    deep = tmp_path / "deep.test.yml"
    test = held_exposition_test(fresh_exposition, override={"titan_drawdown_percent": 7.5})
    deep.write_text(yaml.safe_dump(test))
    done = await trio.run_process(
        [promtool_path, "test", "rules", str(deep)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode != 0
    assert 'alertname="TitanDrawdownHigh"' in (done.stdout + done.stderr).decode()


# ----- a real Alertmanager with this configuration ----------------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    """Stands in for Slack and PagerDuty: records each POST body by path."""

    received: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:  # the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def am_config_for_test(tmp_path: Path, sink: str) -> Path:
    """ops/alertmanager/alertmanager.yml with the secrets files made (the Slack URL and
    the PagerDuty URL pointing at ``sink``) and every group_wait at 0.2 s; routes,
    receivers, templates and inhibition unchanged."""
    config = load(ALERTMANAGER_YML)
    (tmp_path / "slack-url").write_text(f"{sink}/slack")
    (tmp_path / "pd-key").write_text("test-routing-key")
    config["global"]["slack_api_url_file"] = str(tmp_path / "slack-url")
    for pd in config_by_name(config, "pager")["pagerduty_configs"]:
        pd["routing_key_file"] = str(tmp_path / "pd-key")
        pd["url"] = f"{sink}/pagerduty"
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "200ms"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def config_by_name(config: dict[str, Any], name: str) -> dict[str, Any]:
    (receiver,) = [r for r in config["receivers"] if r["name"] == name]
    return receiver


def alert(name: str, severity: str, description: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": name,
            "severity": severity,
            "job": "titan-execution",
            "instance": "localhost:8080",
        },
        "annotations": {
            "summary": f"{name} {severity}",
            "description": description,
            "runbook_url": "ops/RUNBOOK.md#alert-x",
        },
    }


@pytest.mark.slow
def test_real_alertmanager_pages_critical_mutes_its_warning_and_renders_messages(
    tmp_path: Path,
) -> None:
    binary = tool("prometheus-alertmanager", "prometheus-alertmanager")
    Recorder.received = []
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={am_config_for_test(tmp_path, f'http://127.0.0.1:{sink.server_port}')}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip: a single instance
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/api/v2"
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{api}/status", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "alertmanager did not start"
            time.sleep(0.05)
        alerts = [
            alert("TitanDrawdownHigh", "critical", "Equity is 7.50 % below its peak"),
            alert("TitanDrawdownHigh", "warning", "Equity is 7.50 % below (warning)"),
            alert("TitanOrderFillRateLow", "warning", "Only 79.0 % of the orders filled"),
        ]
        assert httpx.post(f"{api}/alerts", json=alerts, timeout=5).status_code == 200

        def paths() -> list[str]:
            return sorted(path for path, _ in Recorder.received)

        while paths() != ["/pagerduty", "/slack", "/slack"]:
            assert len(Recorder.received) <= 3, Recorder.received
            assert time.monotonic() < deadline + 10, Recorder.received
            time.sleep(0.05)
        slack = [body for path, body in Recorder.received if path == "/slack"]
        assert {m["channel"] for m in slack} == {"#titan-alerts"}
        texts = sorted(
            m["attachments"][0]["title"] + " " + m["attachments"][0]["text"] for m in slack
        )
        assert texts[0].startswith("CRITICAL: TitanDrawdownHigh critical")
        assert "Equity is 7.50 % below its peak" in texts[0]
        assert "(warning)" not in texts[0] + texts[1]  # the warning is muted
        assert texts[1].startswith("Warning: TitanOrderFillRateLow (1)")
        assert "Only 79.0 % of the orders filled" in texts[1]
        (page,) = [body for path, body in Recorder.received if path == "/pagerduty"]
        assert page["routing_key"] == "test-routing-key"
        assert page["event_action"] == "trigger"
        # Alertmanager itself says the warning is inhibited by the critical
        state = {
            (a["labels"]["alertname"], a["labels"]["severity"]): a["status"]
            for a in httpx.get(f"{api}/alerts", timeout=5).json()
        }
        assert state[("TitanDrawdownHigh", "warning")]["state"] == "suppressed"
        assert state[("TitanDrawdownHigh", "warning")]["inhibitedBy"]
        assert state[("TitanOrderFillRateLow", "warning")]["state"] == "active"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        sink.shutdown()
