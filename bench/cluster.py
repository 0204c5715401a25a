"""Benchmark: three daemons sharing one database, 3,000 connections each (issue 10).

The connections are seeded as in bench/fleet.py (synced half an hour ago, so nothing is due),
then three `freshd run` processes start on the same config, each with its own socket and
member name, and we measure from outside:

  split       connections per member once settled (max/min; target <= 1.2)
  upkeep      CPU % and database transactions/s per daemon over 30 s of steady state
              (lease rounds, heartbeats; pg_stat_database.xact_commit for the whole database / 3)
  join        connections that move when a 4th daemon joins (target about 1/4)
  failover    SIGKILL one daemon: seconds until every connection is owned again (target <= 20 s
              with the defaults: lease_ttl 10 s, renewed every 2.5 s)

Usage: .venv/bin/python bench/cluster.py [--connections 9000]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from fleet import cpu_seconds, seed_fleet
from sync_woocommerce import BIN, free_port, fresh_database, process, server_url, wait_port


def owners(db: str) -> dict[int, str | None]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT c.id, m.name FROM freshd.connections c LEFT JOIN freshd.leases l"
                            " ON l.connection_id = c.id AND l.expires_at > now()"
                            " LEFT JOIN freshd.members m ON m.id = l.owner").fetchall()
    return {int(cid): name for cid, name in rows}


def wait_settled(db: str, names: set[str], count: int, timeout: float = 300.0) -> tuple[float, dict[int, str | None]]:
    """Until every connection is owned by one of `names`, each of them holding some, stable for 3 s."""
    started = time.monotonic()
    stable_since, last = None, None
    while time.monotonic() - started < timeout:
        now = owners(db)
        settled = len(now) == count and set(now.values()) == names
        if settled and now == last:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 3:
                return stable_since - started, now
        else:
            stable_since = None
        last = now
        time.sleep(0.25)
    raise TimeoutError(f"not settled on {sorted(names)}")


def commits(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=9000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="freshd-cluster-") as tmp, server_url() as server, \
            fresh_database(server) as db:
        work = Path(tmp)
        key = work / "secret.key"
        subprocess.run([str(BIN / "freshd"), "keygen", str(key)], check=True, stdout=subprocess.DEVNULL)
        sim_port = free_port()
        with process([str(BIN / "freshd"), "simulate", "woocommerce", "--port", str(sim_port), "--records", "5"],
                     stdout=subprocess.DEVNULL):
            wait_port(sim_port)
            seed_fleet(db, key, args.connections, f"http://127.0.0.1:{sim_port}")
            config = work / "freshd.toml"
            config.write_text(
                f'database_url = "{db}"\nstate_dir = "{work}"\n[secrets]\nkey_files = ["{key}"]\n'
                f'[metrics]\nenabled = false\n[log]\nlevel = "warning"\n'
                f'[schedule]\nsync_interval = "1d"\nhealth_interval = "1d"\ntoken_interval = "1d"\n')
            procs: dict[str, subprocess.Popen[bytes]] = {}

            def start(name: str) -> None:
                env = {**os.environ, "FRESHD_SOCKET": str(work / f"{name}.sock"), "FRESHD_MEMBER_NAME": name}
                procs[name] = subprocess.Popen([str(BIN / "freshd"), "run", "--config", str(config)], env=env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            try:
                for name in ("m1", "m2", "m3"):
                    start(name)
                took, split = wait_settled(db, {"m1", "m2", "m3"}, args.connections)
                counts = sorted(list(split.values()).count(n) for n in ("m1", "m2", "m3"))
                print(f"split over 3 members: {counts} (max/min {counts[-1] / counts[0]:.3f}; target <= 1.2);"
                      f" settled {took:.1f} s after start", flush=True)

                window = 30.0
                cpu = {n: cpu_seconds(p.pid) for n, p in procs.items()}
                xacts = commits(db)
                time.sleep(window)
                xact_rate = (commits(db) - xacts) / window / 3
                for n, p in procs.items():
                    print(f"upkeep {n}: {100 * (cpu_seconds(p.pid) - cpu[n]) / window:.1f} % CPU", flush=True)
                print(f"upkeep: {xact_rate:.1f} database transactions/s per daemon (lease rounds, heartbeats)",
                      flush=True)

                start("m4")
                _, joined = wait_settled(db, {"m1", "m2", "m3", "m4"}, args.connections)
                moved = sum(1 for cid, name in joined.items() if split.get(cid) != name)
                print(f"a 4th member joined: {moved} of {args.connections} connections moved"
                      f" ({moved / args.connections:.3f}; ideal 0.25)", flush=True)

                procs["m2"].send_signal(signal.SIGKILL)
                procs["m2"].wait()
                killed = time.monotonic()
                while True:
                    now = owners(db)
                    if len(now) == args.connections and None not in now.values() and "m2" not in now.values():
                        break
                    if time.monotonic() - killed > 120:
                        raise TimeoutError("no failover")
                    time.sleep(0.1)
                print(f"failover after SIGKILL: every connection owned again in {time.monotonic() - killed:.1f} s"
                      f" (target <= 20 s; lease_ttl 10 s)", flush=True)
            finally:
                for p in procs.values():
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in procs.values():
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
