"""The Grafana dashboard and its provisioning (ops/grafana/), checked against the guide
and against what the service really exports.

A dashboard fails quietly: a misspelt metric name is an empty panel, not an error, and
nobody notices until the day it is needed. So every PromQL expression in the dashboard
is taken apart and each metric it names must be one the running service exposes on
/metrics (scraped from the service started in-process, not read from metrics.py, so a
collector that stopped yielding a family is caught too).

The metric names come from a small tokenizer rather than a PromQL parser (none is
installed, and the dashboard's expressions are simple): strings, label matchers,
ranges and Grafana variables are removed, then an identifier is a metric name unless
it calls a function (followed by '('), is a PromQL keyword or aggregation, or is a label
list after by/without/on/ignoring/group_left/group_right. Its own tests below show it
finding a misspelt name. A selector by `{__name__=...}` is refused rather than guessed.

The provisioning files are read with PyYAML, which the test environment has through
moto[server] (a test extra); the service itself does not need it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import service
from titan_trio.config import Config, RiskConfig

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "titan-trading-system.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "titan.yml"

# The guide's eight panels ("Grafana Dashboard Overview"), by title.
PANEL_TITLES = [
    "System Health Status",
    "Account Equity",
    "Current Drawdown",
    "Signal Processing Rate",
    "Order Execution Latency (P95)",
    "Position P&L by Symbol",
    "Order Fill Rate",
    "Active Positions & Total Leverage",
]

# ----- PromQL metric names ---------------------------------------------------------------

_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = (
    _AGGREGATIONS | _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)
_COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_TOKEN = re.compile(
    r"(?P<duration>(?:\d+(?:ms|[smhdwy]))+)"
    r"|(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<other>\S)"
)


def _strip(expr: str) -> str:
    """The expression without what can hold identifiers that are not metric names:
    strings, Grafana variables (a number in their place keeps it valid), label
    matchers and range/subquery brackets."""
    if "__name__" in expr:
        raise ValueError(f"selector by __name__ is not understood: {expr}")
    expr = _STRING.sub('""', expr)
    expr = _GRAFANA_VARIABLE.sub("1", expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    return re.sub(r"\[[^\[\]]*\]", " ", expr)


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(_strip(expr))]


def metric_names(expr: str) -> set[str]:
    """Every metric name the PromQL expression selects."""
    tokens = _tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        follows = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text.lower() in _LABEL_LISTS and follows == "(":
            i = tokens.index(("other", ")"), i)  # skip the label list: no nesting in it
        elif kind == "ident" and follows != "(" and text.lower() not in _KEYWORDS:
            names.add(text)
        i += 1
    return names


def counter_function_arguments(expr: str) -> set[str]:
    """The metric names directly inside rate(), irate(), increase() or resets(): these
    must be counters (or a histogram's _bucket/_count/_sum), else the panel is
    meaningless."""
    tokens = _tokens(expr)
    return {
        tokens[i + 2][1]
        for i in range(len(tokens) - 2)
        if tokens[i][1] in _COUNTER_FUNCTIONS
        and tokens[i + 1][1] == "("
        and tokens[i + 2][0] == "ident"
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("titan_equity_usd", {"titan_equity_usd"}),
        ('titan_health_status{component="websocket"} == 0', {"titan_health_status"}),
        (
            "histogram_quantile(0.95, sum by (le)(rate(titan_order_latency_seconds_bucket[5m])))",
            {"titan_order_latency_seconds_bucket"},
        ),
        ("sum without (outcome, instance) (rate(a_total[$__rate_interval])) * 60", {"a_total"}),
        ("vector($initial_capital)", set()),
        ("x / on (job) group_left (symbol) y offset 1h > bool 1e3", {"x", "y"}),
        ("x * ignoring (a) group_left y", {"x", "y"}),
        ('count by (type) (z{type=~"PREPARE|CONFIRM"}) or vector(0)', {"z"}),
        (
            "titan_equty_usd > 0 unless titan_open_positions",
            {"titan_equty_usd", "titan_open_positions"},
        ),
    ],
)
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_counter_function_arguments() -> None:
    expr = "sum(rate(a_total[5m])) / sum(increase(b_bucket{le='1'}[1h])) + deriv(g[5m])"
    assert counter_function_arguments(expr) == {"a_total", "b_bucket"}


def exposed_series(exposition: str) -> dict[str, str]:
    """Series name -> metric type, for every name a query can select. The parser names a
    family without its suffixes: counters are selected as `<name>_total`, histograms as
    `<name>_bucket/_count/_sum`. From the family, not its samples: a labelled counter
    nobody incremented yet has no sample but is exported all the same."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_count", "_sum"],
        "gaugehistogram": ["_bucket", "_gcount", "_gsum"],
        "summary": ["", "_count", "_sum"],
        "info": ["_info"],
    }
    return {
        family.name + suffix: family.type
        for family in text_string_to_metric_families(exposition)
        for suffix in suffixes.get(family.type, [""])
    }


