"""Titan Execution Service: trading signals to exchange orders under hard risk limits."""

__version__ = "0.1.0"
