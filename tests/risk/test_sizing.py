"""Sizing and phases, table-tested with exact decimals."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from ipc.protocol import Reason
from titan_trio.config import RiskConfig
from titan_trio.domain.instruments import Instrument
from titan_trio.risk.sizing import EntryRejected, RiskLimits, phase_rules, size_position

BTC = Instrument("BTCUSDT", D("0.10"), D("0.001"), D("0.001"), D("5"), D("100"))
SOL = Instrument("SOLUSDT", D("0.010"), D("0.1"), D("0.1"), D("5"), D("50"))
LIMITS = RiskLimits.from_config(RiskConfig())


@pytest.mark.parametrize(
    ("equity", "phase", "risk_pct", "max_leverage", "execution"),
    [
        (D("500"), 1, D("2.0"), D("30.0"), "maker"),
        (D("999.99"), 1, D("2.0"), D("30.0"), "maker"),
        (D("1000"), 2, D("1.5"), D("15.0"), "taker"),
        (D("4999.99"), 2, D("1.5"), D("15.0"), "taker"),
        (D("5000"), 3, D("1.0"), D("5.0"), "taker"),
        (D("100000"), 3, D("1.0"), D("5.0"), "taker"),
    ],
)
def test_phase_follows_equity(equity, phase, risk_pct, max_leverage, execution) -> None:
    rules = phase_rules(equity, LIMITS)
    assert (rules.phase, rules.risk_pct, rules.max_leverage, rules.execution) == (
        phase,
        risk_pct,
        max_leverage,
        execution,
    )


def test_effective_risk_is_capped_by_max_risk_pct() -> None:
    limits = RiskLimits.from_config(RiskConfig(max_risk_pct=0.5))
    assert phase_rules(D("500"), limits).risk_pct == D("0.5")
    assert phase_rules(D("50000"), limits).risk_pct == D("0.5")


def size(**overrides):
    args = dict(
        equity=D("10000"),
        risk_pct=D("1"),
        entry=D("95000"),
        stop=D("94500"),
        instrument=BTC,
        leverage_cap=D("5"),
        open_notional=D("0"),
        max_total_leverage=D("50"),
    )
    args.update(overrides)
    return size_position(**args)


@pytest.mark.parametrize(
    ("overrides", "qty", "capped_by"),
    [
        # 100 USDT risk over a 500 distance: 0.2 BTC, notional 19,000 < 5x equity.
        ({}, D("0.200"), None),
        # Short: the distance is the same whichever side the stop is on.
        ({"stop": D("95500")}, D("0.200"), None),
        # Rounded down to the step: 100 / 700 = 0.142857... -> 0.142.
        ({"stop": D("94300")}, D("0.142"), None),
        # Tight stop: 100 / 50 = 2 BTC = 190,000 notional, capped at 5x equity = 50,000.
        ({"stop": D("94950")}, D("0.526"), "position_leverage"),
        # Signal leverage 2 below the phase cap: 20,000 / 95,000 = 0.2105 -> 0.210.
        ({"stop": D("94950"), "leverage_cap": D("2")}, D("0.210"), "position_leverage"),
        # Total leverage room: 50x equity minus 480,000 open leaves 20,000.
        ({"stop": D("94950"), "open_notional": D("480000")}, D("0.210"), "total_leverage"),
        # SOL's step is 0.1: 100 / 1.8 = 55.55 -> 55.5.
        ({"instrument": SOL, "entry": D("180"), "stop": D("178.2")}, D("55.5"), None),
    ],
)
def test_size_table(overrides, qty, capped_by) -> None:
    result = size(**overrides)
    assert result.qty == qty
    assert result.capped_by == capped_by
    entry = overrides.get("entry", D("95000"))
    assert result.notional == qty * entry
    assert result.risk_usd == qty * abs(entry - overrides.get("stop", D("94500")))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        # 1 USDT risk over 500: 0.002 BTC -> fine; 0.1 USDT: 0.0002 -> below 0.001.
        ({"risk_pct": D("0.001")}, Reason.SIZE_TOO_SMALL),
        # Notional below 5 USDT on SOL: 0.4 USDT risk over 1 = 0.4 SOL x 10 = 4 USDT.
        (
            {"instrument": SOL, "entry": D("10"), "stop": D("9"), "risk_pct": D("0.004")},
            Reason.SIZE_TOO_SMALL,
        ),
        ({"stop": D("95000")}, Reason.SIZE_TOO_SMALL),
        ({"equity": D("0")}, Reason.SIZE_TOO_SMALL),
        ({"open_notional": D("500000")}, Reason.LEVERAGE_CAP),
        # Room left is 1 USDT: capped below the minimum by the total cap.
        ({"open_notional": D("499999")}, Reason.LEVERAGE_CAP),
    ],
)
def test_size_refusals(overrides, reason) -> None:
    with pytest.raises(EntryRejected) as info:
        size(**overrides)
    assert info.value.reason is reason
    assert info.value.message
