"""Risk: equity phases, position sizing and the gates every entry passes (pure logic)."""
