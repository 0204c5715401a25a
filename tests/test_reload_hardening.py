"""Reload and shutdown hardening (issue 9): what a reload does to a connection's data, a reload
during a database outage, and store calls bounded by timeouts when the database hangs on a lock."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query

CREDS = {"consumer_key": "ck_rl", "consumer_secret": "cs_rl"}
FRESHCTL = [sys.executable, "-m", "freshd.ctl"]


def connection_block(name: str, url: str, extra: str = "") -> str:
    return (
        f'[[connections]]\nname = "{name}"\nprovider = "woocommerce"\nbase_url = "{url}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
        + extra
    )


def write_config(tmp_path: Path, database_url: str, body: str, head: str = "") -> Path:
    path = tmp_path / "freshd.toml"
    path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n'
        f'[admin]\nsocket = "{tmp_path / "admin.sock"}"\nrequest_timeout = "3s"\n[metrics]\nenabled = false\n'
        f'[schedule]\nscheduled_sync = false\n[staleness]\nmin_gap = "0s"\n' + head + body
    )
    return path


@contextlib.contextmanager
def database_outage(server_url: str, database_url: str) -> Iterator[None]:
    """The database refuses every connection (as during a restart or failover) until the block ends."""
    dbname = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
    try:
        yield
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')



def error_of(result: subprocess.CompletedProcess[str]) -> str:
    """The message of a refused `freshctl --json` call (errors are JSON on stdout)."""
    error: str = json.loads(result.stdout)["error"]["message"]
    return error

class Process:
    """`freshd run` as systemd runs it: a real process, signals, an exit code, its log on stderr."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.socket = config.parent / "admin.sock"
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freshd.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [*FRESHCTL, "--socket", str(self.socket), "--json", *args],
            capture_output=True, text=True, timeout=30,
        ))

    async def ctl_json(self, *args: str) -> Any:
        result = await self.ctl(*args)
        assert result.returncode == 0, f"freshctl {args} -> {result.returncode}: {result.stderr}"
        return json.loads(result.stdout)

    async def wait_ready(self) -> None:
        with trio.fail_after(30):
            while not any(e.get("event") == "daemon.ready" for e in self.events()):
                assert self.alive(), self.log()
                await trio.sleep(0.05)

    async def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(functools.partial(self.proc.wait, 20))
        self._log.close()
        return code


@contextlib.asynccontextmanager
async def running(config: Path, tmp_path: Path) -> Any:
    process = Process(config, tmp_path / "freshd.log")
    try:
        await process.wait_ready()
        yield process
    finally:
        if process.alive():
            process.proc.kill()
            await trio.to_thread.run_sync(process.proc.wait)


# -- item 3: a reload never deletes data by omission ------------------------------------------------------


def counts(database_url: str, name: str) -> tuple[int, int, int]:
    """(records, cursors, jobs) stored for one connection."""
    row = query(database_url, "SELECT (SELECT count(*) FROM records r WHERE r.connection_id = c.id),"
                " (SELECT count(*) FROM cursors k WHERE k.connection_id = c.id),"
                " (SELECT count(*) FROM sync_jobs j WHERE j.connection_id = c.id) FROM connections c WHERE c.name = %s",
                name)
    return (int(row[0][0]), int(row[0][1]), int(row[0][2])) if row else (0, 0, 0)  # type: ignore[call-overload]


def activity(database_url: str, kind: str) -> list[tuple[object, ...]]:
    return query(database_url, "SELECT message, details FROM activity_log WHERE kind = %s ORDER BY id", kind)


class InProcess:
    """A daemon in this test's nursery, driven with reload() and freshctl, as test_daemon.py does."""

    def __init__(self, daemon: Any, config: Path, head: str) -> None:
        self.daemon = daemon
        self.config = config
        self.head = head
        self.socket = config.parent / "admin.sock"

    async def reconfigure(self, body: str) -> None:
        self.config.write_text(self.head + body)
        await self.daemon.reload()

    async def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [*FRESHCTL, "--socket", str(self.socket), "--json", *args],
            capture_output=True, text=True, timeout=30,
        ))

    async def ctl_json(self, *args: str) -> Any:
        result = await self.ctl(*args)
        assert result.returncode == 0, f"freshctl {args} -> {result.returncode}: {result.stderr}"
        return json.loads(result.stdout)

    async def states(self) -> dict[str, str]:
        return {c["name"]: c["state"] for c in (await self.ctl_json("status"))["connections"]}


