"""Benchmark: change events (issue 11), measured side by side in one run.

One WooCommerce simulator (100,000 customers of about 1.2 KB), two fresh databases, one Redis:

  outbox cost   the same initial sync without events, with events but the relay held back (Redis
                unreachable: the outbox alone; target within 10 %), and with events relayed as they
                commit (the relay shares the 2 cores and the GIL with the sync)
  relay         events published per second while the initial sync's 100,000 events drain
                (XADD pipelines of 500, ~1.2 KB payloads)
  latency       commit to XADD per event (the outbox row's commit time against the stream entry's
                time, both on this machine's clock), p50 and p99 during the sync
  backfill      `freshctl consumers add` of an application: historical events queued and
                published per second

Redis: FRESHD_BENCH_REDIS_URL, else 127.0.0.1:6379 db 14 if it answers, else an embedded Valkey.

Usage: .venv/bin/python bench/events.py [--records 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis

from freshd.embedded_pg import throwaway_valkey
from sync_woocommerce import BIN, CREDS, free_port, fresh_database, freshctl, process, seconds, server_url, wait_job
from sync_woocommerce import wait_port as wait_for_port


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("FRESHD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        yield url
        return
    except redis.RedisError:
        pass
    with throwaway_valkey("freshd-bench-valkey-") as started:
        yield started


def daemon_config(work: Path, db: str, base_url: str, tenant: str, events: str | None) -> Path:
    config = work / f"freshd-{tenant}.toml"
    config.write_text(
        f'database_url = "{db}"\nstate_dir = "{work}"\n'
        f'[admin]\nsocket = "{work / (tenant + ".sock")}"\n[metrics]\nenabled = false\n[log]\nlevel = "warning"\n'
        f'[schedule]\nscheduled_sync = false\n'
        + (f'[events]\nredis_url = "{events}"\n' if events else "")
        + f'[[connections]]\nname = "bench"\nprovider = "woocommerce"\ntenant = "{tenant}"\nbase_url = "{base_url}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
        f'options = {{ entities = ["customers"] }}\n')
    return config


def initial_sync(config: Path, sock: Path) -> tuple[subprocess.Popen[bytes], dict]:  # type: ignore[type-arg]
    daemon = subprocess.Popen([str(BIN / "freshd"), "run", "--config", str(config)])
    deadline = time.monotonic() + 60
    while not sock.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("freshd did not start")
        time.sleep(0.1)
    job = wait_job(sock, freshctl(sock, "jobs", "--connection", "bench")["jobs"][0]["id"])
    assert job["status"] == "completed", job
    return daemon, job


def drained(db: str, timeout: float = 900.0) -> float:
    """Seconds until the outbox has nothing left to publish."""
    started = time.monotonic()
    with psycopg.connect(db) as conn:
        while time.monotonic() - started < timeout:
            row = conn.execute("SELECT count(*) FROM freshd.outbox WHERE published_at IS NULL").fetchone()
            if row is not None and row[0] == 0:
                return time.monotonic() - started
            time.sleep(0.05)
    raise TimeoutError("the outbox did not drain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    sim = [str(BIN / "freshd"), "simulate", "woocommerce", "--port", str(port), "--records", str(args.records),
           "--seed", "1", *[a for k, v in CREDS.items() for a in ("--credential", f"{k}={v}")]]
    with tempfile.TemporaryDirectory(prefix="freshd-bench-events-") as tmp, server_url() as server, \
            redis_url() as url, process(sim, stdout=subprocess.DEVNULL):
        work = Path(tmp)
        wait_for_port(port)
        client = redis.Redis.from_url(url)
        results = {}
        closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: the relay holds back
        for label, events in (("without events", None), ("outbox only", closed), ("with events", url)):
            tenant = f"b{uuid.uuid4().hex[:8]}"
            with fresh_database(server) as db:
                config = daemon_config(work, db, base_url, tenant, events)
                daemon, job = initial_sync(config, work / f"{tenant}.sock")
                try:
                    results[label] = args.records / seconds(job)
                    if events == url:
                        drain = drained(db)
                        stream = f"freshd:{tenant}:customers"
                        published = client.xlen(stream)
                        with psycopg.connect(db) as conn:
                            rows = conn.execute(
                                "SELECT connection_id || ':customers:' || external_id || ':' || version,"
                                " extract(epoch FROM created_at) FROM freshd.outbox").fetchall()
                        committed = {eid: float(at) for eid, at in rows}
                        lags = []
                        for entry_id, fields in client.xrange(stream):
                            at = int(entry_id.decode().split("-")[0]) / 1000
                            eid = fields[b"id"].decode()
                            if eid in committed:
                                lags.append(at - committed[eid])
                        relay_rate = published / (seconds(job) + drain)
                        added = time.monotonic()
                        freshctl(work / f"{tenant}.sock", "consumers", "add", "bench-app", "--tenant", tenant)
                        history = f"freshd:{tenant}:customers:history:bench-app"
                        while client.xlen(history) < args.records and time.monotonic() - added < 900:
                            time.sleep(0.1)
                        backfill = time.monotonic() - added
                        for key in client.scan_iter(f"freshd:{tenant}:*"):
                            client.delete(key)
                finally:
                    daemon.terminate()
                    daemon.wait(30)
        base = results["without events"]
        print(f"initial sync of {args.records} customers: {base:,.0f} records/s without events;"
              f" with the outbox written and the relay held back {results['outbox only']:,.0f}"
              f" ({results['outbox only'] / base:.1%} of it; target >= 90 %); with events relayed as they commit"
              f" {results['with events']:,.0f} ({results['with events'] / base:.1%})", flush=True)
        print(f"relay: {published} events published at {relay_rate:,.0f} events/s over the sync and its drain"
              f" (the outbox drained {drain:.1f} s after the sync ended)", flush=True)
        lags.sort()
        print(f"commit -> XADD: p50 {statistics.median(lags) * 1000:.0f} ms,"
              f" p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms over {len(lags)} events", flush=True)
        print(f"backfill of {args.records} records: {backfill:.1f} s ({args.records / backfill:,.0f} events/s,"
              f" queued and published)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
