"""The configuration: one TOML file plus a few environment variables -> a frozen `Config`.

    load_config(path, env)   read, validate, return a new Config (or raise ConfigError)

Policy:

* The file is read whole, validated whole, and only then turned into a `Config`; every problem
  found is reported at once (`ConfigErrors`; `ConfigError` when there is one) and nothing is
  applied (a SIGHUP with a broken file keeps the running configuration).  An empty file is
  valid: every default, no connections.
* Errors name the key path (``connections[2].base_url``; connection indexes count from 0) and,
  when the key can be found in the text, the file and line:
  ``/etc/freshd/freshd.toml:23: connections[2].base_url: ...``.  Unknown keys are errors, with
  a "did you mean" suggestion.
* Durations are written ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` (also ``ms``, ``w``)
  or as a plain integer number of seconds; they are stored as float seconds everywhere.
* Environment variables override the file and are validated the same way:
  FRESHD_DATABASE_URL, FRESHD_SOCKET, FRESHD_STATE_DIR, FRESHD_RUNTIME_DIR,
  FRESHD_METRICS_ADDRESS, FRESHD_HTTP_ADDRESS, FRESHD_LOG_LEVEL, FRESHD_LOG_FORMAT, FRESHD_MEMBER_NAME.
  An empty variable counts as unset, except FRESHD_METRICS_ADDRESS where "" disables the metrics endpoint.
* Secrets (credential values, a password in ``database_url``) never appear in ``repr()``;
  `Config.secret_values()` lists them for the log redactor.

This module reads the file and the environment; the rest is in its neighbours: freshd.config_model
(the dataclasses, every default written once, on its field), freshd.config_reader (typed reading,
problems collected, ``file:line``), freshd.config_sections (each section read from its dataclass,
the whole `Config` built) and freshd.config_connections ([[connections]], [twoway], [pairs.NAME]).
`config/freshd.toml` is the documented example with every key and its default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from freshd import paths
from freshd.config_model import DEFAULT_PROVIDERS, Config
from freshd.config_reader import Where
from freshd.config_sections import build_config
from freshd.errors import ConfigError

__all__ = ["load_config"]


# -- environment ---------------------------------------------------------------------------------------

# variable -> (section, key): applied to the parsed file data, so the same validation runs
_ENV_KEYS: dict[str, tuple[str | None, str]] = {
    "FRESHD_DATABASE_URL": (None, "database_url"),
    "FRESHD_STATE_DIR": (None, "state_dir"),
    "FRESHD_RUNTIME_DIR": (None, "runtime_dir"),
    "FRESHD_SOCKET": ("admin", "socket"),
    "FRESHD_METRICS_ADDRESS": ("metrics", "address"),
    "FRESHD_HTTP_ADDRESS": ("http", "address"),
    "FRESHD_LOG_LEVEL": ("log", "level"),
    "FRESHD_LOG_FORMAT": ("log", "format"),
    "FRESHD_MEMBER_NAME": ("cluster", "member_name"),
    "FRESHD_REDIS_URL": ("events", "redis_url"),
}


def _overlay_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Write the environment overrides into `data`; returns key path -> variable, for errors."""
    origins: dict[str, str] = {}
    for variable, (section, key) in _ENV_KEYS.items():
        value = env.get(variable)
        if value is None or (value == "" and variable != "FRESHD_METRICS_ADDRESS"):
            continue
        target = data
        if section is not None:
            current = data.get(section)
            target = dict(current) if isinstance(current, dict) else {}
            data[section] = target
        target[key] = value
        origins[f"{section}.{key}" if section else key] = variable
    return origins


class _EnvWhere(Where):
    """Names the environment variable when the bad value came from one."""

    def __init__(self, inner: Where, origins: Mapping[str, str]) -> None:
        self.source = inner.source
        self.lines = inner.lines
        self.origins = origins

    def __call__(self, key: str) -> str:
        if (variable := self.origins.get(key)) is not None:
            return f"${variable} ({key})"
        return super().__call__(key)


# -- loading -------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror or exc}", where=str(path)) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", where=str(path)) from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise ConfigError(f"invalid TOML: {message}", where=where) from exc


def load_config(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    providers: Collection[str] = DEFAULT_PROVIDERS,
) -> Config:
    """Read `path` (None: `freshd.paths.DEFAULT_CONFIG_PATH` if it exists, else defaults only),
    apply the environment overrides, validate everything, and return a new `Config`.

    Raises `ConfigError` naming the key (and ``file:line`` when found); nothing is half-applied:
    this function has no side effects, so a failed load leaves the caller's Config in place.
    """
    env = os.environ if env is None else env
    if path is None and paths.DEFAULT_CONFIG_PATH.exists():
        path = paths.DEFAULT_CONFIG_PATH
    text, data = ("", {}) if path is None else _read(Path(path))
    where = Where(path, text)
    origins = _overlay_env(data, env)
    if origins:
        where = _EnvWhere(where, origins)
    return build_config(data, where, env, providers, path)

