"""Configuration: the shipped defaults, every kind of problem reported as
``path: expected ..., got ...``, environment overrides, and reading the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.helpers import merge
from titan_trio.config import (
    NOT_USED_YET,
    Config,
    bybit_endpoints,
    ignored_settings,
    load_config,
    parse_config,
    redacted,
)
from titan_trio.errors import ConfigError

DEFAULT_JSON = Path(__file__).resolve().parents[1] / "config" / "default.json"

# A secret long enough to be valid as ipc.hmacSecret (>= 32 characters).
HMAC_SECRET = "hmac-secret-0123456789abcdef-XYZ-0123"
API_TOKEN = "api-token-s3cr3t-value-0123456789abcdef"


def problems_of(data: Any, environ: dict[str, str] | None = None) -> list[str]:
    """The problems parse_config reports for ``data`` (fails if it accepts it)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={} if environ is None else environ)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def problem_at(problems: list[str], path: str) -> str:
    """The single problem reported for exactly ``path`` (``path: ...``)."""
    found = [p for p in problems if p.startswith(f"{path}: ")]
    assert len(found) == 1, f"expected one problem at {path!r}, got {problems}"
    return found[0]


def assert_spec_defaults(cfg: Config) -> None:
    assert cfg.mode == "paper"
    assert (cfg.api.host, cfg.api.port, cfg.api.token) == ("127.0.0.1", 8080, None)
    assert cfg.ipc.socket_path == "titan-ipc.sock"
    assert cfg.ipc.socket_mode == "0600"
    assert cfg.socket_mode == 0o600
    assert cfg.ipc.hmac_secret is None
    assert cfg.ipc.max_connections == 16
    assert cfg.ipc.max_frame_bytes == 65536
    assert cfg.database.path == "titan_execution.db"
    assert cfg.broker.name == "paper"
    assert cfg.broker.initial_capital == 10000
    r = cfg.risk
    assert r.max_risk_pct == 2
    assert (r.phase1_risk_pct, r.phase2_risk_pct, r.phase3_risk_pct) == (2, 1.5, 1)
    assert r.max_positions == 5
    assert r.max_total_leverage == 50
    assert r.max_drawdown_pct == 7
    assert r.max_daily_loss_pct == 5
    assert r.max_consecutive_losses == 5
    assert r.flatten_on_breaker is True
    assert cfg.reconcile.interval_s == 60
    assert cfg.logging.level == "INFO"
    assert cfg.logging.dir == "logs"


# ----- defaults ---------------------------------------------------------------------------


def test_shipped_default_json_has_the_spec_defaults() -> None:
    assert_spec_defaults(load_config(DEFAULT_JSON, environ={}))


def test_empty_document_gives_the_spec_defaults() -> None:
    assert_spec_defaults(parse_config({}, environ={}))


def test_shipped_default_json_equals_the_built_in_defaults() -> None:
    assert load_config(DEFAULT_JSON, environ={}) == parse_config({}, environ={})


# ----- one test per kind of problem -------------------------------------------------------


def test_wrong_type_names_the_path_the_type_and_the_value() -> None:
    problem = problem_at(problems_of({"api": {"port": "x"}}), "api.port")
    assert "expected int" in problem
    assert 'got str (got "x")' in problem


@pytest.mark.parametrize(
    ("doc", "path", "expected", "got"),
    [
        ({"api": {"port": 70000}}, "api.port", "expected int <= 65535", "got 70000"),
        ({"risk": {"maxRiskPct": 0}}, "risk.maxRiskPct", "expected float > 0", "got 0"),
        ({"risk": {"maxRiskPct": 150}}, "risk.maxRiskPct", "expected float <= 100", "got 150"),
    ],
)
def test_out_of_range_names_the_bound_and_the_value(
    doc: dict[str, Any], path: str, expected: str, got: str
) -> None:
    problem = problem_at(problems_of(doc), path)
    assert expected in problem
    assert got in problem


