"""The integration sections of the configuration: [[connections]], [twoway] and [pairs.NAME].

Each connection is checked whole: its name, a known provider, an http(s) base URL, string
credentials, options frozen (no dates), purge only when disabled, and then the provider's own
checks (freshd.connectors.base.check_settings), re-raised at the connection's key in the file.
Names are unique.  Pairs are read as declared; their mappings are checked against the providers
when a pair is applied.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date, datetime, time
from typing import Any
from urllib.parse import urlsplit

from freshd.config_model import DEFAULT_PROVIDERS, ConnectionConfig, Credentials, FrozenDict
from freshd.config_reader import Reader, describe, field_names, read_section, string_list, suggest
from freshd.errors import ConfigError, ConfigErrors
from freshd.twoway.settings import MAX_BATCH_SIZE, MAX_WRITE_RATE, PairConfig, TwoWaySettings

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_http_url(url: str) -> str | None:
    if url != url.strip() or any(ch.isspace() for ch in url):
        return f"must not contain whitespace: {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc}): {url!r}"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {url!r}"
    if not parts.hostname:
        return f"the URL has no host: {url!r}"
    del port
    return None


def _freeze(value: Any, reader: Reader, key: str) -> Any:
    if isinstance(value, dict):
        return FrozenDict({k: _freeze(v, reader, f"{key}.{k}") for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v, reader, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(value, datetime | date | time):
        reader.fail(key, "dates and times are not supported in options; write them as strings")
    return value


def _connection(reader: Reader, providers: Collection[str]) -> ConnectionConfig:
    reader.check_keys(field_names(ConnectionConfig), stop=True)  # a misspelt key may be what a check wants
    for required in ("name", "provider", "base_url"):
        if not reader.has(required):
            reader.fail(required, f"missing required key {required!r}")
    name: str = reader.string("name", None)
    if not _NAME.fullmatch(name):
        reader.fail("name", f"bad connection name {name!r}: use up to 64 letters, digits, '.', '_' and '-'")
    provider: str = reader.string("provider", None)
    if provider not in providers:
        reader.fail("provider", f"unknown provider {provider!r}; {suggest(provider, providers)}")
    base_url: str = reader.string("base_url", None)
    if (problem := _check_http_url(base_url)) is not None:
        reader.fail("base_url", problem)
    tenant: str = reader.string("tenant", "default")
    creds = reader.table("credentials")
    for key, value in creds.data.items():
        if not isinstance(value, str):
            creds.fail(key, f"credential values must be strings, got {describe(value, show=False)}")
    options = reader.table("options")
    spec = ConnectionConfig(
        name=name,
        provider=provider,
        base_url=base_url,
        tenant=tenant,
        credentials=Credentials(creds.data),
        options=_freeze(options.data, reader, "options"),
        enabled=reader.boolean("enabled", True),
        purge=reader.boolean("purge", False),
    )
    if spec.purge and spec.enabled:
        reader.fail("purge", "purge = true deletes the connection's stored data (records, cursors, jobs); "
                             "it needs enabled = false on the same entry")
    if provider in DEFAULT_PROVIDERS:
        # the provider's own checks (option kinds, rate limits): imported late, only for providers in use
        from freshd.connectors.base import ConnectionSettings, check_settings

        try:
            check_settings(ConnectionSettings(name, provider, base_url, tenant, dict(spec.credentials),
                                              dict(options.data)))
        except ConfigErrors as exc:  # every problem, each at its key, in one line
            raise ConfigErrors([_located(reader, e) for e in exc.errors]) from None
        except ConfigError as exc:
            raise _located(reader, exc) from None
    return spec


def _located(reader: Reader, exc: ConfigError) -> ConfigError:
    """A provider's check, re-raised at the connection's key in the file (``file:line`` when found)."""
    return ConfigError(str(exc).removeprefix(f"{exc.where}: ") if exc.where else str(exc),
                       where=reader.where(reader.path(exc.where or "options")))


def read_connections(top: Reader, providers: Collection[str]) -> tuple[ConnectionConfig, ...]:
    if not top.has("connections"):
        return ()
    raw = top.data["connections"]
    if not isinstance(raw, list):
        top.fail("connections", f"expected an array of tables ([[connections]]), got {describe(raw)}")
    result: list[ConnectionConfig] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        prefix = f"connections[{index}]"
        with top.collect():  # each connection's problems, then the next one's
            if not isinstance(item, dict):
                raise ConfigError(f"expected a table, got {describe(item)}", where=top.where(prefix))
            spec = _connection(top.child(item, prefix), providers)
            if spec.name in seen:
                raise ConfigError(
                    f"duplicate connection name {spec.name!r} (also connections[{seen[spec.name]}])",
                    where=top.where(f"{prefix}.name"),
                )
            seen[spec.name] = index
            result.append(spec)
    return tuple(result)


def read_twoway(top: Reader) -> TwoWaySettings:
    section = top.table("twoway")
    default = TwoWaySettings()
    batch_size, rate = default.batch_size, default.write_rate_per_minute
    with section.collect():
        batch_size = section.integer("batch_size", default.batch_size, minimum=1)
        if batch_size > MAX_BATCH_SIZE:
            section.fail("batch_size", f"must be at most {MAX_BATCH_SIZE}, got {batch_size}")
    with section.collect():
        rate = section._typed("write_rate_per_minute", (int, float), "a number", default.write_rate_per_minute)
        if not 0 < rate <= MAX_WRITE_RATE:
            section.fail("write_rate_per_minute", f"must be above 0 and at most {MAX_WRITE_RATE:g}, got {rate}")
    read = {"batch_size": lambda *_: batch_size, "write_rate_per_minute": lambda *_: float(rate)}
    return read_section(section, TwoWaySettings, read=read, zero_ok=("batch_delay",))


def read_pairs(top: Reader) -> tuple[PairConfig, ...]:
    """[pairs.NAME]: left, right, entities (the shipped mappings) and per-entity tables (overrides);
    the mapping itself is checked against the connections' providers when the pair is applied."""
    section = top.table("pairs")
    out = []
    for name in section.data:
        if not _NAME.fullmatch(str(name)):
            section.fail(name, "a pair's name is letters, digits, '.', '_' or '-' (at most 64)")
        pair = section.table(name)
        for side in ("left", "right"):
            if not pair.has(side):
                pair.fail(side, f"missing required key {side!r} (a connection name)")
        listed = string_list(pair, "entities")
        entities: dict[str, Any] = {entity: {} for entity in listed}
        for key, value in pair.data.items():
            if key in ("left", "right", "entities"):
                continue
            if not isinstance(value, dict):
                pair.fail(key, "expected left, right, entities or an entity's table ([pairs.NAME.ENTITY])")
            entities[key] = value
        if not entities:
            pair.fail("entities", "name at least one entity (e.g. entities = [\"customers\"])")
        out.append(PairConfig(str(name), pair.string("left", None), pair.string("right", None),
                              {"entities": entities}))
    return tuple(out)

