"""The daemon's own sections of the configuration, and the whole file assembled into a `Config`.

`build_config` reads every section ([admin], [metrics], [http], [log], [schedule], [staleness],
[sync], [store], [cluster], [events], [secrets], [policies], and the integration sections of
freshd.config_connections) from its dataclass, adds the checks that span keys (stale_after after
fresh_below, admin seats, lease_ttl, breaker cooldowns, rate groups), and raises every problem
found together (ConfigErrors), or the one found (ConfigError).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from freshd import paths
from freshd.addresses import split_host_port
from freshd.config_connections import read_connections, read_pairs, read_twoway
from freshd.config_model import (
    ADMIN_RESERVED_CONNECTIONS,
    LOG_FORMATS,
    LOG_LEVELS,
    AdminConfig,
    ClusterConfig,
    Config,
    ConnectionConfig,
    EventsConfig,
    FrozenDict,
    HttpConfig,
    LogConfig,
    MetricsConfig,
    PoliciesConfig,
    RateGroupConfig,
    ScheduleConfig,
    SecretsConfig,
    StalenessConfig,
    StoreConfig,
    SyncConfig,
    TenantAccess,
)
from freshd.config_reader import Read, Reader, Where, describe, field_names, read_section, string_list
from freshd.errors import ConfigErrors
from freshd.policies.breaker import BreakerSettings
from freshd.policies.limits import ProviderLimits
from freshd.policies.retry import RetryPolicy
from freshd.twoway.settings import PairConfig, TwoWaySettings


def _check_database_url(url: str) -> str | None:
    """None if fine, else why not. Accepts postgresql:// URLs and libpq ``key=value`` strings."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if parts.scheme not in ("postgresql", "postgres"):
            return f"expected a postgresql:// URL, got scheme {parts.scheme!r}"
        return None
    if "=" not in url:
        return "expected a postgresql:// URL or a libpq string like \"host=... dbname=...\""
    return None



def _socket_mode(reader: Reader, key: str, default: int) -> int:
    if not reader.has(key):
        return default
    value = reader.data[key]
    if not isinstance(value, str):
        reader.fail(key, f"expected an octal string like \"0660\", got {describe(value)}")
    text = value.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", text) or int(text, 8) > 0o777:
        reader.fail(key, f"expected permission bits as an octal string like \"0660\", got {value!r}")
    return int(text, 8)



def _check_cron(reader: Reader, key: str, default: str) -> str:
    expr: str = reader.string(key, default)
    # the scheduler's own reading of crontab syntax (imported late: it pulls in APScheduler)
    from freshd.scheduler import cron_trigger

    try:
        cron_trigger(expr)
    except ValueError as exc:
        reader.fail(key, f"invalid cron expression {expr!r}: {exc}")
    return expr



def _share(table: Reader, key: str, default: float) -> float:
    value = float(table._typed(key, (int, float), "a number between 0 and 1", default))
    if not 0 <= value <= 1:
        table.fail(key, f"must be between 0 and 1 (a share: 0.1 is 10 %), got {value:g}")
    return value



def _address(table: Reader, key: str, default: str) -> str:
    address: str = table.string(key, default, empty=True)
    if address:
        try:
            split_host_port(address)
        except ValueError as exc:
            table.fail(key, str(exc))
    return address


def _choice(choices: Collection[str]) -> Read:
    return lambda table, key, default: table.choice(key, default, choices)


def _redis_url(table: Reader, key: str, default: str | None) -> str | None:
    url: str | None = table.string(key, default)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        table.fail(key, f"expected a redis://, rediss:// or unix:// URL, got {url[:40]!r}")
    return url


