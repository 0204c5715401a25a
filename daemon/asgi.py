"""serve_asgi(): an ASGI app on the trio loop with hypercorn (no threads).

Used by the metrics endpoint and by every provider simulator.  The socket is
bound here, before hypercorn starts, so a bad address (ValueError) or a port
in use (OSError) raises plainly where the task was started, and port 0 can
report the port it really got; hypercorn gets the bound socket as an
``fd://`` bind.  Hypercorn logs through stdlib logging; no access log.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve


async def acknowledge_lifespan(receive: Any, send: Any) -> None:
    """Answer hypercorn's lifespan startup/shutdown (our apps hold no app-level resources)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    report: Callable[[int], Any] = int,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port until cancelled; once listening, `task_status.started(report(port))`."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        bound_port = int(sock.getsockname()[1])
        config = HypercornConfig()
        config.bind = [f"fd://{os.dup(sock.fileno())}"]  # hypercorn owns (and closes) the copy
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")  # a Logger: hypercorn adds no handler
        config.graceful_timeout = 1.0
        config.include_server_header = False
        config.keep_alive_timeout = 75
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, app, config, mode="asgi"))
            task_status.started(report(bound_port))
