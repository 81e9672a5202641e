"""Execution: from signals to orders (the signal router and, later, execution styles)."""
