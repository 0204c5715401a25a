"""Where freshd keeps things by default, shared by the daemon and `freshctl`.

The rule is the same on both sides so that `freshctl` with no flags finds the
daemon that `freshd run` (or the demo) started as the same user:

* under systemd, ``$RUNTIME_DIRECTORY`` / ``$STATE_DIRECTORY`` (set by the unit);
* as root, ``/run/freshd`` and ``/var/lib/freshd``;
* otherwise ``$XDG_RUNTIME_DIR/freshd`` (or ``/tmp/freshd-<uid>``) and
  ``$XDG_STATE_HOME/freshd`` (or ``~/.local/state/freshd``).

``FRESHD_SOCKET`` and ``FRESHD_STATE_DIR`` override both.
"""

from __future__ import annotations

import os
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
