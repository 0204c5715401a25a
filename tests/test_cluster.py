"""Several daemons on one PostgreSQL (issue 10): real `freshd run` processes, real simulators.

Each daemon runs as its own process (SIGKILL and SIGSTOP need one) with its own socket and
member name, on one database and one config.  PGAPPNAME names each daemon's database sessions,
so a trigger the test installs on `records` tells which daemon wrote every row.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query

CONNECTIONS = 60
CUSTOMERS = 40
LEASE = 6.0  # short leases keep the suite quick (renewed every 1.5 s); long enough for a busy machine
CREDS = {"consumer_key": "ck_cluster", "consumer_secret": "cs_cluster"}


@dataclass
class Cluster:
    tmp: Path
    database_url: str
    config: Path
    sims: list[WooCommerceSimulator]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        env = {**os.environ, "PGAPPNAME": name, "FRESHD_SOCKET": str(self.tmp / f"{name}.sock")}
        env.pop("NOTIFY_SOCKET", None)
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "freshd.cli", "run", "--config", str(self.config)],
            env={**env, "FRESHD_MEMBER_NAME": name}, stdout=log, stderr=log)

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The end of a member's log, for an assertion about how it ended."""
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def ctl(self, name: str, *args: str) -> Any:
        result = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [sys.executable, "-m", "freshd.ctl", "--socket", str(self.tmp / f"{name}.sock"),
                             "--json", *args], capture_output=True, text=True, timeout=30))
        assert result.returncode == 0, (args, result.stderr)
        return json.loads(result.stdout)

    def owners(self) -> dict[int, str | None]:
        """connection id -> owning member name (None: no live lease); {} before the schema exists."""
        try:
            rows = self._owner_rows()
        except psycopg.errors.UndefinedTable:
            return {}
        return {int(cid): name for cid, name in rows}  # type: ignore[call-overload, misc]

    def _owner_rows(self) -> list[tuple[object, ...]]:
        return query(self.database_url, "SELECT c.id, m.name FROM connections c LEFT JOIN leases l"
                     " ON l.connection_id = c.id AND l.expires_at > now() LEFT JOIN members m ON m.id = l.owner")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def connection_blocks(urls: list[str]) -> str:
    out = []
    for i in range(CONNECTIONS):
        tenant = "acme" if i % 2 == 0 else "globex"
        out.append(f'[[connections]]\nname = "c{i:02d}"\nprovider = "woocommerce"\ntenant = "{tenant}"\n'
                   f'base_url = "{urls[i % len(urls)]}"\n'
                   f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
                   f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
                   f'options = {{ entities = ["customers"], page_concurrency = 1 }}\n')
    return "\n".join(out)


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> AsyncIterator[Cluster]:
    sims, urls = [], []
    for seed in range(3):
        sim = WooCommerceSimulator(records=0, customers=CUSTOMERS, seed=seed, credentials=CREDS)
        port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
        sims.append(sim)
        urls.append(f"http://127.0.0.1:{port}")
    config = tmp_path / "freshd.toml"
    config.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n'
        f'[metrics]\nenabled = false\n[log]\nlevel = "warning"\n[schedule]\nscheduled_sync = false\n'
        f'[sync]\nmax_running = 50\ntenant_max_running = 2\n'
        f'[cluster]\nlease_ttl = "{LEASE:g}s"\nhandover = "1s"\n'
        + connection_blocks(urls))
    found = Cluster(tmp_path, database_url, config, sims)
    try:
        yield found
    finally:
        await trio.to_thread.run_sync(found.stop_all)


