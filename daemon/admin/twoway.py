"""Admin commands for two-way sync (docs/TWO-WAY.md).

    pairs.add {name, left, right, entities?, spec?}     declare a pair (the shipped mappings, or spec)
    pairs.list                                          pairs, their entities and links
    twoway.start {pair, entities?, batch_size?, batch_delay?, dry_run?}    queue a run: its id at once
    twoway.status {id} / twoway.runs {pair?}            a run's state, percent, ETA, queue, conflicts, writes
    twoway.pause|resume|cancel {id}                     at the run's next batch boundary
    twoway.log {id}                                     the run's writes (the idempotency log) and activity
    conflicts.list {pair?, type?, unresolved?} / conflicts.show {id}
    conflicts.resolve {id, take?, values?}              write the chosen values, audit, close

Bad input (an unknown pair, connection or entity, a bad mapping, a bad resolution) is refused
with a clear error and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from freshd.admin.protocol import Caller, ErrorCode
from freshd.errors import AdminError, ConfigError
from freshd.store import activity, connections
from freshd.store import twoway as db
from freshd.store.twoway import ConflictType, RunState
from freshd.twoway.declarations import build_pair, entities_spec
from freshd.twoway.mapping import Side
from freshd.twoway.service import Resolution, ResolutionRefused, mapping_of

if TYPE_CHECKING:
    from freshd.admin.host import AdminHost
    from freshd.twoway.service import TwoWay

Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def run_view(run: dict[str, Any], queue: dict[str, int], conflicts: dict[str, Any]) -> dict[str, Any]:
    """A run as `twoway status --json` shows it."""
    total, processed = queue["total"], queue["processed"]
    state = run["state"]
    percent = 100.0 if state == RunState.DONE.value or (total and processed >= total) else (
        round(100.0 * processed / total, 1) if total else 0.0)
    eta: float | None = None
    if state == RunState.PROCESSING.value and run["started_at"] is not None and processed and total > processed:
        elapsed = (datetime.now(UTC) - run["started_at"]).total_seconds()
        eta = round(elapsed / processed * (total - processed), 1)
    elif state in (RunState.DONE.value, RunState.PARTIAL.value, RunState.CANCELLED.value, RunState.FAILED.value):
        eta = 0.0
    return {
        "id": run["id"], "pair": run["pair"], "tenant": run["tenant"], "state": state, "phase": run["phase"],
        "entities": list(run["entities"]), "dry_run": run["dry_run"], "percent": percent, "eta_seconds": eta,
        "queue": {k: queue[k] for k in ("total", "processed", "failed", "skipped", "pending")} | {
            "conflict": queue["conflict"], "done": queue["done"]},
        "conflicts": conflicts, "writes": run["writes"], "plan": run["plan"], "options": run["options"],
        "requested": run["requested"], "error": run["error"], "sync_jobs": list(run["sync_jobs"]),
        "created_at": _iso(run["created_at"]), "started_at": _iso(run["started_at"]),
        "finished_at": _iso(run["finished_at"]),
    }


def conflict_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "pair": row["pair"], "run_id": row["run_id"], "last_run_id": row["last_run_id"],
        "type": row["type"], "entity": row["entity"],
        "left_id": row["left_id"], "right_id": row["right_id"], "fields": list(row["fields"]), "base": row["base"],
        "left": row["left_values"], "right": row["right_values"], "message": row["message"],
        "status": row["status"], "resolution": row["resolution"], "created_at": _iso(row["created_at"]),
        "resolved_at": _iso(row["resolved_at"]),
    }


class TwoWayCommands:
    def __init__(self, daemon: AdminHost) -> None:
        self.daemon = daemon

    def handlers(self) -> dict[str, Handler]:
        return {
            "pairs.add": self.pairs_add, "pairs.list": self.pairs_list,
            "twoway.start": self.start, "twoway.status": self.status, "twoway.runs": self.runs,
            "twoway.pause": self.pause, "twoway.resume": self.resume, "twoway.cancel": self.cancel,
            "twoway.log": self.log,
            "conflicts.list": self.conflicts_list, "conflicts.show": self.conflicts_show,
            "conflicts.resolve": self.conflicts_resolve,
        }

    @property
    def service(self) -> TwoWay:
        service = self.daemon.twoway
        if service is None:
            raise AdminError(ErrorCode.UNAVAILABLE, "two-way sync is not running in this daemon")
        return service

    async def _pair(self, name: str, caller: Caller) -> db.PairRow:
        pair = await self.daemon.store.call(db.get_pair, name)
        if pair is None or not caller.sees(pair.tenant):
            raise AdminError(ErrorCode.NOT_FOUND, f"no pair {name!r} (see `freshctl pairs list`)")
        return pair

    async def _run(self, run_id: int, caller: Caller) -> dict[str, Any]:
        run = await self.daemon.store.call(db.get_run, run_id)
        if run is None or not caller.sees(run["tenant"]):
            raise AdminError(ErrorCode.NOT_FOUND, f"no two-way run {run_id} (see `freshctl twoway runs`)")
        return run

    async def _view(self, run_id: int) -> dict[str, Any]:
        def read(conn: Any) -> dict[str, Any]:
            run = db.get_run(conn, run_id)
            assert run is not None
            return run_view(run, db.queue_stats(conn, run_id), db.conflict_stats(conn, run_id))
        view: dict[str, Any] = await self.daemon.store.call(read)
        return view

    # -- pairs ---------------------------------------------------------------------------------

    async def pairs_add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = args["name"]
        keyring = self.daemon.store.keyring
        rows = {}
        for side in ("left", "right"):
            row = await self.daemon.store.call(connections.get_connection, args[side], keyring)
            if row is None or not caller.sees(row.tenant):
                raise AdminError(ErrorCode.NOT_FOUND, f"no connection {args[side]!r} (the pair's {side})")
            rows[side] = row
        left, right = rows["left"], rows["right"]
        if left.id == right.id:
            raise AdminError(ErrorCode.BAD_REQUEST, "a pair joins two different connections")
        if left.tenant != right.tenant:
            raise AdminError(ErrorCode.BAD_REQUEST, f"a pair joins connections of one tenant ({left.name} is "
                             f"{left.tenant}'s, {right.name} is {right.tenant}'s)")
        existing = await self.daemon.store.call(db.get_pair, name)
        if existing is not None and existing.source == "config":
            raise AdminError(ErrorCode.CONFLICT, f"pair {name} is declared in the config file: change it there")
        if existing is not None and (existing.left_id, existing.right_id) != (left.id, right.id) \
                and await self.daemon.store.call(db.pair_has_links, name):
            raise AdminError(ErrorCode.CONFLICT, f"pair {name} already links records of {existing.left} and "
                             f"{existing.right}: pick another name")
        providers = (left.provider, right.provider)
        spec = args.get("spec") or entities_spec(args.get("entities"), providers)
        if args.get("entities") and args.get("spec"):
            raise AdminError(ErrorCode.BAD_REQUEST, "give entities or spec, not both")
        candidate = db.PairRow(name, left.tenant, left.id, right.id, left.name, right.name, left.provider,
                               right.provider, spec, "admin")
        try:
            mapping = mapping_of(candidate)
        except ConfigError as exc:
            raise AdminError(ErrorCode.BAD_REQUEST, f"pair {name}: {exc}") from None
        for entity in mapping.entities.values():
            for side, row in ((Side.LEFT, left), (Side.RIGHT, right)):
                if entity.writes_to(side) and not _writable(row.provider):
                    raise AdminError(ErrorCode.BAD_REQUEST, f"{entity.name} writes to {row.name}, but {row.provider} "
                                     "does not accept writes")

        def add(conn: Any) -> db.PairRow:
            stored = db.upsert_pair(conn, name=name, tenant=left.tenant, left_id=left.id, right_id=right.id,
                                    spec=spec, source="admin")
            activity.log_activity(conn, "twoway.pair_added", f"pair {name} ({left.name} <-> {right.name}) added by "
                                  f"{caller.who}", details={"entities": sorted(mapping.entities)})
            return stored

        stored = await self.daemon.store.call(add)
        if self.daemon.membership is not None:
            self.daemon.membership.wake()  # a pair's connections run on one member: the next round moves them
        return _pair_view(stored, sorted(mapping.entities), 0)

    async def pairs_list(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        def read(conn: Any) -> list[tuple[db.PairRow, int]]:
            counts = {str(r["pair"]): int(str(r["n"])) for r in conn.execute(
                "SELECT pair, count(*) AS n FROM links GROUP BY pair").fetchall()}
            return [(p, counts.get(p.name, 0)) for p in db.list_pairs(conn)]

        out = []
        for pair, links in await self.daemon.store.call(read):
            if caller.sees(pair.tenant):
                out.append(_pair_view(pair, sorted(pair.spec.get("entities") or {}), links))
        return out

    # -- runs ----------------------------------------------------------------------------------

    async def start(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        pair = await self._pair(args["pair"], caller)
        try:
            mapping = mapping_of(pair)
        except ConfigError as exc:
            raise AdminError(ErrorCode.BAD_REQUEST, f"pair {pair.name}: {exc}") from None
        wanted = args.get("entities") or sorted(mapping.entities)
        unknown = sorted(set(wanted) - set(mapping.entities))
        if unknown:
            noun = "entity" if len(unknown) == 1 else "entities"
            raise AdminError(ErrorCode.BAD_REQUEST, f"pair {pair.name} has no {noun} {', '.join(unknown)}; "
                             f"it has {', '.join(sorted(mapping.entities))}")
        options: dict[str, Any] = {}
        if args.get("batch_size") is not None:
            options["batch_size"] = args["batch_size"]
        if args.get("batch_delay") is not None:
            options["batch_delay"] = float(args["batch_delay"])
        ordered = [e for e in mapping.entities if e in wanted]

        def create(conn: Any) -> tuple[dict[str, Any], bool]:
            run, created = db.create_run(conn, pair=pair.name, tenant=pair.tenant, entities=ordered, options=options,
                                         dry_run=bool(args.get("dry_run")))
            if created:
                activity.log_activity(conn, "twoway.run_queued", f"run {run['id']} of {pair.name} queued by "
                                      f"{caller.who}", run_id=run["id"],
                                      details={"entities": ordered, "options": options,
                                               "dry_run": bool(args.get("dry_run"))})
            return run, created

        run, created = await self.daemon.store.call(create)
        if not created:
            raise AdminError(ErrorCode.CONFLICT, f"pair {pair.name} has a live run ({run['id']}, {run['state']}): "
                             f"wait for it, or `freshctl twoway cancel {run['id']}`")
        self.service.nudge()
        return await self._view(int(run["id"]))

    async def status(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        await self._run(args["id"], caller)
        return await self._view(args["id"])

    async def runs(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        if args.get("pair") is not None:
            await self._pair(args["pair"], caller)
        found = await self.daemon.store.call(db.list_runs, pair=args.get("pair"), limit=args.get("limit") or 50)
        return [await self._view(int(r["id"])) for r in found if caller.sees(r["tenant"])]

    async def pause(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        run = await self._run(args["id"], caller)

        def pause(conn: Any) -> None:
            if run["state"] == RunState.QUEUED.value:
                db.set_run_state(conn, run["id"], RunState.PAUSED)
            elif run["state"] == RunState.PROCESSING.value:
                db.update_run(conn, run["id"], requested="pause")
            else:
                raise AdminError(ErrorCode.CONFLICT, f"run {run['id']} is {run['state']}: only a queued or "
                                 "processing run can be paused")
            activity.log_activity(conn, "twoway.pause_requested", f"run {run['id']} pause requested by {caller.who}",
                                  run_id=run["id"])

        await self.daemon.store.call(pause)
        return await self._view(run["id"])

    async def resume(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        run = await self._run(args["id"], caller)

        def resume(conn: Any) -> None:
            if run["state"] == RunState.PROCESSING.value and run["requested"] == "pause":
                db.update_run(conn, run["id"], requested=None)  # not paused yet: the request is withdrawn
            elif run["state"] == RunState.PAUSED.value:
                db.set_run_state(conn, run["id"], RunState.QUEUED)
            else:
                raise AdminError(ErrorCode.CONFLICT, f"run {run['id']} is {run['state']}, not paused")
            activity.log_activity(conn, "twoway.resumed", f"run {run['id']} resumed by {caller.who}", run_id=run["id"])

        await self.daemon.store.call(resume)
        self.service.nudge()
        return await self._view(run["id"])

    async def cancel(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        run = await self._run(args["id"], caller)

        def cancel(conn: Any) -> None:
            if run["state"] in (RunState.QUEUED.value, RunState.PAUSED.value):
                db.skip_pending(conn, run["id"], "run cancelled")
                db.set_run_state(conn, run["id"], RunState.CANCELLED, error="cancelled by request")
            elif run["state"] == RunState.PROCESSING.value:
                db.update_run(conn, run["id"], requested="cancel")
            else:
                raise AdminError(ErrorCode.CONFLICT, f"run {run['id']} is already {run['state']}")
            activity.log_activity(conn, "twoway.cancel_requested", f"run {run['id']} cancel requested by "
                                  f"{caller.who}", run_id=run["id"])

        await self.daemon.store.call(cancel)
        return await self._view(run["id"])

    async def log(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        run = await self._run(args["id"], caller)

        def read(conn: Any) -> dict[str, Any]:
            writes = db.write_log(conn, run_id=run["id"], limit=args.get("limit") or 100)
            events = activity.recent_activity(conn, run_id=run["id"], limit=args.get("limit") or 100)
            return {"writes": [{**w, "created_at": _iso(w["created_at"]), "settled_at": _iso(w["settled_at"])}
                               for w in writes],
                    "activity": [{**e, "at": _iso(e["at"])} for e in events]}

        result: dict[str, Any] = await self.daemon.store.call(read)
        return result

    # -- conflicts -----------------------------------------------------------------------------

    async def conflicts_list(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        if args.get("pair") is not None:
            await self._pair(args["pair"], caller)
        kind = args.get("type")
        if kind is not None and kind not in {t.value for t in ConflictType}:
            raise AdminError(ErrorCode.BAD_REQUEST, f"unknown conflict type {kind!r}; types: "
                             f"{', '.join(t.value for t in ConflictType)}")
        rows = await self.daemon.store.call(db.list_conflicts, pair=args.get("pair"), type=kind,
                                            unresolved=bool(args.get("unresolved")), limit=args.get("limit") or 200)
        pairs = {p.name: p.tenant for p in await self.daemon.store.call(db.list_pairs)}
        return [conflict_view(r) for r in rows if caller.sees(pairs.get(r["pair"], ""))]

    async def _conflict(self, conflict_id: int, caller: Caller) -> dict[str, Any]:
        row = await self.daemon.store.call(db.get_conflict, conflict_id)
        if row is not None:
            await self._pair(row["pair"], caller)
            return row
        raise AdminError(ErrorCode.NOT_FOUND, f"no conflict {conflict_id} (see `freshctl conflicts`)")

    async def conflicts_show(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return conflict_view(await self._conflict(args["id"], caller))

    async def conflicts_resolve(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        await self._conflict(args["id"], caller)
        take = args.get("take")
        if take is not None and take not in ("left", "right"):
            raise AdminError(ErrorCode.BAD_REQUEST, f"take must be left or right, got {take!r}")
        values = args.get("values") or {}
        if take is None and not values:
            raise AdminError(ErrorCode.BAD_REQUEST, "say what to keep: --take left|right, or --value FIELD=JSON ...")
        try:
            resolved = await self.service.resolve(args["id"], Resolution(take, values, caller.who))
        except ResolutionRefused as exc:
            raise AdminError(ErrorCode.CONFLICT, str(exc)) from None
        except ConfigError as exc:
            raise AdminError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return conflict_view(resolved)


def _writable(provider: str) -> bool:
    from freshd.connectors.base import connector_class

    cls = connector_class(provider)
    return callable(getattr(cls, "write", None)) and callable(getattr(cls, "find_created", None))


def _pair_view(pair: db.PairRow, entities: list[str], links: int) -> dict[str, Any]:
    return {"name": pair.name, "tenant": pair.tenant, "left": pair.left, "right": pair.right,
            "left_provider": pair.left_provider, "right_provider": pair.right_provider, "entities": entities,
            "source": pair.source, "links": links}


__all__ = ["TwoWayCommands", "build_pair", "conflict_view", "run_view"]
