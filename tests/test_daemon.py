"""The daemon from the outside: a real `run_daemon`, its admin socket, `freshctl`, a simulator, PostgreSQL."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.app import Daemon, run_daemon
from freshd.config import load_config
from freshd.connectors import registry
from freshd.connectors.base import Connector, Page, StreamSpec, SyncContext, SyncMode
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query

CREDS = {"consumer_key": "ck_e2e", "consumer_secret": "cs_e2e"}
FRESHCTL = [sys.executable, "-m", "freshd.ctl"]


def connection_block(name: str, url: str, *, provider: str = "woocommerce") -> str:
    return (
        f'[[connections]]\nname = "{name}"\nprovider = "{provider}"\nbase_url = "{url}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
    )


@dataclass
class Running:
    daemon: Daemon
    socket: Path
    config_path: Path
    database_url: str

    async def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run freshctl in a subprocess, as a user would (without blocking the daemon's loop)."""
        result = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [*FRESHCTL, "--socket", str(self.socket), *args],
            capture_output=True, text=True, timeout=30,
        ))
        if check and result.returncode != 0:
            raise AssertionError(f"freshctl {args} -> {result.returncode}: {result.stderr}")
        return result

    async def ctl_json(self, *args: str) -> Any:
        return json.loads((await self.ctl("--json", *args)).stdout)

    async def wait_job(self, job_id: int) -> dict[str, Any]:
        with trio.fail_after(60):
            while True:
                job = await self.ctl_json("job", str(job_id))
                if job["status"] in ("completed", "partial", "failed", "cancelled"):
                    return job  # type: ignore[no-any-return]
                await trio.sleep(0.1)


async def start_daemon(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, body: str, *, min_gap: str = "0s"
) -> Running:
    """A daemon on a config file; min_gap 0 by default, so tests may sync again at once."""
    config_path = tmp_path / "freshd.toml"
    sock = tmp_path / "run" / "admin.sock"
    config_path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n'
        f'[admin]\nsocket = "{sock}"\n[metrics]\naddress = "127.0.0.1:0"\n[schedule]\nscheduled_sync = false\n'
        f'[staleness]\nmin_gap = "{min_gap}"\n'
        + body
    )
    config = load_config(config_path, env={})
    daemon = await nursery.start(functools.partial(run_daemon, config, config_path=config_path))
    return Running(daemon, sock, config_path, database_url)


@pytest.fixture
async def simulators(nursery: trio.Nursery) -> AsyncIterator[list[tuple[WooCommerceSimulator, str]]]:
    out = []
    for seed in (1, 2):
        sim = WooCommerceSimulator(records=120, seed=seed, credentials=CREDS)
        port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
        out.append((sim, f"http://127.0.0.1:{port}"))
    yield out


