"""Configuration: JSON file with camelCase keys, environment overrides, full validation.

Validation never stops at the first problem: it walks the whole document and reports
every problem as ``path: expected ..., got ...`` so an operator fixes a file in one pass.
The structs below are the single source of the keys and their defaults (SPEC §4).
Percent keys end in ``Pct`` and hold percent (7 means 7 %), never fractions.

Two kinds of key get special treatment. Keys this version accepts but does not act on
(NOT_USED_YET) are named when set to anything but their default: a WARNING each at start
and a line from ``titan config validate``, never silence. In ``live`` mode every key
LIVE_REQUIRED names must hold a value, and no string anywhere may be a placeholder left
from the example file (PLACEHOLDER): each is a problem, listed with the rest. Paper mode
checks neither.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

from titan_trio.errors import ConfigError

Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
PositivePct = Annotated[float, msgspec.Meta(gt=0, le=100)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
# A shared secret (api.token, ipc.hmacSecret): long enough that guessing it is hopeless.
Secret = Annotated[str, msgspec.Meta(min_length=32)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    pass


class ApiConfig(_Section):
    host: NonEmptyStr = "127.0.0.1"
    port: Port = 8080
    token: Secret | None = None
    keep_alive_timeout_s: PositiveFloat = 5.0
    max_connections: PositiveInt = 64


class IpcConfig(_Section):
    socket_path: NonEmptyStr = "titan-ipc.sock"
    socket_mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0600"
    hmac_secret: Secret | None = None
    max_connections: PositiveInt = 16
    max_connections_per_process: PositiveInt = 8
    idle_timeout_s: PositiveFloat | None = 300.0  # null: idle connections stay open
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256, le=16 * 1024 * 1024)] = 65536
    # A PREPARE whose timestamp is older than this is refused EXPIRED (SPEC §4).
    max_signal_age_ms: PositiveInt = 5000


class S3Config(_Section):
    bucket: NonEmptyStr | None = None
    prefix: str = "titan-backups/"
    region: NonEmptyStr | None = None
    endpoint_url: NonEmptyStr | None = None


class DatabaseConfig(_Section):
    path: NonEmptyStr = "titan_execution.db"
    backup_dir: NonEmptyStr = "backups"
    backup_retention_days: PositiveInt = 30
    backup_interval_min: PositiveInt | None = None
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    s3: S3Config = msgspec.field(default_factory=S3Config)


class BrokerConfig(_Section):
    name: Literal["paper", "bybit"] = "paper"
    initial_capital: PositiveFloat = 10000.0
    maker_fee_pct: Pct = 0.02
    taker_fee_pct: Pct = 0.055
    # No effect: paper fills walk the book's depth (brokers/paper_exchange.py). Still
    # accepted so that existing configuration files load.
    slippage_pct: Pct = 0.01


class BybitConfig(_Section):
    rest_url: NonEmptyStr = "https://api.bybit.com"
    ws_public_url: NonEmptyStr = "wss://stream.bybit.com/v5/public/linear"
    ws_private_url: NonEmptyStr = "wss://stream.bybit.com/v5/private"
    testnet: bool = False


class BinanceConfig(_Section):
    ws_url: NonEmptyStr = "wss://fstream.binance.com"


# Bybit's testnet endpoints (EXCHANGES.md), used for the URL keys left at their defaults
# when exchanges.bybit.testnet is true.
BYBIT_TESTNET = {
    "rest_url": "https://api-testnet.bybit.com",
    "ws_public_url": "wss://stream-testnet.bybit.com/v5/public/linear",
    "ws_private_url": "wss://stream-testnet.bybit.com/v5/private",
}


def bybit_endpoints(cfg: BybitConfig) -> tuple[str, str, str]:
    """(rest, ws_public, ws_private) to use. ``testnet: true`` swaps in the testnet URL
    for each key still at its (mainnet) default; a URL set explicitly always wins, so a
    test pointing the keys at a local fake is never redirected to Bybit."""
    default = BybitConfig()
    chosen = []
    for key in ("rest_url", "ws_public_url", "ws_private_url"):
        url = getattr(cfg, key)
        if cfg.testnet and url == getattr(default, key):
            url = BYBIT_TESTNET[key]
        chosen.append(url)
    return chosen[0], chosen[1], chosen[2]


class ExchangesConfig(_Section):
    bybit: BybitConfig = msgspec.field(default_factory=BybitConfig)
    binance: BinanceConfig = msgspec.field(default_factory=BinanceConfig)


class InstrumentConfig(_Section):
    tick_size: Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?$")]
    qty_step: Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?$")]
    min_qty: Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?$")]
    min_notional: Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?$")] = "5"
    max_leverage: PositiveFloat = 100.0


def _default_instruments() -> dict[str, InstrumentConfig]:
    # Bybit linear perpetual filters for the default symbols (instruments-info, 2026).
    return {
        "BTCUSDT": InstrumentConfig("0.10", "0.001", "0.001", "5", 100.0),
        "ETHUSDT": InstrumentConfig("0.01", "0.01", "0.01", "5", 100.0),
        "SOLUSDT": InstrumentConfig("0.010", "0.1", "0.1", "5", 50.0),
    }


class RiskConfig(_Section):
    max_risk_pct: PositivePct = 2.0
    phase1_risk_pct: PositivePct = 2.0
    phase2_risk_pct: PositivePct = 1.5
    phase3_risk_pct: PositivePct = 1.0
    phase1_max_equity: PositiveFloat = 1000.0
    phase2_max_equity: PositiveFloat = 5000.0
    phase1_max_leverage: PositiveFloat = 30.0
    phase2_max_leverage: PositiveFloat = 15.0
    phase3_max_leverage: PositiveFloat = 5.0
    max_positions: PositiveInt = 5
    allow_pyramiding: bool = False
    max_total_leverage: PositiveFloat = 50.0
    max_drawdown_pct: PositivePct = 7.0
    max_daily_loss_pct: PositivePct = 5.0
    max_consecutive_losses: PositiveInt = 5
    flatten_on_breaker: bool = True


class L2Config(_Section):
    max_age_ms: PositiveInt = 1000
    max_spread_pct: PositivePct = 0.1
    max_slippage_pct: PositivePct = 0.2


class ExecutionConfig(_Section):
    prepare_ttl_ms: PositiveInt = 10000
    maker_timeout_ms: PositiveInt = 5000
    chase_interval_ms: PositiveInt = 200
    chase_max_ms: PositiveInt = 1000
    chase_max_ticks: PositiveInt = 5
    # Signals at least this fast (their velocity field) execute taker in any phase.
    taker_velocity: Annotated[float, msgspec.Meta(ge=0)] | None = 1.0
    # Every price of a PREPARE (entry zone, stop, take profits) within this percent of
    # the market's mid price, or INVALID_SIGNAL: a fat-fingered price never reaches an order.
    max_price_deviation_pct: Annotated[float, msgspec.Meta(gt=0, le=100)] = 50.0
    l2: L2Config = msgspec.field(default_factory=L2Config)


class ReconcileConfig(_Section):
    interval_s: PositiveFloat = 60.0
    # A position reconciliation adopts with no stop known gets one this far from the
    # market (the service never leaves a position it holds unprotected).
    adopted_stop_pct: Annotated[float, msgspec.Meta(gt=0, le=50)] = 2.0
    # A position only the broker holds: adopted and protected (true), or closed at
    # market (false). See state/reconcile.py for why adopting is the default.
    adopt_unknown: bool = True


class SimulationConfig(_Section):
    """The simulated market feed (the embedded default)."""

    seed: int = 42
    interval_ms: PositiveInt = 250
    volatility_pct: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.02
    spread_ticks: PositiveInt = 1
    start_prices: dict[str, PositiveFloat] = msgspec.field(
        default_factory=lambda: {"BTCUSDT": 95000.0, "ETHUSDT": 3500.0, "SOLUSDT": 180.0}
    )
    top_size_notional: PositiveFloat = 250000.0


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    dir: NonEmptyStr = "logs"


FeedName = Literal["simulated", "binance", "bybit"]


class Config(_Section):
    mode: Literal["paper", "live"] = "paper"
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    ipc: IpcConfig = msgspec.field(default_factory=IpcConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    exchanges: ExchangesConfig = msgspec.field(default_factory=ExchangesConfig)
    feeds: Annotated[list[FeedName], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["simulated"]
    )
    symbols: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{2,30}$")]], msgspec.Meta(min_length=1)
    ] = msgspec.field(default_factory=lambda: ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    instruments: dict[str, InstrumentConfig] = msgspec.field(default_factory=_default_instruments)
    risk: RiskConfig = msgspec.field(default_factory=RiskConfig)
    execution: ExecutionConfig = msgspec.field(default_factory=ExecutionConfig)
    reconcile: ReconcileConfig = msgspec.field(default_factory=ReconcileConfig)
    simulation: SimulationConfig = msgspec.field(default_factory=SimulationConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)

    @property
    def socket_mode(self) -> int:
        return int(self.ipc.socket_mode, 8)

    @property
    def venue(self) -> str:
        """The feed whose quotes the gates, marks and paper fills use: the broker's own
        exchange when it has a feed (bybit), else the first feed listed."""
        return "bybit" if self.broker.name == "bybit" else self.feeds[0]


# Keys accepted but not acted on in this version, and why. Each one set to anything but
# its default is named at start (a WARNING) and by `titan config validate`; a default
# asks for nothing, so it is not mentioned. The issue that builds a feature removes its
# keys here.
NOT_USED_YET: dict[str, str] = {
    "broker.slippagePct": "paper fills walk the book's depth instead",
}

# Keys live trading needs a value in (from the file or the environment variable named):
# the operator's API actions and the strategies' signals on a real account must be
# authenticated, whatever host the API binds.
LIVE_REQUIRED: dict[str, str] = {
    "api.token": "TITAN_API_TOKEN",
    "ipc.hmacSecret": "TITAN_IPC_HMAC_SECRET",
}

# A value left as an example file has it: replace-with-..., your-..., CHANGE_ME, <...>,
# xxx, TODO. Checked on every string of a live configuration.
PLACEHOLDER = re.compile(
    r"^(?:replace|your)[-_ ]|(?<![a-z])change[-_ ]?me(?![a-z])|<[^<>]*>"
    r"|^[x_-]*xxx[x_-]*$|^(?:\.{3}|todo|tbd|fixme|placeholder)$",
    re.IGNORECASE,
)

# Environment variable -> (path in the document, parser). TITAN_CONFIG picks the file.
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], type]] = {
    "TITAN_API_PORT": (("api", "port"), int),
    "TITAN_IPC_SOCKET": (("ipc", "socketPath"), str),
    "TITAN_DB_PATH": (("database", "path"), str),
    "TITAN_API_TOKEN": (("api", "token"), str),
    "TITAN_IPC_HMAC_SECRET": (("ipc", "hmacSecret"), str),
}
SECRET_ENV = {"TITAN_API_TOKEN", "TITAN_IPC_HMAC_SECRET"}


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct class a field holds, looking through Annotated and Optional."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    origin = get_origin(tp)
    if origin is Annotated:
        return _struct_type(get_args(tp)[0])
    return None


class _Validator:
    """Walks a document against the Config structs, collecting every problem and the key
    paths that hold bad values (so cross-field checks can still run on the rest)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.bad_keys: list[tuple[str, ...]] = []

    def walk(self, data: Any, cls: type[msgspec.Struct], keys: tuple[str, ...]) -> None:
        path = ".".join(keys)
        if not isinstance(data, dict):
            self.problems.append(f"{path or '<root>'}: expected an object, got {_describe(data)}")
            self.bad_keys.append(keys)
            return
        fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
        for key in data:
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.problems.append(
                    f"{'.'.join((*keys, key))}: unknown key (expected one of: {known})"
                )
                self.bad_keys.append((*keys, key))
        for name, field in fields.items():
            where = (*keys, name)
            if name not in data:
                if field.required:
                    self.problems.append(
                        f"{'.'.join(where)}: expected a value, got nothing (key is required)"
                    )
                    self.bad_keys.append(keys)
                continue
            value = data[name]
            sub = _struct_type(field.type)
            if sub is not None and isinstance(value, dict):
                self.walk(value, sub, where)
            elif get_origin(field.type) is dict and isinstance(value, dict):
                self.walk_mapping(value, field.type, where)
            else:
                self.check(value, field.type, where)

    def walk_mapping(self, value: dict, tp: Any, keys: tuple[str, ...]) -> None:
        _key_type, value_type = get_args(tp)
        sub = _struct_type(value_type)
        for key, item in value.items():
            if sub is not None:
                self.walk(item, sub, (*keys, key))
            else:
                self.check(item, value_type, (*keys, key))

    def check(self, value: Any, tp: Any, keys: tuple[str, ...]) -> None:
        try:
            msgspec.convert(value, tp, strict=True)
        except msgspec.ValidationError as exc:
            detail = str(exc).replace("`", "")
            suffix = ""
            if " - at $" in detail:  # msgspec names the offending element: fold it in
                detail, suffix = detail.split(" - at $", 1)
                value = _pick(value, suffix)
            if detail.startswith("Invalid enum value"):
                allowed = ", ".join(json.dumps(v) for v in _literal_values(tp))
                detail = f"expected one of {allowed}"
            shown = "<hidden>" if _SECRET_KEY.search(keys[-1]) else _describe(value)
            self.problems.append(
                f"{'.'.join(keys)}{suffix}: {detail[0].lower() + detail[1:]} (got {shown})"
            )
            self.bad_keys.append(keys)


