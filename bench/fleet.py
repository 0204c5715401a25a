"""Benchmark: 10,000 configured connections in one daemon, mostly idle.

The connections (sealed credentials and all) are written to a fresh database
first, as if a fleet had been running for a while: 99 % synced within the
last hour, 1 % stale.  All point at one WooCommerce simulator (`freshd
simulate`, its own process).  Then `freshd run` starts, and we measure from
outside:

  start-up    seconds from exec to the admin socket answering (10,000 actors running)
  RSS         resident memory once started, and the peak after the sweeps (VmRSS, VmHWM)
  sweeps      CPU seconds the daemon spends on one run of each sweep (`freshctl trigger`,
              then until the process is quiet): sync (queues the stale 1 %), health
              (probes the connections showing trouble), tokens (every actor checks)
  syncs       CPU the stale connections' incremental syncs cost, reported apart

freshd's modules are compiled to bytecode first, as an install leaves them.

Targets (issue 3): < 500 MB RSS, a full sweep under 2 s of CPU; (issue 13): start-up <= 2 s, RSS <= 200 MB.

Usage: .venv/bin/python bench/fleet.py [--connections 10000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from sync_woocommerce import (
    BIN,
    CREDS,
    compile_like_an_install,
    free_port,
    fresh_database,
    process,
    server_url,
    wait_port,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def memory_mb(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def quiet_cpu(pid: int, since: float, *, settle: float = 1.0, timeout: float = 300.0) -> float:
    """CPU used since `since` once the process has been idle for `settle` seconds."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    quiet_for = 0.0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        quiet_for = quiet_for + 0.25 if now - last <= 0.02 else 0.0
        last = now
        if quiet_for >= settle:
            return now - since
    raise TimeoutError("the daemon never went quiet")


def freshctl(sock: Path, *args: str) -> None:
    subprocess.run([str(BIN / "freshctl"), "--socket", str(sock), *args], check=True, capture_output=True,
                   timeout=120)


