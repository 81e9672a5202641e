"""Who is at the other end of an IPC connection: the peer's credentials, from
``SO_PEERCRED`` (Linux), for the log and for the per-process connection limit. Where the
platform does not say, the peer is unknown (every field None)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __str__(self) -> str:
        if self.pid is None:
            return "peer unknown"
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def peer_of(stream: trio.SocketStream) -> Peer:
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return Peer()
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid) if pid > 0 else Peer()