def _literal_values(tp: Any) -> list[Any]:
    """The allowed values of the Literal somewhere inside ``tp``."""
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    for arg in get_args(tp):
        found = _literal_values(arg)
        if found:
            return found
    return []


def _pick(value: Any, suffix: str) -> Any:
    for index in re.findall(r"\[(\d+)\]", suffix):
        try:
            value = value[int(index)]
        except (IndexError, KeyError, TypeError):
            break
    return value


def _without(data: dict[str, Any], bad_keys: list[tuple[str, ...]]) -> dict[str, Any]:
    """A copy of ``data`` with every bad key removed, so its defaults stand in."""
    data = json.loads(json.dumps(data))
    for keys in bad_keys:
        if not keys:
            return {}
        node = data
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(keys[-1], None)
    return data


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _at(document: Any, key: str) -> Any:
    """The value at a dotted camelCase ``key`` of a built-ins document."""
    for part in key.split("."):
        document = document[part]
    return document


def _strings(node: Any, keys: str = "") -> list[tuple[str, str]]:
    """Every string in a built-ins document, with its dotted path."""
    if isinstance(node, dict):
        return [
            found
            for key, value in node.items()
            for found in _strings(value, f"{keys}.{key}" if keys else key)
        ]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in _strings(value, f"{keys}[{i}]")]
    return [(keys, node)] if isinstance(node, str) else []


