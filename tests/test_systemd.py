"""sd_notify against real datagram sockets, as systemd would receive it; the unit file verified."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from freshd import systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "freshd.service"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    with sock:
        yield sock


def test_no_socket_is_a_no_op() -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False


def test_ready_status_stopping_on_a_path_socket(receiver: socket.socket) -> None:
    assert systemd.ready()
    assert receiver.recv(4096) == b"READY=1"
    assert systemd.status("syncing 3 connections\nsecond line")
    assert receiver.recv(4096) == b"STATUS=syncing 3 connections second line"
    assert systemd.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"
    assert systemd.notify("READY=1", "STATUS=up")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=up"


def test_reloading_carries_monotonic_usec(receiver: socket.socket) -> None:
    assert systemd.reloading()
    reloading, monotonic = receiver.recv(4096).decode().split("\n")
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=") and int(monotonic.split("=")[1]) > 0


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"freshd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert sock.recv(4096) == b"READY=1"


def test_unreachable_socket_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "soon", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert systemd.watchdog_interval() is None


async def test_serve_watchdog_returns_at_once_without_watchdog() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(systemd.serve_watchdog)
    # reaching here means serve_watchdog returned by itself


async def test_serve_watchdog_pings_at_half_the_interval(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    receiver.setblocking(False)
    trio_receiver = trio.socket.from_stdlib_socket(receiver)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            await nursery.start(systemd.serve_watchdog)
            for _ in range(3):
                assert await trio_receiver.recv(4096) == b"WATCHDOG=1"
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert 0.15 <= elapsed < 5  # three pings: at 0, 0.1 and 0.2 s


# -- the unit file ------------------------------------------------------------------------------------------


def test_unit_file_has_the_promised_settings() -> None:
    text = UNIT.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    settings = {line.split("=", 1)[0] for line in lines}
    for key in ("Type", "ExecStart", "ExecReload", "Restart", "RestartSec", "WatchdogSec", "TimeoutStopSec",
                "NotifyAccess", "User", "Group", "StateDirectory", "RuntimeDirectory", "RuntimeDirectoryMode",
                "ConfigurationDirectory", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "RestrictAddressFamilies", "RestrictNamespaces", "LockPersonality",
                "MemoryDenyWriteExecute", "SystemCallFilter", "CapabilityBoundingSet", "UMask"):
        assert key in settings, key
    assert "Type=notify\n" in text
    assert "ExecStart=/usr/bin/freshd run --config /etc/freshd/freshd.toml\n" in text


def test_reload_checks_the_config_before_signalling() -> None:
    """`systemctl reload` with a broken file must fail, not report success while the daemon refuses it."""
    lines = UNIT.read_text(encoding="utf-8").splitlines()
    reloads = [line.split("=", 1)[1] for line in lines if line.startswith("ExecReload=")]
    assert reloads == ["/usr/bin/freshd check-config --config /etc/freshd/freshd.toml", "/bin/kill -HUP $MAINPID"]
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert start.endswith("--config /etc/freshd/freshd.toml")  # the same file is checked and run


def test_check_config_fails_on_a_broken_file(tmp_path: Path) -> None:
    """What the first ExecReload line does: exit non-zero with the reason (systemctl shows it)."""
    good = tmp_path / "good.toml"
    good.write_text('[log]\nlevel = "info"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text('[log]\nlevel = "loud"\n')
    command = [sys.executable, "-m", "freshd.cli", "check-config", "--config"]
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([*command, str(broken)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "invalid configuration" in refused.stderr and "level" in refused.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install -y systemd)")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists; /usr/bin/freshd is where a package puts
    # it, not where this checkout has it.  Verify a copy pointing at a real executable instead;
    # every other line is the shipped file's.
    executable = tmp_path / "freshd"
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    assert text.count("ExecStart=/usr/bin/freshd ") == 1 and text.count("ExecReload=/usr/bin/freshd ") == 1
    copy = tmp_path / "freshd.service"
    copy.write_text(text.replace("=/usr/bin/freshd ", f"={executable} "))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # complaints about the unit itself name the file; lines about the host (no running
    # systemd in a container, missing sibling units) do not.
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "freshd.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# -- sysusers.d and tmpfiles.d snippets ---------------------------------------------------------------------

SYSUSERS = REPO / "systemd" / "freshd.sysusers"
TMPFILES = REPO / "systemd" / "freshd.tmpfiles"


def entries(path: Path) -> list[list[str]]:
    return [shlex.split(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def test_snippets_match_the_unit() -> None:
    """The user the snippets create is the unit's User=/Group=, its home the StateDirectory."""
    unit = UNIT.read_text(encoding="utf-8")
    assert "User=freshd\n" in unit and "Group=freshd\n" in unit and "StateDirectory=freshd\n" in unit
    assert entries(SYSUSERS) == [["u", "freshd", "-", "freshd connector sync daemon", "/var/lib/freshd", "-"]]
    dirs = {entry[1]: entry for entry in entries(TMPFILES)}
    assert dirs["/etc/freshd"][:5] == ["d", "/etc/freshd", "0750", "root", "freshd"]
    assert dirs["/var/lib/freshd"][:5] == ["d", "/var/lib/freshd", "0750", "freshd", "freshd"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None
                    or os.geteuid() != 0, reason="needs systemd-sysusers, systemd-tmpfiles and root (chown)")
def test_snippets_create_the_user_and_directories_in_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for command in (["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
                    ["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, (command, result.stdout + result.stderr)
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    uid, gid, home, shell = int(passwd["freshd"][2]), int(passwd["freshd"][3]), passwd["freshd"][5], passwd["freshd"][6]
    assert home == "/var/lib/freshd" and shell.endswith("nologin") and uid < 1000
    config, state = (root / "etc" / "freshd").stat(), (root / "var" / "lib" / "freshd").stat()
    assert (config.st_mode & 0o7777, config.st_uid, config.st_gid) == (0o750, 0, gid)
    assert (state.st_mode & 0o7777, state.st_uid, state.st_gid) == (0o750, uid, gid)
