"""Benchmark: 100,000 WooCommerce customers from the simulator into PostgreSQL.

Everything runs as separate processes on loopback, the way a user runs them:
the simulator (`freshd simulate`), the daemon (`freshd run`, driven with
`freshctl`), and for comparison dlt's `rest_api` source into the same
PostgreSQL (in its own virtualenv, bench/.venv-dlt, created on first use).

Figures printed, each limit measured in the same run (bench/limits.py), freshd given as a fraction of each:
  limits  fetch only (the daemon's own connector, nothing stored), bulk upsert (COPY + one
          INSERT … ON CONFLICT, one transaction), per-page upsert (100 rows and a commit per page)
  freshd  initial sync records/s (job started_at -> finished_at), peak RSS of the daemon (VmHWM)
  freshd  no-op incremental sync of the unchanged connection: seconds
  freshd  full re-sync records/s without and with a `freshctl watch` subscriber (progress cost)
  freshd  seconds from `freshctl connections add` to the first records stored
  dlt     records/s (wall time of pipeline.run), peak RSS of its process, if `dlt` is importable

Usage: .venv/bin/python bench/sync_woocommerce.py [--records 100000] [--skip-dlt]
Database: $FRESHD_BENCH_DATABASE_URL, else the local server on 127.0.0.1:5432, else an embedded one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import psycopg
from psycopg.conninfo import make_conninfo

import limits

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CREDS = {"consumer_key": "ck_bench", "consumer_secret": "cs_bench"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    if url := os.environ.get("FRESHD_BENCH_DATABASE_URL"):
        yield url
        return
    try:
        socket.create_connection(("127.0.0.1", 5432), 1).close()
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    except OSError:
        import pgserver

        with tempfile.TemporaryDirectory() as pgdata:
            server = pgserver.get_server(Path(pgdata), cleanup_mode="stop")
            try:
                yield str(server.get_uri())
            finally:
                server.cleanup()


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    name = f"freshd_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def process(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def freshctl(sock: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([str(BIN / "freshctl"), "--socket", str(sock), "--json", *args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def wait_job(sock: Path, job_id: int, timeout: float = 900.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = freshctl(sock, "job", str(job_id))
        if job["status"] in ("completed", "partial", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")


def seconds(job: dict) -> float:  # type: ignore[type-arg]
    start = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def bench_freshd(db: str, base_url: str, records: int, work: Path) -> dict[str, float]:
    sock = work / "admin.sock"
    config = work / "freshd.toml"
    config.write_text(
        f'database_url = "{db}"\nstate_dir = "{work}"\n'
        f'[admin]\nsocket = "{sock}"\n[metrics]\nenabled = false\n[log]\nlevel = "warning"\n'
        f'[schedule]\nscheduled_sync = false\n'
        f'[[connections]]\nname = "bench"\nprovider = "woocommerce"\nbase_url = "{base_url}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
        f'options = {{ entities = ["customers"] }}\n'
    )
    with process([str(BIN / "freshd"), "run", "--config", str(config)]) as daemon:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("freshd did not start")
            time.sleep(0.1)
        jobs = freshctl(sock, "jobs", "--connection", "bench")["jobs"]
        initial = wait_job(sock, jobs[0]["id"])
        assert initial["status"] == "completed", initial
        stored = freshctl(sock, "status")["connections"][0]["records"]
        assert stored == records, f"stored {stored} of {records}"
        # the minimum gap between syncs does not apply to a benchmark: force it
        job_id = freshctl(sock, "sync", "bench", "--force")["job_id"]
        incremental = wait_job(sock, job_id)
        rss = peak_rss_mb(daemon.pid)
        # progress reporting cost: the same full sync without, then with, a watcher attached
        unwatched = wait_job(sock, freshctl(sock, "sync", "bench", "--full", "--force")["job_id"])
        watched_id = freshctl(sock, "sync", "bench", "--full", "--force")["job_id"]
        with process([str(BIN / "freshctl"), "--socket", str(sock), "--json", "watch", str(watched_id)],
                     stdout=subprocess.PIPE) as watcher:
            watched = wait_job(sock, watched_id)
            events = len(watcher.communicate(timeout=60)[0].splitlines())
        # time from `connections add` to the first records stored
        added = time.perf_counter()
        freshctl(sock, "connections", "add", "bench2", "--provider", "woocommerce", "--base-url", base_url,
                 "--credential", f"consumer_key={CREDS['consumer_key']}",
                 "--credential", f"consumer_secret={CREDS['consumer_secret']}")
        first_records = None
        with psycopg.connect(db) as conn:
            while time.perf_counter() - added < 60:
                row = conn.execute("SELECT count(*) FROM freshd.records r JOIN freshd.connections c"
                                   " ON c.id = r.connection_id WHERE c.name = 'bench2'").fetchone()
                if row and row[0]:
                    first_records = time.perf_counter() - added
                    break
                time.sleep(0.005)
    return {
        "records_per_s": records / seconds(initial),
        "initial_s": seconds(initial),
        "noop_incremental_s": seconds(incremental),
        "peak_rss_mb": rss,
        "full_unwatched_per_s": records / seconds(unwatched),
        "full_watched_per_s": records / seconds(watched),
        "watch_events": events,
        "add_to_first_records_s": first_records if first_records is not None else float("nan"),
    }


DLT_SCRIPT = """
import resource, sys, time, dlt
from dlt.sources.rest_api import rest_api_source
base_url, db, user, password = sys.argv[1:5]
source = rest_api_source({
    "client": {"base_url": base_url + "/wp-json/wc/v3/",
               "auth": {"type": "http_basic", "username": user, "password": password},
               "paginator": {"type": "header_link"}},
    "resources": [{"name": "customers", "primary_key": "id", "write_disposition": "merge",
                   "endpoint": {"path": "customers", "params": {"per_page": 100, "orderby": "id", "order": "asc"}}}],
})
pipeline = dlt.pipeline(pipeline_name="freshd_bench", destination=dlt.destinations.postgres(credentials=db),
                        dataset_name="dlt_bench", pipelines_dir=sys.argv[5])