def _live_problems(cfg: Config) -> list[str]:
    problems: list[str] = []
    values = msgspec.to_builtins(cfg)
    for key, env in LIVE_REQUIRED.items():
        if _at(values, key) is None:
            problems.append(
                f"{key}: expected a value in live mode (in the file or {env}), got nothing"
            )
    for key, value in _strings(values):
        if PLACEHOLDER.search(value):
            shown = "<hidden>" if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) else _describe(value)
            problems.append(
                f"{key}: expected a real value in live mode, got a placeholder ({shown})"
            )
    return problems


def ignored_settings(cfg: Config) -> list[str]:
    """One line per NOT_USED_YET key set to anything but its default: the key, its value,
    and that this version ignores it (and why)."""
    values = msgspec.to_builtins(cfg)
    defaults = msgspec.to_builtins(Config())
    return [
        f"{key} = {_describe(_at(values, key))} is ignored in this version ({why})"
        for key, why in NOT_USED_YET.items()
        if _at(values, key) != _at(defaults, key)
    ]


def _semantic_problems(cfg: Config) -> list[str]:
    problems: list[str] = []
    if cfg.mode == "live" and cfg.broker.name == "paper":
        problems.append('mode: "live" needs broker.name other than "paper", got "paper"')
    if cfg.mode == "live":
        problems += _live_problems(cfg)
    if cfg.broker.name == "bybit" and cfg.mode != "live":
        problems.append(
            'broker.name: "bybit" sends real orders, so it needs mode "live" (with '
            'exchanges.bybit.testnet true for Bybit\'s testnet), got mode "paper"'
        )
    if cfg.api.token is None and not _is_loopback(cfg.api.host):
        problems.append(
            f"api.host: a non-loopback host needs api.token set, got {cfg.api.host!r} "
            "without a token"
        )
    r = cfg.risk
    if r.phase1_max_equity >= r.phase2_max_equity:
        problems.append(
            "risk.phase1MaxEquity: expected less than risk.phase2MaxEquity, "
            f"got {r.phase1_max_equity} >= {r.phase2_max_equity}"
        )
    if len(set(cfg.symbols)) != len(cfg.symbols):
        problems.append(f"symbols: expected no repeats, got {cfg.symbols}")
    if cfg.broker.name == "paper":
        for symbol in cfg.symbols:
            if symbol not in cfg.instruments:
                problems.append(
                    f"instruments.{symbol}: expected an instrument definition for every "
                    "symbol traded on the paper broker, got nothing"
                )
    if len(set(cfg.feeds)) != len(cfg.feeds):
        problems.append(f"feeds: expected no repeats, got {cfg.feeds}")
    if cfg.broker.name == "bybit" and "bybit" not in cfg.feeds:
        problems.append(
            'feeds: broker.name "bybit" needs the "bybit" feed (the gates, marks and '
            f"fills use the venue's own quotes), got {cfg.feeds}"
        )
    for key, url in (
        ("exchanges.binance.wsUrl", cfg.exchanges.binance.ws_url),
        ("exchanges.bybit.wsPublicUrl", cfg.exchanges.bybit.ws_public_url),
    ):
        if not url.startswith(("ws://", "wss://")):
            problems.append(f"{key}: expected a ws:// or wss:// URL, got {url!r}")
    if "simulated" in cfg.feeds:
        for symbol in cfg.symbols:
            if symbol not in cfg.simulation.start_prices:
                problems.append(
                    f"simulation.startPrices.{symbol}: expected a start price for every "
                    "symbol of the simulated feed, got nothing"
                )
    for name, inst in cfg.instruments.items():
        for key in ("tick_size", "qty_step", "min_qty"):
            if float(getattr(inst, key)) <= 0:
                camel = msgspec.structs.fields(InstrumentConfig)
                enc = next(f.encode_name for f in camel if f.name == key)
                problems.append(f"instruments.{name}.{enc}: expected > 0, got {getattr(inst, key)}")
    return problems


