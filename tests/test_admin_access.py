"""Admin socket access: file mode, and peer credentials checked for a real other uid."""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.admin.protocol import Caller, Peer, Request
from freshd.admin.server import AccessRules, authorize, serve_admin
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.errors import AdminError
from tests.helpers import query

NOBODY = 65534


async def _remove_later(path: Path) -> None:
    try:
        await trio.sleep_forever()
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def handle(self, request: Request, caller: Caller) -> Any:
        self.calls.append((request.cmd, caller.peer.uid))
        return {"ok": True}


def test_authorize_gives_admins_everything_tenants_theirs_and_refuses_the_rest() -> None:
    rules = AccessRules(admin_gid=777, tenants={"acme": (frozenset({"nobody"}), frozenset({888}))})
    assert authorize(Peer(1, 0, 0), rules).tenants is None
    assert authorize(Peer(1, os.geteuid(), 0), rules).tenants is None
    assert authorize(Peer(1, 4242, 777), rules).tenants is None  # primary group is the admin group
    assert authorize(Peer(1, 4242, 888), rules).tenants == frozenset({"acme"})  # a tenant's group
    assert authorize(Peer(1, NOBODY, NOBODY), rules).tenants == frozenset({"acme"})  # a tenant's user
    with pytest.raises(AdminError) as refused:
        authorize(Peer(1, 4242, 4242), rules)
    assert refused.value.code == "forbidden"


async def test_socket_mode_and_a_real_other_uid_is_forbidden(nursery: trio.Nursery) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    # a directory `nobody` can traverse (pytest's tmp_path lives under a 0700 parent)
    tmp_path = Path(tempfile.mkdtemp(prefix="freshd-access-"))
    nursery.start_soon(_remove_later, tmp_path)
    sock = tmp_path / "admin.sock"
    handler = Recorder()
    await nursery.start(functools.partial(serve_admin, sock, handler))
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660

    # let `nobody` reach the socket file at all, so the daemon's own check is what refuses it;
    # the client is the system Python with a raw socket (nobody cannot read root's virtualenv)
    os.chmod(tmp_path, 0o755)
    os.chmod(sock, 0o666)
    client = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        " s.sendall(b'{\"v\": 1, \"id\": 1, \"cmd\": \"status\", \"args\": {}}\\n');"
        " print(s.recv(65536).decode())"
    )
    result = await trio.to_thread.run_sync(functools.partial(
        subprocess.run, ["/usr/bin/python3", "-c", client, str(sock)], user=NOBODY, capture_output=True,
        text=True, timeout=30,
    ))
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    assert "may not use freshd's admin socket" in reply["error"]["message"]
    assert handler.calls == []  # refused before any command ran

    # the same request as root goes through
    command = [sys.executable, "-m", "freshd.ctl", "--socket", str(sock), "--json", "status"]
    ok = await trio.to_thread.run_sync(functools.partial(
        subprocess.run, command, capture_output=True, text=True, timeout=30))
    assert ok.returncode == 0 and handler.calls == [("status", 0)]


CLIENT = """
import json, socket, sys
for line in sys.argv[2:]:
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(line.encode() + b"\\n")
    data = b""
    while not data.endswith(b"\\n"):
        data += s.recv(65536)
    print(data.decode().strip())
"""


async def test_a_tenant_user_sees_and_acts_on_its_tenant_only(nursery: trio.Nursery, database_url: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    from freshd.app import run_daemon
    from freshd.config import load_config

    sims = []
    for seed in (1, 2):
        sim = WooCommerceSimulator(records=20, seed=seed, credentials={"consumer_key": "k", "consumer_secret": "s"})
        sims.append(await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0)))
    home = Path(tempfile.mkdtemp(prefix="freshd-tenants-"))
    nursery.start_soon(_remove_later, home)
    sock = home / "admin.sock"
    config_path = home / "freshd.toml"
    connections = "".join(
        f'[[connections]]\nname = "{name}"\nprovider = "woocommerce"\nbase_url = "http://127.0.0.1:{port}"\n'
        f'tenant = "{tenant}"\ncredentials = {{ consumer_key = "k", consumer_secret = "s" }}\n'
        for name, tenant, port in (("acme-shop", "acme", sims[0]), ("globex-shop", "globex", sims[1])))
    config_path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{home}"\n[admin]\nsocket = "{sock}"\n'
        f'[admin.tenants.acme]\nusers = ["nobody"]\n[metrics]\nenabled = false\n[staleness]\nmin_gap = "0s"\n'
        f'[schedule]\nscheduled_sync = false\n' + connections)
    await nursery.start(functools.partial(run_daemon, load_config(config_path, env={}), config_path=config_path))
    os.chmod(home, 0o755)
    os.chmod(sock, 0o666)  # the file lets nobody connect; the daemon decides what nobody may do

    def as_nobody(*requests: dict[str, Any]) -> list[dict[str, Any]]:
        lines = [json.dumps({"v": 1, "id": i, **r}) for i, r in enumerate(requests)]
        out = subprocess.run(["/usr/bin/python3", "-c", CLIENT, str(sock), *lines], user=NOBODY,
                             capture_output=True, text=True, timeout=30, check=True)
        return [json.loads(line) for line in out.stdout.splitlines()]

    status, jobs, other_sync, own_sync, add_other = await trio.to_thread.run_sync(functools.partial(
        as_nobody,
        {"cmd": "status", "args": {}},
        {"cmd": "jobs", "args": {}},
        {"cmd": "sync", "args": {"name": "globex-shop"}},
        {"cmd": "sync", "args": {"name": "acme-shop"}},
        {"cmd": "connections.add", "args": {"name": "sneaky", "provider": "woocommerce", "tenant": "globex",
                                            "base_url": "http://127.0.0.1:1", "credentials": {"k": "v"}}},
    ))
    assert [c["name"] for c in status["result"]["connections"]] == ["acme-shop"]
    assert {j["connection"] for j in jobs["result"]["jobs"]} == {"acme-shop"}
    assert other_sync["error"]["code"] == "not_found"  # another tenant's connection does not exist for you
    assert own_sync["ok"] is True
    assert add_other["error"]["code"] == "forbidden" and "acme" in add_other["error"]["message"]
    assert query(database_url, "SELECT count(*) FROM connections WHERE name = 'sneaky'") == [(0,)]
