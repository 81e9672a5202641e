"""The Bybit v5 connector (linear USDT perpetuals): wire-level pieces first (signing, the
clock the timestamps follow, what each answer code means), the broker on top of them."""
