"""The IPC wire protocol between strategy processes and the service (SPEC §5).

``protocol`` (messages, replies, reason codes, signing), ``framing`` (NDJSON lines with a
size limit), ``listener`` (the service's Unix-socket server) and ``client`` (the library
strategy processes import, blocking or trio). PROTOCOL.md documents the wire format.
Nothing here imports the service.
"""