def test_unknown_nested_key_lists_the_known_keys() -> None:
    problem = problem_at(problems_of({"api": {"bogus": 1}}), "api.bogus")
    assert "unknown key" in problem
    assert "expected one of: host, keepAliveTimeoutS, maxConnections, port, token" in problem


def test_top_level_typo_is_an_unknown_key_listing_the_sections() -> None:
    problem = problem_at(problems_of({"rsik": {"maxRiskPct": 1}}), "rsik")
    assert "unknown key" in problem
    assert "expected one of:" in problem
    assert "risk" in problem.split("expected one of:", 1)[1]


@pytest.mark.parametrize(
    ("doc", "path", "got"),
    [
        ({"mode": "demo"}, "mode", '"demo"'),
        ({"feeds": ["foo"]}, "feeds[0]", '"foo"'),
        ({"feeds": ["simulated", "foo"]}, "feeds[1]", '"foo"'),
    ],
)
def test_bad_enum_value_names_the_element_and_the_value(
    doc: dict[str, Any], path: str, got: str
) -> None:
    problem = problem_at(problems_of(doc), path)
    assert f"(got {got})" in problem


@pytest.mark.parametrize(
    ("doc", "path", "allowed"),
    [
        ({"mode": "demo"}, "mode", ["paper", "live"]),
        ({"feeds": ["foo"]}, "feeds[0]", ["simulated", "binance", "bybit"]),
    ],
)
def test_bad_enum_value_says_which_values_are_allowed(
    doc: dict[str, Any], path: str, allowed: list[str]
) -> None:
    problem = problem_at(problems_of(doc), path)
    assert "expected" in problem
    for value in allowed:
        assert value in problem


def test_bad_socket_mode_pattern() -> None:
    problem = problem_at(problems_of({"ipc": {"socketMode": "999"}}), "ipc.socketMode")
    assert "expected str matching regex" in problem
    assert '(got "999")' in problem


def test_lowercase_symbol_names_the_list_element() -> None:
    problem = problem_at(problems_of({"symbols": ["BTCUSDT", "ethusdt"]}), "symbols[1]")
    assert "expected str matching regex" in problem
    assert '(got "ethusdt")' in problem


def test_too_short_hmac_secret() -> None:
    problem = problem_at(problems_of({"ipc": {"hmacSecret": "short"}}), "ipc.hmacSecret")
    assert "expected str of length >= 32" in problem
    assert "got" in problem


def test_missing_required_nested_key() -> None:
    doc = {"instruments": {"X": {"tickSize": "0.1", "minQty": "1"}}}
    problem = problem_at(problems_of(doc), "instruments.X.qtyStep")
    assert "expected a value, got nothing" in problem
    assert "required" in problem


def test_section_that_is_not_an_object() -> None:
    problem = problem_at(problems_of({"api": "x"}), "api")
    assert "expected object" in problem
    assert '(got "x")' in problem


@pytest.mark.parametrize(("data", "got"), [([], "got list"), ("x", 'got "x"'), (None, "got null")])
def test_root_that_is_not_an_object(data: Any, got: str) -> None:
    problem = problem_at(problems_of(data), "<root>")
    assert "expected an object" in problem
    assert got in problem


def test_root_list_in_a_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == ["<root>: expected an object, got list"]


# ----- cross-field checks -----------------------------------------------------------------


def test_live_mode_with_the_paper_broker_is_refused() -> None:
    problem = problem_at(problems_of({"mode": "live"}), "mode")
    assert '"live" needs broker.name other than "paper"' in problem
    assert 'got "paper"' in problem


def test_non_loopback_host_without_a_token_is_refused() -> None:
    problem = problem_at(problems_of({"api": {"host": "0.0.0.0"}}), "api.host")
    assert "needs api.token" in problem
    assert "'0.0.0.0' without a token" in problem


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert parse_config({"api": {"host": host}}, environ={}).api.host == host


