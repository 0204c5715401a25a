"""Benchmark: 100,000 WooCommerce customers from the simulator into PostgreSQL.

Everything runs as separate processes on loopback, the way a user runs them:
the simulator (`freshd simulate`), the daemon (`freshd run`, driven with
`freshctl`), and for comparison dlt's `rest_api` source into the same
PostgreSQL (in its own virtualenv, bench/.venv-dlt, created on first use).

Figures printed, each limit measured in the same run (bench/limits.py), freshd given as a fraction of each:
  limits  fetch only (the daemon's own connector, nothing stored), bulk upsert (COPY + one
          INSERT … ON CONFLICT, one transaction), per-page upsert (100 rows and a commit per page)
  freshd  initial sync records/s (job started_at -> finished_at), peak RSS of the daemon (VmHWM)
  freshd  the share of the sync its writer spent committing batches (the rest it waited for pages:
          freshd_sync_writer_seconds_total), which says whether PostgreSQL or fetching set the pace
  freshd  its share of the binding limit (the slower of fetch only and bulk upsert: it cannot outrun
          either), and the CPU each process spent per 1,000 records: daemon, simulator and PostgreSQL
          during freshd's sync, against the clients, simulator and PostgreSQL of the limits
  freshd  no-op incremental sync of the unchanged connection: seconds, and the daemon's CPU time
          for it (/proc/PID/stat from `freshctl sync` to the job's end, waited for in the database)
  freshd  full re-sync records/s without and with a `freshctl watch` subscriber (progress cost)
  freshd  seconds from `freshctl connections add` to the first records stored
  dlt     records/s (wall time of pipeline.run), peak RSS of its process, if `dlt` is importable

With --pairs N, N more pairs follow: the bulk limit and freshd's initial sync, one right after the
other (in turn in either order), each ratio printed and their median: on a machine whose speed
drifts the spread says what one ratio cannot.

With --latency 0.02 the simulator adds 20 ms to every provider response (its latency fault), for the
fetch limit and freshd alike: freshd's initial sync is then compared with the 4-concurrent fetch limit.

Usage: .venv/bin/python bench/sync_woocommerce.py [--records 100000] [--skip-dlt] [--quick] [--pairs N]
       [--latency SECONDS]
Database: $FRESHD_BENCH_DATABASE_URL, else the local server on 127.0.0.1:5432, else an embedded one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import psycopg

import limits
from freshd.embedded_pg import scratch_database, throwaway_postgres

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CREDS = {"consumer_key": "ck_bench", "consumer_secret": "cs_bench"}


def compile_like_an_install() -> None:
    """freshd's modules compiled to bytecode, as `pip install` leaves a deployed daemon: an editable
    install under PYTHONDONTWRITEBYTECODE=1 (this workplace sets it) would compile them at every
    start, which no deployed daemon does (0.1-0.3 s of a start-up on this machine)."""
    subprocess.run([str(BIN / "python"), "-m", "compileall", "-q", str(ROOT / "daemon"), str(ROOT / "connectors")],
                   check=True, stdout=subprocess.DEVNULL)


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
    except OSError:
        with throwaway_postgres("freshd-bench-pg-") as started:
            yield started
        return
    yield "postgresql://postgres@127.0.0.1:5432/postgres"


def fresh_database(server: str) -> contextlib.AbstractContextManager[str]:
    return scratch_database(server, "freshd_bench_")


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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, ended_children: bool = False) -> float:
    """The process's CPU time so far (utime + stime), all threads; with `ended_children`, plus
    that of its children that have ended (cutime + cstime: reaped, they are in no other count)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15 if ended_children else 13]) / CLK_TCK


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL process on the machine (server and backends), by pid;
    the server's includes its ended backends' (the bulk limit's connection ends before it is read)."""
    seen = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if (proc / "comm").read_text().strip() == "postgres":
                    seen[int(proc.name)] = cpu_seconds(int(proc.name), ended_children=True)
    return seen


def postgres_cpu_since(before: dict[int, float]) -> float:
    """PostgreSQL's CPU seconds since `before` (a backend that ended in between counts in its
    server's, whole: one that began before `before` is over-counted by what it had used by then)."""
    return sum(now - before.get(pid, 0.0) for pid, now in postgres_cpu().items())


def wait_job_in_db(db: str, job_id: int, timeout: float = 300.0) -> None:
    """Until the job is final, asking the database (not the daemon, whose CPU is being measured)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(db, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT status FROM freshd.sync_jobs WHERE id = %s", (job_id,)).fetchone()
            if row and row[0] in ("completed", "partial", "failed", "cancelled"):
                return
            time.sleep(0.005)
    raise TimeoutError(f"job {job_id} did not finish")


def writer_seconds(url: str) -> dict[str, float]:
    """freshd_sync_writer_seconds_total by state (committing, waiting), scraped from the daemon."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("freshd_sync_writer_seconds_total{"):
            labels, value = line.rsplit(" ", 1)
            state = labels.split('state="', 1)[1].split('"', 1)[0]
            found[state] = found.get(state, 0.0) + float(value)
    return found


def seconds(job: dict) -> float:  # type: ignore[type-arg]
    start = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def bench_freshd(db: str, base_url: str, records: int, work: Path, *, quick: bool = False,
                 profile: str | None = None, simulator_pid: int | None = None) -> dict[str, float]:
    sock = work / "admin.sock"
    config = work / "freshd.toml"
    metrics_address = f"127.0.0.1:{free_port()}"  # scraped for the writer's split: committing or waiting
    metrics_url = f"http://{metrics_address}/metrics"
    config.write_text(
        f'database_url = "{db}"\nstate_dir = "{work}"\n'
        f'[admin]\nsocket = "{sock}"\n[metrics]\naddress = "{metrics_address}"\n[log]\nlevel = "warning"\n'
        f'[schedule]\nscheduled_sync = false\n'
        f'[[connections]]\nname = "bench"\nprovider = "woocommerce"\nbase_url = "{base_url}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
        f'options = {{ entities = ["customers"] }}\n'
    )
    with process([str(BIN / "freshd"), "run", "--config", str(config)]) as daemon:
        spy = subprocess.Popen([str(BIN / "py-spy"), "record", "--rate", "200", "--format", "raw", "--output", profile,
                                "--pid", str(daemon.pid)], stdout=subprocess.DEVNULL) if profile else None
        deadline = time.monotonic() + 60
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("freshd did not start")
            time.sleep(0.1)
        jobs = freshctl(sock, "jobs", "--connection", "bench")["jobs"]
        sim_cpu, sim_wall = cpu_seconds(simulator_pid) if simulator_pid else 0.0, time.perf_counter()
        pg_before, daemon_before = postgres_cpu(), cpu_seconds(daemon.pid)
        writer_before = writer_seconds(metrics_url)
        initial = wait_job(sock, jobs[0]["id"])
        writer = {state: spent - writer_before.get(state, 0.0) for state, spent in writer_seconds(metrics_url).items()}
        sim_busy = ((cpu_seconds(simulator_pid) - sim_cpu) / (time.perf_counter() - sim_wall)
                    if simulator_pid else float("nan"))
        pg_sync_cpu, daemon_sync_cpu = postgres_cpu_since(pg_before), cpu_seconds(daemon.pid) - daemon_before
        sim_sync_cpu = cpu_seconds(simulator_pid) - sim_cpu if simulator_pid else float("nan")
        assert initial["status"] == "completed", initial
        initial_cpu = cpu_seconds(daemon.pid)  # the daemon's start and its initial sync
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
            spy.wait(60)
        with psycopg.connect(db) as conn:  # where the sync's time went: before the first batch, after the last
            row = conn.execute(
                "SELECT extract(epoch FROM min(r.first_seen_at) - j.started_at),"
                " extract(epoch FROM j.finished_at - max(r.first_seen_at)) FROM freshd.records r, freshd.sync_jobs j"
                " WHERE j.id = %s GROUP BY j.started_at, j.finished_at", (jobs[0]["id"],)).fetchone()
            assert row is not None
            lead_in, tail = float(row[0]), float(row[1])
        stored = freshctl(sock, "status")["connections"][0]["records"]
        assert stored == records, f"stored {stored} of {records}"
        # the minimum gap between syncs does not apply to a benchmark: force it
        time.sleep(1.0)  # the daemon idle: what it spends from here is the sync's
        cpu_before = cpu_seconds(daemon.pid)
        job_id = freshctl(sock, "sync", "bench", "--force")["job_id"]
        wait_job_in_db(db, job_id)
        noop_cpu = cpu_seconds(daemon.pid) - cpu_before
        incremental = wait_job(sock, job_id)
        rss = peak_rss_mb(daemon.pid)
        if quick:
            return {"records_per_s": records / seconds(initial), "initial_s": seconds(initial),
                    "simulator_busy": sim_busy,
                    "initial_cpu_s": initial_cpu, "lead_in_s": lead_in, "tail_s": tail, "writer": writer,
                    "sync_cpu": (daemon_sync_cpu, sim_sync_cpu, pg_sync_cpu),
                    "noop_incremental_s": seconds(incremental), "noop_incremental_cpu_s": noop_cpu,
                    "peak_rss_mb": rss}
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
        "initial_cpu_s": initial_cpu,
        "sync_cpu": (daemon_sync_cpu, sim_sync_cpu, pg_sync_cpu),
        "simulator_busy": sim_busy,
        "lead_in_s": lead_in,
        "writer": writer,
        "tail_s": tail,
        "noop_incremental_s": seconds(incremental),
        "noop_incremental_cpu_s": noop_cpu,
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
    """A Python that can import dlt: this one, or bench/.venv-dlt's, made here on first use (dlt's
    own dependencies stay out of freshd's environment).  None, saying why, if it cannot be made."""
    if importlib.util.find_spec("dlt") is not None:
        return sys.executable
    venv = ROOT / "bench" / ".venv-dlt"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"dlt: creating {venv} (pip install 'dlt[postgres]', once)", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "dlt[postgres]"], check=True,
                           timeout=900, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"dlt: could not install it ({exc}); skipped", flush=True)
            shutil.rmtree(venv, ignore_errors=True)  # half made: the next run tries again
            return None
    return str(python)


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


