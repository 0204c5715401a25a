"""The daemon's side of the admin API: one method per command.

The server (admin/server.py) has already parsed and type-checked the request
against the schemas in admin/protocol.py; here we apply the daemon's rules
(known provider, valid URL, config-owned connections are read-only) and
answer with plain JSON.  A rule broken raises AdminError and changes nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
import trio

from freshd import __version__, logs, scheduler
from freshd.actor import ConnectionState, ConnectionStatus
from freshd.admin.consumers import ConsumerCommands
from freshd.admin.protocol import API_VERSION, Caller, ErrorCode, Peer, Request
from freshd.admin.twoway import TwoWayCommands
from freshd.admin.views import iso, job_json
from freshd.connectors.base import ConnectionSettings, check_settings, connector_class
from freshd.errors import (
    AdminError,
    AuthExpired,
    ConfigError,
    ConfigErrors,
    ProviderError,
    ReauthRequired,
    StoreUnavailable,
)
from freshd.messages import CancelJob, PauseJob, ResumeJob
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.retry import RetryPolicy
from freshd.policies.staleness import Verdict
from freshd.policies.tokens import Token
from freshd.queueing import Create
from freshd.store import activity, cluster, connections, jobs, outbox, records, stats, tokens
from freshd.store.db import Listener
from freshd.store.jobs import JobKind, JobOptions, JobRequest, JobRow, JobStatus
from freshd.supervisor import settings_of
from freshd.sync import JobProgress

if TYPE_CHECKING:
    from freshd.admin.host import AdminHost

log = structlog.get_logger(__name__)

# commands about one connection that its owner runs: another member forwards them
FORWARDED = frozenset({"sync", "ensure", "retry", "pause", "resume", "cancel", "connections.set_credential",
                       "connections.remove"})
FORWARD_POLL = 0.05  # seconds between two looks for the owner's reply
FORWARD_IDLE = 1.0  # the owner looks for forwarded commands at least this often
EVENTS_LAG_LIMIT = 300.0  # unpublished change events older than this make `health` unhealthy
REMOTE_WATCH_POLL = 0.5  # `watch` of a job another member runs reads its row this often
CHECK_TIMEOUT = 15.0  # `connections add --check`: the provider probe's deadline (within request_timeout)


def parse_since(text: str) -> datetime:
    """`sync --since`: a date (midnight UTC) or a time (UTC unless it says otherwise), not in the future."""
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(ErrorCode.BAD_REQUEST, f"since: expected a date or time in ISO 8601 (2026-01-31 or "
                         f"2026-01-31T12:00:00Z), got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment > datetime.now(UTC):
        raise AdminError(ErrorCode.BAD_REQUEST, f"since: {text!r} is in the future")
    return moment


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


class DaemonAdmin:
    """Implements AdminHandler for the running daemon."""

    def __init__(self, daemon: AdminHost) -> None:
        self.daemon = daemon
        self._commands: dict[str, Callable[[dict[str, Any], Caller], Awaitable[Any]]] = {
            "status": self.status,
            "connections.list": self.connections_list,
            "connections.show": self.connections_show,
            "connections.add": self.connections_add,
            "connections.remove": self.connections_remove,
            "members": self.members,
            "connections.set_credential": self.connections_set_credential,
            "sync": self.sync,
            "jobs": self.jobs,
            "job": self.job,
            "pause": self.pause,
            "resume": self.resume,
            "cancel": self.cancel,
            "watch": self.watch,
            "retry": self.retry,
            "health": self.health,
            "schedule": self.schedule,
            "trigger": self.trigger,
            "ensure": self.ensure,
            "stats": self.stats,
            "tokens.add": self.tokens_add,
            "tokens.list": self.tokens_list,
            "tokens.revoke": self.tokens_revoke,
            **ConsumerCommands(daemon).handlers(),
            **TwoWayCommands(daemon).handlers(),
        }

    async def handle(self, request: Request, caller: Caller) -> Any:
        command = self._commands.get(request.cmd)
        if command is None:
            raise AdminError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {request.cmd!r}")
        try:
            if request.cmd in FORWARDED and (owner := await self._owner_elsewhere(request, caller)) is not None:
                return await self._forward(owner, request, caller)
            return await command(dict(request.args), caller)
        except StoreUnavailable as exc:
            raise AdminError(ErrorCode.UNAVAILABLE, f"the database is unavailable: {exc}") from None

    # -- commands for connections another member runs ----------------------------------------------

    async def _owner_elsewhere(self, request: Request, caller: Caller) -> str | None:
        """The member running the connection this command is about, if it is not this one."""
        membership = self.daemon.membership
        if membership is None:
            return None
        args = request.args
        if "name" in args:
            row = await self.daemon.store.call(connections.get_connection, args["name"], self.daemon.store.keyring)
            visible = row is not None and caller.sees(row.tenant)
            connection_id = row.id if row is not None else None
        else:
            job = await self.daemon.store.call(jobs.get_job, args["id"])
            visible = job is not None and caller.sees(job.tenant)
            connection_id = job.connection_id if job is not None else None
        if not visible or connection_id is None or membership.owns(connection_id):
            return None  # answered here: not found, or ours
        owner = (await self.daemon.store.call(cluster.owners)).get(connection_id)
        return owner if owner not in (None, membership.id) else None

    async def _forward(self, owner: str, request: Request, caller: Caller) -> Any:
        """Through the database to the owner (a command row and a NOTIFY); its answer is ours."""
        forwarded = {"cmd": request.cmd, "args": request.args,
                     "caller": {"pid": caller.peer.pid, "uid": caller.peer.uid, "gid": caller.peer.gid,
                                "tenants": None if caller.tenants is None else sorted(caller.tenants),
                                "token_id": caller.token_id}}
        command_id = await self.daemon.store.call(cluster.post_command, owner, forwarded)
        with trio.move_on_after(max(1.0, self.daemon.config.admin.request_timeout - 1.0)):
            reply = None
            for _ in itertools.count():  # until the owner answers or the request times out
                if (reply := await self.daemon.store.call(cluster.command_reply, command_id)) is not None:
                    break
                await trio.sleep(FORWARD_POLL)
            assert reply is not None
            if reply.get("ok"):
                return reply.get("result")
            error = reply.get("error") or {}
            raise AdminError(str(error.get("code", ErrorCode.INTERNAL)), str(error.get("message", "")))
        raise AdminError(ErrorCode.TIMEOUT, f"member {owner} runs this connection and did not answer in time")

    async def serve_forwarded(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the commands other members forward to this one, woken by LISTEN/NOTIFY (and a poll
        every FORWARD_IDLE seconds, should a notification be lost with its connection)."""
        membership = self.daemon.membership
        assert membership is not None
        listener = Listener(self.daemon.store.url, "freshd_commands")
        async with listener:
            task_status.started()
            while True:
                await listener.wait_for(FORWARD_IDLE)
                try:  # the member's id changes when it rejoins: read it each time
                    pending = await self.daemon.store.call(cluster.pending_commands, membership.id)
                except StoreUnavailable:
                    continue
                for command_id, forwarded in pending:
                    reply = await self._run_forwarded(forwarded)
                    with contextlib.suppress(StoreUnavailable):
                        await self.daemon.store.call(cluster.answer_command, command_id, reply)

    async def _run_forwarded(self, forwarded: dict[str, Any]) -> dict[str, Any]:
        who = forwarded.get("caller") or {}
        tenants = who.get("tenants")
        caller = Caller(Peer(int(who.get("pid", 0)), int(who.get("uid", -1)), int(who.get("gid", -1))),
                        None if tenants is None else frozenset(tenants), who.get("token_id"))
        command = self._commands.get(str(forwarded.get("cmd")))
        try:
            if command is None or forwarded.get("cmd") not in FORWARDED:
                raise AdminError(ErrorCode.BAD_REQUEST, f"command {forwarded.get('cmd')!r} cannot be forwarded")
            return {"ok": True, "result": await command(dict(forwarded.get("args") or {}), caller)}
        except AdminError as exc:
            return {"ok": False, "error": {"code": exc.code, "message": exc.message}}
        except StoreUnavailable as exc:
            return {"ok": False, "error": {"code": ErrorCode.UNAVAILABLE,
                                           "message": f"the database is unavailable: {exc}"}}
        except Exception:
            log.exception("admin.forwarded_failed", cmd=forwarded.get("cmd"))
            return {"ok": False, "error": {"code": ErrorCode.INTERNAL,
                                           "message": "internal error (see the owner's log)"}}

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

    async def members(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        """The daemons sharing this database and how many connections each runs."""
        ttl = self.daemon.config.cluster.lease_ttl
        members = await self.daemon.store.call(cluster.members, ttl)
        owners = await self.daemon.store.call(cluster.owners)
        counts: dict[str, int] = {}
        for owner in owners.values():
            if owner is not None:
                counts[owner] = counts.get(owner, 0) + 1
        me = self.daemon.membership.id if self.daemon.membership else None
        return [
            {"id": m.id, "name": m.name, "host": m.host, "pid": m.pid, "version": m.version,
             "started_at": iso(m.started_at), "heartbeat_at": iso(m.heartbeat_at), "alive": m.alive,
             "connections": counts.get(m.id, 0), "self": m.id == me}
            for m in members
        ]

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

    async def _row(self, name: str, caller: Caller) -> connections.ConnectionRow:
        row = await self.daemon.store.call(connections.get_connection, name, self.daemon.store.keyring)
        if row is None or not caller.sees(row.tenant):  # another tenant's connection does not exist for you
            raise AdminError(ErrorCode.NOT_FOUND, f"no connection named {name!r}")
        return row

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

    def _require_active(self, name: str) -> None:
        state = self.daemon.supervisor.parked(name)
        if state is not None:
            how = ("enable it in the config file and reload" if state.value == "disabled"
                   else "add it to the config file again and reload")
            raise AdminError(ErrorCode.CONFLICT, f"connection {name!r} is {state.value}: it does not sync; {how}")

    def _run_options(self, row: connections.ConnectionRow, args: dict[str, Any], kind: JobKind) -> JobOptions:
        """`sync --entities/--since/--dry-run`, checked against the connection: bad input raises, changes nothing."""
        if not (args.get("entities") or args.get("since") or args.get("dry_run")):
            return JobOptions()
        try:
            cls = connector_class(row.provider)
            streams = cls.streams_for(settings_of(row))
        except ConfigError as exc:
            raise AdminError(ErrorCode.CONFLICT, f"{row.name}: invalid connection settings: {exc}") from None
        configured = row.options.get("entities")
        valid = [s for s in streams if not configured or s.name in configured]
        by_name = {s.name: s for s in valid}
        wanted = list(dict.fromkeys(args.get("entities") or []))
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            raise AdminError(ErrorCode.BAD_REQUEST, f"{row.name}: unknown entit{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; valid: {', '.join(by_name) or 'none'}")
        since = None
        if args.get("since"):
            if kind is JobKind.FULL:
                raise AdminError(ErrorCode.BAD_REQUEST, "--since re-reads incrementally from a date; a full sync "
                                 "(--full) lists everything: use one or the other")
            moment = parse_since(args["since"])
            for name in wanted or list(by_name):
                if (problem := cls.since_problem(by_name[name])) is not None:
                    raise AdminError(ErrorCode.BAD_REQUEST, f"--since: {problem}" + (
                        "" if wanted else "; choose entities that support it with --entities"))
            since = moment.isoformat()
        if args.get("dry_run") and args.get("confirm_deletes"):
            raise AdminError(ErrorCode.BAD_REQUEST, "--dry-run applies nothing: --confirm-deletes cannot go with it")
        # in the connector's order, so a job lists its entities as a full one would
        entities = tuple(s.name for s in valid if s.name in wanted) or None
        return JobOptions(entities=entities, since=since, dry_run=bool(args.get("dry_run")))

    async def sync(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        row = await self._row(args["name"], caller)
        self._require_active(row.name)
        kind = JobKind.FULL if args.get("full") else JobKind.INCREMENTAL
        confirm_deletes = bool(args.get("confirm_deletes"))
        if confirm_deletes and kind is not JobKind.FULL:
            raise AdminError(ErrorCode.BAD_REQUEST, "--confirm-deletes applies to a full sync only "
                             "(deletions are inferred from a complete listing): add --full")
        options = self._run_options(row, args, kind)
        live = await self.daemon.store.call(jobs.live_job, row.id)
        if live is not None:  # one sync per connection: the existing job is the answer
            return {"job_id": live.id, "created": False, "status": live.status.value}
        force = bool(args.get("force"))
        last_started = (await self.daemon.store.call(jobs.last_started)).get(row.id)
        decision = self.daemon.staleness.decide(now=datetime.now(UTC), last_success_at=row.last_success_at,
                                                last_started_at=last_started, scheduled=False, force=force)
        if decision.verdict is Verdict.DEFER_GAP:
            raise AdminError(ErrorCode.CONFLICT, f"{row.name}: {decision.reason}; retry after "
                             f"{iso(decision.retry_at)} or use --force")
        if force:
            log.warning("sync.forced", connection=row.name, peer_uid=caller.peer.uid)
            await self.daemon.store.call(activity.log_activity, "sync.forced",
                                         f"sync of {row.name} forced by {caller.who}",
                                         connection_id=row.id)
        if confirm_deletes:
            log.warning("sync.confirm_deletes", connection=row.name, peer_uid=caller.peer.uid)
            await self.daemon.store.call(activity.log_activity, "sync.confirm_deletes",
                                         f"full sync of {row.name} allowed to apply held deletions by "
                                         f"{caller.who}", connection_id=row.id)
        job, created = await self.daemon.queue.queue_job(
            row.name, JobRequest(row.id, kind, options, confirm_deletes=confirm_deletes), "manual")
        return {"job_id": job.id, "created": created, "status": job.status.value, "options": job.options}

    async def ensure(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Make sure the connection's data is there and fresh: queue a sync if it never completed one,
        lacks records of an entity it syncs (that the provider did not report empty), or is stale;
        else answer with the data's age.  Idempotent: a live job is the answer, never a second one."""
        row = await self._row(args["name"], caller)
        now, policy = datetime.now(UTC), self.daemon.staleness
        age = round(policy.age(now, row.last_success_at)) if row.last_success_at else None
        live = await self.daemon.store.call(jobs.live_job, row.id)
        if live is not None:
            return {"job_id": live.id, "queued": False, "reason": f"job {live.id} is already {live.status.value}",
                    "status": live.status.value, "data_age_seconds": age}
        reason, missing = None, []
        kind = JobKind.INCREMENTAL if row.last_success_at else JobKind.INITIAL
        if row.last_success_at is None:
            reason = "it never completed a sync"
        else:
            missing = await self._entities_without_records(row)
            if missing:
                # an incremental listing would not bring back what is older than its cursor: list them whole
                reason, kind = f"no records for {', '.join(missing)}", JobKind.FULL
            elif policy.is_stale(now, row.last_success_at):
                reason = f"the data is stale ({age} s old; stale after {policy.stale_after:g} s)"
        if reason is None:
            return {"job_id": None, "queued": False, "data_age_seconds": age,
                    "reason": f"the data is fresh enough ({age} s old; stale after {policy.stale_after:g} s)"}
        job, created = await self.daemon.queue.queue_job(
            row.name, JobRequest(row.id, kind, JobOptions(entities=tuple(missing) or None)), "ensure")
        log.info("sync.ensure", connection=row.name, job=job.id, queued=created, reason=reason)
        return {"job_id": job.id, "queued": created, "reason": reason, "status": job.status.value,
                "data_age_seconds": age}

    async def _entities_without_records(self, row: connections.ConnectionRow) -> list[str]:
        """Entities the connection syncs with no live record, unless its last sync saw the provider's
        listing of them empty (a total of 0, or done with nothing to process)."""
        try:
            streams = connector_class(row.provider).streams_for(settings_of(row))
        except ConfigError:
            return []
        configured = row.options.get("entities")
        names = [s.name for s in streams if not configured or s.name in configured]
        counts = (await self.daemon.store.call(records.count_by_entity, [row.id])).get(row.id, {})
        last = (await self.daemon.store.call(jobs.last_successful_jobs, [row.id])).get(row.id)
        seen: dict[str, Any] = dict(last.progress) if last is not None else {}

        def empty_at_provider(name: str) -> bool:
            p = seen.get(name) or {}
            return p.get("total") == 0 or (p.get("state") == "done" and not p.get("total") and not p.get("processed"))

        return [n for n in names if not counts.get(n) and not empty_at_provider(n)]

    async def stats(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """The stored daily statistics of the last `days` days (the cleanup sweep computes each day's)."""
        if args.get("connection"):
            await self._row(args["connection"], caller)
        since = datetime.now(UTC).date() - timedelta(days=args.get("days", 7))
        rows = await self.daemon.store.call(stats.list_stats, since=since, connection=args.get("connection"),
                                            tenant=args.get("tenant"), tenants=caller.tenants)
        out = []
        tenants: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            rate = round(r["successes"] / r["syncs"], 4) if r["syncs"] else None
            out.append({**r, "day": r["day"].isoformat(), "success_rate": rate})
            t = tenants.setdefault((r["day"].isoformat(), r["tenant"]), {
                "day": r["day"].isoformat(), "tenant": r["tenant"], "connections": 0, "syncs": 0, "successes": 0,
                "records": 0, "created": 0, "changed": 0, "deleted": 0, "failed_items": 0, "errors": {}})
            t["connections"] += 1
            for key in ("syncs", "successes", "created", "changed", "deleted", "failed_items"):
                t[key] += r[key]
            t["records"] += sum(r["records"].values())
            for kind, n in r["errors"].items():
                t["errors"][kind] = t["errors"].get(kind, 0) + n
        for t in tenants.values():
            t["success_rate"] = round(t["successes"] / t["syncs"], 4) if t["syncs"] else None
        return {"days": args.get("days", 7), "retention_days": self.daemon.config.sync.stats_retention_days,
                "stats": out, "tenants": list(tenants.values())}

    async def jobs(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if args.get("connection"):
            await self._row(args["connection"], caller)
        status = args.get("status")
        if status is not None and status not in {s.value for s in JobStatus}:
            raise AdminError(ErrorCode.BAD_REQUEST, f"jobs: unknown status {status!r}; valid: "
                             f"{', '.join(s.value for s in JobStatus)}")
        rows, total = await self.daemon.store.call(
            jobs.list_jobs, connection=args.get("connection"), tenant=args.get("tenant"), tenants=caller.tenants,
            status=JobStatus(status) if status else None, limit=args.get("limit", 50),
            offset=args.get("offset", 0),
        )
        return {"jobs": [job_json(j, self._live_progress(j)) for j in rows], "total": total}

    async def _job(self, job_id: int, caller: Caller) -> JobRow:
        job = await self.daemon.store.call(jobs.get_job, job_id)
        if job is None or not caller.sees(job.tenant):
            raise AdminError(ErrorCode.NOT_FOUND, f"no job {job_id}")
        return job

    async def job(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = await self._job(args["id"], caller)
        failed = await self.daemon.store.call(jobs.failed_items, job.id)
        return {**job_json(job, self._live_progress(job)),
                "failed_items": [{**f, "created_at": iso(f["created_at"])} for f in failed[:100]],
                "failed_items_total": len(failed)}

    def _live_progress(self, job: JobRow) -> JobProgress | None:
        actor = self.daemon.supervisor.actor(job.connection)
        view = actor.job_view() if actor else None
        return view[1] if view and view[0].id == job.id else None

    async def _control(
        self, args: dict[str, Any], caller: Caller, message: type[PauseJob | ResumeJob | CancelJob]
    ) -> dict[str, Any]:
        job = await self._job(args["id"], caller)
        if job.status not in jobs.LIVE:
            raise AdminError(ErrorCode.CONFLICT, f"job {job.id} is {job.status.value}")
        if not self.daemon.supervisor.send_nowait(job.connection, message(job.id)):
            raise AdminError(ErrorCode.UNAVAILABLE, f"connection {job.connection!r} is not running")
        return {"job_id": job.id, "requested": message.__name__.removesuffix("Job").lower()}

    async def pause(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, PauseJob)

    async def resume(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, ResumeJob)

    async def cancel(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, CancelJob)

    async def retry(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Queue a job that fetches again, by id, the items `job` recorded as failed."""
        job = await self._job(args["id"], caller)
        self._require_active(job.connection)
        if job.status in jobs.LIVE:
            raise AdminError(ErrorCode.CONFLICT, f"job {job.id} is {job.status.value}: retry it once it has ended")
        failed = await self.daemon.store.call(jobs.failed_items, job.id)
        if not failed:
            raise AdminError(ErrorCode.CONFLICT, f"job {job.id} has no failed items to retry")
        retry, created = await self.daemon.queue.queue_job(
            job.connection, JobRequest(job.connection_id, JobKind.RETRY, retry_of=job.id), "manual")
        if not created:
            raise AdminError(ErrorCode.CONFLICT, f"connection {job.connection!r} already has live job {retry.id}")
        return {"job_id": retry.id, "retry_of": job.id, "items": len(failed)}

    # -- health and sweeps ---------------------------------------------------------------------------

    async def health(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """The figures monitoring wants, and a verdict: healthy unless something needs a person."""
        store_ok = await self.daemon.store.ping()
        scheduler_ok = bool(self.daemon.scheduler is not None and self.daemon.scheduler.running)
        statuses = [s for s in self.daemon.supervisor.statuses() if caller.sees(s.tenant)]
        by_state: dict[str, int] = {}
        for status in statuses:
            by_state[status.state.value] = by_state.get(status.state.value, 0) + 1
        job_stats = await self.daemon.store.call(jobs.job_stats) if store_ok else {}
        now = datetime.now(UTC)
        ages = [(now - s.last_success_at).total_seconds() for s in statuses if s.last_success_at]
        problems = [] if store_ok else ["the database is unavailable"]
        if not scheduler_ok:
            problems.append("the scheduler is not running")
        problems += [f"{s.name}: {s.state.value}" + (f" ({s.error})" if s.error else "") for s in statuses
                     if s.state.value in ("error", "reauth_required", "restarting")]
        events_lag = None
        if store_ok and self.daemon.events is not None:
            events_lag = await self.daemon.store.call(outbox.lag)
            oldest = events_lag.get("oldest_seconds") or 0
            if oldest > EVENTS_LAG_LIMIT:
                problems.append(f"{events_lag['pending']} change event(s) unpublished, the oldest {oldest:.0f} s old "
                                "(is Redis reachable?)")
        if store_ok:
            cfg = self.daemon.config.cluster
            parked = [s.name for s in self.daemon.supervisor.statuses() if self.daemon.supervisor.parked(s.name)]
            orphans = await self.daemon.store.call(cluster.unowned_for, cfg.lease_ttl + cfg.handover, parked)
            if orphans:
                problems.append(f"{orphans} connection(s) without an owner for over "
                                f"{cfg.lease_ttl + cfg.handover:g} s (a member died and nobody took over)")
        total = job_stats.get("total", 0)
        ids = {s.name: s.id for s in await self.daemon.store.call(connections.list_sync_states)} if store_ok else {}
        counts = await self.daemon.store.call(records.count_by_entity, list(ids.values())) if store_ok else {}
        return {
            "healthy": not problems,
            "problems": problems,
            "store": "up" if store_ok else "unavailable",
            "scheduler": "running" if scheduler_ok else "stopped",
            "syncs": {"total": total, "successful": job_stats.get("successful", 0),
                      "success_rate": round(job_stats.get("successful", 0) / total, 4) if total else None,
                      "active": job_stats.get("active", 0)},
            "connections": by_state,
            "oldest_data_age_seconds": round(max(ages)) if ages else None,
            "events": events_lag,  # unpublished change events (None: events are off)
            # live records per connection and entity
            "records": {s.name: counts.get(ids.get(s.name, -1), {}) for s in statuses},
        }

    async def schedule(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"sweeps": scheduler.describe(self.daemon.scheduler) if self.daemon.scheduler else []}

    async def trigger(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if caller.tenants is not None:
            raise AdminError(ErrorCode.FORBIDDEN, "sweeps act on every tenant: only administrators may trigger them")
        try:
            await scheduler.run_now(self.daemon.scheduler, args["sweep"])
        except KeyError as exc:
            raise AdminError(ErrorCode.NOT_FOUND, str(exc.args[0])) from None
        except scheduler.SweepBusy:
            raise AdminError(ErrorCode.CONFLICT, f"sweep {args['sweep']!r} is already running") from None
        return {"sweep": args["sweep"], "started": True}

    # -- HTTP API tokens ------------------------------------------------------------------------------

    @staticmethod
    def _require_admin(caller: Caller, what: str) -> None:
        if caller.tenants is not None:
            raise AdminError(ErrorCode.FORBIDDEN, f"{what}: only administrators may manage API tokens")

    @staticmethod
    def _token_json(row: tokens.TokenRow) -> dict[str, Any]:
        return {"id": row.id, "tenant": row.tenant, "label": row.label, "prefix": row.prefix,
                "created_at": iso(row.created_at), "last_used_at": iso(row.last_used_at),
                "revoked_at": iso(row.revoked_at)}

    async def tokens_add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A bearer token for the HTTP API, scoped to one tenant; the reply is the only place it appears."""
        self._require_admin(caller, "tokens.add")

        def add(conn: Any) -> tuple[tokens.TokenRow, str]:
            row, token = tokens.create_token(conn, args["tenant"], args.get("label"))
            activity.log_activity(conn, "api_token.added", f"API token {row.id} ({row.prefix}...) for tenant "
                                  f"{row.tenant} added by {caller.who}",
                                  details={"id": row.id, "tenant": row.tenant, "label": row.label})
            return row, token

        row, token = await self.daemon.store.call(add)
        log.info("api_token.added", id=row.id, tenant=row.tenant, prefix=row.prefix)
        return {**self._token_json(row), "token": token}

    async def tokens_list(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._require_admin(caller, "tokens.list")
        rows = await self.daemon.store.call(tokens.list_tokens, tenant=args.get("tenant"))
        return {"tokens": [self._token_json(row) for row in rows]}

    async def tokens_revoke(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._require_admin(caller, "tokens.revoke")

        def revoke(conn: Any) -> tokens.TokenRow | None:
            row = tokens.revoke_token(conn, args["id"])
            if row is not None:
                activity.log_activity(conn, "api_token.revoked", f"API token {row.id} of tenant {row.tenant} "
                                      f"revoked by {caller.who}", details={"id": row.id})
            return row

        row = await self.daemon.store.call(revoke)
        if row is None:
            raise AdminError(ErrorCode.NOT_FOUND, f"no API token {args['id']}")
        log.info("api_token.revoked", id=row.id, tenant=row.tenant)
        return self._token_json(row)

    # -- live progress ------------------------------------------------------------------------------

    async def watch(self, args: dict[str, Any], caller: Caller) -> AsyncIterator[dict[str, Any]]:
        """Subscribe to progress: one job until it ends, or (`all`) every job until the client leaves."""
        job_id = args.get("id")
        if job_id is None and not args.get("all"):
            raise AdminError(ErrorCode.BAD_REQUEST, "watch: give a job id or all=true")
        if job_id is not None:
            await self._job(job_id, caller)  # not_found before the stream starts
        return self._watch(job_id, caller)

    async def _watch_remote(self, job: JobRow, caller: Caller) -> AsyncIterator[dict[str, Any]]:
        """A job another member runs: its row, polled, sent whenever its progress or status moves."""
        last: dict[str, Any] | None = None
        for _ in itertools.count():  # until the job ends or the client leaves
            shown = job_json(job)
            if shown != last:
                yield {"job": shown}
                last = shown
            if job.status in jobs.FINISHED:
                return
            await trio.sleep(REMOTE_WATCH_POLL)
            job = await self._job(job.id, caller)

    async def _watch(self, job_id: int | None, caller: Caller) -> AsyncIterator[dict[str, Any]]:
        if job_id is not None:
            job = await self._job(job_id, caller)
            if not self.daemon.supervisor.owns(job.connection) and job.status not in jobs.FINISHED:
                async for event in self._watch_remote(job, caller):
                    yield event
                return
        # subscribe first, then take the snapshot: no update can fall between the two
        with self.daemon.supervisor.hub.subscribe() as updates:
            if job_id is not None:
                snapshot = [await self._job(job_id, caller)]
            else:
                snapshot = [j for j in (await self.daemon.store.call(jobs.list_jobs, tenants=caller.tenants,
                                                                      limit=1000))[0] if j.status in jobs.LIVE]
            for job in snapshot:
                yield {"job": job_json(job, self._live_progress(job))}
                if job_id is not None and job.status in jobs.FINISHED:
                    return
            async for job, progress in updates:
                if (job_id is not None and job.id != job_id) or not caller.sees(job.tenant):
                    continue
                yield {"job": job_json(job, progress)}
                if job_id is not None and job.status in jobs.FINISHED:
                    return
