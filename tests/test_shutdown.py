"""SIGTERM on a real `freshd run` process mid-sync: exit 0 within 10 s, nothing lost, job resumed."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import trio

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query

CREDS = {"consumer_key": "ck_term", "consumer_secret": "cs_term"}


def write_config(tmp_path: Path, database_url: str, url: str) -> Path:
    path = tmp_path / "freshd.toml"
    path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n'
        f'[admin]\nsocket = "{tmp_path / "admin.sock"}"\n[metrics]\nenabled = false\n'
        f'[schedule]\nscheduled_sync = false\n[sync]\npage_concurrency = 1\n'
        f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "{url}"\n'
        f'credentials = {{ consumer_key = "ck_term", consumer_secret = "cs_term" }}\n'
        f'options = {{ entities = ["customers"], page_concurrency = 1 }}\n'
    )
    return path


def committed(database_url: str) -> int:
    try:
        return int(query(database_url, "SELECT count(*) FROM records")[0][0])  # type: ignore[call-overload]
    except psycopg.errors.UndefinedTable:
        return 0  # the daemon has not created its schema yet


async def test_sigterm_mid_sync_exits_cleanly_and_the_job_resumes(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=0, customers=1500, seed=3, credentials=CREDS)
    sim.app.faults.latency = 0.15  # a slow provider: the sync is still running when the signal comes
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    config = write_config(tmp_path, database_url, f"http://127.0.0.1:{port}")
    command = [sys.executable, "-m", "freshd.cli", "run", "--config", str(config)]

    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: ASYNC220
    with trio.fail_after(30):
        while committed(database_url) < 200:
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            await trio.sleep(0.05)
    daemon.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await trio.to_thread.run_sync(functools.partial(daemon.wait, 15))
    assert code == 0
    assert time.monotonic() - started < 10
    before = committed(database_url)
    assert 0 < before < 1500
    assert query(database_url, "SELECT status FROM sync_jobs") == [("interrupted",)]
    cursor = query(database_url, "SELECT state FROM cursors")[0][0]
    assert cursor["phase"] == "full" and cursor["page"] * 100 == before  # type: ignore[index]

    # the next start resumes the same job from the committed page and finishes it
    sim.app.faults.latency = 0
    sim.app.stats.clear()
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        with trio.fail_after(60):
            while query(database_url, "SELECT status FROM sync_jobs") != [("completed",)]:
                await trio.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(functools.partial(daemon.wait, 15))
    assert committed(database_url) == 1500
    assert query(database_url, "SELECT count(DISTINCT external_id) FROM records") == [(1500,)]
    # resumed after the last committed page: page 1 (for the totals) plus the pages not yet stored
    pages_fetched = sim.app.stats["/wp-json/wc/v3/customers"]
    assert pages_fetched <= 1 + (1500 - before) // 100 + 1
