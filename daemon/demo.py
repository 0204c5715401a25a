"""`freshd demo`: the whole thing on one machine with nothing installed.

Starts one simulator per demo connection on loopback (records that keep
changing), writes a real config file naming them, and runs the daemon on an
embedded PostgreSQL with that file, so `freshctl` (no flags), SIGHUP reloads and
the metrics endpoint all work exactly as in production.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from freshd.errors import StartupError
from freshd.paths import default_socket_path, default_state_dir

DEMO_CREDENTIALS = {"consumer_key": "ck_demo", "consumer_secret": "cs_demo"}


@dataclass(frozen=True, slots=True)
class DemoConnection:
    name: str
    provider: str
    tenant: str
    seed: int
    credentials: dict[str, str]  # what the simulator accepts and the connection presents
    options: dict[str, Any] = field(default_factory=dict)
    path: str = ""  # appended to the simulator's root URL


DEMO_CONNECTIONS = (
    DemoConnection("shop-eu", "woocommerce", "acme", 1, DEMO_CREDENTIALS),
    DemoConnection("shop-us", "woocommerce", "acme", 2, DEMO_CREDENTIALS),
    DemoConnection("amazon-us", "amazon_sp", "acme", 3,
                   {"refresh_token": "Atzr|demo", "client_id": "amzn1.application-oa2-client.demo",
                    "client_secret": "amzn1.oa2-cs.v1.demo"},
                   # the simulator serves Login with Amazon on the same host
                   options={"marketplace_ids": ["ATVPDKIKX0DER"], "token_url": "/auth/o2/token",
                            "report_poll_interval": 1}),
    # the simulator's database and login are "demo" and "api@example.com"; only the key is a secret
    DemoConnection("erp", "odoo", "acme", 5, {"api_key": "odoo-demo-key"},
                   options={"database": "demo", "username": "api@example.com"}),
    # a partner app: the password once, then single-use refresh tokens (persisted at each rotation)
    DemoConnection("wealth", "orion", "acme", 7,
                   {"username": "advisor@demo", "password": "orion-demo-password", "client_id": "1234",
                    "client_secret": "d3m0-5ecret"}, path="/api"),
    # a permanent user token; the simulator serves the API under /2.0 like the real host
    DemoConnection("bank", "powens", "acme", 6, {"access_token": "powens-demo-token"}, path="/2.0"),
    # a CRM no connector knows, declared in options for the generic REST connector
    DemoConnection("crm", "rest", "acme", 4,
                   {"client_id": "demo-client", "client_secret": "demo-secret", "refresh_token": "demo-refresh"},
                   options={
                       "auth": {"kind": "oauth2_refresh", "token_url": "/oauth/token"},
                       "streams": [
                           {"name": "contacts", "path": "api/v1/page/contacts", "records_path": "data",
                            "paginator": {"kind": "page_number", "size": 100,
                                          "total_pages_path": "meta.total_pages"},
                            "cursor_field": "updated_at", "incremental_param": "updated_since", "lookback": 1},
                           {"name": "deals", "path": "api/v1/cursor/deals", "records_path": "results",
                            "paginator": {"kind": "cursor", "next_path": "paging.next_cursor",
                                          "size_param": "limit"},
                            "cursor_field": "updated_at", "incremental_param": "updated_since", "lookback": 1},
                       ],
                   }),
)

_CONFIG = """\
# Written by `freshd demo`. A real freshd config file: edit it and send SIGHUP to reload.
[log]
level = "info"

[schedule]
sync_interval = "1m"    # short, so the demo shows incremental syncs picking up changes
jitter = "5s"

[staleness]             # demo scale: data is "fresh" for 30 s rather than 2 h
fresh_below = "30s"
stale_after = "5m"
min_gap = "20s"

[metrics]
address = "127.0.0.1:0"

[events]                # change events (docs/EVENTS.md): an embedded Valkey unless FRESHD_REDIS_URL is set
redis_url = "{redis_url}"

[twoway]                # two-way sync (docs/TWO-WAY.md): the demo pair below, at the contract's top rate
write_rate_per_minute = 50
batch_size = 200

[pairs.shop-erp]        # the shop's customers and the ERP's partners kept in agreement
left = "shop-eu"
right = "erp"
entities = ["customers"]