def test_an_api_token_shorter_than_32_characters_is_refused() -> None:
    short = "t0ken-" + "x" * 25  # 31 characters
    for data, environ in (({"api": {"token": short}}, {}), ({}, {"TITAN_API_TOKEN": short})):
        problem = problem_at(problems_of(data, environ), "api.token")
        assert problem == "api.token: expected str of length >= 32 (got <hidden>)"
    assert parse_config({"api": {"token": short + "x"}}, environ={}).api.token == short + "x"


def test_non_loopback_host_with_a_token_is_accepted() -> None:
    cfg = parse_config({"api": {"host": "0.0.0.0", "token": API_TOKEN}}, environ={})
    assert cfg.api.host == "0.0.0.0"


@pytest.mark.parametrize("phase1", [5000, 6000])
def test_phase1_equity_must_be_below_phase2(phase1: int) -> None:
    doc = {"risk": {"phase1MaxEquity": phase1, "phase2MaxEquity": 5000}}
    problem = problem_at(problems_of(doc), "risk.phase1MaxEquity")
    assert "expected less than risk.phase2MaxEquity" in problem
    assert f"got {float(phase1)} >= 5000.0" in problem


def test_paper_symbol_without_an_instrument_is_refused() -> None:
    doc = {
        "symbols": ["BTCUSDT", "XRPUSDT"],
        "simulation": {"startPrices": {"BTCUSDT": 95000, "XRPUSDT": 2.5}},
    }
    problems = problems_of(doc)
    assert len(problems) == 1
    problem = problem_at(problems, "instruments.XRPUSDT")
    assert "expected an instrument definition" in problem
    assert "got nothing" in problem


def test_all_cross_field_problems_are_reported_together() -> None:
    doc = {
        "mode": "live",
        "api": {"host": "10.0.0.1"},
        "risk": {"phase1MaxEquity": 9000},
        "symbols": ["BTCUSDT", "XRPUSDT"],
        "simulation": {"startPrices": {"BTCUSDT": 95000, "XRPUSDT": 2.5}},
    }
    problems = problems_of(doc)
    paths = ("mode", "api.host", "risk.phase1MaxEquity", "instruments.XRPUSDT")
    live = ("api.token", "ipc.hmacSecret")  # what live mode needs set
    assert len(problems) == len(paths) + len(live), problems
    for path in paths + live:
        problem_at(problems, path)


# ----- live mode: no placeholder, nothing it needs missing ----------------------------------

LIVE = {"mode": "live", "broker": {"name": "bybit"}, "feeds": ["bybit"]}
LIVE_SECRETS = {"api": {"token": API_TOKEN}, "ipc": {"hmacSecret": HMAC_SECRET}}


def live(**sections: Any) -> dict[str, Any]:
    return merge({**LIVE, **LIVE_SECRETS}, sections)


def test_live_mode_with_its_secrets_is_accepted() -> None:
    assert parse_config(live(), environ={}).mode == "live"


def test_live_mode_lists_every_missing_secret_at_once() -> None:
    problems = problems_of(LIVE)
    assert problems == [
        "api.token: expected a value in live mode (in the file or TITAN_API_TOKEN), got nothing",
        "ipc.hmacSecret: expected a value in live mode (in the file or TITAN_IPC_HMAC_SECRET), "
        "got nothing",
    ]


@pytest.mark.parametrize(
    "value",
    [
        "replace-with-a-long-random-token",
        "CHANGE_ME-0123456789abcdef0123456789",
        "<your api token, 32 characters or more>",
        "your-token-here-0123456789abcdef012",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ],
)
def test_live_mode_refuses_a_placeholder_without_echoing_a_secret(value: str) -> None:
    problems = problems_of(live(api={"token": value}))
    assert problems == [
        "api.token: expected a real value in live mode, got a placeholder (<hidden>)"
    ]


def test_live_mode_checks_every_string_and_lists_them_together() -> None:
    doc = live(
        ipc={"hmacSecret": "replace-with-at-least-32-random-characters"},
        exchanges={"bybit": {"restUrl": "https://<your-endpoint>"}},
        logging={"dir": "/var/log/CHANGE_ME"},
    )
    problems = problems_of(doc)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "ipc.hmacSecret",
        "exchanges.bybit.restUrl",
        "logging.dir",
    ]
    assert problem_at(problems, "exchanges.bybit.restUrl").endswith('("https://<your-endpoint>")')


