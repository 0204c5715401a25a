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

from freshd.admin.protocol import Peer, Request
from freshd.admin.server import authorize, serve_admin
from freshd.errors import AdminError

NOBODY = 65534


async def _remove_later(path: Path) -> None:
    try:
        await trio.sleep_forever()
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def handle(self, request: Request, peer: Peer) -> Any:
        self.calls.append((request.cmd, peer.uid))
        return {"ok": True}


def test_authorize_refuses_other_uids_unless_in_the_admin_group() -> None:
    authorize(Peer(1, 0, 0), admin_gid=None)
    authorize(Peer(1, os.geteuid(), 0), admin_gid=None)
    authorize(Peer(1, 4242, 777), admin_gid=777)  # primary group is the admin group
    with pytest.raises(AdminError) as refused:
        authorize(Peer(1, 4242, 4242), admin_gid=None)
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
    assert "may not administer freshd" in reply["error"]["message"]
    assert handler.calls == []  # refused before any command ran

    # the same request as root goes through
    command = [sys.executable, "-m", "freshd.ctl", "--socket", str(sock), "--json", "status"]
    ok = await trio.to_thread.run_sync(functools.partial(
        subprocess.run, command, capture_output=True, text=True, timeout=30))
    assert ok.returncode == 0 and handler.calls == [("status", 0)]