def test_exposed_series_names() -> None:
    text = (
        "# HELP c_total c\n# TYPE c_total counter\n"
        '# HELP h h\n# TYPE h histogram\nh_bucket{le="+Inf"} 0.0\nh_count 0.0\nh_sum 0.0\n'
        "# HELP g g\n# TYPE g gauge\ng 1.0\n"
    )
    assert exposed_series(text) == {
        "c_total": "counter",
        "h_bucket": "histogram",
        "h_count": "histogram",
        "h_sum": "histogram",
        "g": "gauge",
    }


# ----- the dashboard ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside a collapsed row


def by_title(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in panels(dashboard) if p.get("title") == title]
    return panel


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query, and every variable's query."""
    found = [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            found.append((f"${variable['name']}", query.get("query", query)))
    return found


def steps(thresholds: dict[str, Any]) -> list[tuple[str, float | None]]:
    assert thresholds["mode"] == "absolute"
    return [(step["color"], step["value"]) for step in thresholds["steps"]]


def override(panel: dict[str, Any], ref_id: str, prop: str) -> Any:
    (value,) = [
        p["value"]
        for o in panel["fieldConfig"]["overrides"]
        if o["matcher"] == {"id": "byFrameRefID", "options": ref_id}
        for p in o["properties"]
        if p["id"] == prop
    ]
    return value


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "titan-trading-system"  # the guide's URL /d/titan-trading-system
    assert dashboard["title"] == "Titan Trading System"
    assert dashboard["refresh"] == "10s"
    assert 36 <= dashboard["schemaVersion"] <= 41  # Grafana 10 and 11
    assert dashboard["id"] is None  # provisioning assigns it
    text = DASHBOARD.read_text()
    # Export-for-sharing leftovers make provisioning stop and ask for a datasource.
    assert "__inputs" not in dashboard and "${DS_" not in text


def test_the_guides_eight_panels_on_a_sane_grid(dashboard: dict[str, Any]) -> None:
    shown = [p for p in panels(dashboard) if p["type"] != "row"]
    assert sorted(p["title"] for p in shown) == sorted(PANEL_TITLES)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in shown:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_reads_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    wanted = {"type": datasource["type"], "uid": datasource["uid"]}
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", wanted) == wanted, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_health_status_is_green_up_red_down(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "System Health Status")
    assert [t["expr"] for t in panel["targets"]] == ["titan_health_status"]
    assert panel["targets"][0]["legendFormat"] == "{{component}}"
    defaults = panel["fieldConfig"]["defaults"]
    assert steps(defaults["thresholds"]) == [("red", None), ("green", 1)]
    (mapping,) = defaults["mappings"]
    assert mapping["options"]["0"]["color"] == "red"
    assert mapping["options"]["1"]["color"] == "green"


def test_equity_is_drawn_against_the_initial_capital(dashboard: dict[str, Any]) -> None:
    """The service exports its initial capital (the equity alert's reference); a second
    query draws it as a dashed red line."""
    panel = by_title(dashboard, "Account Equity")
    targets = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert targets == {"A": "titan_equity_usd", "B": "titan_initial_capital_usd"}
    assert override(panel, "B", "custom.lineStyle")["fill"] == "dash"
    assert override(panel, "B", "color")["fixedColor"] == "red"


def test_drawdown_bands(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "Current Drawdown")
    assert [t["expr"] for t in panel["targets"]] == ["titan_drawdown_percent"]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percent"  # the metric is already a percentage
    assert steps(defaults["thresholds"]) == [
        ("green", None),
        ("yellow", 3),
        ("orange", 5),
        ("red", 7),
    ]
    assert RiskConfig().max_drawdown_pct == 7  # red where the circuit breaker trips
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("area", "line+area")


def test_signal_rate_is_per_minute_by_type(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "Signal Processing Rate")
    (target,) = panel["targets"]
    expr = re.sub(r"\s+", "", target["expr"])
    assert expr == "sumby(type)(rate(titan_signals_total[5m]))*60"
    assert target["legendFormat"] == "{{type}}"
    (high,) = [v for c, v in steps(panel["fieldConfig"]["defaults"]["thresholds"]) if c == "red"]
    assert high == 20  # the guide: above 20 signals/min may indicate an issue


def test_latency_p95_thresholds(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "Order Execution Latency (P95)")
    (target,) = panel["targets"]
    expr = re.sub(r"\s+", "", target["expr"])
    assert (
        expr == "histogram_quantile(0.95,sumby(le)(rate(titan_order_latency_seconds_bucket[5m])))"
    )
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"  # so the thresholds are in seconds: 100 ms is 0.1
    assert steps(defaults["thresholds"]) == [
        ("green", None),
        ("yellow", 0.1),
        ("orange", 0.5),
        ("red", 1),
    ]


def test_pnl_by_symbol(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "Position P&L by Symbol")
    (target,) = panel["targets"]
    assert metric_names(target["expr"]) == {"titan_position_pnl_usd"}
    assert "by (symbol)" in target["expr"]
    assert target["legendFormat"] == "{{symbol}}"


def test_fill_rate_thresholds(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "Order Fill Rate")
    assert [t["expr"] for t in panel["targets"]] == ["titan_order_fill_rate"]
    defaults = panel["fieldConfig"]["defaults"]
    assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percent", 0, 100)
    assert steps(defaults["thresholds"]) == [
        ("red", None),
        ("orange", 70),
        ("yellow", 80),
        ("green", 90),
    ]


def test_positions_and_leverage_against_their_limits(dashboard: dict[str, Any]) -> None:
    panel = by_title(dashboard, "Active Positions & Total Leverage")
    targets = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert targets == {"A": "titan_open_positions", "B": "titan_total_leverage"}
    limits = RiskConfig()
    assert steps(override(panel, "A", "thresholds")) == [("green", None), ("red", 5)]
    assert steps(override(panel, "B", "thresholds")) == [("green", None), ("red", 50)]
    assert (limits.max_positions, limits.max_total_leverage) == (5, 50)
    # Two scales: 5 positions would be lost at the bottom of a 50x axis.
    assert override(panel, "A", "custom.axisPlacement") != override(
        panel, "B", "custom.axisPlacement"
    )
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


# ----- the dashboard against the service's /metrics ---------------------------------------


async def test_every_metric_the_dashboard_names_is_exported(
    dashboard: dict[str, Any], make_config: Callable[..., Config]
) -> None:
    async with service(make_config()) as engine:
        async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:
            response = await client.get("/metrics")
    assert response.status_code == 200
    exported = exposed_series(response.text)
    assert "titan_signals_total" in exported  # families without samples count too

    named: dict[str, set[str]] = {}
    for title, expr in expressions(dashboard):
        for name in metric_names(expr):
            named.setdefault(name, set()).add(title)
        for name in counter_function_arguments(expr):
            assert exported.get(name) in ("counter", "histogram"), (
                f"{title}: rate()/increase() over {name}, a {exported.get(name)}"
            )
    missing = {name: sorted(titles) for name, titles in named.items() if name not in exported}
    assert not missing, f"the dashboard names metrics the service does not export: {missing}"
    # Every panel's metric was found, so a tokenizer that finds nothing cannot pass.
    assert {title for titles in named.values() for title in titles} == set(PANEL_TITLES)


# ----- provisioning -----------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    (datasource,) = doc["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://localhost:9090"
    assert datasource["access"] == "proxy"
    assert datasource["isDefault"] is True


def test_dashboard_provisioning_points_where_the_readme_copies() -> None:
    doc = yaml.safe_load(PROVIDERS.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/")
    readme = (GRAFANA / "README.md").read_text()
    # The README copies the dashboards and both provisioning files where Grafana reads them.
    assert re.search(rf"cp ops/grafana/dashboards/\*\.json {re.escape(path)}/", readme)
    assert "/etc/grafana/provisioning/datasources/" in readme
    assert "/etc/grafana/provisioning/dashboards/" in readme
    assert f"ops/grafana/dashboards:{path}" in readme  # the container mount
