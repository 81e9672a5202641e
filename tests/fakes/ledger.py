"""The fake account's one-way positions and unified wallet: what a fill does to them
(average entry, realised P&L, fees), leverage, position stops, and their Bybit v5 views.

Pure and synchronous. The wallet balance is the deposit plus realised P&L minus fees;
equity adds unrealised P&L at the mark (the mid on the tick); available is equity minus
the initial margin of positions (at their average entry) and of open orders. The
maintenance margin is shown as a twentieth of the initial margin (no liquidation is
simulated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.fakes.market import Market, fmt
from tests.fakes.orders import DEFAULT_LEVERAGE, Refusal, check_stops, decimal_param, money


@dataclass
class Position:
    symbol: str
    size: Decimal = Decimal(0)  # signed: > 0 long, < 0 short
    avg_price: Decimal = Decimal(0)
    leverage: Decimal = DEFAULT_LEVERAGE
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    cum_realised: Decimal = Decimal(0)
    cur_realised: Decimal = Decimal(0)
    created_ms: int = 0
    updated_ms: int = 0
    seq: int = 0

    @property
    def side(self) -> str:
        return "Buy" if self.size > 0 else "Sell" if self.size < 0 else ""


@dataclass
class Fill:
    """What a fill did to its position."""

    realised: Decimal
    closed: Decimal


@dataclass
class Ledger:
    deposit: Decimal
    market: Market
    now_ms: Callable[[], int]
    wallet_balance: Decimal = field(init=False)
    positions: dict[str, Position] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wallet_balance = self.deposit
        for symbol in self.market.quotes:
            self.positions[symbol] = Position(symbol)

    def apply_fill(
        self, symbol: str, side: str, qty: Decimal, price: Decimal, fee: Decimal
    ) -> Fill:
        """Move the position by a fill (closing first, then opening the rest the other
        way) and book realised P&L and the fee in the wallet."""
        position = self.positions[symbol]
        signed = qty if side == "Buy" else -qty
        realised = Decimal(0)
        closed = Decimal(0)
        now = self.now_ms()
        if position.size and (position.size > 0) != (signed > 0):
            direction = 1 if position.size > 0 else -1
            closed = min(qty, abs(position.size))
            realised = money(closed * (price - position.avg_price) * direction)
            position.size -= direction * closed
            rest = qty - closed
            if position.size == 0:
                position.avg_price = Decimal(0)
                position.take_profit = position.stop_loss = None
            if rest:
                position.size = rest if signed > 0 else -rest
                position.avg_price = price
                position.created_ms = now
        else:
            if position.size == 0:
                position.created_ms = now
                position.cur_realised = Decimal(0)
            new_size = position.size + signed
            value = abs(position.size) * position.avg_price + qty * price
            position.avg_price = money(value / abs(new_size))
            position.size = new_size
        position.cum_realised += realised - fee
        position.cur_realised += realised - fee
        position.updated_ms = now
        self.wallet_balance += realised - fee
        return Fill(realised, closed)

    def set_leverage(self, symbol: str, params: dict[str, Any]) -> None:
        buy = decimal_param(params, "buyLeverage", required=True)
        sell = decimal_param(params, "sellLeverage", required=True)
        if buy != sell:
            raise Refusal(
                10001, "params error: buyLeverage must equal sellLeverage in one-way mode"
            )
        assert buy is not None
        if not 1 <= buy <= self.market.instruments[symbol].max_leverage:
            raise Refusal(10001, f"params error: leverage {fmt(buy)} out of range")
        position = self.positions[symbol]
        if buy == position.leverage:
            raise Refusal(110043, "Set leverage not modified")
        position.leverage = buy

    def trading_stop(self, symbol: str, params: dict[str, Any]) -> None:
        if params.get("positionIdx", 0) not in (0, "0"):
            raise Refusal(10001, "position idx not match position mode")
        position = self.positions[symbol]
        tick = self.market.instruments[symbol].tick
        take_profit = decimal_param(params, "takeProfit")
        stop_loss = decimal_param(params, "stopLoss")
        if take_profit is None and stop_loss is None:
            raise Refusal(10001, "params error: takeProfit or stopLoss is required")
        if position.size == 0:
            raise Refusal(10001, "can not set tp/sl/ts for zero position")
        for name, value in (("takeProfit", take_profit), ("stopLoss", stop_loss)):
            if value and value % tick:
                raise Refusal(10001, f"params error: {name} is not on the tick {fmt(tick)}")
        check_stops(position.side, self.market.quotes[symbol].mid, take_profit, stop_loss)
        if take_profit is not None:
            position.take_profit = take_profit or None
        if stop_loss is not None:
            position.stop_loss = stop_loss or None
        position.updated_ms = self.now_ms()

    def _unrealised(self, position: Position) -> Decimal:
        mark = self.market.quotes[position.symbol].mid
        return money(position.size * (mark - position.avg_price))

    def _position_im(self, position: Position) -> Decimal:
        return money(abs(position.size) * position.avg_price / position.leverage)

    def available(self, order_im: Decimal) -> Decimal:
        """Equity minus the initial margin of positions and of ``order_im`` (open orders)."""
        unrealised = sum((self._unrealised(p) for p in self.positions.values()), Decimal(0))
        position_im = sum((self._position_im(p) for p in self.positions.values()), Decimal(0))
        return max(Decimal(0), self.wallet_balance + unrealised - position_im - order_im)

    def position_view(self, symbol: str, stream: bool = False) -> dict[str, Any]:
        """An item of /v5/position/list, or of the ``position`` stream (which names the
        average entry ``entryPrice`` where the REST list says ``avgPrice``)."""
        position = self.positions[symbol]
        position.seq += 1
        view: dict[str, Any] = {
            "positionIdx": 0,
            "riskId": 1,
            "riskLimitValue": "2000000",
            "symbol": symbol,
            "side": position.side,
            "size": fmt(abs(position.size)),
            "avgPrice": fmt(position.avg_price),
            "positionValue": fmt(money(abs(position.size) * position.avg_price)),
            "tradeMode": 0,
            "autoAddMargin": 0,
            "positionStatus": "Normal",
            "leverage": fmt(position.leverage),
            "markPrice": fmt(self.market.quotes[symbol].mid),
            "liqPrice": "",
            "bustPrice": "",
            "positionIM": fmt(self._position_im(position)),
            "positionMM": fmt(money(self._position_im(position) / 20)),
            "positionBalance": fmt(self._position_im(position)),
            "takeProfit": fmt(position.take_profit or Decimal(0)),
            "stopLoss": fmt(position.stop_loss or Decimal(0)),
            "trailingStop": "0",
            "sessionAvgPrice": "",
            "unrealisedPnl": fmt(self._unrealised(position)),
            "curRealisedPnl": fmt(position.cur_realised),
            "cumRealisedPnl": fmt(position.cum_realised),
            "adlRankIndicator": 2 if position.size else 0,
            "isReduceOnly": False,
            "mmrSysUpdatedTime": "",
            "leverageSysUpdatedTime": "",
            "tpslMode": "Full",
            "createdTime": str(position.created_ms),
            "updatedTime": str(position.updated_ms),
            "seq": position.seq,
        }
        if stream:
            view["entryPrice"] = view.pop("avgPrice")
            view["category"] = "linear"
        return view

    def wallet_view(self, order_im: Decimal) -> dict[str, Any]:
        """list[0] of /v5/account/wallet-balance (accountType UNIFIED), and the
        ``wallet`` stream's item."""
        unrealised = sum((self._unrealised(p) for p in self.positions.values()), Decimal(0))
        position_im = sum((self._position_im(p) for p in self.positions.values()), Decimal(0))
        equity = self.wallet_balance + unrealised
        available = self.available(order_im)
        cum_realised = sum((p.cum_realised for p in self.positions.values()), Decimal(0))
        return {
            "accountType": "UNIFIED",
            "accountIMRate": fmt(money(position_im / equity)) if equity > 0 else "0",
            "accountMMRate": fmt(money(position_im / 20 / equity)) if equity > 0 else "0",
            "accountLTV": "0",
            "totalEquity": fmt(equity),
            "totalWalletBalance": fmt(self.wallet_balance),
            "totalMarginBalance": fmt(equity),
            "totalAvailableBalance": fmt(available),
            "totalPerpUPL": fmt(unrealised),
            "totalInitialMargin": fmt(position_im + order_im),
            "totalMaintenanceMargin": fmt(money(position_im / 20)),
            "coin": [
                {
                    "coin": "USDT",
                    "equity": fmt(equity),
                    "usdValue": fmt(equity),
                    "walletBalance": fmt(self.wallet_balance),
                    "free": "",
                    "locked": "0",
                    "availableToWithdraw": fmt(available),
                    "availableToBorrow": "",
                    "borrowAmount": "0",
                    "accruedInterest": "0",
                    "totalOrderIM": fmt(order_im),
                    "totalPositionIM": fmt(position_im),
                    "totalPositionMM": fmt(money(position_im / 20)),
                    "unrealisedPnl": fmt(unrealised),
                    "cumRealisedPnl": fmt(cum_realised),
                    "bonus": "0",
                    "collateralSwitch": True,
                    "marginCollateral": True,
                }
            ],
        }