def seed_fleet(db: str, key_file: Path, count: int, base_url: str) -> None:
    """10,000 connections with sealed credentials, 99 % recently synced, written in one transaction.

    Each connection has its own credentials, as in a real fleet (the daemon registers every one for
    redaction); the stale 1 %, which the sync sweep syncs, have the ones the simulator accepts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from freshd.secrets import Keyring
    from freshd.store import connections, migrate

    migrate.apply_migrations(db)
    keyring = Keyring.from_files([key_file])
    with psycopg.connect(db, options="-c search_path=freshd,public") as conn:
        from psycopg.rows import dict_row

        conn.row_factory = dict_row  # type: ignore[assignment]
        for i in range(count):
            own = {"consumer_key": f"ck_{secrets.token_hex(20)}", "consumer_secret": f"cs_{secrets.token_hex(20)}"}
            row, _ = connections.upsert_connection(
                conn, keyring, name=f"shop-{i:05d}", tenant=f"tenant-{i % 50}", provider="woocommerce",
                base_url=base_url, options={}, credentials=dict(CREDS) if i % 100 == 0 else own, source="admin")
            conn.execute("UPDATE connections SET last_success_at = now() - %s::interval WHERE id = %s",
                         ("6 hours" if i % 100 == 0 else "30 minutes", row.id))
        conn.execute("INSERT INTO sync_jobs (connection_id, kind, status, trigger, created_at, started_at,"
                     " finished_at) SELECT id, 'initial', 'completed', 'bench', last_success_at,"
                     " last_success_at, last_success_at FROM connections")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--profile", metavar="FILE",
                        help="record the start-up with py-spy (if installed), collapsed stacks into FILE;"
                             " the figures after start-up are then skipped")
    args = parser.parse_args()
    compile_like_an_install()  # start-up as deployed: bytecode compiled at install, not at every start
    with tempfile.TemporaryDirectory(prefix="freshd-fleet-") as tmp, server_url() as server, \
            fresh_database(server) as db:
        work = Path(tmp)
        key = work / "secret.key"
        subprocess.run([str(BIN / "freshd"), "keygen", str(key)], check=True, stdout=subprocess.DEVNULL)
        sim_port = free_port()
        with process([str(BIN / "freshd"), "simulate", "woocommerce", "--port", str(sim_port), "--records", "20",
                      "--credential", f"consumer_key={CREDS['consumer_key']}",
                      "--credential", f"consumer_secret={CREDS['consumer_secret']}"],
                     stdout=subprocess.DEVNULL):
            wait_port(sim_port)
            base_url = f"http://127.0.0.1:{sim_port}"
            seeded = time.perf_counter()
            seed_fleet(db, key, args.connections, base_url)
            print(f"seeded {args.connections} connections in {time.perf_counter() - seeded:.1f} s", flush=True)
            sock = work / "admin.sock"
            config = work / "freshd.toml"
            config.write_text(
                f'database_url = "{db}"\nstate_dir = "{work}"\n[secrets]\nkey_files = ["{key}"]\n'
                f'[admin]\nsocket = "{sock}"\n[metrics]\nenabled = false\n[log]\nlevel = "warning"\n'
                # sweeps run when triggered, not on their own, so each is measured alone
                f'[schedule]\nsync_interval = "1d"\nhealth_interval = "1d"\ntoken_interval = "1d"\n'
                f'[sync]\nmax_running = 20\n'
            )
            started = time.perf_counter()
            with process([str(BIN / "freshd"), "run", "--config", str(config)]) as daemon:
                spy = subprocess.Popen([str(BIN / "py-spy"), "record", "--rate", "250", "--format", "raw",
                                        "--output", args.profile, "--pid", str(daemon.pid)],
                                       stdout=subprocess.DEVNULL) if args.profile else None
                deadline = time.monotonic() + 300
                while True:
                    try:
                        freshctl(sock, "schedule")
                        break
                    except subprocess.CalledProcessError:
                        if daemon.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError("freshd did not start") from None
                        time.sleep(0.1)
                startup = time.perf_counter() - started
                cpu_answer = cpu_seconds(daemon.pid)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
                    spy.wait(60)
                    print(f"start-up: {startup:.1f} s under py-spy; profile in {args.profile}", flush=True)
                    return 0
                cpu_start = quiet_cpu(daemon.pid, 0.0)
                rss_idle, _ = memory_mb(daemon.pid)
                print(f"start-up: {startup:.2f} s to an answering admin socket ({cpu_answer:.2f} s CPU by then,"
                      f" {cpu_start:.2f} s until quiet); RSS {rss_idle:.0f} MB with {args.connections} actors;"
                      f" targets <= 2 s, <= 200 MB (load average {os.getloadavg()[0]:.1f})", flush=True)

                runs = (("sync", "queues the stale 1 %; CPU includes their syncs"),
                        ("sync", "again: nothing is due, the decision over the fleet alone"),
                        ("health", "store check, probes for the connections in trouble"),
                        ("tokens", "every actor checks its token"))
                for sweep, what in runs:
                    before = cpu_seconds(daemon.pid)
                    freshctl(sock, "trigger", sweep)
                    used = quiet_cpu(daemon.pid, before)
                    print(f"sweep {sweep:7}: {used:.2f} s CPU until quiet ({what})", flush=True)
                with psycopg.connect(db) as conn:
                    row = conn.execute("SELECT count(*) FILTER (WHERE status = 'completed'), count(*)"
                                       " FROM freshd.sync_jobs WHERE trigger = 'schedule'").fetchone()
                assert row is not None
                rss, peak = memory_mb(daemon.pid)
                print(f"scheduled syncs: {row[0]} of {row[1]} completed", flush=True)
                print(f"RSS after the sweeps: {rss:.0f} MB (peak {peak:.0f} MB); target < 500 MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
