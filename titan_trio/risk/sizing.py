"""Equity phases and position sizing (SPEC §4, §6). Pure: Decimals in, Decimals out.

Sizing: risk amount = equity x effective risk %; quantity = risk amount / |entry - stop|,
capped so the position's notional <= equity x min(signal leverage, phase leverage) and
the account's total notional <= equity x maxTotalLeverage; rounded down to the
instrument's step; below the instrument minimum (quantity or notional) it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ipc.protocol import Reason
from titan_trio.config import RiskConfig
from titan_trio.domain.equity import equity_phase
from titan_trio.domain.instruments import Instrument

ZERO = Decimal(0)
HUNDRED = Decimal(100)


def _d(value: float) -> Decimal:
    return Decimal(repr(value))


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_risk_pct: Decimal
    phase_risk_pct: tuple[Decimal, Decimal, Decimal]
    phase_max_leverage: tuple[Decimal, Decimal, Decimal]
    phase1_max_equity: Decimal
    phase2_max_equity: Decimal
    max_positions: int
    allow_pyramiding: bool
    max_total_leverage: Decimal

    @classmethod
    def from_config(cls, r: RiskConfig) -> RiskLimits:
        return cls(
            max_risk_pct=_d(r.max_risk_pct),
            phase_risk_pct=(_d(r.phase1_risk_pct), _d(r.phase2_risk_pct), _d(r.phase3_risk_pct)),
            phase_max_leverage=(
                _d(r.phase1_max_leverage),
                _d(r.phase2_max_leverage),
                _d(r.phase3_max_leverage),
            ),
            phase1_max_equity=_d(r.phase1_max_equity),
            phase2_max_equity=_d(r.phase2_max_equity),
            max_positions=r.max_positions,
            allow_pyramiding=r.allow_pyramiding,
            max_total_leverage=_d(r.max_total_leverage),
        )


@dataclass(frozen=True, slots=True)
class PhaseRules:
    phase: int
    risk_pct: Decimal  # effective: min(phase risk, maxRiskPct)
    max_leverage: Decimal
    execution: str  # "maker" in phase 1, "taker" above


def phase_rules(equity: Decimal, limits: RiskLimits) -> PhaseRules:
    """Phase 1 below phase1MaxEquity, phase 2 below phase2MaxEquity, phase 3 above."""
    index = equity_phase(equity, limits.phase1_max_equity, limits.phase2_max_equity) - 1
    return PhaseRules(
        phase=index + 1,
        risk_pct=min(limits.phase_risk_pct[index], limits.max_risk_pct),
        max_leverage=limits.phase_max_leverage[index],
        execution="maker" if index == 0 else "taker",
    )


class EntryRejected(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Size:
    qty: Decimal
    notional: Decimal
    risk_usd: Decimal  # what the stop would lose at this quantity
    leverage: Decimal  # the position's notional / equity
    capped_by: str | None  # None, "position_leverage" or "total_leverage"


def size_position(
    *,
    equity: Decimal,
    risk_pct: Decimal,
    entry: Decimal,
    stop: Decimal,
    instrument: Instrument,
    leverage_cap: Decimal,
    open_notional: Decimal,
    max_total_leverage: Decimal,
) -> Size:
    """The quantity to trade, or EntryRejected(SIZE_TOO_SMALL | LEVERAGE_CAP)."""
    if equity <= 0:
        raise EntryRejected(Reason.SIZE_TOO_SMALL, f"equity is {equity}: nothing to risk")
    distance = abs(entry - stop)
    if distance == 0:
        raise EntryRejected(Reason.SIZE_TOO_SMALL, "stop equals entry: risk is undefined")
    qty = equity * risk_pct / HUNDRED / distance
    capped_by = None
    position_cap = equity * leverage_cap
    total_room = equity * max_total_leverage - open_notional
    if total_room <= 0:
        raise EntryRejected(
            Reason.LEVERAGE_CAP,
            f"account notional {open_notional:.2f} is already at the total leverage cap "
            f"({max_total_leverage}x of equity {equity:.2f})",
        )
    if qty * entry > position_cap:
        qty, capped_by = position_cap / entry, "position_leverage"
    if qty * entry > total_room:
        qty, capped_by = total_room / entry, "total_leverage"
    qty = instrument.floor_qty(qty)
    problem = (
        instrument.size_problem(qty, entry)
        if qty > 0
        else (f"quantity rounds to 0 (step {instrument.qty_step})")
    )
    if problem is not None:
        reason = Reason.LEVERAGE_CAP if capped_by == "total_leverage" else Reason.SIZE_TOO_SMALL
        raise EntryRejected(reason, problem)
    notional = qty * entry
    return Size(qty, notional, qty * distance, notional / equity, capped_by)
