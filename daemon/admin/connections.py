"""Admin commands about connections: status, connections.list, .show, .add, .set_credential, .remove.

A connection's view joins what the supervisor knows (state, breaker, rate limit, token) with the
store (records, last success, next sync, owner); connections another member runs are shown as
the database has them.  `connections add` checks everything first (`check_connection`: the URL
and the provider's own checks, every problem at once) and, unless --no-check, probes the
provider with the credentials (`probe_connection`); a config-owned connection cannot be removed.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Any

import structlog
import trio

from freshd import __version__, logs
from freshd.admin.lookups import CommandGroup, Handler
from freshd.admin.protocol import API_VERSION, Caller, ErrorCode
from freshd.admin.views import iso, job_json
from freshd.connection_state import ConnectionState, ConnectionStatus
from freshd.connectors.base import ConnectionSettings, check_settings, connector_class
from freshd.errors import AdminError, AuthExpired, ConfigError, ConfigErrors, ProviderError, ReauthRequired
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.retry import RetryPolicy
from freshd.policies.tokens import Token
from freshd.queueing import Create
from freshd.store import activity, cluster, connections, jobs, records
from freshd.store.jobs import JobKind, JobRequest, JobRow, JobStatus

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 15.0  # `connections add --check`: the provider probe's deadline (within request_timeout)


def validate_base_url(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise AdminError(ErrorCode.BAD_REQUEST, f"base_url must be an http(s) URL with a host, got {url!r}")


def check_connection(settings: ConnectionSettings) -> None:
    """`connections add`: the base URL and the provider's checks (options, required credentials), every
    problem in one message; raises AdminError(bad_request) and nothing is stored."""
    problems: list[str] = []
    try:
        validate_base_url(settings.base_url)
    except AdminError as exc:
        problems.append(exc.message)
    try:
        check_settings(settings)
    except ConfigErrors as exc:
        problems += [str(e) for e in exc.errors]
    except ConfigError as exc:
        problems.append(str(exc))
    if len(problems) == 1:
        raise AdminError(ErrorCode.BAD_REQUEST, problems[0])
    if problems:
        raise AdminError(ErrorCode.BAD_REQUEST, f"{len(problems)} problems: " + "; ".join(problems))


async def probe_connection(settings: ConnectionSettings, *, deadline: float) -> Token | None:
    """`connections add --check`: build the connector and make its health probe's one cheap call, within
    `deadline` seconds, without retries.  Refused credentials are bad_request, an unreachable or failing provider
    unavailable (nothing is stored either way).  Returns the token the probe obtained (OAuth-style
    providers), stored with the connection: a rotated refresh token must not be lost."""
    cls = connector_class(settings.provider)
    policies = ConnectionPolicies.standalone(settings.provider, cls.rate_limits, settings.options,
                                             name=settings.name)
    policies.retry = RetryPolicy(attempts=1, rate_limited_attempts=1)
    what = f"check of {settings.name} against {settings.base_url}"
    try:
        connector = cls(settings, policies=policies)
    except ConfigError as exc:
        raise AdminError(ErrorCode.BAD_REQUEST, str(exc)) from None
    try:
        with trio.fail_after(deadline):
            await connector.probe()
    except NotImplementedError:
        log.info("connection.check_skipped", connection=settings.name, reason="the connector has no probe")
    except trio.TooSlowError:
        raise AdminError(ErrorCode.UNAVAILABLE, f"{what}: no answer within {deadline:g} s (is the provider "
                         "reachable? --no-check skips this check)") from None
    except (ReauthRequired, AuthExpired) as exc:
        raise AdminError(ErrorCode.BAD_REQUEST, f"{what}: the provider refused the credentials: "
                         f"{logs.scrub(str(exc))}") from None
    except ProviderError as exc:
        raise AdminError(ErrorCode.UNAVAILABLE, f"{what}: the provider cannot be used: {logs.scrub(str(exc))} "
                         "(--no-check skips this check)") from None
    finally:
        with trio.CancelScope(shield=True):
            await connector.aclose()
    return policies.tokens.token


class ConnectionCommands(CommandGroup):
    def handlers(self) -> dict[str, Handler]:
        return {
            "status": self.status,
            "connections.list": self.connections_list,
            "connections.show": self.connections_show,
            "connections.add": self.connections_add,
            "connections.remove": self.connections_remove,
            "connections.set_credential": self.connections_set_credential,
        }

    # -- views --------------------------------------------------------------------------------------

    async def _connection_views(self, caller: Caller) -> list[dict[str, Any]]:
        counts = await self.daemon.store.call(records.count_records)
        rows = await self.daemon.store.call(connections.list_connections, self.daemon.store.keyring)
        ids = {row.name: row.id for row in rows}
        started = await self.daemon.store.call(jobs.last_started)
        policy, now = self.daemon.staleness, datetime.now(UTC)
        views = []
        owners = await self.daemon.store.call(cluster.owners)
        me = self.daemon.membership.id if self.daemon.membership else None
        for status in [*self.daemon.supervisor.statuses(), *await self._remote_statuses(rows)]:
            if not caller.sees(status.tenant):
                continue
            last_started = started.get(ids.get(status.name, -1))
            # a parked (disabled, detached) connection has no next sync
            scheduled = self.daemon.config.schedule.scheduled_sync and not self.daemon.supervisor.parked(status.name)
            views.append({
                "data_age_seconds": round(policy.age(now, status.last_success_at)) if status.last_success_at else None,
                "stale": policy.is_stale(now, status.last_success_at),
                "name": status.name,
                "provider": status.provider,
                "tenant": status.tenant,
                "state": status.state.value,
                "last_success_at": iso(status.last_success_at),
                "next_sync_at": iso(policy.due_at(status.last_success_at, last_started)) if scheduled else None,
                "records": counts.get(ids.get(status.name, -1), 0),
                "error": status.error,
                "job_id": status.job_id,
                "restarts": status.restarts,
                "breaker": status.breaker.value,
                "breaker_retry_at": iso(datetime.fromtimestamp(status.breaker_retry_at, UTC))
                if status.breaker_retry_at else None,
                "rate_limit": status.rate_limit,
                "token_expires_at": iso(datetime.fromtimestamp(status.token_expires_at, UTC))
                if status.token_expires_at else None,
                "health": status.health,
                "probed_at": iso(status.probed_at),
                # the member running it (None: unowned right now, e.g. its owner just died)
                "owner": me if self.daemon.supervisor.owns(status.name) else owners.get(ids.get(status.name, -1)),
            })
        return views

    async def _remote_statuses(self, rows: list[connections.ConnectionRow]) -> list[ConnectionStatus]:
        """Connections another member runs (or none, for now), as the database shows them."""
        local = {s.name for s in self.daemon.supervisor.statuses()}
        remote = [row for row in rows if row.name not in local]
        if not remote:
            return []
        live = await self.daemon.store.call(jobs.live_jobs)
        out = []
        for row in remote:
            job = live.get(row.id)
            state = (ConnectionState.PAUSED if job and job.status is JobStatus.PAUSED else
                     ConnectionState.SYNCING if job and job.status is JobStatus.RUNNING else
                     ConnectionState.ERROR if row.last_error else ConnectionState.IDLE)
            out.append(ConnectionStatus(name=row.name, provider=row.provider, tenant=row.tenant, state=state,
                                        last_success_at=row.last_success_at, next_sync_at=None,
                                        error=row.last_error, job_id=job.id if job else None))
        return out

    async def status(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        store_ok = await self.daemon.store.ping()
        return {
            "version": __version__,
            "api_version": API_VERSION,
            "started_at": iso(self.daemon.started_at),
            "metrics_url": self.daemon.metrics_url,
            "http_url": self.daemon.http_url,
            "store": {"state": "up" if store_ok else "unavailable"},
            "connections": await self._connection_views(caller) if store_ok else [],
        }

    async def connections_list(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"connections": await self._connection_views(caller)}

    async def connections_show(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        row = await self._row(args["name"], caller)
        view = next((v for v in await self._connection_views(caller) if v["name"] == row.name), {})
        live = await self.daemon.store.call(jobs.live_job, row.id)
        held = await self.daemon.store.call(jobs.held_deletions, row.id)
        return {
            **view,
            # reconciliations over [sync] max_delete_share, waiting for `sync --full --confirm-deletes`
            "held_deletions": [{**h, "held_at": iso(h["held_at"])} for h in held],
            "name": row.name,
            "provider": row.provider,
            "tenant": row.tenant,
            "base_url": row.base_url,
            "credential_keys": sorted(row.credentials),
            "options": row.options,
            "source": row.source,
            "created_at": iso(row.created_at),
            "job": job_json(live, self._live_progress(live)) if live else None,
        }

    # -- changes ------------------------------------------------------------------------------------

    async def connections_add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, provider, base_url = args["name"], args["provider"], args["base_url"]
        tenant = args.get("tenant")
        if caller.tenants is not None:
            if tenant in (None, "default") and len(caller.tenants) == 1:
                tenant = next(iter(caller.tenants))  # a one-tenant caller adds to its tenant
            if tenant not in caller.tenants:
                raise AdminError(ErrorCode.FORBIDDEN, f"you may add connections to tenant(s) "
                                 f"{', '.join(sorted(caller.tenants))} only")
        settings = ConnectionSettings(name, provider, base_url, tenant or "default", dict(args["credentials"]),
                                      dict(args.get("options") or {}))
        check_connection(settings)
        existing = await self.daemon.store.call(connections.get_connection, name, self.daemon.store.keyring)
        if existing is not None:
            if not caller.sees(existing.tenant):  # names are global, but whose it is stays hidden
                raise AdminError(ErrorCode.CONFLICT, "that connection name is not available; choose another")
            raise AdminError(ErrorCode.CONFLICT, f"a connection named {name!r} already exists")
        token = None
        if args.get("check"):  # within the request's deadline, with a second left to answer
            token = await probe_connection(
                settings, deadline=max(1.0, min(CHECK_TIMEOUT, self.daemon.config.admin.request_timeout - 2.0)))

        def add(conn: Any, create: Create) -> tuple[connections.ConnectionRow, JobRow]:
            row, _ = connections.upsert_connection(
                conn, self.daemon.store.keyring, name=name, tenant=tenant or "default", provider=provider,
                base_url=base_url, options=dict(args.get("options") or {}),
                credentials=dict(args["credentials"]), source="admin",
            )
            if token is not None:  # the check's token: its refresh token may have rotated
                connections.save_tokens(conn, self.daemon.store.keyring, row.id, token.as_json())
            # the initial sync is queued in the same transaction: an added connection is never forgotten
            job = create({row.name: JobRequest(row.id, JobKind.INITIAL)})[row.name].job
            activity.log_activity(conn, "connection.added", f"connection {name} added over the admin socket",
                                  connection_id=row.id, job_id=job.id,
                                  details={"provider": provider, "tenant": row.tenant,
                                           "credential_keys": sorted(row.credentials)})
            return row, job

        async def lease(added: tuple[connections.ConnectionRow, JobRow]) -> None:
            self.daemon.supervisor.know(added[0])
            if self.daemon.membership is not None:
                await self.daemon.membership.settle()  # leased now, here or by the member the hash names

        (row, job), _ = await self.daemon.queue.queue_with(add, "add", ready=lease)
        await self.daemon.refresh_views()  # a REST connection may declare columns of its own
        return {"connection": {"name": row.name, "provider": row.provider, "tenant": row.tenant,
                               "base_url": row.base_url}, "job_id": job.id}

    async def connections_set_credential(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """New credential values (re-authentication): merged, sealed, tokens cleared, a sync queued."""
        row = await self._row(args["name"], caller)
        self._require_active(row.name)
        changes: dict[str, str | None] = {k: (v or None) for k, v in args["credentials"].items()}
        merged = {k: v for k, v in {**row.credentials, **changes}.items() if v is not None}
        try:
            check_settings(ConnectionSettings(row.name, row.provider, row.base_url, row.tenant, merged,
                                              dict(row.options)))
        except ConfigError as exc:
            raise AdminError(ErrorCode.BAD_REQUEST, str(exc)) from None
        kind = JobKind.INCREMENTAL if row.last_success_at else JobKind.INITIAL
        keyring = self.daemon.store.keyring

        def update(conn: Any, create: Create) -> tuple[connections.ConnectionRow, JobRow]:
            stored = connections.set_credentials(conn, keyring, row.name, changes)
            job = create({stored.name: JobRequest(stored.id, kind)})[stored.name].job
            activity.log_activity(conn, "connection.credentials_set",
                                  f"credentials of {row.name} changed by {caller.who}",
                                  connection_id=stored.id, job_id=job.id,
                                  details={"keys": sorted(changes)})  # names only, never values
            return stored, job

        async def restart(updated: tuple[connections.ConnectionRow, JobRow]) -> None:
            for value in updated[0].credentials.values():
                logs.register_secret(value)
            await self.daemon.supervisor.apply(
                await self.daemon.store.call(connections.list_connections, keyring))

        (stored, job), _ = await self.daemon.queue.queue_with(update, "credentials", ready=restart)
        return {"name": stored.name, "credential_keys": sorted(stored.credentials), "job_id": job.id}

    async def connections_remove(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Delete a connection and all its data: an explicit act only (`purge`), and never for a
        connection the config file still runs.  Refused requests change nothing."""
        row = await self._row(args["name"], caller)
        spec = self.daemon.config.connection(row.name)
        if spec is not None and spec.enabled:
            raise AdminError(ErrorCode.CONFLICT,
                             f"{row.name!r} is enabled in the config file: set enabled = false there (or remove "
                             f"it) and reload first; its data is kept until purged")
        if not args.get("purge"):
            raise AdminError(ErrorCode.BAD_REQUEST,
                             f"removing {row.name!r} deletes its data (records, cursors, jobs); "
                             f"repeat with --purge to do that")
        await self.daemon.supervisor.stop(row.name)  # no actor writes to rows being deleted
        who = caller.who

        def purge(conn: Any) -> dict[str, int] | None:
            counts = connections.purge_connection(conn, row.name)
            if counts is not None:
                activity.log_activity(conn, "connection.purged",
                                      f"connection {row.name} and its data purged over the admin socket by {who}",
                                      details={"name": row.name, "provider": row.provider, "tenant": row.tenant,
                                               "by": who, **counts})
            return counts

        counts = await self.daemon.store.call(purge)
        if counts is None:
            raise AdminError(ErrorCode.NOT_FOUND, f"no connection named {row.name!r}")  # purged meanwhile
        self.daemon.supervisor.forget(row.name)
        log.warning("connection.purged", connection=row.name, by=who, **counts)
        return {"removed": row.name, "purged": counts}
