"""The IPC wire protocol between strategy processes and the service (SPEC §5).

Shared by the service (listener) and by strategy processes (client library). This
package is filled in by the IPC issue; the service reports IPC as disabled until then.
"""
