"""Change events to Redis Streams (issue 11): a real daemon, a real simulator, a real Redis/Valkey."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trio

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.store import outbox
from tests.helpers import query
from tests.test_daemon import Running, start_daemon

CREDS = {"consumer_key": "ck_events", "consumer_secret": "cs_events"}


@dataclass
class Setup:
    running: Running
    sim: WooCommerceSimulator
    tenant: str
    redis: redis.Redis
    database_url: str

    def stream(self, entity: str = "customers", app: str | None = None) -> str:
        return f"freshd:{self.tenant}:{entity}" + (f":history:{app}" if app else "")

    def events(self, stream: str) -> list[dict[str, Any]]:
        return [json.loads(fields[b"event"]) for _, fields in self.redis.xrange(stream)]

    async def sync(self, *args: str) -> dict[str, Any]:
        job = await self.running.ctl_json("sync", "shop", "--force", *args)
        return await self.running.wait_job(job["job_id"])

    async def published(self) -> None:
        """Until the outbox has nothing left to publish."""
        with trio.fail_after(30):
            while True:
                left = query(self.database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]
                if left == 0:
                    return
                await trio.sleep(0.1)


@pytest.fixture
async def setup(nursery: trio.Nursery, tmp_path: Path, database_url: str, redis_url: str,
                request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    customers = getattr(request, "param", 30)
    sim = WooCommerceSimulator(records=0, customers=customers, seed=4, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    tenant = f"t{uuid.uuid4().hex[:10]}"
    body = (f'[events]\nredis_url = "{redis_url}"\n'
            f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\ntenant = "{tenant}"\n'
            f'base_url = "http://127.0.0.1:{port}"\n'
            f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
            f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
            f'options = {{ entities = ["customers"] }}\n')
    running = await start_daemon(nursery, tmp_path, database_url, body)
    client = redis.Redis.from_url(redis_url)
    found = Setup(running, sim, tenant, client, database_url)
    jobs = (await running.ctl_json("jobs"))["jobs"]
    assert (await running.wait_job(jobs[0]["id"]))["status"] == "completed"
    await found.published()
    yield found
    for key in client.scan_iter(f"freshd:{tenant}:*"):
        client.delete(key)
    client.close()


async def test_one_event_per_created_updated_and_deleted_record_none_for_unchanged(setup: Setup) -> None:
    first = setup.events(setup.stream())
    assert len(first) == 30 and {e["type"] for e in first} == {"record.created"}
    assert len({e["id"] for e in first}) == 30
    sample = first[0]
    assert sample["tenant"] == setup.tenant and sample["provider"] == "woocommerce" and sample["version"] == 1
    assert sample["payload"]["id"] == int(sample["external_id"]) and sample["historical"] is False
    assert sample["occurred_at"] == sample["payload"]["date_modified_gmt"]

    # nothing changed: a full sync touches every row and publishes nothing
    assert (await setup.sync("--full"))["status"] == "completed"
    await setup.published()
    assert len(setup.events(setup.stream())) == 30

    setup.sim.update("customers", 3, first_name="Changed")
    new = setup.sim.create("customers", email="new@example.com")
    setup.sim.delete("customers", 5, force=True)
    assert (await setup.sync("--full"))["status"] == "completed"
    await setup.published()
    later = setup.events(setup.stream())[30:]
    assert sorted((e["type"], e["external_id"], e["version"]) for e in later) == sorted([
        ("record.updated", "3", 2), ("record.created", str(new["id"]), 1), ("record.deleted", "5", 2)])
    deleted = next(e for e in later if e["type"] == "record.deleted")
    assert "payload" not in deleted


@pytest.mark.parametrize("setup", [2000], indirect=True)
async def test_backfill_with_live_changes_ends_on_every_records_current_version(setup: Setup) -> None:
    # the application registers: its group on the live stream, and a backfill of the history
    added = await setup.running.ctl_json("consumers", "add", "crm", "--tenant", setup.tenant)
    assert added["backfill_id"] and added["entities"] == ["customers"]
    # live changes while the backfill runs
    for rid in range(1, 60):
        setup.sim.update("customers", rid, last_name=f"Live{rid}")
    assert (await setup.sync("--full"))["status"] == "completed"
    with trio.fail_after(60):
        while (await setup.running.ctl_json("consumers", "status", "crm"))["backfill"] is not None:
            await trio.sleep(0.2)
    await setup.published()

    # a consumer reads its group on both streams, keeping the highest version per record
    latest: dict[str, int] = {}
    for stream in (setup.stream(), setup.stream(app="crm")):
        for event in setup.events(stream):
            latest[event["external_id"]] = max(latest.get(event["external_id"], 0), event["version"])
    current = dict(query(setup.database_url, "SELECT external_id, version FROM records WHERE entity = 'customers'"))
    assert latest == current
    history = setup.events(setup.stream(app="crm"))
    assert all(e["historical"] for e in history)
    assert len(history) <= 2000 and len({e["external_id"] for e in history}) == len(history)
    # in publication order (entry ids are the server's clock), the last event of every record is its
    # current version: a historical event queued before a live change but not yet published was dropped
    ordered = sorted(
        (tuple(int(part) for part in entry_id.decode().split("-")), json.loads(fields[b"event"]))
        for stream in (setup.stream(), setup.stream(app="crm")) for entry_id, fields in setup.redis.xrange(stream))
    last = {event["external_id"]: event["version"] for _, event in ordered}
    assert last == current

    status = await setup.running.ctl_json("consumers", "status", "crm")
    assert status["entities"]["customers"]["records"] == 2000 and status["last_backfill"]["status"] == "completed"

    # a dry run counts and samples, publishing nothing
    before = setup.redis.xlen(setup.stream(app="crm"))
    dry = await setup.running.ctl_json("consumers", "backfill", "crm", "--dry-run")
    assert dry["entities"]["customers"]["count"] == 2000 and len(dry["sample"]) == 3
    since = await setup.running.ctl_json("consumers", "backfill", "crm", "--dry-run", "--since", "2999-01-01")
    assert since["entities"]["customers"]["count"] == 0
    assert setup.redis.xlen(setup.stream(app="crm")) == before


async def test_two_applications_are_independent_and_removing_one_leaves_the_other(setup: Setup) -> None:
    await setup.running.ctl_json("consumers", "add", "crm", "--tenant", setup.tenant, "--skip-history")
    await setup.running.ctl_json("consumers", "add", "hr", "--tenant", setup.tenant)
    with trio.fail_after(30):
        while (await setup.running.ctl_json("consumers", "status", "hr"))["backfill"] is not None:
            await trio.sleep(0.2)
    await setup.published()
    assert setup.redis.exists(setup.stream(app="hr")) and not setup.redis.xlen(setup.stream(app="crm"))
    groups = {g["name"].decode() for g in setup.redis.xinfo_groups(setup.stream())}
    assert groups == {"crm", "hr"}
    assert (await setup.running.ctl_json("consumers", "remove", "hr"))["removed"] == "hr"
    assert {g["name"].decode() for g in setup.redis.xinfo_groups(setup.stream())} == {"crm"}
    assert [c["app"] for c in await setup.running.ctl_json("consumers", "list")] == ["crm"]


async def test_bad_consumer_input_gets_a_clear_error_and_changes_nothing(setup: Setup) -> None:
    cases = [
        (["consumers", "status", "ghost"], "no consumer application named 'ghost'"),
        (["consumers", "add", "crm", "--tenant", setup.tenant, "--entities", "planets"], "unknown entity planets"),
        (["consumers", "add", "crm", "--tenant", "nobody"], "has no connections"),
    ]
    for args, message in cases:
        result = await setup.running.ctl(*args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    await setup.running.ctl_json("consumers", "add", "crm", "--tenant", setup.tenant, "--skip-history")
    bad_date = await setup.running.ctl("consumers", "backfill", "crm", "--since", "last tuesday", check=False)
    assert bad_date.returncode != 0 and "not a date" in bad_date.stderr
    assert query(setup.database_url, "SELECT count(*) FROM backfills") == [(0,)]
    assert [c["app"] for c in await setup.running.ctl_json("consumers", "list")] == ["crm"]


def test_the_relay_skips_nothing_that_commits_late(database_url: str) -> None:
    """Two committers: the one with the lower outbox id commits last. The relay reads the committed
    one first, and the late one once it commits: nothing is skipped (no high-water mark)."""
    from freshd.store.migrate import apply_migrations

    apply_migrations(database_url)
    options = "-c search_path=freshd,public"
    with psycopg.connect(database_url, options=options, autocommit=True) as setup_conn:
        cid = setup_conn.execute("INSERT INTO connections (name, provider, base_url, source) VALUES"
                                 " ('c', 'woocommerce', 'http://x', 'admin') RETURNING id").fetchone()[0]  # type: ignore[index]
    insert = ("INSERT INTO outbox (connection_id, entity, external_id, type, version)"
              " VALUES (%s, 'customers', %s, 'record.created', 1) RETURNING id")
    with psycopg.connect(database_url, options=options) as late, \
            psycopg.connect(database_url, options=options) as early, \
            psycopg.connect(database_url, options=options, row_factory=psycopg.rows.dict_row) as relay:
        low = late.execute(insert, (cid, "1")).fetchone()[0]  # type: ignore[index]
        high = early.execute(insert, (cid, "2")).fetchone()[0]  # type: ignore[index]
        early.commit()
        assert low < high
        first = [p.id for p in outbox.pending(relay, None, 10)]
        assert first == [high]  # the late one is still open: not visible, not skipped either
        outbox.mark_published(relay, first)
        relay.commit()
        late.commit()
        assert [p.id for p in outbox.pending(relay, None, 10)] == [low]


def stream_ids(client: redis.Redis, stream: str) -> list[tuple[str, int]]:
    """(external id, version) of every event in the stream, in stream order."""
    events = [json.loads(fields[b"event"]) for _, fields in client.xrange(stream)]
    return [(event["external_id"], event["version"]) for event in events]


def outbox_ids(database_url: str) -> set[str]:
    return {str(r[0]) for r in query(database_url, "SELECT connection_id || ':' || entity || ':' || external_id"
                                                   " || ':' || version FROM outbox WHERE consumer IS NULL")}


async def test_redis_unreachable_for_a_while_loses_no_event_and_keeps_per_record_order(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, redis_url: str,
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from tests.test_health import StoreLink

    target = redis.connection.parse_url(redis_url)
    link = StoreLink(f"postgresql://{target.get('host', '127.0.0.1')}:{target.get('port', 6379)}/x")
    port = int(conninfo_to_dict(await nursery.start(link.serve))["port"])  # type: ignore[arg-type]
    through = f"redis://127.0.0.1:{port}/{target.get('db', 0)}"
    sim = WooCommerceSimulator(records=0, customers=600, seed=6, credentials=CREDS)
    sim.app.faults.latency = 0.2
    sim_port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    tenant = f"t{uuid.uuid4().hex[:10]}"
    body = (f'[events]\nredis_url = "{through}"\n'
            f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\ntenant = "{tenant}"\n'
            f'base_url = "http://127.0.0.1:{sim_port}"\n'
            f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
            f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
            f'options = {{ entities = ["customers"], page_concurrency = 1 }}\n')
    running = await start_daemon(nursery, tmp_path, database_url, body)
    client = redis.Redis.from_url(redis_url)
    stream = f"freshd:{tenant}:customers"
    try:
        with trio.fail_after(30):
            while client.xlen(stream) < 100:
                await trio.sleep(0.05)
        link.cut()  # Redis is gone: syncing goes on, the outbox grows
        await trio.sleep(4)
        stuck = query(database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]
        assert stuck > 0  # type: ignore[operator]
        health = await running.ctl_json("health")
        assert health["events"]["pending"] > 0
        await nursery.start(link.serve, port)  # back, on the same address
        job = (await running.ctl_json("jobs"))["jobs"][0]
        assert (await running.wait_job(job["id"]))["status"] == "completed"
        with trio.fail_after(60):
            while query(database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]:
                await trio.sleep(0.1)
        published = stream_ids(client, stream)
        assert {f"{eid}:{v}" for eid, v in published} >= {i.split(":", 2)[2] for i in outbox_ids(database_url)}
        versions: dict[str, int] = {}
        for eid, version in published:  # per record, versions never go back
            assert version >= versions.get(eid, 0), (eid, version)
            versions[eid] = version
        assert len(versions) == 600
    finally:
        for key in client.scan_iter(f"freshd:{tenant}:*"):
            client.delete(key)
        client.close()


async def test_sigkill_between_commit_and_publish_loses_no_event_and_invents_none(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, redis_url: str,
) -> None:
    import random
    import signal
    import subprocess
    import sys

    sim = WooCommerceSimulator(records=0, customers=3000, seed=8, credentials=CREDS)
    sim.app.faults.latency = 0.1
    sim_port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    tenant = f"t{uuid.uuid4().hex[:10]}"
    config = tmp_path / "freshd.toml"
    config.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n[admin]\nsocket = "{tmp_path / "a.sock"}"\n'
        f'[metrics]\nenabled = false\n[log]\nlevel = "warning"\n[schedule]\nscheduled_sync = false\n'
        f'[events]\nredis_url = "{redis_url}"\n'
        f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\ntenant = "{tenant}"\n'
        f'base_url = "http://127.0.0.1:{sim_port}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
        f'options = {{ entities = ["customers"], page_concurrency = 2 }}\n')
    command = [sys.executable, "-m", "freshd.cli", "run", "--config", str(config)]
    rng = random.Random(11)
    client = redis.Redis.from_url(redis_url)
    stream = f"freshd:{tenant}:customers"
    try:
        sock = tmp_path / "a.sock"
        for _ in range(6):
            sock.unlink(missing_ok=True)
            daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
            with trio.move_on_after(20):
                while not sock.exists():
                    await trio.sleep(0.05)
            await trio.sleep(rng.uniform(0.2, 1.5))  # mid-sync: between a commit and its publication, often
            daemon.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(daemon.wait)
        sim.app.faults.latency = 0
        daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        try:
            with trio.fail_after(90):
                while query(database_url, "SELECT status FROM sync_jobs") != [("completed",)] or \
                        query(database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]:
                    await trio.sleep(0.2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            await trio.to_thread.run_sync(functools.partial(daemon.wait, 15))
        committed = {i.split(":", 2)[2] for i in outbox_ids(database_url)}
        published = {f"{eid}:{v}" for eid, v in stream_ids(client, stream)}
        assert committed == published  # every committed change arrived (maybe twice); none that was not
        assert len(committed) == 3000
    finally:
        for key in client.scan_iter(f"freshd:{tenant}:*"):
            client.delete(key)
        client.close()