def test_live_problems_are_not_repeated_for_a_key_already_bad() -> None:
    problems = problems_of(live(ipc={"hmacSecret": "short"}))
    assert "expected str of length >= 32" in problem_at(problems, "ipc.hmacSecret")


def test_paper_mode_stays_permissive() -> None:
    placeholder = "CHANGE_ME_" * 4  # long enough for the 32-character rule
    doc = {"api": {"token": placeholder}, "database": {"s3": {"bucket": "<bucket>"}}}
    assert parse_config(doc, environ={}).api.token == placeholder


# ----- keys this version ignores ----------------------------------------------------------


def test_every_ignored_key_is_a_config_key() -> None:
    """A renamed key must not drop out of the list unnoticed."""
    defaults = msgspec.to_builtins(Config())
    for key in NOT_USED_YET:
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]


def test_ignored_keys_are_named_only_when_set_to_something() -> None:
    assert ignored_settings(load_config(DEFAULT_JSON, environ={})) == []
    cfg = parse_config(
        {
            "broker": {"slippagePct": 0.5},
            "exchanges": {"bybit": {"testnet": True}},  # used now: not named
        },
        environ={},
    )
    assert ignored_settings(cfg) == [
        "broker.slippagePct = 0.5 is ignored in this version "
        "(paper fills walk the book's depth instead)",
    ]


def test_the_backup_keys_are_no_longer_ignored() -> None:
    cfg = parse_config(
        {
            "database": {
                "backupDir": "/srv/backups",
                "backupIntervalMin": 60,
                "backupRetentionDays": 7,
                "s3": {"bucket": "b", "prefix": "p/", "region": "eu-west-1", "endpointUrl": "x"},
            }
        },
        environ={},
    )
    assert ignored_settings(cfg) == []


# ----- several problems at once -----------------------------------------------------------


def test_every_problem_in_a_document_is_reported() -> None:
    doc = {
        "mode": "demo",
        "api": {"port": "x", "bogus": 1},
        "ipc": {"socketMode": "999", "hmacSecret": "short"},
        "feeds": ["foo"],
        "symbols": ["btc"],
        "risk": {"maxRiskPct": 150},
        "instruments": {"X": {"tickSize": "0.1", "minQty": "1"}},
        "rsik": {},
    }
    paths = [
        "mode",
        "api.port",
        "api.bogus",
        "ipc.socketMode",
        "ipc.hmacSecret",
        "feeds[0]",
        "symbols[0]",
        "risk.maxRiskPct",
        "instruments.X.qtyStep",
        "rsik",
    ]
    problems = problems_of(doc)
    assert len(problems) == len(paths), problems
    for path in paths:
        problem_at(problems, path)


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"api": {"port": "x"}, "mode": "demo"}, environ={})
    text = str(info.value)
    for problem in info.value.problems:
        assert problem in text


def test_type_and_cross_field_problems_are_reported_in_one_pass() -> None:
    problems = problems_of({"api": {"port": "x"}, "mode": "live"})
    problem_at(problems, "api.port")
    problem_at(problems, "mode")


# ----- environment ------------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "api": {"port": 1234, "token": "from-the-file-" + "f" * 32},
                "ipc": {"socketPath": "file.sock", "hmacSecret": "f" * 40},
                "database": {"path": "file.db"},
            }
        )
    )
    environ = {
        "TITAN_API_PORT": "9999",
        "TITAN_IPC_SOCKET": "env.sock",
        "TITAN_DB_PATH": "env.db",
        "TITAN_API_TOKEN": API_TOKEN,
        "TITAN_IPC_HMAC_SECRET": HMAC_SECRET,
    }
    cfg = load_config(path, environ=environ)
    assert cfg.api.port == 9999
    assert cfg.ipc.socket_path == "env.sock"
    assert cfg.database.path == "env.db"
    assert cfg.api.token == API_TOKEN
    assert cfg.ipc.hmac_secret == HMAC_SECRET