def apply_env(data: dict[str, Any], environ: dict[str, str], problems: list[str]) -> None:
    """Write the environment overrides into the raw document (before validation)."""
    for var, (path, parser) in ENV_OVERRIDES.items():
        if var not in environ:
            continue
        raw = environ[var]
        try:
            value: Any = parser(raw)
        except ValueError:
            shown = "<hidden>" if var in SECRET_ENV else repr(raw)
            problems.append(f"env {var}: expected {parser.__name__}, got {shown}")
            continue
        node = data
        for part in path[:-1]:
            existing = node.get(part)
            if not isinstance(existing, dict):
                existing = {}
                node[part] = existing
            node = existing
        node[path[-1]] = value


def parse_config(data: Any, environ: dict[str, str] | None = None) -> Config:
    """Validate a decoded JSON document (plus environment) and build the Config.

    Raises ConfigError listing every problem.
    """
    problems: list[str] = []
    if isinstance(data, dict):
        data = json.loads(json.dumps(data))  # never mutate the caller's document
        apply_env(data, environ if environ is not None else dict(os.environ), problems)
        if isinstance(data.get("instruments"), dict):  # add to the built-in table
            builtin = msgspec.to_builtins(_default_instruments())
            data["instruments"] = {**builtin, **data["instruments"]}
    validator = _Validator()
    validator.walk(data, Config, ())
    problems += validator.problems
    if not problems:
        cfg = msgspec.convert(data, Config, strict=True)
        problems = _semantic_problems(cfg)
        if problems:
            raise ConfigError(problems)
        return cfg
    # Cross-field checks on what is valid, with defaults where values were bad, so a
    # file with both kinds of problem is fixed in one pass.
    if isinstance(data, dict):
        try:
            partial = msgspec.convert(_without(data, validator.bad_keys), Config, strict=True)
        except msgspec.ValidationError:
            partial = None
        if partial is not None:  # nothing more about a key already reported as bad
            bad = {".".join(keys) for keys in validator.bad_keys}
            problems += [
                p
                for p in _semantic_problems(partial)
                if p not in problems and p.split(": ", 1)[0] not in bad
            ]
    raise ConfigError(problems)


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read, validate and return the configuration at ``path``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read the file ({exc.strerror})"]) from None
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: expected UTF-8 text, got undecodable bytes"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [
                f"{p}: expected JSON, got a syntax error at line {exc.lineno} column {exc.colno}: "
                f"{exc.msg}"
            ]
        ) from None
    return parse_config(data, environ)


_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.json"


def default_config_path(environ: dict[str, str] | None = None) -> str:
    """TITAN_CONFIG if set, else ``config/default.json`` in the working directory or
    beside the package (a source checkout)."""
    env = environ if environ is not None else os.environ
    if env.get("TITAN_CONFIG"):
        return env["TITAN_CONFIG"]
    local = Path("config/default.json")
    return str(local if local.exists() else _DEFAULT_CONFIG)


_SECRET_KEY = re.compile(r"(token|secret|password)", re.IGNORECASE)


def redacted(cfg: Config) -> dict[str, Any]:
    """The configuration as a JSON-able dict with every secret replaced by '***'."""

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if _SECRET_KEY.search(k) and v is not None else scrub(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return scrub(msgspec.to_builtins(cfg))
