"""The HTTP API from the outside: a real daemon with `[http] address`, httpx, tokens made by freshctl."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from freshd.admin.commands import DaemonAdmin
from freshd.admin.protocol import Caller, Peer, Request
from freshd.config import load_config
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.errors import AdminError, ConfigError
from tests.helpers import query
from tests.test_daemon import CREDS, Running, start_daemon

FINISHED = ("completed", "partial", "failed", "cancelled")


def tenant_connection(name: str, tenant: str, url: str) -> str:
    return (f'[[connections]]\nname = "{name}"\nprovider = "woocommerce"\nbase_url = "{url}"\ntenant = "{tenant}"\n'
            f'credentials = {{ consumer_key = "{CREDS["consumer_key"]}", '
            f'consumer_secret = "{CREDS["consumer_secret"]}" }}\n')


@dataclass
class Api:
    running: Running
    url: str
    acme: str  # a token of tenant acme
    sims: dict[str, WooCommerceSimulator]

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url + "/api/v1", headers=headers, timeout=30)

    async def wait_job(self, http: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
        with trio.fail_after(60):
            while True:
                job: dict[str, Any] = (await http.get(f"/jobs/{job_id}")).json()
                if job["status"] in FINISHED:
                    return job
                await trio.sleep(0.1)


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    sims, blocks = {}, []
    for seed, (name, tenant) in enumerate((("acme-shop", "acme"), ("globex-shop", "globex")), start=1):
        sim = WooCommerceSimulator(records=60, seed=seed, credentials=CREDS)
        port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
        sims[name] = sim
        blocks.append(tenant_connection(name, tenant, f"http://127.0.0.1:{port}"))
    running = await start_daemon(nursery, tmp_path, database_url,
                                 '[http]\naddress = "127.0.0.1:0"\n' + "".join(blocks))
    assert running.daemon.http_url is not None and running.daemon.http_url.startswith("http://127.0.0.1:")
    token = (await running.ctl("tokens", "add", "--tenant", "acme", "--label", "shop backend")).stdout.strip()
    api = Api(running, running.daemon.http_url, token, sims)
    for job in (await running.ctl_json("jobs"))["jobs"]:  # the initial syncs, done before each test
        await running.wait_job(job["id"])
    yield api


async def test_a_tenant_token_sees_and_acts_on_its_tenant_only(api: Api, database_url: str) -> None:
    with trio.fail_after(60):
        async with api.client(api.acme) as http:
            listed = await http.get("/connections")
            assert listed.status_code == 200
            assert [c["name"] for c in listed.json()["connections"]] == ["acme-shop"]
            assert (await http.get("/connections/acme-shop")).json()["tenant"] == "acme"
            jobs = (await http.get("/jobs")).json()
            assert {j["connection"] for j in jobs["jobs"]} == {"acme-shop"} and jobs["total"] == 1
            health = (await http.get("/health")).json()
            assert set(health["records"]) == {"acme-shop"}

            globex_job = next(j["id"] for j in (await api.running.ctl_json("jobs", "--connection", "globex-shop"))
                              ["jobs"])
            before = query(database_url, "SELECT count(*) FROM sync_jobs")
            # another tenant's connection and job do not exist for this token, whatever the route
            for method, path in (("GET", "/connections/globex-shop"), ("GET", "/jobs?connection=globex-shop"),
                                 ("POST", "/connections/globex-shop/sync"),
                                 ("POST", "/connections/globex-shop/ensure"), ("GET", f"/jobs/{globex_job}"),
                                 ("GET", f"/jobs/{globex_job}/events"), ("POST", f"/jobs/{globex_job}/cancel")):
                refused = await http.request(method, path)
                assert refused.status_code == 404, (method, path, refused.text)
                assert refused.json()["error"]["code"] == "not_found"
            assert query(database_url, "SELECT count(*) FROM sync_jobs") == before  # nothing queued

            # its own: ensure answers with the data's age (fresh), pause of a finished job is a conflict
            ensured = await http.post("/connections/acme-shop/ensure")
            assert ensured.status_code == 200 and ensured.json()["queued"] is False
            own_job = jobs["jobs"][0]["id"]
            conflict = await http.post(f"/jobs/{own_job}/pause")
            assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"


async def test_missing_invalid_or_revoked_tokens_get_401_and_bad_requests_4xx_changing_nothing(
    api: Api, database_url: str,
) -> None:
    with trio.fail_after(60):
        before = query(database_url, "SELECT count(*) FROM sync_jobs")
        async with api.client() as anonymous:
            missing = await anonymous.get("/connections")
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
            assert missing.headers["www-authenticate"].startswith("Bearer")
            for header in ("Bearer fsk_not-a-real-token", "Basic YWRtaW46YWRtaW4=", "Bearer", api.acme):
                refused = await anonymous.post("/connections/acme-shop/sync", headers={"Authorization": header})
                assert refused.status_code == 401, header
        async with api.client(api.acme) as http:
            unknown = await http.get("/nope")
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
            assert (await http.get("/api/v2/connections")).status_code == 404
            wrong_method = await http.delete("/connections/acme-shop")
            assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["allow"]
            assert (await http.get("/jobs/abc")).status_code == 400
            assert (await http.get("/jobs?limit=many")).status_code == 400
            assert (await http.get("/jobs?limit=0")).json()["error"]["code"] == "bad_request"
            assert (await http.get("/jobs?colour=red")).status_code == 400
            for body in (b"{not json", b"[1]", b'{"name": "globex-shop"}', b'{"full": "yes"}', b'{"bogus": 1}'):
                bad = await http.post("/connections/acme-shop/sync", content=body,
                                      headers={"Content-Type": "application/json"})
                assert bad.status_code == 400, (body, bad.text)
            huge = await http.post("/connections/acme-shop/sync", content=b'{"entities": ["' + b"x" * 70000 + b'"]}')
            assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
            assert query(database_url, "SELECT count(*) FROM sync_jobs") == before  # no refusal queued a job

            # revoked: refused at once
            token_id = next(t["id"] for t in (await api.running.ctl_json("tokens", "list"))["tokens"])
            assert (await http.get("/connections")).status_code == 200
            await api.running.ctl("tokens", "revoke", str(token_id))
            assert (await http.get("/connections")).status_code == 401

    # the token was shown once: stored only as its SHA-256, listed by prefix
    rows = query(database_url, "SELECT token_sha256, prefix, tenant, label, revoked_at FROM api_tokens")
    assert len(rows) == 1
    sha, prefix, tenant, label, revoked = rows[0]
    assert bytes(sha) == hashlib.sha256(api.acme.encode()).digest()  # type: ignore[arg-type]
    assert api.acme.startswith(str(prefix)) and len(api.acme) > len(str(prefix)) + 20
    assert (tenant, label) == ("acme", "shop backend") and revoked is not None
    listing = await api.running.ctl("tokens", "list")
    assert api.acme not in listing.stdout and "shop backend" in listing.stdout


async def test_only_administrators_manage_api_tokens(api: Api, database_url: str) -> None:
    handler = DaemonAdmin(api.running.daemon)
    tenant_user = Caller(Peer(1, 4242, 4242), frozenset({"acme"}))
    for cmd, args in (("tokens.add", {"tenant": "acme"}), ("tokens.list", {}), ("tokens.revoke", {"id": 1})):
        with pytest.raises(AdminError) as refused:
            await handler.handle(Request(1, 1, cmd, args), tenant_user)
        assert refused.value.code == "forbidden"
    assert query(database_url, "SELECT count(*), count(revoked_at) FROM api_tokens") == [(1, 0)]
    missing = await api.running.ctl("tokens", "revoke", "999", check=False)
    assert missing.returncode == 4 and "no API token 999" in missing.stderr


async def read_events(response: httpx.Response, *, stop_after: int | None = None) -> list[tuple[str, str, Any]]:
    """(id, event, data) of each event until the stream ends (or `stop_after` events)."""
    events: list[tuple[str, str, Any]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue  # a keep-alive comment
        if line == "":
            if fields:
                events.append((fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])))
                fields = {}
                if stop_after is not None and len(events) >= stop_after:
                    break
            continue
        key, _, value = line.partition(": ")
        fields[key] = value
    return events


async def test_a_job_queued_over_http_streams_its_progress_to_the_end_and_resumes_from_last_event_id(
    api: Api,
) -> None:
    with trio.fail_after(90):
        async with api.client(api.acme) as http:
            api.sims["acme-shop"].app.faults.latency = 0.05  # a job that lasts a while
            queued = await http.post("/connections/acme-shop/sync", json={"full": True})
            assert queued.status_code == 202, queued.text
            job_id = queued.json()["job_id"]
            again = await http.post("/connections/acme-shop/sync")  # the live job is the answer
            assert again.status_code == 200 and again.json() == {"job_id": job_id, "created": False,
                                                                  "status": again.json()["status"]}

            async with http.stream("GET", f"/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                first = await read_events(response, stop_after=1)
            (seen_id, kind, data), = first
            assert kind == "job" and data["id"] == job_id and data["status"] not in FINISHED
            assert seen_id.startswith(f"{data['status']}.")

            # reconnect where we left: the state we saw is not sent again, then the job to its end
            async with http.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": seen_id}) as response:
                assert response.status_code == 200
                rest = await read_events(response)
            assert rest and rest[0][0] != seen_id
            assert all(kind == "job" and data["id"] == job_id for _, kind, data in rest)
            final_id, _, final = rest[-1]
            assert final["status"] == "completed" and final["percent"] == 100.0
            assert [d["status"] for _, _, d in rest[:-1]] == [d["status"] for _, _, d in rest[:-1]
                                                             if d["status"] not in FINISHED]
            done = [sum(p["processed"] for p in d["progress"].values()) for _, _, d in rest]
            assert done == sorted(done) and done[-1] == final["totals"]["processed"] > 0

            # a client that saw the end is told there is nothing more: 204 (an EventSource stops)
            ended = await http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": final_id})
            assert ended.status_code == 204
            # without Last-Event-ID, a finished job's stream is its final state, then the end
            async with http.stream("GET", f"/jobs/{job_id}/events") as response:
                assert [(i, d["status"]) for i, _, d in await read_events(response)] == [(final_id, "completed")]
            assert (await http.get("/jobs/999999/events")).status_code == 404


async def test_pause_resume_and_cancel_over_http_reach_the_job(api: Api) -> None:
    with trio.fail_after(90):
        async with api.client(api.acme) as http:
            api.sims["acme-shop"].app.faults.latency = 0.2
            job_id = (await http.post("/connections/acme-shop/sync", json={"full": True})).json()["job_id"]

            async def status_becomes(wanted: str) -> None:
                while (await http.get(f"/jobs/{job_id}")).json()["status"] != wanted:
                    await trio.sleep(0.05)

            await status_becomes("running")
            # a client that hangs up mid-stream ends its subscription at once
            hub = api.running.daemon.supervisor.hub
            async with http.stream("GET", f"/jobs/{job_id}/events") as response:
                assert len(await read_events(response, stop_after=1)) == 1
                assert hub.watchers() == 1
            with trio.fail_after(5):
                while hub.watchers():
                    await trio.sleep(0.02)
            paused = await http.post(f"/jobs/{job_id}/pause")
            assert paused.status_code == 202 and paused.json() == {"job_id": job_id, "requested": "pause"}
            await status_becomes("paused")
            assert (await http.post(f"/jobs/{job_id}/resume")).status_code == 202
            await status_becomes("running")
            assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 202
            assert (await api.wait_job(http, job_id))["status"] == "cancelled"
            assert (await http.post(f"/jobs/{job_id}/resume")).status_code == 409


def test_the_http_api_is_off_unless_given_an_address(tmp_path: Path) -> None:
    assert load_config(None, env={}).http.enabled is False
    config = load_config(None, env={"FRESHD_HTTP_ADDRESS": "127.0.0.1:8089"})
    assert config.http.enabled and config.http.address == "127.0.0.1:8089"
    path = tmp_path / "freshd.toml"
    path.write_text('[http]\naddress = "[::1]:0"\nmax_body_bytes = 4096\n')
    assert load_config(path, env={}).http.max_body_bytes == 4096
    with pytest.raises(ConfigError, match="FRESHD_HTTP_ADDRESS"):
        load_config(None, env={"FRESHD_HTTP_ADDRESS": "nowhere"})
    path.write_text('[http]\nadress = "127.0.0.1:0"\n')
    with pytest.raises(ConfigError, match="address"):
        load_config(path, env={})
