"""Benchmark: what the connection policies cost a single connection's sync.

The same full sync of N WooCommerce customers (simulator in its own process,
engine and PostgreSQL as in production), alternately with the policies a
daemon actor gives every connection (gate: breaker + rate-limit buckets with
header adaptation; retries; token refresher) and with them stripped to an
open gate.  Runs alternate so drift hits both alike; the best of each is kept.

Target (issue 3): the policies add under 5 % to the sync time.

Usage: .venv/bin/python bench/policy_overhead.py [--records 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import trio

from sync_woocommerce import BIN, CREDS, free_port, fresh_database, process, server_url, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def one_sync(db: str, base_url: str, *, policies_on: bool) -> float:
    from freshd.connectors.base import ConnectionSettings
    from freshd.connectors.http import OpenGate
    from freshd.connectors.woocommerce.connector import WooCommerceConnector
    from freshd.policies.gate import ConnectionPolicies
    from freshd.progress import JobControl
    from freshd.store import connections, jobs, open_store
    from freshd.store.jobs import JobKind
    from freshd.sync import JobRunner

    settings = ConnectionSettings("bench", "woocommerce", base_url, credentials=CREDS,
                                  options={"entities": ["customers"]})
    policies = ConnectionPolicies.standalone("woocommerce", WooCommerceConnector.rate_limits, settings.options,
                                             name="bench")
    if not policies_on:
        policies.gate = OpenGate()  # type: ignore[assignment]
    async with open_store(db) as store:
        row, _ = await store.call(connections.upsert_connection, store.keyring, name="bench", tenant="t",
                                  provider="woocommerce", base_url=base_url, options={}, credentials=CREDS,
                                  source="admin")
        job, _ = await store.call(jobs.create_job, row.id, JobKind.FULL, "bench")
        connector = WooCommerceConnector(settings, policies=policies)
        runner = JobRunner(store, connector, row.id, job, JobControl(), entities=["customers"])
        started = time.perf_counter()
        outcome = await runner.run()
        elapsed = time.perf_counter() - started
        await connector.aclose()
        assert outcome.status.value == "completed", outcome
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from freshd.logs import configure_logging

    configure_logging("warning", "json")  # as the daemon logs in production: not every page
    port = free_port()
    with server_url() as server, process(
        [str(BIN / "freshd"), "simulate", "woocommerce", "--port", str(port), "--records", str(args.records),
         "--credential", f"consumer_key={CREDS['consumer_key']}",
         "--credential", f"consumer_secret={CREDS['consumer_secret']}"], stdout=subprocess.DEVNULL):
        wait_port(port, timeout=600)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for on in (True, False):
                with fresh_database(server) as db:
                    times[on].append(trio.run(lambda on=on, db=db: one_sync(db, f"http://127.0.0.1:{port}",
                                                                           policies_on=on)))
        best_on, best_off = min(times[True]), min(times[False])
        print(f"with policies:    {args.records / best_on:,.0f} records/s (best of {args.rounds}:"
              f" {', '.join(f'{t:.2f}' for t in times[True])} s)")
        print(f"without policies: {args.records / best_off:,.0f} records/s (best of {args.rounds}:"
              f" {', '.join(f'{t:.2f}' for t in times[False])} s)")
        print(f"policy overhead:  {100 * (best_on - best_off) / best_off:+.1f} % of sync time (target < 5 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