async def test_config_connections_sync_at_start_and_show_in_status(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    body = connection_block("eu", simulators[0][1]) + connection_block("us", simulators[1][1])
    running = await start_daemon(nursery, tmp_path, database_url, body)
    jobs = (await running.ctl_json("jobs"))["jobs"]
    assert {j["connection"] for j in jobs} == {"eu", "us"} and all(j["kind"] == "initial" for j in jobs)
    for job in jobs:
        done = await running.wait_job(job["id"])
        assert done["status"] == "completed", done
        counts = {k: v for k, v in done["progress"]["customers"].items()
                  if k in ("total", "processed", "failed", "skipped", "pending", "created")}
        assert counts == {"total": 120, "processed": 120, "failed": 0, "skipped": 0, "pending": 0, "created": 120}
        assert done["percent"] == 100.0
    status = await running.ctl_json("status")
    assert status["metrics_url"].startswith("http://127.0.0.1:")
    by_name = {c["name"]: c for c in status["connections"]}
    assert by_name["eu"]["records"] == 120 + 120 + 12
    assert by_name["eu"]["state"] == "idle" and by_name["eu"]["last_success_at"]
    assert {"name", "provider", "tenant", "state", "last_success_at", "next_sync_at", "records", "error"} <= set(
        by_name["us"])
    table = (await running.ctl("status")).stdout
    assert "eu" in table and "us" in table

    # a second sync request while one is live returns the same job (a slow provider keeps it live)
    simulators[0][0].app.faults.latency = 0.5
    first = await running.ctl_json("sync", "eu")
    second = await running.ctl_json("sync", "eu")
    assert second["job_id"] == first["job_id"] and second["created"] is False
    simulators[0][0].app.faults.latency = 0
    await running.wait_job(first["job_id"])

    # a mutation at the provider shows up after the next incremental sync
    simulators[0][0].update("orders", 3, customer_note="Mutated")
    job_id = (await running.ctl_json("sync", "eu"))["job_id"]
    assert (await running.wait_job(job_id))["status"] == "completed"
    assert query(database_url, "SELECT payload->>'customer_note' FROM records r JOIN connections c ON"
                 " c.id = r.connection_id WHERE c.name = 'eu' AND entity = 'orders' AND external_id = '3'") \
        == [("Mutated",)]


async def test_connections_add_queues_the_initial_sync_and_survives_restart(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    async with trio.open_nursery() as first_life:
        running = await start_daemon(first_life, tmp_path, database_url, "")
        added = await running.ctl_json(
            "connections", "add", "shop", "--provider", "woocommerce", "--base-url", simulators[0][1],
            "--credential", f"consumer_key={CREDS['consumer_key']}",
            "--credential", f"consumer_secret={CREDS['consumer_secret']}", "--tenant", "acme",
        )
        job = await running.wait_job(added["job_id"])
        assert job["status"] == "completed" and job["kind"] == "initial"
        shown = await running.ctl_json("connections", "show", "shop")
        assert shown["tenant"] == "acme" and shown["credential_keys"] == ["consumer_key", "consumer_secret"]
        assert CREDS["consumer_secret"] not in json.dumps(shown)  # secrets never leave the daemon
        dup = await running.ctl("connections", "add", "shop", "--provider", "woocommerce", "--base-url",
                                simulators[0][1], "--credential", "consumer_key=x", "--credential",
                                "consumer_secret=y", check=False)
        assert dup.returncode == 5 and "already exists" in dup.stderr
        audit = query(database_url, "SELECT kind, details::text FROM activity_log ORDER BY id")
        assert [k for k, _ in audit if k in ("connection.added", "job.completed")] == \
            ["connection.added", "job.completed"]
        assert all(CREDS["consumer_secret"] not in str(details) for _, details in audit)
        first_life.cancel_scope.cancel()
    assert not running.socket.exists()  # the socket goes with the daemon

    # stored connections survive a restart of the daemon, with their data and history
    again = await start_daemon(nursery, tmp_path, database_url, "")
    status = await again.ctl_json("status")
    assert [(c["name"], c["records"]) for c in status["connections"]] == [("shop", 120 + 120 + 12)]
    assert len((await again.ctl_json("jobs"))["jobs"]) == 1  # synced before: nothing new queued


async def test_bad_admin_requests_get_clear_errors_and_change_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, "")

    def raw(payload: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(running.socket))
            # an oversize request: the daemon answers and hangs up before reading it all
            with contextlib.suppress(BrokenPipeError):
                s.sendall(payload)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)  # type: ignore[no-any-return]

    async def send(payload: bytes) -> dict[str, Any]:
        return await trio.to_thread.run_sync(raw, payload)

    assert (await send(b"{not json\n"))["error"]["code"] == "bad_json"
    assert (await send(b'{"v":1,"id":1,"cmd":"nope","args":{}}\n'))["error"]["code"] == "unknown_command"
    wrong = await send(b'{"v":1,"id":2,"cmd":"jobs","args":{"limit":"ten"}}\n')
    assert wrong["error"]["code"] == "bad_request" and "limit" in wrong["error"]["message"]
    oversize = b'{"v":1,"id":3,"cmd":"status","args":{"x":"' + b"a" * (2 << 20) + b'"}}\n'
    assert (await send(oversize))["error"]["code"] == "too_large"
    bad_provider = await running.ctl("connections", "add", "x", "--provider", "nosuch", "--base-url",
                                     "http://127.0.0.1:1", "--credential", "k=v", check=False)
    assert bad_provider.returncode == 1 and "valid providers" in bad_provider.stderr
    bad_url = await running.ctl("connections", "add", "x", "--provider", "woocommerce", "--base-url",
                                "ftp://nowhere", "--credential", "k=v", check=False)
    assert bad_url.returncode == 1 and "base_url" in bad_url.stderr
    missing = await running.ctl("sync", "ghost", check=False)
    assert missing.returncode == 4 and "ghost" in missing.stderr
    assert query(database_url, "SELECT count(*) FROM connections") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM sync_jobs") == [(0,)]


def notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify datagram received so far (what systemd would have been told)."""
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(4096).decode())
    return out


async def test_invalid_config_is_refused_on_reload_and_the_old_one_stays(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    systemd_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd's
    systemd_socket.bind(str(tmp_path / "notify"))
    systemd_socket.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", simulators[0][1]))
    notifications(systemd_socket)
    text = running.config_path.read_text()
    running.config_path.write_text(text + connection_block("bad", "not a url"))
    await running.daemon.reload()
    assert running.daemon.supervisor.names() == ["eu"]
    # `systemctl status` shows the refusal, and systemd leaves the reloading state
    told = notifications(systemd_socket)
    assert told[0].startswith("RELOADING=1\n")
    refusal = told[-1].split("\n")
    assert refusal[0] == "READY=1" and refusal[1].startswith("STATUS=reload refused"), told
    assert "base_url" in refusal[1] and "previous configuration" in refusal[1]
    # a valid change is applied: a new connection starts and gets its initial sync
    running.config_path.write_text(text + connection_block("us", simulators[1][1]))
    await running.daemon.reload()
    assert running.daemon.supervisor.names() == ["eu", "us"]
    told = notifications(systemd_socket)
    assert "READY=1" in told and told[-1] == "STATUS=running: 2 connections (configuration reloaded)"
    jobs = (await running.ctl_json("jobs", "--connection", "us"))["jobs"]
    assert len(jobs) == 1 and jobs[0]["kind"] == "initial"


class _CrashingConnector(Connector):
    """A connector with a bug: it crashes the first `crashes` times it runs (shared across instances)."""

    provider = "crashy"
    streams = (StreamSpec("things", "things"),)
    crashes = 1

    async def sync_entity(self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode,
                          ctx: SyncContext) -> None:
        if _CrashingConnector.crashes > 0:
            _CrashingConnector.crashes -= 1
            raise RuntimeError("bug in connector")
        await ctx.emit(Page("things", [{"id": 1}], {"done": True}))


async def test_a_crashing_actor_is_restarted_and_others_keep_syncing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the only fake here: a connector with a bug (nothing real crashes on purpose)
    monkeypatch.setitem(registry.registered(), "crashy", registry.Provider(
        "crashy", connector=f"{__name__}:_CrashingConnector",
        simulator="freshd.connectors.woocommerce.simulator:WooCommerceSimulator", doc=""))
    monkeypatch.setattr("freshd.supervisor.BACKOFF_START", 0.05)
    body = connection_block("eu", simulators[0][1]) + connection_block("bad", "http://127.0.0.1:9", provider="crashy")
    config_path = tmp_path / "freshd.toml"
    sock = tmp_path / "run" / "admin.sock"
    config_path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n[admin]\nsocket = "{sock}"\n'
        f'[metrics]\nenabled = false\n[schedule]\nscheduled_sync = false\n[staleness]\nmin_gap = "0s"\n' + body)
    config = load_config(config_path, env={}, providers=("woocommerce", "crashy"))
    daemon = await nursery.start(functools.partial(run_daemon, config, config_path=config_path))
    running = Running(daemon, sock, config_path, database_url)
    with trio.fail_after(30):
        while True:
            status = {c["name"]: c for c in (await running.ctl_json("status"))["connections"]}
            if status["bad"]["restarts"] >= 1 and status["eu"]["last_success_at"]:
                break
            await trio.sleep(0.1)
    assert "bug in connector" in (status["bad"]["error"] or "")
    bad_jobs = (await running.ctl_json("jobs", "--connection", "bad"))["jobs"]
    assert bad_jobs[0]["status"] == "failed" and "crashed" in bad_jobs[0]["error"]
    assert query(database_url, "SELECT count(*) FROM activity_log WHERE kind = 'actor.crashed'") == [(1,)]
    # after the restart the actor works again: a new sync succeeds
    job_id = (await running.ctl_json("sync", "bad"))["job_id"]
    assert (await running.wait_job(job_id))["status"] == "completed"
    assert sock.is_socket()


async def test_an_actor_stopped_for_a_lost_lease_while_its_write_was_fenced_does_not_crash_the_daemon(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGSTOPped cluster member woke up past its leases: its actors were cancelled while a job's
    final write was refused by the fence.  The actor's nursery raised [Cancelled, Fenced], the
    supervisor's scope stripped the Cancelled, and the bare Fenced ended the whole daemon (exit 1)."""
    from freshd.actor import ConnectionActor
    from freshd.errors import Fenced

    running_actor = trio.Event()

    async def fenced_when_stopped(self: ConnectionActor) -> None:
        async with trio.open_nursery() as inner:  # an actor's shape: a job task beside its loop
            inner.start_soon(trio.sleep_forever)
            running_actor.set()
            try:
                await trio.sleep_forever()
            finally:
                raise Fenced("member m#1 no longer holds connection 1's lease (epoch 1): write refused")

    monkeypatch.setattr(ConnectionActor, "run", fenced_when_stopped)
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", simulators[0][1]))
    with trio.fail_after(10):
        await running_actor.wait()
        await running.daemon.supervisor.stop("eu", abrupt=True)  # what a lost lease does
    assert "eu" not in running.daemon.supervisor.names()
    assert [c["name"] for c in (await running.ctl_json("status"))["connections"]] == ["eu"]  # still answering


