"""freshd.client against a real daemon (blocking and trio), and the published JSON Schemas."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.admin import schema
from freshd.admin.protocol import COMMANDS
from freshd.client import Client, ClientError, Unreachable, open_client
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.test_daemon import CREDS, connection_block, start_daemon

REPO = Path(__file__).resolve().parent.parent


async def test_the_trio_and_blocking_clients_speak_every_job_command_and_raise_one_error(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=60, seed=1, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("shop", f"http://127.0.0.1:{port}"))
    with trio.fail_after(90):
        async with open_client(running.socket, timeout=10) as client:
            status = await client.status()
            assert [c["name"] for c in status["connections"]] == ["shop"] and status["http_url"] is None
            assert [c["name"] for c in await client.connections()] == ["shop"]
            initial = (await client.jobs(connection="shop"))["jobs"][0]["id"]
            events = [event["job"] async for event in client.watch(initial)]
            assert events[-1]["status"] == "completed" and events[-1]["id"] == initial
            assert (await client.connection("shop"))["records"] > 0

            sim.app.faults.latency = 0.2
            queued = await client.sync("shop", full=True)
            assert queued["created"] is True
            assert (await client.pause(queued["job_id"]))["requested"] == "pause"
            assert (await client.cancel(queued["job_id"]))["requested"] == "cancel"
            while (await client.job(queued["job_id"]))["status"] != "cancelled":
                await trio.sleep(0.05)
            with pytest.raises(ClientError) as conflict:
                await client.resume(queued["job_id"])
            assert conflict.value.code == "conflict"
            with pytest.raises(ClientError) as missing:
                await client.job(999999)
            assert missing.value.code == "not_found" and "999999" in missing.value.message
            with pytest.raises(ClientError) as bad:
                await client.jobs(limit=0)
            assert bad.value.code == "bad_request"
            sim.app.faults.latency = 0

        def blocking() -> dict[str, Any]:
            client = Client(running.socket, timeout=10)
            assert client.health()["store"] == "up"
            ensured = client.ensure("shop")
            job_id = ensured["job_id"] or client.sync("shop", force=True)["job_id"]
            last = list(client.watch(job_id))[-1]["job"]
            with pytest.raises(ClientError) as not_found:
                client.connection("nope")
            assert not_found.value.code == "not_found"
            return last

        last = await trio.to_thread.run_sync(blocking)
        assert last["status"] == "completed"

    nowhere = tmp_path / "none" / "admin.sock"
    with pytest.raises(Unreachable) as unreachable:
        Client(nowhere).status()
    assert unreachable.value.code == "unreachable" and isinstance(unreachable.value, ClientError)
    async with open_client(nowhere) as client:
        with pytest.raises(Unreachable):
            await client.status()


def test_the_published_json_schemas_are_generated_from_the_command_specs() -> None:
    published = REPO / "docs" / "schemas"
    wanted = schema.schemas()
    on_disk = {str(p.relative_to(published)) for p in published.rglob("*.json")}
    assert on_disk == set(wanted), "run: python -m freshd.admin.schema docs/schemas"
    for name, content in wanted.items():
        assert (published / name).read_text() == schema.render(content), \
            f"docs/schemas/{name} is stale: run python -m freshd.admin.schema docs/schemas"
    assert set(COMMANDS) == {n.removeprefix("commands/").removesuffix(".json") for n in wanted
                             if n.startswith("commands/")}
    sync = wanted["commands/sync.json"]
    assert sync["required"] == ["name"] and sync["additionalProperties"] is False
    assert sync["properties"]["entities"]["type"] == ["array", "null"]
    assert wanted["commands/jobs.json"]["properties"]["limit"]["maximum"] == 1000
