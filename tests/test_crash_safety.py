"""Nothing lost, nothing duplicated: SIGKILL a real `freshd run` at 20 random moments mid-sync.

CI-sized (10,000 records, 100 pages); bench/kill_test.py runs the same at full size.
After every kill: the stored records are exactly the committed pages (the cursor
and the rows moved together), and the next start resumes the same job from the
page after the last committed one.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import trio

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query

# bench/kill_test.py runs this same test at full size through these variables
RECORDS = int(os.environ.get("FRESHD_KILL_RECORDS", "10000"))
KILLS = int(os.environ.get("FRESHD_KILL_COUNT", "20"))
CREDS = {"consumer_key": "ck_kill", "consumer_secret": "cs_kill"}


def state(database_url: str) -> tuple[int, int | None, list[tuple[object, ...]]]:
    """(records stored, committed page per the cursor, jobs) as a user sees them in the store."""
    try:
        stored = int(query(database_url, "SELECT count(*) FROM records")[0][0])  # type: ignore[call-overload]
        cursor = query(database_url, "SELECT state FROM cursors")
        jobs = query(database_url, "SELECT id, status FROM sync_jobs ORDER BY id")
    except psycopg.errors.UndefinedTable:
        return 0, None, []  # killed before the schema existed
    page = None
    if cursor:
        saved = cursor[0][0]
        page = saved.get("page") if saved.get("phase") == "full" else RECORDS // 100  # type: ignore[union-attr]
    return stored, page, jobs


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim = WooCommerceSimulator(records=0, customers=RECORDS, seed=5, credentials=CREDS)
    sim.app.faults.latency = 0.15  # slow enough that every run is killed mid-sync
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    sock = tmp_path / "admin.sock"
    config = tmp_path / "freshd.toml"
    config.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n[admin]\nsocket = "{sock}"\n'
        f'[metrics]\nenabled = false\n[log]\nlevel = "warning"\n[schedule]\nscheduled_sync = false\n'
        f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "http://127.0.0.1:{port}"\n'
        f'credentials = {{ consumer_key = "ck_kill", consumer_secret = "cs_kill" }}\n'
        f'options = {{ entities = ["customers"], page_concurrency = 1 }}\n'
    )
    command = [sys.executable, "-m", "freshd.cli", "run", "--config", str(config)]
    rng = random.Random(20261122)
    resumed_from: list[tuple[int, int]] = []  # (page committed before the start, first page fetched after)

    for kill in range(KILLS):
        _, committed_page, _ = state(database_url)
        seen_before = len(sim.app.requests)
        sock.unlink(missing_ok=True)  # the killed daemon's, as the next one would remove it
        daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        if kill % 2:
            # every other kill lands mid-sync whatever the start-up costs on a busy machine
            with trio.move_on_after(20):
                while not sock.exists():
                    await trio.sleep(0.05)
            await trio.sleep(rng.uniform(0.1, 0.8))
        else:
            await trio.sleep(rng.uniform(0.4, 1.4))  # start-up included: some kills land during it
        daemon.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(daemon.wait)
        stored, page, jobs = state(database_url)
        # the invariant after any kill: rows and cursor committed together, nothing half-written
        assert stored == (page or 0) * 100, (stored, page)
        assert len(jobs) <= 1  # one job, continued across every restart
        fetched = [int(q.get("page", "1")) for path, q in list(sim.app.requests)[seen_before:]
                   if path.endswith("/customers")]
        later_pages = [p for p in fetched if p > 1]
        if committed_page and later_pages:
            resumed_from.append((committed_page, later_pages[0]))
    assert state(database_url)[0] < RECORDS, "the sync finished before the kills were done: slow it down"

    # the last start runs to the end
    sim.app.faults.latency = 0
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        with trio.fail_after(60):
            while [status for _, status in state(database_url)[2]] != ["completed"]:
                await trio.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(functools.partial(daemon.wait, 15))

    assert query(database_url, "SELECT count(*), count(DISTINCT external_id) FROM records") == [(RECORDS, RECORDS)]
    assert len(query(database_url, "SELECT id FROM sync_jobs")) == 1
    # every restart that had something committed resumed right after it
    assert resumed_from, "no restart resumed mid-listing: the test did not exercise resumption"
    assert all(first == committed + 1 for committed, first in resumed_from), resumed_from
    # page_concurrency = 1 runs in lockstep: each kill costs at most the one page in flight
    pages = [int(q.get("page", "1")) for path, q in sim.app.requests if path.endswith("/customers")]
    refetched = len([p for p in pages if p > 1]) - len({p for p in pages if p > 1})
    assert refetched <= KILLS, refetched
