"""Issue 9: nobody who can reach the admin socket locks the others out; a bad socket path is
refused in one line (and never deleted); another tenant's connection names stay hidden."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.app import run_daemon
from freshd.config import load_config
from freshd.errors import ConfigError

NOBODY = 65534
STRANGER = 65533  # a uid with no account: forbidden, but it can still hold connections
STATUS = b'{"v": 1, "id": 1, "cmd": "status", "args": {}}\n'
WATCH_ALL = b'{"v": 1, "id": 1, "cmd": "watch", "args": {"all": true}}\n'

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other uids")


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path lives under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="freshd-hardening-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(home: Path, database_url: str, admin: str = "", body: str = "") -> Path:
    config_path = home / "freshd.toml"
    config_path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "{home}"\n'
        f'[admin]\nsocket = "{home / "run" / "admin.sock"}"\nsocket_mode = "0666"\n{admin}'
        f'[admin.tenants.acme]\nusers = ["nobody"]\n'
        '[metrics]\nenabled = false\n[schedule]\nscheduled_sync = false\n' + body)
    return config_path


async def start(nursery: trio.Nursery, home: Path, database_url: str, admin: str, body: str = "") -> Path:
    config_path = write_config(home, database_url, admin, body)
    await nursery.start(functools.partial(run_daemon, load_config(config_path, env={}), config_path=config_path))
    return home / "run" / "admin.sock"


async def connect(sock: Path) -> trio.SocketStream:
    return await trio.open_unix_socket(str(sock))


async def read_line(stream: trio.SocketStream) -> bytes:
    """One reply line, or b"" if the daemon closed the connection first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def request(sock: Path, line: bytes = STATUS) -> dict[str, Any]:
    stream = await connect(sock)
    async with stream:
        await stream.send_all(line)
        return json.loads(await read_line(stream))  # type: ignore[no-any-return]


HOLDER = """
import json, socket, sys
held, answers = [], []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(0.3)
    try:
        answers.append(json.loads(s.recv(65536)))  # refused at once
    except socket.timeout:
        answers.append(None)  # admitted: the daemon waits for a request
    held.append(s)
print(json.dumps(answers), flush=True)
sys.stdin.read()  # hold the connections until the test lets go
"""


@contextlib.asynccontextmanager
async def hold_connections(sock: Path, uid: int, count: int) -> AsyncIterator[list[Any]]:
    """`count` idle connections opened by `uid`: yields, per connection, the refusal or None."""
    process = await trio.lowlevel.open_process(
        ["/usr/bin/python3", "-c", HOLDER, str(sock), str(count)], user=uid,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdin is not None
        out = b""
        while not out.endswith(b"\n"):
            chunk = await process.stdout.receive_some(65536)
            assert chunk, "the holder died"
            out += chunk
        yield json.loads(out)
    finally:
        if process.stdin is not None:
            await process.stdin.aclose()
        with trio.move_on_after(5):
            await process.wait()
        process.kill()


# -- item 5: lock-outs -----------------------------------------------------------------------------------


async def test_idle_clients_cannot_lock_out_status(nursery: trio.Nursery, home: Path, database_url: str) -> None:
    sock = await start(nursery, home, database_url,
                       'max_connections = 6\nmax_connections_per_uid = 2\nidle_timeout = "1s"\n')
    with trio.fail_after(10):
        idle = [await connect(sock) for _ in range(6)]
        for stream in idle[:3]:
            await stream.send_all(b'{"v": 1, "id": 1, "cmd": "sta')  # a partial line, never finished
        refused = await request(sock)  # every seat taken: refused at once, not left waiting
        assert refused["error"]["code"] == "unavailable"
        for stream in idle:  # the idle and the dripping: both cut off after idle_timeout
            closing = json.loads(await read_line(stream))
            assert closing["error"]["code"] == "timeout"
            assert await stream.receive_some(65536) == b""
        status = await request(sock)
        assert status["ok"] is True


async def test_vanished_watch_clients_free_their_seats_at_once(
    nursery: trio.Nursery, home: Path, database_url: str,
) -> None:
    sock = await start(nursery, home, database_url, 'max_connections = 6\nmax_connections_per_uid = 2\n')
    with trio.fail_after(10):
        watchers = [await connect(sock) for _ in range(6)]
        for stream in watchers:
            await stream.send_all(WATCH_ALL)  # no job runs: no event will ever be sent to them
        await trio.sleep(0.3)
        for stream in watchers:
            await stream.aclose()
    with trio.fail_after(3):  # well inside the 60 s idle timeout: only hang-up detection frees them
        while (status := await request(sock)).get("error", {}).get("code") == "unavailable":
            await trio.sleep(0.05)
        assert status["ok"] is True


@needs_root
async def test_one_user_cannot_take_every_connection(nursery: trio.Nursery, home: Path, database_url: str) -> None:
    sock = await start(nursery, home, database_url, 'max_connections = 8\nmax_connections_per_uid = 2\n')
    with trio.fail_after(15):
        async with hold_connections(sock, NOBODY, 3) as answers:
            assert answers[:2] == [None, None]
            assert answers[2]["error"]["code"] == "unavailable"
            assert "the most one user may" in answers[2]["error"]["message"]
            assert (await request(sock))["ok"] is True


@needs_root
async def test_other_users_filling_the_socket_cannot_lock_out_root(
    nursery: trio.Nursery, home: Path, database_url: str,
) -> None:
    sock = await start(nursery, home, database_url, 'max_connections = 8\nmax_connections_per_uid = 2\n')
    with trio.fail_after(20):
        async with hold_connections(sock, NOBODY, 2) as tenant, hold_connections(sock, STRANGER, 2) as stranger:
            assert tenant == [None, None] and stranger == [None, None]  # 8 - 4 reserved: all taken
            async with hold_connections(sock, STRANGER - 1, 1) as third:
                assert third[0]["error"]["code"] == "unavailable"
                assert "every admin connection is taken" in third[0]["error"]["message"]
            status = await request(sock)  # root: a reserved seat
            assert status["ok"] is True


def test_a_per_uid_cap_that_leaves_root_no_seat_is_refused(home: Path) -> None:
    config_path = home / "freshd.toml"
    config_path.write_text('[admin]\nmax_connections = 8\nmax_connections_per_uid = 5\n')
    with pytest.raises(ConfigError, match=r"admin.max_connections_per_uid: must be at most .* 4, got 5"):
        load_config(config_path, env={})
    config_path.write_text('[admin]\nidle_timeout = "0s"\n')
    with pytest.raises(ConfigError, match=r"admin\.idle_timeout: must be longer than zero"):
        load_config(config_path, env={})


# -- item 7: the socket path at start-up -----------------------------------------------------------------


async def run_freshd(config_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "freshd.cli", "run", "--config", str(config_path)]
    return await trio.to_thread.run_sync(functools.partial(
        subprocess.run, command, capture_output=True, text=True, timeout=20,
        env={**os.environ, "FRESHD_LOG_LEVEL": "error", **(env or {})}))


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("freshd: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


async def test_a_regular_file_at_freshd_socket_survives_start_up(home: Path, database_url: str) -> None:
    (home / "data").mkdir()
    precious = home / "data" / "notes.txt"
    precious.write_text("keep me")
    result = await run_freshd(write_config(home, database_url), {"FRESHD_SOCKET": str(precious)})
    assert_one_line_error(result, str(precious), "not a socket")
    assert precious.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["read_only", "under_a_file"])
async def test_an_unusable_socket_dir_is_one_line_not_a_traceback(home: Path, database_url: str, kind: str) -> None:
    if kind == "read_only":
        target = home / "ro"
        target.mkdir()
        mounted = await trio.run_process(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(target)],
                                         check=False, capture_stdout=True, capture_stderr=True)
        if mounted.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here (root sees every plain directory as writable)")
        sock, reason = target / "admin.sock", "not writable"
    else:
        (home / "file").write_text("")
        target, sock, reason = home / "file", home / "file" / "sub" / "admin.sock", "Not a directory"
    try:
        result = await run_freshd(write_config(home, database_url), {"FRESHD_SOCKET": str(sock)})
    finally:
        if kind == "read_only":
            await trio.run_process(["umount", str(target)])
    assert_one_line_error(result, str(target), reason)


