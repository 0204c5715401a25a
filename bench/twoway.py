"""Benchmark: two-way sync (issue 12) between a WooCommerce and an Odoo simulator.

10,000 customers in the shop and 10,000 partners in the ERP (by default), one pair:

  link       the first run: every record of each side created on the other (20,000 creates)
  changed    10 % changed on each side (the shop: a customer's city; the ERP: another partner's
             phone), then a run: items per second, and provider writes per changed item
             (target 1.0: each change written once, no echo writes, no ping-pong)
  no change  a run right after: its duration (both sides' catch-up syncs, the plan, nothing written)

The daemon, its database calls' threads and both simulators share this process and its two cores
(the simulators run on the daemon's trio loop): figures are for comparing runs on one machine. The
per-tenant write budget is lifted for the benchmark (the contract's 50 requests a minute would
make the first run take minutes of waiting, not work).

Usage: .venv/bin/python bench/twoway.py [--records 10000]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from freshd.app import Daemon, run_daemon
from freshd.client import open_client
from freshd.config import load_config
from freshd.connectors.odoo.simulator import OdooSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from sync_woocommerce import fresh_database, server_url

WOO = {"consumer_key": "ck_bench", "consumer_secret": "cs_bench"}
ODOO = {"database": "bench", "username": "api@bench.example", "api_key": "bench-key"}


async def run_pair(client: Any) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    run = await client.call("twoway.start", {"pair": "bench", "batch_size": 200})
    while run["state"] not in ("done", "partial", "failed", "cancelled"):
        await trio.sleep(0.1)
        run = await client.call("twoway.status", {"id": run["id"]})
    return run, time.perf_counter() - started


async def bench(records: int, db: str, work: Path) -> None:
    shop = WooCommerceSimulator(records=0, customers=records, seed=31, credentials=WOO)
    erp = OdooSimulator(records=records, seed=32, credentials=ODOO)
    async with trio.open_nursery() as nursery:
        shop_port = await nursery.start(functools.partial(serve_asgi, shop.app, "127.0.0.1", 0))
        erp_port = await nursery.start(functools.partial(serve_asgi, erp.app, "127.0.0.1", 0))
        sock = work / "bench.sock"
        config_path = work / "freshd.toml"
        config_path.write_text(
            f'database_url = "{db}"\nstate_dir = "{work}"\n[admin]\nsocket = "{sock}"\n'
            '[metrics]\nenabled = false\n[log]\nlevel = "warning"\n[schedule]\nscheduled_sync = false\n'
            '[twoway]\nwrite_rate_per_minute = 50\n'
            f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "http://127.0.0.1:{shop_port}"\n'
            f'credentials = {{ consumer_key = "{WOO["consumer_key"]}", '
            f'consumer_secret = "{WOO["consumer_secret"]}" }}\n'
            'options = { entities = ["customers"] }\n'
            f'[[connections]]\nname = "erp"\nprovider = "odoo"\nbase_url = "http://127.0.0.1:{erp_port}"\n'
            f'credentials = {{ api_key = "{ODOO["api_key"]}" }}\n'
            f'options = {{ database = "{ODOO["database"]}", username = "{ODOO["username"]}", '
            'entities = ["partners"] }\n'
            '[pairs.bench]\nleft = "shop"\nright = "erp"\nentities = ["customers"]\n')
        config = load_config(config_path, env={})
        daemon: Daemon = await nursery.start(functools.partial(run_daemon, config, config_path=config_path))
        assert daemon.twoway is not None
        daemon.twoway.rate_override = 1e9  # see the module docstring
        async with open_client(sock, timeout=60) as client:
            first, first_seconds = await run_pair(client)
            writes = first["writes"]["left"] + first["writes"]["right"]
            print(f"link      {first['state']}: {first['queue']['total']} items, {writes} creates in "
                  f"{first_seconds:.1f} s ({first['queue']['total'] / first_seconds:.0f} items/s)", flush=True)

            await trio.sleep(1.1)  # modification times have whole seconds
            changed = records // 10
            customers = sorted(shop.collections["customers"].docs)[:changed]
            for cid in customers:
                current = shop.get("customers", cid)
                shop.update("customers", cid, billing={**current["billing"], "city": f"Bench City {cid}"})
            partners = sorted(p for p, doc in erp.docs["res.partner"].items() if doc.get("email"))[-changed:]
            for pid in partners:
                erp.write("res.partner", pid, phone=f"+1 555 {pid:06d}")
            run, run_seconds = await run_pair(client)
            writes = run["writes"]["left"] + run["writes"]["right"]
            items = run["queue"]["total"]
            print(f"changed   {run['state']}: {2 * changed} records changed ({changed} a side), {items} items, "
                  f"{writes} provider writes in {run_seconds:.1f} s: {items / run_seconds:.0f} items/s, "
                  f"{writes / (2 * changed):.2f} writes per changed item (target 1.00); "
                  f"conflicts {run['conflicts']['total']}", flush=True)

            quiet, quiet_seconds = await run_pair(client)
            print(f"no change {quiet['state']}: {quiet['queue']['total']} items, "
                  f"{quiet['writes']['left'] + quiet['writes']['right']} writes, {quiet_seconds:.2f} s "
                  f"(catch-up syncs of both sides, plan over {2 * records} records)", flush=True)
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="customers in the shop and partners in the ERP")
    args = parser.parse_args()
    with server_url() as server, fresh_database(server) as db, \
            tempfile.TemporaryDirectory(prefix="freshd-bench-twoway-") as work:
        Path(work).chmod(0o700)
        trio.run(bench, args.records, db, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