async def in_process(nursery: trio.Nursery, tmp_path: Path, database_url: str, body: str) -> InProcess:
    from freshd.app import run_daemon
    from freshd.config import load_config

    config = write_config(tmp_path, database_url, "")
    head = config.read_text()
    config.write_text(head + body)
    daemon = await nursery.start(functools.partial(run_daemon, load_config(config, env={}), config_path=config))
    return InProcess(daemon, config, head)


async def wait_jobs_done(database_url: str) -> None:
    with trio.fail_after(60):
        while query(database_url, "SELECT count(*) FROM sync_jobs WHERE status NOT IN"
                    " ('completed', 'partial', 'failed', 'cancelled')") != [(0,)]:
            await trio.sleep(0.05)



async def small_shop(nursery: trio.Nursery, *, seed: int) -> tuple[WooCommerceSimulator, str]:
    """A WooCommerce simulator with five customers, served on loopback: it and its URL."""
    sim = WooCommerceSimulator(records=5, seed=seed, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    return sim, f"http://127.0.0.1:{port}"


async def test_reload_that_disables_a_connection_keeps_its_data_and_reenabling_resumes_from_its_cursors(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=0, customers=1500, seed=5, credentials=CREDS)
    sim.app.faults.latency = 0.05  # still syncing when the reload comes
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
    options = 'options = { entities = ["customers"], page_concurrency = 1 }\n'
    running = await in_process(nursery, tmp_path, database_url, connection_block("shop", url, options))
    with trio.fail_after(30):
        while counts(database_url, "shop")[0] < 300:
            await trio.sleep(0.02)

    await running.reconfigure(connection_block("shop", url, options + "enabled = false\n"))
    kept = counts(database_url, "shop")
    assert kept[0] >= 300 and kept[1] == 1 and kept[2] == 1  # records, the cursor, the job: all there
    assert query(database_url, "SELECT status FROM sync_jobs") == [("interrupted",)]
    assert running.daemon.supervisor.names() == []  # its actor is stopped
    await trio.sleep(0.5)
    assert counts(database_url, "shop") == kept  # and nothing syncs
    assert await running.states() == {"shop": "disabled"}
    refused = await running.ctl("sync", "shop")
    assert refused.returncode == 5 and "disabled" in error_of(refused)
    assert counts(database_url, "shop") == kept  # a refused request changes nothing
    assert [m for m, _ in activity(database_url, "connection.disabled")] == \
        ["connection shop is disabled in the config: stopped, its data is kept"]

    # enabled again: the same job resumes after the last committed page
    sim.app.faults.latency = 0
    sim.app.stats.clear()
    await running.reconfigure(connection_block("shop", url, options))
    await wait_jobs_done(database_url)
    assert query(database_url, "SELECT status FROM sync_jobs") == [("completed",)]
    assert query(database_url, "SELECT count(*), count(DISTINCT external_id) FROM records") == [(1500, 1500)]
    assert sim.app.stats["/wp-json/wc/v3/customers"] <= 1 + (1500 - kept[0]) // 100 + 1
    assert await running.states() == {"shop": "idle"}


async def test_reload_that_drops_a_connection_keeps_its_data_and_shows_it_detached(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    from structlog.testing import capture_logs

    _, url = await small_shop(nursery, seed=2)
    running = await in_process(nursery, tmp_path, database_url,
                               connection_block("eu", url) + connection_block("us", url))
    await wait_jobs_done(database_url)
    kept = counts(database_url, "eu")
    assert kept[0] > 0 and kept[1] > 0 and kept[2] == 1

    with capture_logs() as logs:
        await running.reconfigure(connection_block("us", url))
        await running.reconfigure(connection_block("us", url))  # a second reload says nothing new
    assert counts(database_url, "eu") == kept
    assert running.daemon.supervisor.names() == ["us"]
    detached = [e for e in logs if e["event"] == "connection.detached"]
    assert len(detached) == 1 and detached[0]["log_level"] == "warning"
    assert "its data is kept; `freshctl connections remove eu --purge` deletes it" in detached[0]["message"]
    assert len(activity(database_url, "connection.detached")) == 1
    status = {c["name"]: c for c in (await running.ctl_json("status"))["connections"]}
    assert status["eu"]["state"] == "detached" and status["eu"]["records"] == kept[0]
    assert "--purge" in status["eu"]["error"] and status["eu"]["next_sync_at"] is None
    assert [c["name"] for c in (await running.ctl_json("connections", "list"))["connections"]] == ["eu", "us"]

    # deleting it is an explicit act; bad requests get a clear error and change nothing
    plain = await running.ctl("connections", "remove", "eu")
    assert plain.returncode == 1 and "deletes its data" in error_of(plain) and "--purge" in error_of(plain)
    enabled = await running.ctl("connections", "remove", "us", "--purge")
    assert enabled.returncode == 5 and "enabled in the config file" in error_of(enabled)
    ghost = await running.ctl("connections", "remove", "ghost", "--purge")
    assert ghost.returncode == 4 and "ghost" in error_of(ghost)
    assert counts(database_url, "eu") == kept and counts(database_url, "us")[0] > 0
    assert activity(database_url, "connection.purged") == []

    with capture_logs() as logs:
        purged = await running.ctl_json("connections", "remove", "eu", "--purge")
    assert purged["purged"] == {"records": kept[0], "cursors": kept[1], "jobs": kept[2]}
    assert counts(database_url, "eu") == (0, 0, 0)
    assert query(database_url, "SELECT count(*) FROM connections WHERE name = 'eu'") == [(0,)]
    assert [e["connection"] for e in logs if e["event"] == "connection.purged"] == ["eu"]
    (message, details), = activity(database_url, "connection.purged")
    assert "eu" in str(message) and details["records"] == kept[0]  # type: ignore[index]
    assert await running.states() == {"us": "idle"}


async def test_purge_flag_on_a_disabled_config_entry_deletes_its_data_and_logs_it(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    from structlog.testing import capture_logs

    _, url = await small_shop(nursery, seed=3)
    running = await in_process(nursery, tmp_path, database_url, connection_block("eu", url))
    await wait_jobs_done(database_url)
    kept = counts(database_url, "eu")
    # purge without enabled = false is an invalid file: refused whole, nothing deleted
    await running.reconfigure(connection_block("eu", url, "purge = true\n"))
    assert counts(database_url, "eu") == kept and await running.states() == {"eu": "idle"}

    with capture_logs() as logs:
        await running.reconfigure(connection_block("eu", url, "enabled = false\npurge = true\n"))
    assert counts(database_url, "eu") == (0, 0, 0)
    assert query(database_url, "SELECT count(*) FROM connections") == [(0,)]
    purged = [e for e in logs if e["event"] == "connection.purged"]
    assert len(purged) == 1 and purged[0]["records"] == kept[0] and purged[0]["log_level"] == "warning"
    (message, details), = activity(database_url, "connection.purged")
    assert "purge = true" in str(message) and details["by"] == "config"  # type: ignore[index]
    assert await running.states() == {}
    await running.reconfigure(connection_block("eu", url, "enabled = false\npurge = true\n"))  # idempotent
    assert len(activity(database_url, "connection.purged")) == 1


# -- item 6: SIGHUP while PostgreSQL is down ----------------------------------------------------------------


async def test_sighup_while_the_database_is_down_defers_the_reload_and_the_daemon_survives(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, pg_server_url: str,
) -> None:
    _, url = await small_shop(nursery, seed=1)
    config = write_config(tmp_path, database_url, connection_block("eu", url))
    async with running(config, tmp_path) as daemon:
        with trio.fail_after(30):
            while query(database_url, "SELECT status FROM sync_jobs") != [("completed",)]:
                await trio.sleep(0.05)
        with database_outage(pg_server_url, database_url):
            config.write_text(config.read_text() + connection_block("us", url))
            daemon.proc.send_signal(signal.SIGHUP)
            with trio.fail_after(15):
                while not any(e.get("event") == "config.reload_deferred" for e in daemon.events()):
                    assert daemon.alive(), daemon.log()
                    await trio.sleep(0.05)
            await trio.sleep(1.5)  # a retry or two fail too: the daemon stays up all along
            assert daemon.alive(), daemon.log()
            status = await daemon.ctl_json("status")  # the admin socket answers during the outage
            assert status["store"]["state"] == "unavailable"
        # the database is back: the deferred reload is applied without another signal
        with trio.fail_after(30):
            while True:
                names = {c["name"] for c in (await daemon.ctl_json("status"))["connections"]}
                if names == {"eu", "us"}:
                    break
                assert daemon.alive(), daemon.log()
                await trio.sleep(0.2)
        assert await daemon.stop() == 0
    assert "Traceback" not in daemon.log()
    reloaded = [e for e in daemon.events() if e.get("event") == "config.reloaded"]
    assert reloaded and reloaded[-1]["deferred_attempts"] >= 1


# -- item 8: store calls bounded when the database hangs on a lock ------------------------------------------


def lock_waiters(database_url: str) -> int:
    """Backends of this database (other than ours) waiting for a lock."""
    dbname = conninfo_to_dict(database_url)["dbname"]
    rows = query(database_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
                 " AND pid <> pg_backend_pid()", dbname)
    return int(rows[0][0])  # type: ignore[call-overload]


async def test_shutdown_while_a_row_lock_is_held_forever_exits_within_the_deadline(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=0, customers=1500, seed=3, credentials=CREDS)
    sim.app.faults.latency = 0.1  # the sync is still running when the lock is taken
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    config = write_config(tmp_path, database_url, connection_block(
        "shop", f"http://127.0.0.1:{port}", 'options = { entities = ["customers"], page_concurrency = 1 }\n'))
    async with running(config, tmp_path) as daemon:
        with trio.fail_after(30):
            while int(query(database_url, "SELECT count(*) FROM records")[0][0]) < 200:  # type: ignore[call-overload]
                await trio.sleep(0.05)
        # another session (an operator's forgotten transaction) locks the job's row and never lets go
        with psycopg.connect(database_url, options="-c search_path=freshd,public") as holder:
            holder.execute("SELECT id FROM sync_jobs FOR UPDATE")
            with trio.fail_after(10):
                while lock_waiters(database_url) == 0:  # the sync's next progress write waits on it
                    await trio.sleep(0.05)
            daemon.proc.send_signal(signal.SIGTERM)
            started = trio.current_time()
            code = await trio.to_thread.run_sync(functools.partial(daemon.proc.wait, 15))
            elapsed = trio.current_time() - started
            assert lock_waiters(database_url) == 0  # its statements were cancelled, not left waiting
            holder.rollback()
    assert code == 0, daemon.log()
    assert elapsed < 12, elapsed
    events = daemon.events()
    assert any(e.get("event") == "job.interrupt_not_recorded" and "final write did not complete" in e["detail"]
               for e in events), daemon.log()
    assert any(e.get("event") == "daemon.stopped" for e in events)


async def test_an_admin_command_blocked_by_a_lock_answers_timeout_within_request_timeout(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=5, seed=1, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    config = write_config(tmp_path, database_url, connection_block("eu", f"http://127.0.0.1:{port}"))
    async with running(config, tmp_path) as daemon:  # request_timeout = "3s"
        with trio.fail_after(30):
            while query(database_url, "SELECT status FROM sync_jobs") != [("completed",)]:
                await trio.sleep(0.05)
        with psycopg.connect(database_url, options="-c search_path=freshd,public") as holder:
            holder.execute("SELECT id FROM connections WHERE name = 'eu' FOR UPDATE")  # new jobs wait on it
            started = trio.current_time()
            answer = await daemon.ctl("sync", "eu")
            elapsed = trio.current_time() - started
            assert answer.returncode == 7 and "no answer within 3 s" in error_of(answer), answer
            assert elapsed < 3 + 1.5, elapsed  # freshctl's own start-up included
            with trio.fail_after(2):  # the blocked statement was cancelled server-side, not left waiting
                while lock_waiters(database_url) > 0:
                    await trio.sleep(0.05)
            holder.rollback()
        assert query(database_url, "SELECT count(*) FROM sync_jobs") == [(1,)]  # nothing was half-done
        assert (await daemon.ctl_json("status"))["store"]["state"] == "up"  # a lock is not an outage
        assert await daemon.stop() == 0
