"""Example strategy processes that use the IPC client library (``ipc/client.py``)."""
