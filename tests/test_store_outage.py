"""PostgreSQL connections killed mid-sync: the daemon stays up, waits, and the job finishes with nothing lost."""

from __future__ import annotations

import contextlib
import functools
import socket
from pathlib import Path

import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

from freshd import metrics
from freshd.app import run_daemon
from freshd.config import load_config
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query

RECORDS = 3000


def kill_backends(database_url: str) -> int:
    """What an operator restarting PostgreSQL does to a client: every connection to the db dies."""
    dbname = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


async def test_connections_killed_mid_sync_the_job_waits_and_completes(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    systemd_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd's
    systemd_socket.bind(str(tmp_path / "notify"))
    systemd_socket.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    sim = WooCommerceSimulator(records=0, customers=RECORDS, seed=9, credentials={"consumer_key": "k",
                                                                                 "consumer_secret": "s"})
    sim.app.faults.latency = 0.05
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    config_path = tmp_path / "freshd.toml"
    config_path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n[admin]\nsocket = "{tmp_path / "a.sock"}"\n'
        f'[metrics]\nenabled = false\n[schedule]\nscheduled_sync = false\n'
        f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "http://127.0.0.1:{port}"\n'
        f'credentials = {{ consumer_key = "k", consumer_secret = "s" }}\n'
        f'options = {{ entities = ["customers"], page_concurrency = 1 }}\n'
    )
    daemon = await nursery.start(functools.partial(run_daemon, load_config(config_path, env={}),
                                                   config_path=config_path))
    killed = 0
    saw_unavailable = False
    with trio.fail_after(60):
        for _ in range(3):
            while int(query(database_url, "SELECT count(*) FROM records")[0][0]) < 500 * (killed + 1):  # type: ignore[call-overload]
                await trio.sleep(0.02)
            killed += await trio.to_thread.run_sync(kill_backends, database_url) > 0
            # the next store call finds its connection dead: the store is marked unavailable
            while not saw_unavailable and daemon.store.available:
                await trio.sleep(0.01)
            saw_unavailable = saw_unavailable or not daemon.store.available
        while query(database_url, "SELECT status FROM sync_jobs") != [("completed",)]:
            await trio.sleep(0.05)
    assert killed == 3 and saw_unavailable
    assert daemon.store.available and metrics.store_up._value.get() == 1  # recovered
    assert query(database_url, "SELECT count(*), count(DISTINCT external_id) FROM records") == [(RECORDS, RECORDS)]
    assert daemon.supervisor.statuses()[0].restarts == 0  # waited out, no crash
    told = []
    with contextlib.suppress(BlockingIOError):
        while True:
            told.append(systemd_socket.recv(4096).decode())
    systemd_socket.close()
    assert "READY=1" in told
    assert any("STATUS=degraded: the database is unavailable" in m for m in told)
    assert any("STATUS=running: store recovered" in m for m in told)