@needs_root
async def test_a_socket_dir_another_user_made_in_tmp_is_refused(home: Path, database_url: str) -> None:
    from freshd.admin.server import prepare_socket_path
    from freshd.errors import StartupError

    shared = home / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: anyone may create the directory first
    taken = shared / "freshd-0"
    taken.mkdir(mode=0o700)
    os.chown(taken, NOBODY, NOBODY)
    result = await run_freshd(write_config(home, database_url), {"FRESHD_SOCKET": str(taken / "admin.sock")})
    assert_one_line_error(result, str(taken), f"uid {NOBODY}")

    loose = shared / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)  # ours, but others may look in: not for a socket in /tmp
    result = await run_freshd(write_config(home, database_url), {"FRESHD_SOCKET": str(loose / "admin.sock")})
    assert_one_line_error(result, str(loose), "0700")

    fresh = shared / "fresh" / "admin.sock"
    prepare_socket_path(fresh)  # created private
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700

    # freshctl will not hand anything to a socket in a directory another user made
    with socket.socket(socket.AF_UNIX) as impostor:
        impostor.bind(str(taken / "admin.sock"))
        impostor.listen(1)
        impostor.setblocking(False)
        ctl = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [sys.executable, "-m", "freshd.ctl", "--socket", str(taken / "admin.sock"), "status"],
            capture_output=True, text=True, timeout=20))
        assert ctl.returncode == 3 and "refusing to connect" in ctl.stderr and f"uid {NOBODY}" in ctl.stderr
        with pytest.raises(BlockingIOError):
            impostor.accept()  # nobody connected
    with pytest.raises(StartupError):
        prepare_socket_path(taken / "admin.sock")


# -- item 12: connection names of other tenants ---------------------------------------------------------


CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\\n")
data = b""
while not data.endswith(b"\\n"):
    data += s.recv(65536)
print(data.decode().strip())
"""


@needs_root
async def test_connections_add_does_not_reveal_another_tenants_connection(
    nursery: trio.Nursery, home: Path, database_url: str,
) -> None:
    body = ('[[connections]]\nname = "globex-shop"\nprovider = "woocommerce"\nbase_url = "http://127.0.0.1:1"\n'
            'tenant = "globex"\ncredentials = { consumer_key = "k", consumer_secret = "s" }\n')
    sock = await start(nursery, home, database_url, "", body)
    add = json.dumps({"v": 1, "id": 1, "cmd": "connections.add", "args": {
        "name": "globex-shop", "provider": "woocommerce", "base_url": "http://127.0.0.1:2",
        "credentials": {"consumer_key": "k", "consumer_secret": "s"}}})
    with trio.fail_after(20):
        out = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, ["/usr/bin/python3", "-c", CLIENT, str(sock), add], user=NOBODY,
            capture_output=True, text=True, timeout=15, check=True))
        as_tenant = json.loads(out.stdout)
        assert as_tenant["error"]["code"] == "conflict"
        assert as_tenant["error"]["message"] == "that connection name is not available; choose another"
        as_root = await request(sock, add.encode() + b"\n")  # who can see it gets the precise answer
        assert as_root["error"] == {"code": "conflict", "message": "a connection named 'globex-shop' already exists"}
