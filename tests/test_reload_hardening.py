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


# -- item 6: SIGHUP while PostgreSQL is down ----------------------------------------------------------------


async def test_sighup_while_the_database_is_down_defers_the_reload_and_the_daemon_survives(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, pg_server_url: str,
) -> None:
    sim = WooCommerceSimulator(records=5, seed=1, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
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
            assert answer.returncode != 0 and "no answer within 3 s" in answer.stderr, answer
            assert elapsed < 3 + 1.5, elapsed  # freshctl's own start-up included
            with trio.fail_after(2):  # the blocked statement was cancelled server-side, not left waiting
                while lock_waiters(database_url) > 0:
                    await trio.sleep(0.05)
            holder.rollback()
        assert query(database_url, "SELECT count(*) FROM sync_jobs") == [(1,)]  # nothing was half-done
        assert (await daemon.ctl_json("status"))["store"]["state"] == "up"  # a lock is not an outage
        assert await daemon.stop() == 0
