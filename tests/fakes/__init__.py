"""A fake Bybit v5 / Binance USD-M exchange on loopback, for testing the service's
connectors without the internet (see exchange.py for the API)."""