def paired_ratios(server: str, base_url: str, records: int, work: Path, pairs: int) -> None:
    """freshd's initial sync against the bulk limit measured beside it, `pairs` times (in turn
    before and after it, so a drift in the machine's speed does not favour either): the spread and
    the median say more than one ratio on a machine whose speed drifts."""
    shaped = limits.customers(records)
    ratios = []
    for number in range(1, pairs + 1):
        state = work / f"pair-{number}"
        state.mkdir(mode=0o700)  # the daemon's own state dir: its admin socket refuses one others may enter
        rate = bulk = 0.0
        for measure in ("bulk", "freshd") if number % 2 else ("freshd", "bulk"):
            with fresh_database(server) as db:
                if measure == "bulk":
                    bulk = records / limits.bulk_upsert(db, shaped)
                else:
                    rate = bench_freshd(db, base_url, records, state, quick=True)["records_per_s"]
        ratios.append(rate / bulk)
        print(f"pair {number}: bulk upsert {bulk:,.0f} records/s, freshd {rate:,.0f}: {ratios[-1]:.0%}", flush=True)
    print(f"freshd / bulk upsert over {pairs} pair(s): median {statistics.median(ratios):.0%}"
          f" (from {min(ratios):.0%} to {max(ratios):.0%})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="the limits, the initial and the no-op incremental sync only (no re-syncs, no dlt)")
    parser.add_argument("--profile", metavar="FILE", help="record the daemon's initial sync with py-spy"
                        " (if installed), collapsed stacks into FILE")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="added by the simulator to every provider response (e.g. 0.02)")
    parser.add_argument("--pairs", type=int, default=0, metavar="N",
                        help="then N more pairs of the bulk limit and freshd's initial sync (in turn in either order)"
                             " and the median of their ratios (a machine's speed can change from minute to minute)")
    args = parser.parse_args()
    if args.pairs < 0:
        parser.error("--pairs must be 0 or more")
    if args.profile and not (BIN / "py-spy").exists():
        parser.error(f"--profile needs py-spy in {BIN} ({BIN / 'python'} -m pip install py-spy)")
    compile_like_an_install()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    sim_args = [str(BIN / "freshd"), "simulate", "woocommerce", "--port", str(port), "--records",
                str(args.records), "--seed", "1"]
    for key, value in CREDS.items():
        sim_args += ["--credential", f"{key}={value}"]
    if args.latency and os.geteuid() == 0:
        # a remote provider's CPU is not this machine's: with latency, the simulator stands in for one,
        # so it runs ahead of the rest (and of other work on the machine) rather than starved by them
        sim_args = ["nice", "-n", "-10", *sim_args]
    with tempfile.TemporaryDirectory(prefix="freshd-bench-") as tmp, server_url() as server, \
            process(sim_args, stdout=subprocess.DEVNULL) as simulator:
        work = Path(tmp)
        wait_port(port)
        if args.latency:
            limits.set_latency(base_url, args.latency)
        print(f"simulator: {args.records} customers at {base_url}"
              + (f", {args.latency * 1000:.0f} ms added to every response" if args.latency else ""), flush=True)
        sim_cpu = cpu_seconds(simulator.pid)
        fetch_s, fetched = limits.fetch(base_url, CREDS)
        sim_fetch_cpu = cpu_seconds(simulator.pid) - sim_cpu
        sim_busy_fetch = sim_fetch_cpu / fetch_s
        assert fetched == args.records, f"fetched {fetched} of {args.records}"
        shaped = limits.customers(args.records)
        with fresh_database(server) as db:
            pg_before, own_before = postgres_cpu(), time.process_time()
            bulk_s = limits.bulk_upsert(db, shaped)
            bulk_cpu = (time.process_time() - own_before, postgres_cpu_since(pg_before))
        with fresh_database(server) as db:
            paged_s = limits.per_page_upsert(db, shaped)
        del shaped
        size = sum(len(orjson.dumps(r)) for r in limits.customers(100)) / 100
        with fresh_database(server) as db:
            result = bench_freshd(db, base_url, args.records, work, quick=args.quick, profile=args.profile,
                                  simulator_pid=simulator.pid)
        rate = result["records_per_s"]
        ceilings = {"fetch only (4 concurrent)": args.records / fetch_s,
                    "bulk upsert (one transaction)": args.records / bulk_s,
                    "per-page upsert (100 rows/commit)": args.records / paged_s}
        print(f"records: {args.records:,} customers of {size:,.0f} bytes (JSON) each", flush=True)
        for name, limit in ceilings.items():
            print(f"limit  {name:36s} {limit:9,.0f} records/s   freshd = {rate / limit:5.0%} of it", flush=True)
        print(f"freshd initial sync                        {rate:9,.0f} records/s ({result['initial_s']:.2f} s), "
              f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
        print(f"  fetch limit's client CPU {getattr(limits.fetch, 'cpu_seconds', float('nan')):.1f} s;"
              f" daemon CPU {result['initial_cpu_s']:.1f} s (its start included); job start -> first batch stored"
              f" {result['lead_in_s']:.2f} s, last batch stored -> job end {result['tail_s']:.2f} s", flush=True)
        writer = result["writer"]
        busy = writer.get("committing", 0.0) / max(sum(writer.values()), 1e-9)
        print(f"  the sync's writer committed {busy:.0%} of its time and waited for pages the rest"
              f" (so {'its commits' if busy > 0.5 else 'fetching'} set the pace)", flush=True)
        print(f"  the simulator's CPU, in cores: {sim_busy_fetch:.2f} during the fetch limit,"
              f" {result['simulator_busy']:.2f} during freshd's initial sync (load average {os.getloadavg()[0]:.1f})",
              flush=True)
        # what the machine had to give: freshd cannot outrun the slower of fetching and storing, and
        # on one machine its simulator, the daemon and PostgreSQL share the cores that each limit had
        binding = min(ceilings["fetch only (4 concurrent)"], ceilings["bulk upsert (one transaction)"])
        print(f"  binding limit (the slower of fetch only and bulk upsert) {binding:,.0f} records/s:"
              f" freshd = {rate / binding:.0%} of it", flush=True)
        per = 1000 / args.records * 1000  # ms of CPU per 1,000 records
        daemon_cpu, sim_cpu_sync, pg_cpu = result["sync_cpu"]
        print(f"  CPU per 1,000 records, ms: freshd's sync: daemon {daemon_cpu * per:.0f}, simulator"
              f" {sim_cpu_sync * per:.0f}, PostgreSQL {pg_cpu * per:.0f} (together {os.cpu_count()} cores x"
              f" {result['initial_s']:.1f} s offered {os.cpu_count() * result['initial_s'] * per:.0f}, used"
              f" {(daemon_cpu + sim_cpu_sync + pg_cpu) * per:.0f}); fetch limit: client"
              f" {getattr(limits.fetch, 'cpu_seconds', float('nan')) * per:.0f}, simulator {sim_fetch_cpu * per:.0f};"
              f" bulk limit: client {bulk_cpu[0] * per:.0f}, PostgreSQL {bulk_cpu[1] * per:.0f}", flush=True)
        if args.latency:
            print(f"with {args.latency * 1000:.0f} ms per response: freshd = "
                  f"{rate / ceilings['fetch only (4 concurrent)']:.0%} of the 4-concurrent fetch limit"
                  " (target >= 90 %)", flush=True)
        print(f"freshd no-op incremental sync: {result['noop_incremental_s']:.3f} s, "
              f"{result['noop_incremental_cpu_s'] * 1000:.0f} ms of daemon CPU (target <= 50 ms)", flush=True)
        if args.pairs:
            paired_ratios(server, base_url, args.records, work, args.pairs)
        if args.quick:
            return 0
        print(f"freshd full re-sync: {result['full_unwatched_per_s']:,.0f} records/s unwatched, "
              f"{result['full_watched_per_s']:,.0f} records/s with `freshctl watch` attached "
              f"({result['watch_events']} progress events); connections add -> first records stored: "
              f"{result['add_to_first_records_s']:.3f} s", flush=True)
        python = None if args.skip_dlt else dlt_python()
        if python is None:
            print("dlt: skipped" + ("" if args.skip_dlt else " (see above)"),
                  flush=True)
        else:
            with fresh_database(server) as db:
                dlt = bench_dlt(python, db, base_url, args.records, work)
            print(f"dlt rest_api: {dlt['records_per_s']:,.0f} records/s ({dlt['seconds']:.2f} s), "
                  f"peak RSS {dlt['peak_rss_mb']:.0f} MB; freshd = {rate / dlt['records_per_s']:.1f}x dlt", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
