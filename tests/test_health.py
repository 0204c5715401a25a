"""The daemon's /healthz and /readyz as a load balancer or Docker sees them, through a store outage."""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.test_daemon import start_daemon


class StoreLink:
    """A TCP relay in front of PostgreSQL that the test can cut and restore, like a network outage."""

    def __init__(self, database_url: str) -> None:
        info = conninfo_to_dict(database_url)
        self.host = str(info.get("host") or "127.0.0.1")
        self.port = int(info.get("port") or 5432)
        self.url = database_url
        self.scope = trio.CancelScope()

    async def _connect(self) -> trio.abc.Stream:
        if self.host.startswith("/"):  # the embedded server listens on a Unix socket
            return await trio.open_unix_socket(f"{self.host}/.s.PGSQL.{self.port}")
        return await trio.open_tcp_stream(self.host, self.port)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client, await self._connect() as server:

            async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                async for chunk in source:
                    await sink.send_all(chunk)
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)

    async def serve(self, port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until `cut()`; reports the database URL through the relay."""
        with self.scope:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            bound = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(trio.serve_listeners, self._relay, listeners,
                                                      handler_nursery=nursery))
                task_status.started(make_conninfo(self.url, host="127.0.0.1", port=str(bound)))

    def cut(self) -> None:
        """Every relayed connection drops and new ones are refused (nothing listens)."""
        self.scope.cancel()
        self.scope = trio.CancelScope()


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def wait_for_status(url: str, status: int) -> httpx.Response:
    with trio.fail_after(30):
        while (response := await get(url)).status_code != status:
            await trio.sleep(0.2)
    return response


async def test_readyz_follows_the_store_while_healthz_stays_up(
    nursery: trio.Nursery, tmp_path: Path, database_url: str
) -> None:
    link = StoreLink(database_url)
    proxied = await nursery.start(link.serve)
    port = int(conninfo_to_dict(proxied)["port"] or 0)
    running = await start_daemon(nursery, tmp_path, proxied, "")
    assert running.daemon.metrics_url is not None
    base = running.daemon.metrics_url.removesuffix("/metrics")

    ready = await get(base + "/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}

    link.cut()
    down = await wait_for_status(base + "/readyz", 503)
    assert down.json()["status"] == "unavailable" and down.json()["reason"].startswith("store:")
    assert (await get(base + "/healthz")).status_code == 200  # alive: do not restart it for a store outage

    await nursery.start(link.serve, port)  # the network comes back
    assert (await wait_for_status(base + "/readyz", 200)).json() == {"status": "ready"}