async def test_pause_resume_and_cancel_through_freshctl(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    sim, url = simulators[0]
    sim.app.faults.latency = 0.1  # slow enough to steer
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", url) +
                                 'options = { page_concurrency = 1 }\n')
    job_id = (await running.ctl_json("jobs"))["jobs"][0]["id"]

    def stored() -> int:
        return int(query(database_url, "SELECT count(*) FROM records")[0][0])  # type: ignore[call-overload]

    with trio.fail_after(30):
        while stored() < 100:
            await trio.sleep(0.02)
    assert (await running.ctl_json("pause", str(job_id)))["requested"] == "pause"
    with trio.fail_after(30):
        while (await running.ctl_json("job", str(job_id)))["status"] != "paused":
            await trio.sleep(0.05)
    paused_at = stored()
    await trio.sleep(0.5)
    assert stored() == paused_at  # nothing moves while paused
    status = {c["name"]: c for c in (await running.ctl_json("status"))["connections"]}
    assert status["eu"]["state"] == "paused"
    await running.ctl_json("resume", str(job_id))
    sim.app.faults.latency = 0
    done = await running.wait_job(job_id)
    assert done["status"] == "completed" and stored() == 120 + 120 + 12

    # cancel: takes effect at a page boundary and keeps what was committed
    sim.app.faults.latency = 0.1
    full = (await running.ctl_json("sync", "eu", "--full"))["job_id"]
    with trio.fail_after(30):
        while (await running.ctl_json("job", str(full)))["status"] != "running":
            await trio.sleep(0.02)
    await running.ctl_json("cancel", str(full))
    cancelled = await running.wait_job(full)
    assert cancelled["status"] == "cancelled" and stored() == 252
    again = await running.ctl("cancel", str(full), check=False)
    assert again.returncode == 5 and "cancelled" in again.stderr  # a finished job cannot be steered