def test_environment_overrides_sections_missing_from_the_file() -> None:
    cfg = parse_config({}, environ={"TITAN_API_PORT": "9000", "TITAN_DB_PATH": "env.db"})
    assert cfg.api.port == 9000
    assert cfg.database.path == "env.db"


def test_process_environment_is_used_when_none_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TITAN_API_PORT", "9123")
    path = tmp_path / "config.json"
    path.write_text('{"api": {"port": 1234}}')
    assert load_config(path).api.port == 9123


def test_non_integer_port_in_the_environment() -> None:
    problems = problems_of({}, environ={"TITAN_API_PORT": "abc"})
    problem = problem_at(problems, "env TITAN_API_PORT")
    assert "expected int" in problem
    assert "got 'abc'" in problem


def test_out_of_range_port_in_the_environment_is_checked_like_the_file() -> None:
    problem = problem_at(problems_of({}, environ={"TITAN_API_PORT": "70000"}), "api.port")
    assert "expected int <= 65535" in problem
    assert "got 70000" in problem


def test_environment_and_file_problems_are_reported_together() -> None:
    problems = problems_of({"mode": "demo"}, environ={"TITAN_API_PORT": "abc"})
    assert len(problems) == 2
    problem_at(problems, "env TITAN_API_PORT")
    problem_at(problems, "mode")


def test_redacted_hides_the_token_and_the_hmac_secret() -> None:
    cfg = parse_config(
        {}, environ={"TITAN_API_TOKEN": API_TOKEN, "TITAN_IPC_HMAC_SECRET": HMAC_SECRET}
    )
    shown = redacted(cfg)
    assert shown["api"]["token"] == "***"
    assert shown["ipc"]["hmacSecret"] == "***"
    text = json.dumps(shown)
    assert API_TOKEN not in text
    assert HMAC_SECRET not in text
    # Everything else is still there.
    assert shown["api"]["port"] == 8080
    assert shown["ipc"]["socketPath"] == "titan-ipc.sock"


def test_redacted_leaves_unset_secrets_empty() -> None:
    shown = redacted(parse_config({}, environ={}))
    assert shown["api"]["token"] is None
    assert shown["ipc"]["hmacSecret"] is None


def test_rejected_secret_from_the_environment_is_not_echoed() -> None:
    secret = "hunter2-is-my-password"  # too short: 22 characters
    with pytest.raises(ConfigError) as info:
        parse_config({}, environ={"TITAN_IPC_HMAC_SECRET": secret})
    problem_at(info.value.problems, "ipc.hmacSecret")
    assert secret not in str(info.value)


def test_caller_document_is_not_mutated() -> None:
    doc: dict[str, Any] = {"api": {"port": 1234}, "symbols": ["BTCUSDT"]}
    before = copy.deepcopy(doc)
    cfg = parse_config(
        doc,
        environ={"TITAN_API_PORT": "9999", "TITAN_DB_PATH": "env.db", "TITAN_IPC_SOCKET": "s"},
    )
    assert cfg.api.port == 9999
    assert doc == before


def test_caller_document_is_not_mutated_when_invalid() -> None:
    doc: dict[str, Any] = {"api": {"port": "x"}}
    before = copy.deepcopy(doc)
    problems_of(doc, environ={"TITAN_DB_PATH": "env.db"})
    assert doc == before


# ----- reading the file -------------------------------------------------------------------


def assert_no_chained_exception(err: ConfigError) -> None:
    """The error stands alone: no underlying OSError/JSON error traceback is attached."""
    assert err.__cause__ is None
    assert err.__suppress_context__ is True


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [problem] = info.value.problems
    assert str(path) in problem
    assert "cannot read the file" in problem
    assert_no_chained_exception(info.value)


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "mode": "paper",\n  "api": {"port": 8080,}\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: expected JSON")
    assert "line 3 column 24" in problem
    assert_no_chained_exception(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"logging": {"dir": "journaux-été"}}'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [problem] = info.value.problems
    assert str(path) in problem
    assert "expected UTF-8" in problem
    assert_no_chained_exception(info.value)


