"""A two-way run survives SIGKILL: a real `freshd run`, killed at random moments mid-run, then
restarted until the run ends.  No record is created twice on either side (counted in the
simulators), none is lost, and the run's figures add up."""

from __future__ import annotations

import functools
import json
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from freshd.connectors.odoo.simulator import OdooSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.cases_odoo import CREDS as ODOO
from tests.helpers import query
from tests.test_daemon import CREDS

KILLS = 5
FRESHCTL = [sys.executable, "-m", "freshd.ctl"]


async def ctl_json(sock: Path, *args: str) -> Any:
    result = await trio.to_thread.run_sync(functools.partial(
        subprocess.run, [*FRESHCTL, "--socket", str(sock), "--json", *args], capture_output=True, text=True,
        timeout=30))
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


async def wait_for_socket(sock: Path) -> None:
    with trio.fail_after(30):
        while not await trio.Path(sock).exists():
            await trio.sleep(0.05)


async def test_sigkill_mid_run_creates_nothing_twice_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    shop = WooCommerceSimulator(records=0, customers=40, seed=21, credentials=CREDS)
    erp = OdooSimulator(records=40, seed=22, credentials=ODOO)
    for sim in (shop.app, erp.app):
        sim.faults.latency = 0.04  # slow enough that every kill lands mid-run
    shop_port = await nursery.start(functools.partial(serve_asgi, shop.app, "127.0.0.1", 0))
    erp_port = await nursery.start(functools.partial(serve_asgi, erp.app, "127.0.0.1", 0))
    emails_before = Counter(str(c["email"]).lower() for c in
                            (shop.collections["customers"].get(i) for i in shop.collections["customers"].docs))
    emails_before.update(str(p["email"]).lower() for p in erp.docs["res.partner"].values() if p.get("email"))
    sock = tmp_path / "admin.sock"
    config = tmp_path / "freshd.toml"
    config.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{tmp_path}"\n[admin]\nsocket = "{sock}"\n'
        f'[metrics]\nenabled = false\n[log]\nlevel = "warning"\n[schedule]\nscheduled_sync = false\n'
        f'[twoway]\nwrite_rate_per_minute = 50\n'
        f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "http://127.0.0.1:{shop_port}"\n'
        f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
        f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n'
        f'options = {{ entities = ["customers"] }}\n'
        f'[[connections]]\nname = "erp"\nprovider = "odoo"\nbase_url = "http://127.0.0.1:{erp_port}"\n'
        f'credentials = {{ api_key = "{ODOO["api_key"]}" }}\n'
        f'options = {{ database = "{ODOO["database"]}", username = "{ODOO["username"]}", entities = ["partners"] }}\n'
        f'[pairs.shop-erp]\nleft = "shop"\nright = "erp"\nentities = ["customers"]\n'
    )
    command = [sys.executable, "-m", "freshd.cli", "run", "--config", str(config)]
    rng = random.Random(20261202)
    run_id: int | None = None
    for kill in range(KILLS):
        sock.unlink(missing_ok=True)
        daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        try:
            await wait_for_socket(sock)
            if run_id is None:
                run_id = int((await ctl_json(sock, "twoway", "start", "shop-erp", "--batch-size", "4"))["id"])
            await trio.sleep(rng.uniform(0.3, 1.5) + (1.0 if kill == 0 else 0.0))
        finally:
            daemon.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(daemon.wait)
    assert run_id is not None
    killed_at = query(database_url, "SELECT state, phase FROM twoway_runs WHERE id = %s", run_id)
    assert killed_at[0][0] in ("processing", "queued", "done"), killed_at

    sock.unlink(missing_ok=True)
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        await wait_for_socket(sock)
        with trio.fail_after(120):
            while (run := await ctl_json(sock, "twoway", "status", str(run_id)))["state"] not in (
                    "done", "partial", "failed", "cancelled"):
                await trio.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(daemon.wait)

    assert run["state"] == "done", run
    shop_emails = Counter(str(c["email"]).lower() for c in
                          (shop.collections["customers"].get(i) for i in shop.collections["customers"].docs))
    erp_emails = Counter(str(p["email"]).lower() for p in erp.docs["res.partner"].values() if p.get("email"))
    assert max(shop_emails.values()) == 1 and max(erp_emails.values()) == 1  # nothing created twice
    assert set(shop_emails) == set(erp_emails) == set(emails_before)  # nothing lost
    plan = run["plan"]["customers"]
    assert run["writes"]["left"] == plan["create_left"] and run["writes"]["right"] == plan["create_right"]
    assert run["queue"]["processed"] == run["queue"]["total"] == plan["create_left"] + plan["create_right"]
    links = query(database_url, "SELECT count(*) FROM links WHERE pair = 'shop-erp'")[0][0]
    assert links == len(emails_before)