{connections}
"""

PAIR_INTERVAL = 60.0  # the demo starts a two-way run this often (the simulators keep changing both sides)



def _toml(value: Any) -> str:
    """A TOML inline value (json's strings, numbers and arrays are valid TOML ones)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _connection_block(spec: DemoConnection, port: int) -> str:
    lines = ["[[connections]]", f"name = {_toml(spec.name)}", f"provider = {_toml(spec.provider)}",
             f"base_url = {_toml(f'http://127.0.0.1:{port}{spec.path}')}", f"tenant = {_toml(spec.tenant)}",
             f"credentials = {_toml(spec.credentials)}"]
    if spec.options:
        lines.append(f"options = {_toml(spec.options)}")
    return "\n".join(lines) + "\n"


async def _demo(records: int, state_dir: Path) -> None:
    from freshd.app import run_daemon
    from freshd.config import load_config
    from freshd.connectors.simulate import run_simulator
    from freshd.embedded_pg import open_embedded_valkey

    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        redis_url = os.environ.get("FRESHD_REDIS_URL") or await stack.enter_async_context(
            open_embedded_valkey(state_dir))
        blocks, ports = [], {}
        for spec in DEMO_CONNECTIONS:
            port = await nursery.start(functools.partial(
                run_simulator, spec.provider, host="127.0.0.1", port=0, records=records, seed=spec.seed,
                credentials=spec.credentials, churn=1.0,
            ))
            blocks.append(_connection_block(spec, port))
            ports[spec.name] = port
        config_path = state_dir / "demo.toml"
        config_path.write_text(_CONFIG.format(connections="\n".join(blocks), redis_url=redis_url), encoding="utf-8")
        config = load_config(config_path, env={**os.environ, "FRESHD_STATE_DIR": str(state_dir)})

        async def daemon_then_stop(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
            await run_daemon(config, config_path=config_path, task_status=task_status)
            nursery.cancel_scope.cancel()  # the daemon stopped (Ctrl-C): stop the simulators too

        daemon = await nursery.start(daemon_then_stop)
        nursery.start_soon(_two_way_scene, Path(config.admin.socket), ports)
        freshctl = Path(sys.executable).with_name("freshctl")
        ctl = str(freshctl) if freshctl.exists() else "freshctl"
        freshd = Path(sys.executable).with_name("freshd")
        fd = str(freshd) if freshd.exists() else "freshd"
        socket = default_socket_path()
        extra = "" if Path(config.admin.socket) == socket else f" --socket {config.admin.socket}"
        print(
            f"\nfreshd demo is running: {len(DEMO_CONNECTIONS)} connections "
            f"({', '.join(sorted({c.provider for c in DEMO_CONNECTIONS}))}) syncing into an embedded PostgreSQL.\n"
            f"  config:   {config_path}\n"
            f"  metrics:  {daemon.metrics_url}\n"
            f"  try:      {ctl}{extra} status\n"
            f"            {ctl}{extra} jobs\n"
            f"            {ctl}{extra} sync shop-eu --full\n"
            f"            {ctl}{extra} connections show shop-us\n"
            f"  events:   {fd} events --redis-url {redis_url} freshd:acme:customers   (changes, as they happen)\n"
            f"            {ctl}{extra} consumers add crm --tenant acme   (an application, with its backfill)\n"
            f"  two-way:  {ctl}{extra} twoway runs        (shop-eu <-> erp: a run every minute)\n"
            f"            {ctl}{extra} conflicts --unresolved   (one is staged for you; then:)\n"
            f"            {ctl}{extra} conflicts resolve ID --take left\n"
            f"  stop:     Ctrl-C\n",
            flush=True,
        )


async def _two_way_scene(socket: Path, ports: dict[str, int]) -> None:
    """The demo pair at work: a first run links and creates, then one customer's city is edited on
    both sides (a DataMismatch to resolve), then a run every minute while the simulators keep
    changing both sides."""
    import httpx
    import structlog

    from freshd.client import ClientError, open_client

    log = structlog.get_logger("freshd.demo")
    shop = f"http://127.0.0.1:{ports['shop-eu']}/wp-json/wc/v3"
    erp = f"http://127.0.0.1:{ports['erp']}/jsonrpc"

    async def run_once(client: Any) -> dict[str, Any] | None:
        try:
            run = await client.call("twoway.start", {"pair": "shop-erp"})
        except ClientError as exc:
            log.info("demo.twoway_not_started", reason=str(exc))
            return None
        with trio.move_on_after(600):
            while run["state"] not in ("done", "partial", "failed", "cancelled"):
                await trio.sleep(1)
                run = await client.call("twoway.status", {"id": run["id"]})
        return dict(run)

    async def rpc(http: httpx.AsyncClient, service: str, method: str, args: list[Any]) -> Any:
        body = {"jsonrpc": "2.0", "method": "call", "params": {"service": service, "method": method, "args": args}}
        return (await http.post(erp, json=body)).json().get("result")

    async def stage_conflict(client: Any) -> None:
        pair = next(p for p in await client.call("pairs.list") if p["name"] == "shop-erp")
        if not pair["links"]:
            return
        conflicts = await client.call("conflicts.list", {"pair": "shop-erp"})
        if any(c["fields"] == ["city"] for c in conflicts):
            return  # staged by an earlier demo (the state directory is kept)
        async with httpx.AsyncClient(timeout=10) as http:
            keys = {"consumer_key": DEMO_CREDENTIALS["consumer_key"],
                    "consumer_secret": DEMO_CREDENTIALS["consumer_secret"]}
            customers = (await http.get(f"{shop}/customers", params={**keys, "per_page": 1})).json()
            uid = await rpc(http, "common", "authenticate", ["demo", "api@example.com", "odoo-demo-key", {}])
            email = customers[0]["email"]
            found = await rpc(http, "object", "execute_kw", ["demo", uid, "odoo-demo-key", "res.partner", "search",
                                                             [[["email", "=", email]]]])
            if not found:
                return
            await trio.sleep(1.1)  # both providers keep modification times in whole seconds
            await http.put(f"{shop}/customers/{customers[0]['id']}", params=keys,
                           json={"billing": {"city": "Ghent"}})
            await rpc(http, "object", "execute_kw", ["demo", uid, "odoo-demo-key", "res.partner", "write",
                                                     [found[:1], {"city": "Bruges"}]])
        log.info("demo.conflict_staged", email=email, shop_city="Ghent", erp_city="Bruges")

    with contextlib.suppress(ClientError):
        async with open_client(socket, timeout=30) as client:
            await trio.sleep(5)  # the connections' first syncs start
            first = await run_once(client)
            if first is not None and first["state"] in ("done", "partial"):
                await stage_conflict(client)
            while True:
                await run_once(client)
                await trio.sleep(PAIR_INTERVAL)


DEMO_MARKER = ".freshd-demo"  # in a state directory the demo made (and may start anew)


def fresh_state(state_dir: Path) -> None:
    """The demo's state directory, emptied for a new run.

    The simulators keep their records in memory and start each run anew (same seeds), so a
    database kept from the last run would hold its cursors, and the records its two-way sync
    wrote into simulators that no longer have them: the next full listing would find them gone
    (and hold their deletions).  Only a directory the demo made is emptied, and never while a
    demo still runs on it; anything else is refused, changing nothing."""
    state_dir.mkdir(parents=True, exist_ok=True)
    entries = list(state_dir.iterdir())
    ours = (state_dir / DEMO_MARKER).exists() or (state_dir / "demo.toml").exists()  # or an older demo's
    if entries and not ours:
        raise StartupError(f"{state_dir} is not empty and is not a demo's state directory: the demo starts "
                           f"anew each run and will not empty it; pass --state-dir a new or empty directory")
    pid = _running_postgres(state_dir / "postgres" / "postmaster.pid")
    if pid is not None:
        raise StartupError(f"a demo is running on {state_dir} (its PostgreSQL is process {pid}): stop it first, "
                           f"or pass --state-dir another directory; if no demo runs, that server outlived "
                           f"one (a killed demo): stop it with `kill {pid}`")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (state_dir / DEMO_MARKER).write_text("made by `freshd demo`, which empties it at each start\n",
                                         encoding="utf-8")


def _running_postgres(pid_file: Path) -> int | None:
    """The process PostgreSQL's pid file names, if it is alive (a stale file names none)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


def run_demo(*, records: int = 2000, state_dir: Path | None = None) -> int:
    from freshd.logs import configure_logging

    state_dir = state_dir or default_state_dir() / "demo"
    fresh_state(state_dir)
    configure_logging("info", "auto")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_demo, records, state_dir)
    return 0