def test_valid_file_problems_are_reported_with_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"api": {"port": 70000}, "mode": "demo"}))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert len(info.value.problems) == 2
    problem_at(info.value.problems, "api.port")
    problem_at(info.value.problems, "mode")


def test_instruments_in_the_file_add_to_the_built_in_table() -> None:
    cfg = parse_config(
        {
            "symbols": ["BTCUSDT", "XRPUSDT"],
            "instruments": {"XRPUSDT": {"tickSize": "0.0001", "qtyStep": "1", "minQty": "1"}},
            "simulation": {"startPrices": {"BTCUSDT": 95000, "XRPUSDT": 2.1}},
        },
        environ={},
    )
    assert cfg.instruments["XRPUSDT"].tick_size == "0.0001"
    assert cfg.instruments["BTCUSDT"].qty_step == "0.001"


def test_non_json_constants_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "inf.json"
    path.write_text('{"broker": {"initialCapital": Infinity}}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "Infinity" in str(info.value)


# ----- exchange endpoints and feeds ---------------------------------------------------------


def test_bybit_testnet_swaps_the_default_urls_and_explicit_ones_win() -> None:
    mainnet = parse_config({}, environ={}).exchanges.bybit
    assert bybit_endpoints(mainnet) == (
        "https://api.bybit.com",
        "wss://stream.bybit.com/v5/public/linear",
        "wss://stream.bybit.com/v5/private",
    )
    testnet = parse_config({"exchanges": {"bybit": {"testnet": True}}}, environ={})
    assert bybit_endpoints(testnet.exchanges.bybit) == (
        "https://api-testnet.bybit.com",
        "wss://stream-testnet.bybit.com/v5/public/linear",
        "wss://stream-testnet.bybit.com/v5/private",
    )
    fake = parse_config(
        {"exchanges": {"bybit": {"testnet": True, "wsPublicUrl": "ws://127.0.0.1:9001/pub"}}},
        environ={},
    )
    _, ws_public, ws_private = bybit_endpoints(fake.exchanges.bybit)
    assert ws_public == "ws://127.0.0.1:9001/pub"  # never redirected away from a fake
    assert ws_private == "wss://stream-testnet.bybit.com/v5/private"


def test_the_bybit_broker_needs_the_bybit_feed() -> None:
    problems = problems_of({"broker": {"name": "bybit"}, "feeds": ["binance"]})
    assert problem_at(problems, "feeds") == (
        'feeds: broker.name "bybit" needs the "bybit" feed (the gates, marks and fills use '
        "the venue's own quotes), got ['binance']"
    )


def test_feed_urls_must_be_websocket_urls_and_feeds_unrepeated() -> None:
    problems = problems_of(
        {
            "feeds": ["binance", "binance"],
            "exchanges": {"binance": {"wsUrl": "https://fstream.binance.com"}},
        }
    )
    assert problem_at(problems, "feeds") == "feeds: expected no repeats, got ['binance', 'binance']"
    assert problem_at(problems, "exchanges.binance.wsUrl") == (
        "exchanges.binance.wsUrl: expected a ws:// or wss:// URL, got 'https://fstream.binance.com'"
    )


def test_the_feed_urls_are_no_longer_ignored() -> None:
    cfg = parse_config(
        {
            "exchanges": {
                "binance": {"wsUrl": "ws://x"},
                "bybit": {"wsPublicUrl": "ws://y", "testnet": True},
            }
        },
        environ={},
    )
    assert ignored_settings(cfg) == []


def test_the_bybit_broker_in_paper_mode_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"broker": {"name": "bybit"}}, environ={})
    assert any(
        p.startswith('broker.name: "bybit" sends real orders') for p in caught.value.problems
    )
