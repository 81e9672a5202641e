"""The pure model every other package uses: instruments, orders, positions, equity, quotes.

Nothing here imports trio, httpx, pony or any I/O: time comes in as arguments.
"""