def _template(*fields: str) -> Read:
    def read(table: Reader, key: str, default: str) -> str:
        template: str = table.string(key, default)
        try:
            template.format(**dict.fromkeys(fields, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            table.fail(key, f"a template may use only {{{'}, {'.join(fields)}}}: {exc}")
        return template
    return read


def _tenants(admin: Reader) -> FrozenDict[str, TenantAccess]:
    table = admin.table("tenants")
    tenants: dict[str, TenantAccess] = {}
    for tenant in table.data:
        with table.collect():
            access = table.table(tenant)
            tenants[tenant] = read_section(access, TenantAccess, read={"users": string_list, "groups": string_list})
    return FrozenDict(tenants)


def _rate_groups(policies: Reader) -> FrozenDict[str, RateGroupConfig]:
    from freshd.policies.ratelimit import Rate

    def rate(table: Reader, key: str, default: None) -> str:
        if not table.has(key):
            table.fail(key, "missing required key 'rate' (e.g. \"10/min\")")
        return str(table.string(key, default))

    def burst(table: Reader, key: str, default: float) -> float:
        return float(table._typed(key, (int, float), "a number", default))

    groups = policies.table("rate_groups")
    configs: dict[str, RateGroupConfig] = {}
    for group in groups.data:
        errors = len(groups.errors)
        table = groups.table(group)
        config = read_section(table, RateGroupConfig, read={"rate": rate, "burst": burst})
        if len(groups.errors) == errors:
            with table.collect():
                try:
                    Rate.parse(config.rate, config.burst)
                except ValueError as exc:
                    table.fail("rate" if "burst" not in str(exc) else "burst", str(exc))
                configs[group] = config
    return FrozenDict(configs)


def _policies(top: Reader) -> PoliciesConfig:
    policies = top.table("policies")
    breaker, errors = policies.table("breaker"), len(policies.errors)
    breaker_config = read_section(breaker, BreakerSettings)
    if len(breaker.errors) == errors and breaker_config.max_cooldown < breaker_config.cooldown:
        with breaker.collect():
            breaker.fail("max_cooldown", "must be at least as long as cooldown")
    return read_section(policies, PoliciesConfig, zero_ok=("token_refresh_buffer",), given={
        "breaker": breaker_config,
        "retry": read_section(policies.table("retry"), RetryPolicy),
        "limits": read_section(policies.table("limits"), ProviderLimits, minimum={"max_response_bytes": 65536}),
        "rate_groups": _rate_groups(policies),
    })


def build_config(data: Mapping[str, Any], where: Where, env: Mapping[str, str],
                 providers: Collection[str], source: Path | None) -> Config:
    """Every section read and checked; all the problems found raised together (ConfigErrors), or
    the one found (ConfigError)."""
    top = Reader(data, "", where)
    top.check_keys([name for name in field_names(Config) if name != "source"])

    def database_url(table: Reader, key: str, default: str | None) -> str | None:
        url: str | None = table.string(key, default)
        if url is not None and (problem := _check_database_url(url)) is not None:
            table.fail(key, problem)
        return url

    def path(default: Path) -> Read:
        return lambda table, key, _: Path(table.string(key, str(default)))

    url, state_dir, runtime_dir = None, paths.default_state_dir(env), paths.default_runtime_dir(env)
    with top.collect():
        url = database_url(top, "database_url", None)
    with top.collect():
        state_dir = path(state_dir)(top, "state_dir", None)
    with top.collect():
        runtime_dir = path(runtime_dir)(top, "runtime_dir", None)

    admin, errors = top.table("admin"), len(top.errors)
    admin_config = read_section(admin, AdminConfig, given={"tenants": _tenants(admin)},
                                read={"socket": path(runtime_dir / paths.SOCKET_NAME),
                                      "socket_mode": _socket_mode},
                                minimum={"max_connections": ADMIN_RESERVED_CONNECTIONS + 1})
    others = admin_config.max_connections - ADMIN_RESERVED_CONNECTIONS  # the seats anyone may take
    if len(top.errors) == errors and admin_config.max_connections_per_uid > others:
        with admin.collect():
            admin.fail("max_connections_per_uid", f"must be at most max_connections - {ADMIN_RESERVED_CONNECTIONS} "
                       f"(the seats kept for root), {others}, got {admin_config.max_connections_per_uid}")

    metrics_config = read_section(top.table("metrics"), MetricsConfig, read={"address": _address})
    if not metrics_config.address:  # an empty address disables the endpoint
        metrics_config = dataclasses.replace(metrics_config, enabled=False)

    staleness, errors = top.table("staleness"), len(top.errors)
    staleness_config = read_section(staleness, StalenessConfig, zero_ok=("min_gap",))
    if len(top.errors) == errors and staleness_config.fresh_below >= staleness_config.stale_after:
        with staleness.collect():
            staleness.fail(
                "stale_after" if staleness.has("stale_after") else "fresh_below",
                f"stale_after ({staleness_config.stale_after:g}s) must be longer than "
                f"fresh_below ({staleness_config.fresh_below:g}s)",
            )

    cluster, errors = top.table("cluster"), len(top.errors)
    cluster_config = read_section(cluster, ClusterConfig, zero_ok=("handover",))
    if len(top.errors) == errors and cluster_config.lease_ttl < 2:
        with cluster.collect():
            cluster.fail("lease_ttl", "must be at least 2s (it is renewed every quarter of it)")

    connections: tuple[ConnectionConfig, ...] = ()
    with top.collect():
        connections = read_connections(top, providers)
    twoway_config: TwoWaySettings = TwoWaySettings()
    pair_configs: tuple[PairConfig, ...] = ()
    with top.collect():
        twoway_config = read_twoway(top)
    with top.collect():
        pair_configs = read_pairs(top)
    config = Config(
        database_url=url,
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        admin=admin_config,
        metrics=metrics_config,
        http=read_section(top.table("http"), HttpConfig, read={"address": _address},
                          minimum={"max_body_bytes": 1024}),
        log=read_section(top.table("log"), LogConfig,
                         read={"level": _choice(LOG_LEVELS), "format": _choice(LOG_FORMATS)}),
        schedule=read_section(top.table("schedule"), ScheduleConfig, zero_ok=("jitter",),
                              read={"cleanup_cron": _check_cron}),
        staleness=staleness_config,
        sync=read_section(top.table("sync"), SyncConfig, read={"max_delete_share": _share}),
        store=read_section(top.table("store"), StoreConfig),
        cluster=cluster_config,
        events=read_section(top.table("events"), EventsConfig, minimum={"maxlen": 0}, read={
            "redis_url": _redis_url, "payload": _choice(("full", "thin")),
            "stream": _template("tenant", "entity"), "history_stream": _template("tenant", "entity", "app"),
            "jobs_stream": _template("tenant")}),
        secrets=read_section(top.table("secrets"), SecretsConfig, read={
            "key_files": lambda table, key, _: tuple(Path(p) for p in string_list(table, key))}),
        policies=_policies(top),
        connections=connections,
        twoway=twoway_config,
        pairs=pair_configs,
        source=source,
    )
    if top.errors:
        raise top.errors[0] if len(top.errors) == 1 else ConfigErrors(top.errors)
    return config

