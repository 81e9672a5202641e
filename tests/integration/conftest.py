"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from titan_trio.config import Config


@pytest.fixture
def risk_config(make_config: Callable[..., Config]) -> Callable[..., Config]:
    def make(**extra: Any) -> Config:
        base: dict[str, Any] = {
            "simulation": {"intervalMs": 60000},
            "execution": {"l2": {"maxAgeMs": 600000, "maxSpreadPct": 1}},
            # Size every entry at the 5x phase cap: 2 % risk over a 0.2 % stop.
            "risk": {"maxRiskPct": 2, "phase3RiskPct": 2, "maxDailyLossPct": 50},
        }
        for key, value in extra.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return make_config(**base)

    return make