started = time.perf_counter()
pipeline.run(source)
elapsed = time.perf_counter() - started
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def dlt_python() -> str | None:
    """A Python that can import dlt: this one, or bench/.venv-dlt's if someone made it."""
    if importlib.util.find_spec("dlt") is not None:
        return sys.executable
    venv = ROOT / "bench" / ".venv-dlt" / "bin" / "python"
    return str(venv) if venv.exists() else None


def bench_dlt(python: str, db: str, base_url: str, records: int, work: Path) -> dict[str, float]:
    # dlt wants a URL; psycopg's conninfo string is turned into one here
    info = psycopg.conninfo.conninfo_to_dict(db)
    host = info.get("host", "127.0.0.1")
    user, password, port = info.get("user", "postgres"), info.get("password", ""), info.get("port", 5432)
    url = f"postgresql://{user}:{password}@{host}:{port}/{info['dbname']}"
    out = subprocess.run(
        [python, "-c", DLT_SCRIPT, base_url, url, CREDS["consumer_key"],
         CREDS["consumer_secret"], str(work / "dlt")],
        check=True, capture_output=True, text=True,
    )
    elapsed, rss = map(float, out.stdout.split()[-2:])
    return {"records_per_s": records / elapsed, "seconds": elapsed, "peak_rss_mb": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--skip-dlt", action="store_true")
    args = parser.parse_args()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    sim_args = [str(BIN / "freshd"), "simulate", "woocommerce", "--port", str(port), "--records",
                str(args.records), "--seed", "1"]
    for key, value in CREDS.items():
        sim_args += ["--credential", f"{key}={value}"]
    with tempfile.TemporaryDirectory(prefix="freshd-bench-") as tmp, server_url() as server, \
            process(sim_args, stdout=subprocess.DEVNULL):
        work = Path(tmp)
        wait_port(port)
        print(f"simulator: {args.records} customers at {base_url}", flush=True)
        fetch_s, fetched = limits.fetch(base_url, CREDS)
        assert fetched == args.records, f"fetched {fetched} of {args.records}"
        shaped = limits.customers(args.records)
        with fresh_database(server) as db:
            bulk_s = limits.bulk_upsert(db, shaped)
        with fresh_database(server) as db:
            paged_s = limits.per_page_upsert(db, shaped)
        del shaped
        size = sum(len(orjson.dumps(r)) for r in limits.customers(100)) / 100
        with fresh_database(server) as db:
            result = bench_freshd(db, base_url, args.records, work)
        rate = result["records_per_s"]
        ceilings = {"fetch only (4 concurrent)": args.records / fetch_s,
                    "bulk upsert (one transaction)": args.records / bulk_s,
                    "per-page upsert (100 rows/commit)": args.records / paged_s}
        print(f"records: {args.records:,} customers of {size:,.0f} bytes (JSON) each", flush=True)
        for name, limit in ceilings.items():
            print(f"limit  {name:36s} {limit:9,.0f} records/s   freshd = {rate / limit:5.0%} of it", flush=True)
        print(f"freshd initial sync                        {rate:9,.0f} records/s ({result['initial_s']:.2f} s), "
              f"peak RSS {result['peak_rss_mb']:.0f} MB, no-op incremental {result['noop_incremental_s']:.2f} s",
              flush=True)
        print(f"freshd full re-sync: {result['full_unwatched_per_s']:,.0f} records/s unwatched, "
              f"{result['full_watched_per_s']:,.0f} records/s with `freshctl watch` attached "
              f"({result['watch_events']} progress events); connections add -> first records stored: "
              f"{result['add_to_first_records_s']:.3f} s", flush=True)
        python = None if args.skip_dlt else dlt_python()
        if python is None:
            print("dlt: skipped" + ("" if args.skip_dlt else " (not importable here: pip install 'dlt[postgres]')"),
                  flush=True)
        else:
            with fresh_database(server) as db:
                dlt = bench_dlt(python, db, base_url, args.records, work)
            print(f"dlt rest_api: {dlt['records_per_s']:,.0f} records/s ({dlt['seconds']:.2f} s), "
                  f"peak RSS {dlt['peak_rss_mb']:.0f} MB; freshd = {rate / dlt['records_per_s']:.1f}x dlt", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
