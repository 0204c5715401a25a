"""Admin commands for consumer applications of the change events (docs/EVENTS.md).

    consumers.add {app, tenant, entities?, skip_history?}   groups created, a backfill queued
    consumers.list / consumers.status {app}                  per entity: records, read, pending, lag
    consumers.backfill {app, since?, entities?, dry_run?}    queue (or count and sample) a backfill
    consumers.pause|resume|cancel {app}                      the application's live backfill
    consumers.remove {app}                                   its groups, its backfills, its queued history

Each refuses bad input (unknown application, tenant or entity, a bad date) with a clear error
and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from freshd.admin.protocol import Caller, ErrorCode
from freshd.connectors.base import connector_class
from freshd.errors import AdminError
from freshd.events import check_app
from freshd.store import connections, outbox

if TYPE_CHECKING:
    from freshd.admin.host import AdminHost
    from freshd.events import Events

Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


class ConsumerCommands:
    def __init__(self, daemon: AdminHost) -> None:
        self.daemon = daemon

    def handlers(self) -> dict[str, Handler]:
        return {
            "consumers.add": self.add, "consumers.list": self.list, "consumers.status": self.status,
            "consumers.backfill": self.backfill, "consumers.remove": self.remove,
            "consumers.pause": self.pause, "consumers.resume": self.resume, "consumers.cancel": self.cancel,
        }

    # -- helpers --------------------------------------------------------------------------------------

    @property
    def events(self) -> Events:
        if self.daemon.events is None:
            raise AdminError(ErrorCode.UNAVAILABLE, "change events are off: set [events] redis_url (or "
                                                     "FRESHD_REDIS_URL) and restart")
        return self.daemon.events

    async def _entities_of(self, tenant: str) -> list[str]:
        """The entities the tenant's connections sync (what an application may subscribe to)."""
        rows = await self.daemon.store.call(connections.list_connections, self.daemon.store.keyring)
        names: set[str] = set()
        for row in rows:
            if row.tenant == tenant:  # the entities each connection syncs (its `entities` option, or all)
                declared = [spec.name for spec in connector_class(row.provider).streams]
                names.update(row.options.get("entities") or declared)
        return sorted(names)

    async def _pick(self, tenant: str, wanted: list[str] | None) -> list[str]:
        known = await self._entities_of(tenant)
        if not known:
            raise AdminError(ErrorCode.NOT_FOUND, f"tenant {tenant!r} has no connections")
        if wanted is None:
            return known
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise AdminError(ErrorCode.BAD_REQUEST, f"unknown entit{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(unknown)} for tenant {tenant}; valid: {', '.join(known)}")
        return sorted(set(wanted))

    async def _consumer(self, app: str, caller: Caller) -> dict[str, Any]:
        check_app(app)
        found = await self.daemon.store.call(outbox.consumers, app)
        if not found or not caller.sees(found[0]["tenant"]):
            raise AdminError(ErrorCode.NOT_FOUND, f"no consumer application named {app!r}")
        return found[0]

    @staticmethod
    def _since(text: str | None) -> datetime | None:
        if text is None:
            return None
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise AdminError(ErrorCode.BAD_REQUEST, f"since: not a date {text!r}; use ISO 8601, e.g. "
                             "2026-11-01 or 2026-11-01T08:00:00Z") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    # -- commands -------------------------------------------------------------------------------------

    async def add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        app, tenant = args["app"], args["tenant"]
        check_app(app)
        if not caller.sees(tenant):
            raise AdminError(ErrorCode.FORBIDDEN, f"you may not read tenant {tenant!r}'s events")
        events = self.events
        entities = await self._pick(tenant, args.get("entities"))
        if not await self.daemon.store.call(outbox.add_consumer, app, tenant, args.get("entities")):
            raise AdminError(ErrorCode.CONFLICT, f"a consumer application named {app!r} already exists")
        # groups first, at the streams' ends: the backfill's snapshot is taken after, so together
        # they miss nothing (a change in between arrives twice: dedup by event id)
        await events.create_groups(app, tenant, entities)
        backfill = None
        if not args.get("skip_history"):
            backfill = await self.daemon.store.call(outbox.create_backfill, app, args.get("entities"), None)
            events.backfills.wake()
        return {"app": app, "tenant": tenant, "entities": entities, "backfill_id": backfill,
                "streams": [events.config.stream.format(tenant=tenant, entity=e) for e in entities],
                "history_streams": [events.config.history_stream.format(tenant=tenant, entity=e, app=app)
                                    for e in entities]}

    async def list(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        rows = await self.daemon.store.call(outbox.consumers)
        return [{"app": r["app"], "tenant": r["tenant"], "entities": r["entities"],
                 "created_at": _iso(r["created_at"])} for r in rows if caller.sees(r["tenant"])]

    async def status(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        consumer = await self._consumer(args["app"], caller)
        events = self.events
        app, tenant = consumer["app"], consumer["tenant"]
        entities = consumer["entities"] or await self._entities_of(tenant)
        counts = await self.daemon.store.call(outbox.tenant_entities, tenant)
        live = await self.daemon.store.call(outbox.backfills, app, live=True)
        per_entity = {}
        for entity in entities:
            group = await events.streams.group(events.config.stream.format(tenant=tenant, entity=entity), app)
            history = await events.streams.group(
                events.config.history_stream.format(tenant=tenant, entity=entity, app=app), app)
            per_entity[entity] = {"records": counts.get(entity, 0), "read": group.get("read"),
                                  "pending": group.get("pending"), "lag": group.get("lag"),
                                  "history_pending": history.get("pending"), "history_lag": history.get("lag")}
        all_backfills = await self.daemon.store.call(outbox.backfills, app)
        return {"app": app, "tenant": tenant, "entities": per_entity,
                "backfill": _backfill_json(live[0]) if live else None,
                "backfill_needed": not all_backfills,
                "last_backfill": _backfill_json(all_backfills[-1]) if all_backfills else None}

    async def backfill(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        consumer = await self._consumer(args["app"], caller)
        since = self._since(args.get("since"))
        wanted = args.get("entities")
        entities = await self._pick(consumer["tenant"], wanted or consumer["entities"])
        if args.get("dry_run"):
            counts = await self.daemon.store.call(outbox.backfill_counts, consumer["tenant"], entities, since)
            sample = await self.daemon.store.call(outbox.backfill_sample, consumer["tenant"], entities, since)
            return {"app": consumer["app"], "dry_run": True,
                    "entities": {e: {"count": counts.get(e, 0)} for e in entities},
                    "sample": [{"connection": s["connection"], "entity": s["entity"], "external_id": s["external_id"],
                                "version": s["version"], "first_seen_at": _iso(s["first_seen_at"]),
                                "changed_at": _iso(s["changed_at"])} for s in sample]}
        events = self.events
        backfill_id = await self.daemon.store.call(outbox.create_backfill, consumer["app"], entities, since)
        events.backfills.wake()
        if backfill_id < 0:
            return {"backfill_id": -backfill_id, "created": False}
        return {"backfill_id": backfill_id, "created": True}

    async def _control(self, args: dict[str, Any], caller: Caller, status: str) -> dict[str, Any]:
        consumer = await self._consumer(args["app"], caller)
        live = await self.daemon.store.call(outbox.backfills, consumer["app"], live=True)
        if not live:
            raise AdminError(ErrorCode.CONFLICT, f"{consumer['app']} has no backfill queued or running")
        await self.daemon.store.call(outbox.save_backfill, live[0]["id"], status=status)
        self.events.backfills.wake()
        return {"backfill_id": live[0]["id"], "status": status}

    async def pause(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, "paused")

    async def resume(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, "running")

    async def cancel(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, "cancelled")

    async def remove(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        consumer = await self._consumer(args["app"], caller)
        app, tenant = consumer["app"], consumer["tenant"]
        entities = consumer["entities"] or await self._entities_of(tenant)
        await self.daemon.store.call(outbox.remove_consumer, app)
        if self.daemon.events is not None:
            await self.daemon.events.destroy_groups(app, tenant, entities)
        return {"removed": app}


def _backfill_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "status": row["status"], "entities": row["entities"], "since": _iso(row["since"]),
            "progress": row["progress"], "error": row["error"], "created_at": _iso(row["created_at"]),
            "finished_at": _iso(row["finished_at"])}
