"""Where freshd keeps things by default, shared by the daemon and `freshctl`.

The rule is the same on both sides so that `freshctl` with no flags finds the
daemon that `freshd run` (or the demo) started as the same user:

* under systemd, ``$RUNTIME_DIRECTORY`` / ``$STATE_DIRECTORY`` (set by the unit);
* as root, ``/run/freshd`` and ``/var/lib/freshd``;
* otherwise ``$XDG_RUNTIME_DIR/freshd`` (or ``/tmp/freshd-<uid>``) and
  ``$XDG_STATE_HOME/freshd`` (or ``~/.local/state/freshd``).

``FRESHD_SOCKET`` and ``FRESHD_STATE_DIR`` override both.

``/tmp/freshd-<uid>`` is a name any local user could take first: a socket
directory inside a shared, world-writable directory must be ours (the daemon
also wants it private, mode 0700), or credentials would go to a stranger.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/freshd/freshd.toml")
SOCKET_NAME = "admin.sock"


def _first_dir(env: Mapping[str, str], name: str) -> Path | None:
    # systemd may list several directories separated by ':'; the first is ours.
    value = env.get(name)
    return Path(value.split(":")[0]) if value else None


def default_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if (path := _first_dir(env, "RUNTIME_DIRECTORY")) is not None:
        return path
    if os.geteuid() == 0:
        return Path("/run/freshd")
    if xdg := env.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "freshd"
    return Path(f"/tmp/freshd-{os.geteuid()}")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if value := env.get("FRESHD_STATE_DIR"):
        return Path(value)
    if (path := _first_dir(env, "STATE_DIRECTORY")) is not None:
        return path
    if os.geteuid() == 0:
        return Path("/var/lib/freshd")
    if xdg := env.get("XDG_STATE_HOME"):
        return Path(xdg) / "freshd"
    return Path.home() / ".local" / "state" / "freshd"


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if value := env.get("FRESHD_SOCKET"):
        return Path(value)
    return default_runtime_dir(env) / SOCKET_NAME


def in_shared_dir(directory: Path) -> bool:
    """True when `directory` sits in a world-writable, sticky directory (/tmp): anyone may have made it."""
    try:
        mode = directory.parent.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWOTH and mode & stat.S_ISVTX)


def untrusted_socket_dir(socket_path: Path) -> str | None:
    """Why a client must not talk through `socket_path`, or None.

    Only a directory in a shared place like /tmp is suspect: there it must be a real
    directory owned by us (or root), never one another user created first.
    """
    directory = socket_path.parent
    if not in_shared_dir(directory):
        return None
    try:
        info = directory.lstat()
    except OSError:
        return None  # nothing there: the caller reports "not running"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory (a link or file someone else may have made)"
    if info.st_uid not in (os.geteuid(), 0):
        return (f"{directory} belongs to uid {info.st_uid}, not to you: another user may have created it "
                "to receive what you send; remove it and restart freshd")
    return None
