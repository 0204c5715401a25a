"""Policies as an operator meets them: freshctl status, set-credential, sweeps, logs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import trio

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.helpers import query
from tests.test_daemon import CREDS, start_daemon


async def woo(nursery: trio.Nursery, **kwargs: object) -> tuple[WooCommerceSimulator, str]:
    sim = WooCommerceSimulator(records=40, seed=5, credentials=CREDS, **kwargs)  # type: ignore[arg-type]
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    return sim, f"http://127.0.0.1:{port}"


async def wait_state(running, name: str, state: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    with trio.fail_after(30):
        while True:
            view = await running.ctl_json("connections", "show", name)
            if view["state"] == state:
                return view  # type: ignore[no-any-return]
            await trio.sleep(0.1)


async def test_rejected_credentials_then_set_credential_resumes(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, capfd: object,
) -> None:
    _, url = await woo(nursery)
    running = await start_daemon(nursery, tmp_path, database_url, "")
    wrong = "cs_wrong_3e8a1f5b7c9d2e4f6a8b0c1d3e5f7a9b"
    added = await running.ctl_json("connections", "add", "shop", "--provider", "woocommerce", "--base-url", url,
                                   "--credential", "consumer_key=ck_e2e", "--credential", f"consumer_secret={wrong}",
                                   "--no-check")  # stored unchecked: the first sync finds them wrong
    failed = await running.wait_job(added["job_id"])
    assert failed["status"] == "failed"
    view = await wait_state(running, "shop", "reauth_required")
    assert "set-credential shop" in str(view["error"])
    assert (await running.ctl_json("sync", "shop"))["job_id"]  # queued, but not run while reauth is needed

    fixed = (await running.ctl("connections", "set-credential", "shop",
                               f"consumer_secret={CREDS['consumer_secret']}")).stdout
    assert "consumer_key, consumer_secret" in fixed and "queued as job" in fixed
    job_id = int(fixed.rsplit(" ", 1)[1])
    done = await running.wait_job(job_id)
    assert done["status"] == "completed", done
    view = await wait_state(running, "shop", "idle")
    assert view["error"] is None and view["records"] == 40 + 40 + 4

    # secrets appear nowhere an operator looks: admin replies, the activity log, the daemon's output
    shown = json.dumps(await running.ctl_json("connections", "show", "shop"))
    assert wrong not in shown and CREDS["consumer_secret"] not in shown
    activity = json.dumps(query(database_url, "SELECT message, details::text FROM activity_log"))
    assert wrong not in activity and CREDS["consumer_secret"] not in activity and "consumer_secret" in activity
    out, err = capfd.readouterr()  # type: ignore[attr-defined]
    assert wrong not in out + err and CREDS["consumer_secret"] not in out + err

    bad = await running.ctl("connections", "set-credential", "shop", "nokey", check=False)
    assert bad.returncode == 2
    missing = await running.ctl("connections", "set-credential", "nope", "a=b", check=False)
    assert missing.returncode != 0 and "no connection" in missing.stderr


async def test_breaker_opens_shows_in_status_and_the_health_sweep_probes(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    sim, url = await woo(nursery)
    body = (f'[policies.breaker]\nfailure_threshold = 2\ncooldown = "1s"\n[policies.retry]\nattempts = 1\n'
            f'[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "{url}"\n'
            f'credentials = {{ consumer_key = "ck_e2e", consumer_secret = "cs_e2e" }}\n')
    sim.app.faults.configure({"status": 503, "count": 1000})
    running = await start_daemon(nursery, tmp_path, database_url, body)
    job = (await running.ctl_json("jobs"))["jobs"][0]
    failed = await running.wait_job(job["id"])
    assert failed["status"] == "failed" and "circuit open" in failed["error"]
    view = await running.ctl_json("connections", "show", "shop")
    assert view["breaker"] == "open" and view["breaker_retry_at"]
    assert "BREAKER" in (await running.ctl("status")).stdout
    served = sim.app.stats.total()

    sim.app.faults.clear()
    await trio.sleep(1.1)  # the cool-down
    await running.ctl("trigger", "health")
    with trio.fail_after(20):
        while (view := await running.ctl_json("connections", "show", "shop"))["health"] != "ok":
            await trio.sleep(0.1)
    # the sweep re-queued the never-synced connection: its sync was the breaker's probe
    assert view["breaker"] == "closed" and view["state"] == "idle"
    assert sim.app.stats.total() >= served + 1
    # healthy and fresh: the sweep leaves it alone; in trouble: the sweep probes it
    await running.ctl("trigger", "health")
    await trio.sleep(0.3)
    assert (await running.ctl_json("connections", "show", "shop"))["probed_at"] is None
    sim.app.faults.configure({"status": 503, "count": 1000})
    job = await running.ctl_json("sync", "shop", "--full")
    assert (await running.wait_job(job["job_id"]))["status"] == "failed"
    await trio.sleep(1.1)
    await running.ctl("trigger", "health")
    with trio.fail_after(20):
        while not (view := await running.ctl_json("connections", "show", "shop"))["probed_at"]:
            await trio.sleep(0.1)
    assert view["health"].startswith("unhealthy") and view["breaker"] == "open"
    sim.app.faults.clear()
    await trio.sleep(2.1)  # the doubled cool-down
    await running.ctl("trigger", "health")
    with trio.fail_after(20):
        while (view := await running.ctl_json("connections", "show", "shop"))["health"] != "ok":
            await trio.sleep(0.1)
    assert view["breaker"] == "closed"
    schedule = {s["name"] for s in (await running.ctl_json("schedule"))["sweeps"]}
    assert {"sync", "health", "tokens", "cleanup"} <= schedule
    await running.ctl("trigger", "tokens")  # nothing to refresh for API keys: a no-op, not an error


async def test_bad_rate_options_are_refused_whole(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> None:
    _, url = await woo(nursery)
    running = await start_daemon(nursery, tmp_path, database_url, "")
    bad = await running.ctl("connections", "add", "x", "--provider", "woocommerce", "--base-url", url,
                            "--credential", "consumer_key=a", "--credential", "consumer_secret=b",
                            "--option", "rate_limit=lots", check=False)
    assert bad.returncode != 0 and "bad rate" in bad.stderr
    assert query(database_url, "SELECT count(*) FROM connections")[0][0] == 0


async def test_tokens_refresh_by_sweep_persist_sealed_and_a_revoked_grant_needs_reauth(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    """An OAuth provider (SP-API's Login with Amazon) through the daemon's token policy."""
    from freshd.connectors.amazon_sp.simulator import AmazonSPSimulator
    from tests.cases_amazon_sp import CREDS

    sim = AmazonSPSimulator(records=20, seed=4, credentials=CREDS)
    sim.token_lifetime = 602  # just over the 10 min buffer: due within seconds, so the sweep has work
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    creds = ", ".join(f'{k} = "{v}"' for k, v in CREDS.items())
    body = (f'[[connections]]\nname = "amazon"\nprovider = "amazon_sp"\nbase_url = "http://127.0.0.1:{port}"\n'
            f'credentials = {{ {creds} }}\n'
            f'options = {{ marketplace_ids = ["ATVPDKIKX0DER"], token_url = "/auth/o2/token",'
            f' report_poll_interval = 0.05, entities = ["inventory_summaries"] }}\n')
    running = await start_daemon(nursery, tmp_path, database_url, body)
    job = (await running.ctl_json("jobs"))["jobs"][0]
    assert (await running.wait_job(job["id"]))["status"] == "completed"
    assert sim.token_requests == 1
    view = await running.ctl_json("connections", "show", "amazon")
    assert view["token_expires_at"]

    # the token is stored sealed: neither it nor the refresh token is readable in the database
    sealed = query(database_url, "SELECT tokens, secret FROM credentials")[0]
    issued = sorted(sim._tokens)[-1] if hasattr(sim, "_tokens") else None
    assert issued is None or issued.encode() not in bytes(sealed[0])
    assert CREDS["refresh_token"].encode() not in bytes(sealed[1])

    # the sweep refreshes it once it is within the buffer of its expiry, exactly once
    with trio.fail_after(30):
        while sim.token_requests == 1:
            await running.ctl("trigger", "tokens")
            await trio.sleep(1.0)
    assert sim.token_requests == 2

    # the grant is revoked at Amazon: the next refresh is refused once, and the connection waits
    sim.app.actions["revoke_tokens"]()
    sim.app.actions["expire_tokens"]()
    job = await running.ctl_json("sync", "amazon", "--full")
    assert (await running.wait_job(job["job_id"]))["status"] == "failed"
    view = await wait_state(running, "amazon", "reauth_required")
    assert "set-credential amazon" in str(view["error"])
    asked = sim.app.stats["/auth/o2/token"]
    for _ in range(3):
        await running.ctl("trigger", "tokens")
    await running.ctl_json("sync", "amazon")
    await trio.sleep(0.5)
    assert sim.app.stats["/auth/o2/token"] == asked  # a refused grant is not asked again, no loop