def install_write_audit(database_url: str) -> None:
    """Which daemon (its PGAPPNAME) wrote each record, and when (the database's clock); and every
    change of a lease's owner, so each write can be checked against who held the lease then."""
    with psycopg.connect(database_url, options="-c search_path=freshd,public", autocommit=True) as conn:
        conn.execute("CREATE TABLE write_audit (at timestamptz, app text, connection_id bigint)")
        conn.execute("CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " INSERT INTO write_audit VALUES (clock_timestamp(), current_setting('application_name'),"
                     " NEW.connection_id); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER audit AFTER INSERT OR UPDATE ON records"
                     " FOR EACH ROW EXECUTE FUNCTION audit_write()")
        conn.execute("CREATE TABLE lease_audit (at timestamptz, connection_id bigint, owner text, epoch bigint)")
        conn.execute("INSERT INTO lease_audit SELECT now(), connection_id, owner, epoch FROM leases")
        conn.execute("CREATE FUNCTION audit_lease() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " IF NEW.owner IS DISTINCT FROM OLD.owner OR NEW.epoch <> OLD.epoch THEN"
                     " INSERT INTO lease_audit VALUES (clock_timestamp(), NEW.connection_id, NEW.owner, NEW.epoch);"
                     " END IF; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER audit AFTER UPDATE ON leases FOR EACH ROW EXECUTE FUNCTION audit_lease()")


async def wait_for(condition: Any, seconds: float, what: Any) -> None:
    with trio.move_on_after(seconds):
        while not await trio.to_thread.run_sync(condition):
            await trio.sleep(0.2)
        return
    raise AssertionError(f"not within {seconds:g} s: {what() if callable(what) else what}")


def owner_counts(cluster: Cluster) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for name in cluster.owners().values():
        counts[name] = counts.get(name, 0) + 1
    return counts


def all_owned_by(cluster: Cluster, names: set[str]) -> bool:
    owners = cluster.owners()
    return len(owners) == CONNECTIONS and set(owners.values()) <= names and None not in owners.values()


def jobs_done(cluster: Cluster) -> bool:
    rows = query(cluster.database_url, "SELECT status, count(*) FROM sync_jobs GROUP BY status")
    counts = dict(rows)
    return sum(counts.values()) >= CONNECTIONS and set(counts) <= {"completed"}  # type: ignore[arg-type]


def records_exact(cluster: Cluster) -> None:
    rows = query(cluster.database_url, "SELECT connection_id, count(*), count(DISTINCT external_id) FROM records"
                 " WHERE deleted_at IS NULL GROUP BY connection_id")
    assert len(rows) == CONNECTIONS
    assert all(total == CUSTOMERS and distinct == CUSTOMERS for _, total, distinct in rows), rows


async def test_three_daemons_split_connections_one_owner_each_and_caps_hold(cluster: Cluster) -> None:
    for sim in cluster.sims:
        sim.app.faults.latency = 0.05  # syncs last long enough to sample the caps
    names = {"m1", "m2", "m3"}
    for name in sorted(names):
        cluster.start(name)
    await wait_for(lambda: all_owned_by(cluster, names) and len(set(cluster.owners().values())) == 3, 40,
                   "every connection owned, by the three members")
    over_cap = 0
    with trio.move_on_after(60):
        while not await trio.to_thread.run_sync(jobs_done, cluster):
            running = query(cluster.database_url, "SELECT c.tenant, count(*) FROM sync_jobs j JOIN connections c"
                            " ON c.id = j.connection_id WHERE j.status = 'running' GROUP BY c.tenant")
            over_cap += sum(1 for _, n in running if int(n) > 2)  # type: ignore[call-overload]
            owners = cluster.owners()
            assert len(owners) == CONNECTIONS  # one lease row, so at most one owner, per connection
            await trio.sleep(0.2)
    assert await trio.to_thread.run_sync(jobs_done, cluster), "the syncs did not finish"
    assert over_cap == 0, "tenant_max_running = 2 was exceeded across the cluster"
    split = [list(cluster.owners().values()).count(n) for n in sorted(names)]
    ideal = CONNECTIONS / 3
    assert all(abs(n - ideal) <= 1 for n in split), split
    records_exact(cluster)
    # any member shows the whole cluster, each connection with its owner
    members = await cluster.ctl("m1", "members")
    assert sorted(m["connections"] for m in members if m["alive"]) == sorted(split)
    assert all({"id", "host", "pid", "alive", "connections"} <= set(m) for m in members)
    status = await cluster.ctl("m2", "status")
    assert len(status["connections"]) == CONNECTIONS and all(c["owner"] for c in status["connections"])
    # a command for a connection another member runs reaches it through the database
    theirs = next(c for c in status["connections"] if not c["owner"].startswith("m2"))
    queued = await cluster.ctl("m2", "sync", theirs["name"], "--full", "--force")
    done = await cluster.ctl("m2", "job", str(queued["job_id"]))
    assert done["connection"] == theirs["name"]


async def test_sigkill_one_daemon_mid_sync_others_take_over_and_records_end_exact(cluster: Cluster) -> None:
    for sim in cluster.sims:
        sim.app.faults.latency = 0.3  # every sync outlives the kill
    names = {"m1", "m2", "m3"}
    for name in sorted(names):
        cluster.start(name)
    await wait_for(lambda: all_owned_by(cluster, names) and len(set(cluster.owners().values())) == 3, 40,
                   "every connection owned, by the three members")
    await wait_for(lambda: bool(query(cluster.database_url, "SELECT 1 FROM records LIMIT 1")), 30, "syncs under way")
    victim = cluster.procs["m2"]
    victim.send_signal(signal.SIGKILL)
    await trio.to_thread.run_sync(victim.wait)
    killed_at = trio.current_time()
    await wait_for(lambda: all_owned_by(cluster, {"m1", "m3"}), LEASE + 2 * LEASE / 4 + 5,
                   "the dead member's connections owned again")
    failover = trio.current_time() - killed_at
    assert failover <= LEASE + LEASE / 4 + 5, failover
    for sim in cluster.sims:
        sim.app.faults.latency = 0
    await wait_for(lambda: jobs_done(cluster), 90, "every job completed")
    records_exact(cluster)
    assert query(cluster.database_url, "SELECT count(*) FROM sync_jobs")[0][0] == CONNECTIONS  # resumed, not redone


async def test_zombie_daemon_writes_nothing_after_its_leases_were_taken(cluster: Cluster) -> None:
    for sim in cluster.sims:
        sim.app.faults.latency = 0.3
    names = {"m1", "m2", "m3"}
    for name in sorted(names):
        cluster.start(name)
    await wait_for(lambda: all_owned_by(cluster, names) and len(set(cluster.owners().values())) == 3, 40,
                   "every connection owned, by the three members")
    await trio.to_thread.run_sync(install_write_audit, cluster.database_url)
    await wait_for(lambda: bool(query(cluster.database_url, "SELECT 1 FROM write_audit WHERE app = 'm2' LIMIT 1")),
                   30, "the zombie-to-be writing")
    zombie = cluster.procs["m2"]
    zombie.send_signal(signal.SIGSTOP)
    await wait_for(lambda: all_owned_by(cluster, {"m1", "m3"}), LEASE * 3 + 15,
                   lambda: f"the stopped member's connections taken: {owner_counts(cluster)}")
    taken_at = query(cluster.database_url, "SELECT now()")[0][0]
    await trio.sleep(1.0)
    zombie.send_signal(signal.SIGCONT)
    await trio.sleep(LEASE)  # it wakes up past its deadline: it must notice before it writes
    # every row m2 wrote since the take-over was written while m2 held that connection's lease
    # (it rejoins as a new member and may be handed connections again, under new epochs)
    late = query(cluster.database_url,
                 "SELECT count(*) FROM write_audit w WHERE w.app = 'm2' AND w.at > %s AND NOT EXISTS ("
                 " SELECT 1 FROM (SELECT owner FROM lease_audit a WHERE a.connection_id = w.connection_id"
                 " AND a.at <= w.at ORDER BY a.at DESC LIMIT 1) held WHERE held.owner LIKE 'm2#%%')", taken_at)
    assert late == [(0,)], "the zombie wrote rows under leases it no longer held"
    assert zombie.poll() is None, cluster.log_tail("m2")  # it lives on, as a member again
    for sim in cluster.sims:
        sim.app.faults.latency = 0
    await wait_for(lambda: jobs_done(cluster), 90, "every job completed")
    records_exact(cluster)


def test_bounded_load_rendezvous_split_is_even_and_moves_about_a_share() -> None:
    from freshd.cluster import assign

    ids = range(1, 3001)
    three = assign(ids, ["a", "b", "c"])
    counts = [list(three.values()).count(n) for n in "abc"]
    assert max(counts) - min(counts) <= 1, counts
    four = assign(ids, ["a", "b", "c", "d"])
    moved = sum(1 for cid in ids if three[cid] != four[cid])
    assert math.isclose(moved / 3000, 0.25, abs_tol=0.1), moved
    assert assign(ids, ["c", "b", "a"]) == three  # the same on every member


async def test_rolling_restart_of_all_three_completes_every_job_with_records_exact(cluster: Cluster) -> None:
    for sim in cluster.sims:
        sim.app.faults.latency = 0.2
    names = {"m1", "m2", "m3"}
    for name in sorted(names):
        cluster.start(name)
    await wait_for(lambda: all_owned_by(cluster, names) and len(set(cluster.owners().values())) == 3, 40,
                   "every connection owned, by the three members")
    for name in sorted(names):
        proc = cluster.procs[name]
        proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(proc.wait, 20) == 0  # a clean stop, jobs interrupted at a cursor
        cluster.start(name)
        await wait_for(lambda: all_owned_by(cluster, names), 40, f"every connection owned after restarting {name}")
    for sim in cluster.sims:
        sim.app.faults.latency = 0
    await wait_for(lambda: jobs_done(cluster), 90, "every job completed")
    records_exact(cluster)
    assert query(cluster.database_url, "SELECT count(*) FROM sync_jobs")[0][0] == CONNECTIONS
