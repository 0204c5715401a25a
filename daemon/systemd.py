"""sd_notify(3) in the few lines the protocol needs: tell systemd we are ready, busy, alive.

    notify(*fields)     send ``FIELD=value`` lines to $NOTIFY_SOCKET; False if unset/unreachable
    ready() / reloading() / stopping() / status(text)
    watchdog_interval() how often to ping (half of $WATCHDOG_USEC), or None
    serve_watchdog()    ping WATCHDOG=1 at that interval until cancelled

The protocol: one datagram on an AF_UNIX SOCK_DGRAM socket whose address is in
$NOTIFY_SOCKET (a path, or ``@name`` for the abstract namespace), newline-separated
``KEY=VALUE`` fields.  Outside systemd (no $NOTIFY_SOCKET) every call is a no-op returning
False.  Sending never blocks and never raises: a full or vanished socket loses one message,
which systemd's own timeouts then handle.
"""

from __future__ import annotations

import os
import socket
import time

import trio

__all__ = ["notify", "ready", "reloading", "serve_watchdog", "status", "stopping", "watchdog_interval"]


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:... and relative paths are not for us


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields to systemd; True if the datagram went out."""
    value = os.environ.get("NOTIFY_SOCKET")
    if not value or not fields:
        return False
    address = _address(value)
    if address is None:
        return False
    message = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def reloading() -> bool:
    """Before re-reading the configuration; send `ready()` when done (systemd >= 253 shows it)."""
    monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A one-line status for ``systemctl status`` (newlines become spaces)."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, if the watchdog is ours.

    None when there is no watchdog, when $WATCHDOG_PID names another process, or when the
    variables are malformed.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


async def serve_watchdog(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping WATCHDOG=1 every `watchdog_interval()` seconds until cancelled.

    Returns at once when there is no watchdog.  The pings come from the trio loop itself, so a
    loop wedged by blocking code stops them and systemd restarts the daemon (WatchdogSec=).
    """
    interval = watchdog_interval()
    task_status.started()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)
