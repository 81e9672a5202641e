"""Serves the ops API with Hypercorn's trio worker inside the engine's nursery."""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from titan_trio.api.app import create_app
from titan_trio.errors import StartupError

if TYPE_CHECKING:
    from titan_trio.engine import Engine

log = logging.getLogger("titan.api")


async def serve_api(
    engine: Engine, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    cfg = engine.cfg.api
    hc = HypercornConfig()
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    hc.bind = [f"{host}:{cfg.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("titan.http")
    hc.graceful_timeout = 1.0
    hc.shutdown_timeout = 1.0
    app = create_app(engine)
    try:
        sockets = hc.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(hc.backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {cfg.port} on {cfg.host} is already in use (another titan instance, "
                "or set api.port / TITAN_API_PORT)"
            ) from None
        raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from None
    await worker_serve(
        wrap_app(app, hc.wsgi_max_body_size, "asgi"), hc, sockets=sockets, task_status=task_status
    )