async def test_tenant_cap_queues_jobs_fairly_and_jobs_filter(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    for sim, _ in simulators:
        sim.app.faults.latency = 0.05
    body = ("[sync]\ntenant_max_running = 1\n" + connection_block("first", simulators[0][1])
            + 'tenant = "acme"\n' + connection_block("second", simulators[1][1]) + 'tenant = "acme"\n')
    running = await start_daemon(nursery, tmp_path, database_url, body)
    saw_one_running_one_queued = False
    with trio.fail_after(60):
        while True:
            jobs = {j["connection"]: j["status"] for j in (await running.ctl_json("jobs"))["jobs"]}
            if sorted(jobs.values()) == ["queued", "running"]:
                saw_one_running_one_queued = True
            if all(s == "completed" for s in jobs.values()):
                break
            assert list(jobs.values()).count("running") <= 1  # the tenant's cap holds
            await trio.sleep(0.02)
    assert saw_one_running_one_queued
    assert (await running.ctl_json("jobs", "--tenant", "acme"))["total"] == 2
    assert (await running.ctl_json("jobs", "--tenant", "other"))["total"] == 0
    assert (await running.ctl_json("jobs", "--status", "completed"))["total"] == 2
    bad = await running.ctl("jobs", "--status", "sleeping", check=False)
    assert bad.returncode == 1 and "valid:" in bad.stderr


async def test_a_provider_that_disappears_mid_sync_ends_the_job_and_admin_stays_responsive(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=0, customers=3000, seed=4, credentials=CREDS)
    sim.app.faults.latency = 0.05
    # served in a scope of its own, so the test can pull the plug
    provider = trio.CancelScope()

    async def serve_until_pulled(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with provider:
            await serve_asgi(sim.app, "127.0.0.1", 0, task_status=task_status)

    port = await nursery.start(serve_until_pulled)
    running = await start_daemon(nursery, tmp_path, database_url,
                                 connection_block("gone", f"http://127.0.0.1:{port}")
                                 + 'options = { entities = ["customers"], page_concurrency = 1 }\n')
    job_id = (await running.ctl_json("jobs"))["jobs"][0]["id"]
    with trio.fail_after(30):
        while int(query(database_url, "SELECT count(*) FROM records")[0][0]) < 300:  # type: ignore[call-overload]
            await trio.sleep(0.02)
    provider.cancel()  # the provider vanishes: connections refused from now on
    latencies = []
    with trio.fail_after(60):  # never hangs: retries run out and the job ends
        while True:
            started = trio.current_time()
            job = await running.ctl_json("job", str(job_id))
            latencies.append(trio.current_time() - started)
            if job["status"] not in ("queued", "running"):
                break
            await trio.sleep(0.1)
    assert job["status"] == "failed" and "cannot reach" in job["error"]
    stored = int(query(database_url, "SELECT count(*) FROM records")[0][0])  # type: ignore[call-overload]
    assert stored >= 300  # what was committed stays
    status = {c["name"]: c for c in (await running.ctl_json("status"))["connections"]}
    assert status["gone"]["state"] == "error" and "cannot reach" in status["gone"]["error"]
    # the admin socket answered throughout (a freshctl process each time, start-up included)
    assert max(latencies) < 2.0, latencies


async def test_watch_streams_progress_until_the_job_ends(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    sim, url = simulators[0]
    sim.app.faults.latency = 0.3  # the job outlives freshctl's start-up, even on a busy machine
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", url)
                                 + 'options = { page_concurrency = 1 }\n')
    job_id = (await running.ctl_json("jobs"))["jobs"][0]["id"]
    with trio.fail_after(60):  # a subscription that ends by itself when the job ends
        streamed = await running.ctl("--json", "watch", str(job_id))
    events = [json.loads(line)["job"] for line in streamed.stdout.splitlines()]
    assert len(events) >= 3 and {e["id"] for e in events} == {job_id}
    processed = [sum(p["processed"] for p in e["progress"].values()) for e in events]
    assert processed == sorted(processed)  # progress only moves forward
    assert events[-1]["status"] == "completed" and processed[-1] == 120 + 120 + 12
    # the human form: a progress bar per entity
    table = await running.ctl("watch", str(job_id))
    assert "customers" in table.stdout and "[########################]" in table.stdout
    missing = await running.ctl("watch", "999", check=False)
    assert missing.returncode == 4 and "no job 999" in missing.stderr


async def test_health_sweep_retriggers_a_connection_that_never_synced(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    sim, url = simulators[0]
    sim.app.faults.configure({"status": 503, "count": 1000})  # the provider is down at first
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("late", url)
                                 + 'options = { entities = ["products"] }\n')
    first = (await running.ctl_json("jobs"))["jobs"][0]
    assert (await running.wait_job(first["id"]))["status"] == "failed"
    sim.app.faults.clear()
    await running.daemon.health_sweep()  # what the scheduler runs every health_interval
    jobs = (await running.ctl_json("jobs"))["jobs"]
    assert len(jobs) == 2 and jobs[0]["trigger"] == "health"
    assert (await running.wait_job(jobs[0]["id"]))["status"] == "completed"
    await running.daemon.health_sweep()  # synced once: nothing more to trigger
    assert (await running.ctl_json("jobs"))["total"] == 2


async def test_a_bad_item_fails_alone_and_retry_fetches_it_again(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    sim, url = simulators[0]
    sim.update("customers", 7, first_name="Null\x00Byte")  # PostgreSQL's jsonb cannot store NUL
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", url))
    first_id = (await running.ctl_json("jobs"))["jobs"][0]["id"]
    first = await running.wait_job(first_id)
    assert first["status"] == "partial"  # the item failed, the job went on
    assert first["progress"]["customers"]["failed"] == 1 and first["progress"]["customers"]["processed"] == 119
    detail = await running.ctl_json("job", str(first_id))
    assert [(f["entity"], f["external_id"]) for f in detail["failed_items"]] == [("customers", "7")]
    assert "NUL" in detail["failed_items"][0]["reason"]

    sim.update("customers", 7, first_name="Fixed")  # the shop's data is repaired
    sim.app.stats.clear()
    retry = await running.ctl_json("retry", str(first_id))
    assert retry["retry_of"] == first_id and retry["items"] == 1
    done = await running.wait_job(retry["job_id"])
    assert done["status"] == "completed" and done["kind"] == "retry"
    assert done["progress"]["customers"]["processed"] == 1
    assert sim.app.stats["/wp-json/wc/v3/customers"] == 1  # one request: just that id
    assert query(database_url, "SELECT payload->>'first_name' FROM records WHERE entity = 'customers'"
                 " AND external_id = '7'") == [("Fixed",)]
    again = await running.ctl("retry", str(retry["job_id"]), check=False)
    assert again.returncode == 5 and "no failed items" in again.stderr


async def test_health_schedule_and_trigger(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    good, bad = simulators
    bad[0].app.faults.configure({"status": 503, "count": 10_000})
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("ok", good[1])
                                 + connection_block("down", bad[1]) + 'options = { entities = ["products"] }\n')
    for job in (await running.ctl_json("jobs"))["jobs"]:
        await running.wait_job(job["id"])
    health = await running.ctl("health", check=False)
    assert health.returncode == 1 and "UNHEALTHY" in health.stdout and "down: error" in health.stdout
    figures = json.loads((await running.ctl("--json", "health", check=False)).stdout)
    assert figures["store"] == "up" and figures["scheduler"] == "running"
    assert figures["syncs"] == {"total": 2, "successful": 1, "success_rate": 0.5, "active": 0}
    assert figures["connections"] == {"idle": 1, "error": 1} and figures["oldest_data_age_seconds"] is not None

    sweeps = {s["id"]: s for s in (await running.ctl_json("schedule"))["sweeps"]}
    assert set(sweeps) == {"sync", "health", "tokens", "cleanup"} and sweeps["health"]["next_run_time"]
    # the provider is back; the health sweep, run now, re-queues the connection that never synced
    bad[0].app.faults.clear()
    assert (await running.ctl_json("trigger", "health"))["started"] is True
    with trio.fail_after(30):
        while (await running.ctl_json("jobs", "--connection", "down"))["total"] < 2:
            await trio.sleep(0.05)
    retried = (await running.ctl_json("jobs", "--connection", "down"))["jobs"][0]
    assert (await running.wait_job(retried["id"]))["status"] == "completed"
    assert (await running.ctl("health")).returncode == 0
    unknown = await running.ctl("trigger", "nope", check=False)
    assert unknown.returncode == 4 and "valid sweeps" in unknown.stderr


async def test_minimum_gap_defers_manual_syncs_unless_forced_and_status_shows_freshness(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", simulators[0][1]),
                                 min_gap="5m")
    first = (await running.ctl_json("jobs"))["jobs"][0]
    await running.wait_job(first["id"])
    soon = await running.ctl("sync", "eu", check=False)
    assert soon.returncode == 5 and "minimum gap is 5m00s" in soon.stderr and "--force" in soon.stderr
    forced = await running.ctl_json("sync", "eu", "--force")
    assert forced["created"] is True
    await running.wait_job(forced["job_id"])
    assert query(database_url, "SELECT count(*) FROM activity_log WHERE kind = 'sync.forced'") == [(1,)]
    view = (await running.ctl_json("status"))["connections"][0]
    assert view["stale"] is False and 0 <= view["data_age_seconds"] < 60
    # the scheduled sweep skips fresh data: no new job
    running.daemon.config = replace(running.daemon.config, schedule=replace(running.daemon.config.schedule,
                                                                            scheduled_sync=True))
    await running.daemon.sync_sweep()
    assert (await running.ctl_json("jobs"))["total"] == 2


def test_status_says_due_rather_than_ago_for_a_next_sync_in_the_past() -> None:
    from datetime import UTC, datetime, timedelta

    from freshd.ctl_output import due

    assert due((datetime.now(UTC) - timedelta(seconds=90)).isoformat()) == "due (1m overdue)"
    assert due((datetime.now(UTC) + timedelta(minutes=5, seconds=30)).isoformat()) == "in 5m"
    assert due(None) == "-"


async def test_a_sync_queued_while_the_last_one_was_ending_still_runs(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's row was final but its actor still busy: the JobQueued of a sync queued in that
    window was ignored and the job waited for the next sweep (forever with scheduled syncs off;
    a two-way run's catch-up sync hung on it in CI)."""
    from freshd.actor import ConnectionActor

    ending, release = trio.Event(), trio.Event()
    after_job = ConnectionActor._after_job

    async def slow_after_job(self: ConnectionActor, outcome: Any, **kwargs: Any) -> None:
        if not release.is_set():
            ending.set()
            await release.wait()
        await after_job(self, outcome, **kwargs)

    monkeypatch.setattr(ConnectionActor, "_after_job", slow_after_job)
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", simulators[0][1]))
    with trio.fail_after(30):
        await ending.wait()  # the initial job is completed in its row; its actor has not moved on yet
    queued = await running.ctl_json("sync", "eu", "--force")
    assert queued["created"], queued
    release.set()
    assert (await running.wait_job(queued["job_id"]))["status"] == "completed"


async def test_a_fleet_start_is_not_slowed_by_garbage_collections_and_nothing_frozen_leaks(
    tmp_path: Path, database_url: str, simulators: list[tuple[WooCommerceSimulator, str]],
) -> None:
    """10,000 actors' start-up spent half its CPU in the cyclic collector walking the growing heap
    (bench/fleet.py): no collections while it builds, then one, and the survivors frozen out of later
    ones (freshd.heap).  An actor let go makes the frozen objects collectable again (a frozen cycle is
    never freed), and so does the daemon's end."""
    import gc

    from freshd import heap

    assert gc.isenabled()
    async with trio.open_nursery() as life:
        running = await start_daemon(life, tmp_path, database_url, connection_block("a", simulators[0][1])
                                     + connection_block("b", simulators[1][1]))
        await trio.sleep(heap.SETTLE_AFTER + 0.5)
        assert gc.isenabled() and gc.get_freeze_count() > 0, "the start-up's survivors are frozen"
        running.config_path.write_text(running.config_path.read_text().split("[[connections]]")[0]
                                       + connection_block("a", simulators[0][1]))
        running.daemon.request_reload_nowait()  # b leaves the config: its actor is stopped
        with trio.fail_after(20):
            while "b" in running.daemon.supervisor.names():
                await trio.sleep(0.05)
        assert gc.get_freeze_count() == 0, "an actor let go leaves nothing frozen"
        life.cancel_scope.cancel()
    assert gc.isenabled() and gc.get_freeze_count() == 0
