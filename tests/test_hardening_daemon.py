"""Hardening (issue 9) seen from the outside: a daemon, `freshctl`, and the hostile provider.

Each test is named after the failure it pins.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import trio

from tests.helpers import query
from tests.hostile import HostileShop
from tests.test_daemon import Running, start_daemon


def woo_block(name: str, url: str, creds: dict[str, str], **options: str) -> str:
    block = (f'[[connections]]\nname = "{name}"\nprovider = "woocommerce"\nbase_url = "{url}"\n'
             f'credentials = {{ consumer_key = "{creds["consumer_key"]}", '
             f'consumer_secret = "{creds["consumer_secret"]}" }}\n')
    if options:
        block += "options = { " + ", ".join(f'{k} = "{v}"' for k, v in options.items()) + " }\n"
    return block


async def first_job(running: Running, connection: str) -> dict[str, object]:
    with trio.fail_after(30):
        while True:
            jobs = (await running.ctl_json("jobs", "--connection", connection))["jobs"]
            if jobs:
                return await running.wait_job(jobs[-1]["id"])
            await trio.sleep(0.1)


async def test_echoed_url_puts_the_secret_in_status_jobs_health_and_show(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    secret = "cs_CANARY2/x+y=z"
    creds = {"consumer_key": "ck_canary_key", "consumer_secret": secret}
    shop = HostileShop(customers=5, credentials=creds, echo_url_status=403)
    port = await nursery.start(shop.serve)
    running = await start_daemon(nursery, tmp_path, database_url,
                                 woo_block("canary", f"http://127.0.0.1:{port}", creds, auth="query"))
    job = await first_job(running, "canary")
    assert job["status"] == "failed" and "Sorry, you cannot list resources" in str(job["error"])
    seen = []
    for args in (["status"], ["jobs"], ["health"], ["connections", "show", "canary"], ["job", str(job["id"])]):
        seen.append((await running.ctl(*args, check=False)).stdout)
        seen.append(json.dumps(await running.ctl_json(*args)) if args[0] != "health" else "")
    seen.append(json.dumps(query(database_url, "SELECT row_to_json(a)::text FROM activity_log a")))
    text = "\n".join(seen)
    for form in (secret, "cs_CANARY2%2Fx%2By%3Dz", "cs_CANARY2/x%2By%3Dz", "cs_CANARY2%2Fx+y%3Dz"):
        assert form not in text, form


async def test_reconciliation_held_then_confirmed_with_freshctl(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    shop = HostileShop(customers=250)
    port = await nursery.start(shop.serve)
    running = await start_daemon(nursery, tmp_path, database_url,
                                 woo_block("shop", f"http://127.0.0.1:{port}", shop.credentials))
    assert (await first_job(running, "shop"))["status"] == "completed"
    for rid in range(1, 61):
        shop.sim.delete("customers", rid, force=True)
    job = await running.wait_job((await running.ctl_json("sync", "shop", "--full"))["job_id"])
    assert job["status"] == "partial" and "--confirm-deletes" in str(job["error"])
    shown = await running.ctl_json("connections", "show", "shop")
    assert [(h["entity"], h["count"], h["live"]) for h in shown["held_deletions"]] == [("customers", 60, 250)]
    assert "held deletions" in (await running.ctl("connections", "show", "shop")).stdout

    refused = await running.ctl("sync", "shop", "--confirm-deletes", check=False)
    assert refused.returncode != 0 and "--full" in refused.stderr

    job = await running.wait_job((await running.ctl_json("sync", "shop", "--full", "--confirm-deletes"))["job_id"])
    assert job["status"] == "completed", job
    assert (await running.ctl_json("connections", "show", "shop"))["held_deletions"] == []
    live = query(database_url, "SELECT count(*) FROM records WHERE entity = 'customers' AND deleted_at IS NULL")
    assert live[0][0] == 190
    kinds = [k for (k,) in query(database_url, "SELECT kind FROM activity_log")]
    assert "sync.confirm_deletes" in kinds


async def test_unvalidated_options_crash_loop_the_actor(
    tmp_path: Path, database_url: str,
) -> None:
    shop_url = "http://127.0.0.1:9"  # never reached: the settings are refused first
    creds = {"consumer_key": "ck_x", "consumer_secret": "cs_x"}
    async with trio.open_nursery() as nursery:
        running = await start_daemon(nursery, tmp_path, database_url, "")
        refused = await running.ctl("connections", "add", "bad", "--provider", "woocommerce", "--base-url",
                                    shop_url, "--credential", "consumer_key=ck_x", "--credential",
                                    "consumer_secret=cs_x", "--option", "page_concurrency=abc", check=False)
        assert refused.returncode != 0 and "page_concurrency" in refused.stderr
        assert query(database_url, "SELECT count(*) FROM connections")[0][0] == 0
        added = await running.ctl("connections", "add", "bad", "--provider", "woocommerce", "--base-url",
                                  shop_url, "--credential", f"consumer_key={creds['consumer_key']}",
                                  "--credential", f"consumer_secret={creds['consumer_secret']}", "--no-check",
                                  check=False)
        assert added.returncode == 0, added.stderr
        nursery.cancel_scope.cancel()
    # settings a check would refuse, stored anyway (an older version, or an edit in the database)
    with psycopg.connect(database_url, options="-c search_path=freshd,public") as conn:
        conn.execute("UPDATE connections SET options = '{\"page_concurrency\": \"abc\"}'")
        conn.execute("UPDATE sync_jobs SET status = 'cancelled' WHERE status NOT IN ('completed', 'failed')")
    async with trio.open_nursery() as nursery:
        running = await start_daemon(nursery, tmp_path, database_url, "")
        job = await running.wait_job((await running.ctl_json("sync", "bad", "--full", "--force"))["job_id"])
        assert job["status"] == "failed" and "invalid connection settings" in str(job["error"]), job
        status = await running.ctl_json("status")
        assert status["connections"][0]["state"] == "error"
        nursery.cancel_scope.cancel()
