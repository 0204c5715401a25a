"""Settling a batch: what became of each item, recorded in one transaction.

A batch's writes are settled in the idempotency log (an ambiguous create stays intended: it is
looked up before it is ever sent again), the records the providers answered are stored, links
are made for creates and their agreed base moved on for updates, and every item ends done,
skipped, failed or in conflicts.  Refusals go to conflicts: DuplicateKey (a create linked to the
record holding the key when the provider names it), ValidationError (the provider's message),
AuthError; failures that may pass but outlived their attempts are RetryExhausted.
"""

from __future__ import annotations

from typing import Any

from freshd import metrics
from freshd.errors import (
    Ambiguous,
    AuthExpired,
    DuplicateKey,
    ItemError,
    PermanentError,
    ProviderError,
    ReauthRequired,
    Rejected,
    TransientError,
)
from freshd.store import activity, records
from freshd.store import twoway as db
from freshd.store.db import Connection, check_fence
from freshd.store.twoway import ConflictType, ItemStatus, PairRow
from freshd.twoway.mapping import Side
from freshd.twoway.writepath import Gateway, ItemWork, written_pages


class Settler:
    """The settling of a run's batches, and the conflicts the run records (counted for the
    metrics once the batch that recorded them commits)."""

    def __init__(self, gateway: Gateway, pair: PairRow, run_id: int) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.pair = pair
        self.run_id = run_id
        self._conflicts: list[str] = []  # conflict types recorded by the batch being settled

    async def settle(self, works: list[ItemWork], *, seconds: float) -> None:
        """The batch's outcome in one transaction: writes settled, links and bases moved on, items
        and conflicts recorded."""
        pair = self.pair
        counted = {"left": 0, "right": 0}

        stored = self._written_pages(works)
        self._conflicts = []

        def settle(conn: Connection) -> None:
            for connection in (pair.left, pair.right):
                fence = self.gateway.fence(connection)
                if fence is not None:
                    check_fence(conn, fence)
            for page in stored:  # what was written is what the store now knows of those records
                records.write_page(conn, page)
            for work in works:
                self._settle_item(conn, work, counted)
            for side, n in counted.items():
                if n:
                    db.count_write(conn, self.run_id, side, n)
            activity.log_activity(
                conn, "twoway.batch", f"run {self.run_id} of {pair.name}: batch of {len(works)} item(s)",
                run_id=self.run_id, details={"first": works[0].seq, "last": works[-1].seq, "writes": counted,
                                             "seconds": round(seconds, 3)})

        await self.store.call(settle)
        metrics.twoway_batch_seconds.observe(seconds)
        for kind in self._conflicts:
            metrics.twoway_conflicts_total.labels(kind).inc()
        for side, n in counted.items():
            if n:
                provider = pair.left_provider if side == "left" else pair.right_provider
                metrics.twoway_writes_total.labels(provider).inc(n)
        for work in works:
            metrics.twoway_items_total.labels(work.outcome or "done").inc()

    def _written_pages(self, works: list[ItemWork]) -> list[records.PageWrite]:
        """The records as the providers answered the writes, stored like pulled pages.  A provider's
        modification times have whole seconds: a write and the pull after it can fall in the same
        second, so the pull alone could keep the version from before the write."""
        return written_pages(self.pair, works, events=self.gateway.events)

    def _settle_item(self, conn: Connection, work: ItemWork, counted: dict[str, int]) -> None:
        self._settle_one(conn, work, counted)

    def _item(self, conn: Connection, work: ItemWork, status: ItemStatus, **values: Any) -> None:
        """db.settle_item, its status kept for the metrics."""
        work.outcome = status.value
        db.settle_item(conn, self.run_id, work.seq, status, **values)

    def conflict(self, conn: Connection, **values: Any) -> int:
        """db.record_conflict, counted for the metrics once the batch commits."""
        self._conflicts.append(values["type"].value)
        return db.record_conflict(conn, **values)

    def _settle_one(self, conn: Connection, work: ItemWork, counted: dict[str, int]) -> None:
        pair, entity = self.pair, work.entity
        if work.skip_reason is not None:
            self._item(conn, work, ItemStatus.SKIPPED, detail={"reason": work.skip_reason})
            return
        for side, planned in work.writes.items():
            written = work.written.get(side)
            error = work.errors.get(side)
            if side in work.written:
                target = written.external_id if written is not None else None
                db.settle_write(conn, planned.key, applied=True, target_id=target)
                if written is not None:
                    counted[side.value] += 1
            elif error is not None and not isinstance(error, Ambiguous):
                db.settle_write(conn, planned.key, applied=False, error=str(error))
            # an ambiguous create stays 'intended': it is looked up before it is ever sent again
        conflict = False
        if work.link is None:  # a create
            target = next(iter(work.writes), None)
            created = work.writes.get(target) if target else None
            if target is None or created is None:
                conflict = self._item_error(conn, work, next(iter(work.errors), None))
            elif target in work.written:
                written = work.written[target]
                if written is None:  # applied by an earlier attempt and settled then: the link exists
                    self._item(conn, work, ItemStatus.DONE, attempts=work.attempts)
                    return
                left_id = written.external_id if target is Side.LEFT else created.source_id
                right_id = created.source_id if target is Side.LEFT else written.external_id
                assert left_id is not None and right_id is not None
                if not db.save_link(conn, pair.name, entity.name, left_id=left_id, right_id=right_id,
                                    base=created.values, linked_by=f"created_{target.value}"):
                    self.conflict(conn, pair=pair.name, run_id=self.run_id, entity=entity.name,
                                  type=ConflictType.DUPLICATE_KEY, left_id=left_id, right_id=right_id,
                                  message="created, but one of the records is already linked to another")
                    conflict = True
                self._item(conn, work, ItemStatus.CONFLICT if conflict else ItemStatus.DONE,
                           left_id=left_id, right_id=right_id, attempts=work.attempts)
                return
            else:
                conflict = self._item_error(conn, work, target)
            return
        link, decision = work.link, work.decision
        assert decision is not None
        base = dict(link.base)
        for name, value in decision.base.items():
            failed = (name in decision.to_left and Side.LEFT not in work.written) or \
                     (name in decision.to_right and Side.RIGHT not in work.written)
            if not failed:
                base[name] = value
        db.save_link(conn, pair.name, entity.name, left_id=link.left_id, right_id=link.right_id, base=base,
                     linked_by="natural_key")
        for mismatch, rule in decision.settled:
            self.conflict(conn, pair=pair.name, run_id=self.run_id, entity=entity.name,
                          type=ConflictType.DATA_MISMATCH, left_id=link.left_id, right_id=link.right_id,
                          fields=[mismatch.field], base=_one(mismatch.field, mismatch.base, mismatch.has_base),
                          left={mismatch.field: mismatch.left}, right={mismatch.field: mismatch.right},
                          status="auto_resolved", resolution={"rule": rule.value})
        if decision.mismatches:
            fields = [m.field for m in decision.mismatches]
            self.conflict(
                conn, pair=pair.name, run_id=self.run_id, entity=entity.name, type=ConflictType.DATA_MISMATCH,
                left_id=link.left_id, right_id=link.right_id, fields=fields,
                base={m.field: m.base for m in decision.mismatches if m.has_base} if link.base else None,
                left={m.field: m.left for m in decision.mismatches},
                right={m.field: m.right for m in decision.mismatches},
                message="changed on both sides to different values")
            conflict = True
        else:
            db.close_stale_mismatch(conn, pair.name, entity.name, link.left_id, link.right_id)
        if work.errors:
            conflict = self._item_error(conn, work, next(iter(work.errors))) or conflict
            return
        self._item(conn, work, ItemStatus.CONFLICT if conflict else ItemStatus.DONE,
                   attempts=work.attempts)

    def _item_error(self, conn: Connection, work: ItemWork, side: Side | None) -> bool:
        """Record why an item's write failed, as the contract says; True: it waits in conflicts."""
        error = work.errors.get(side) if side is not None else None
        entity = work.entity
        if error is None:
            self._item(conn, work, ItemStatus.SKIPPED, attempts=work.attempts,
                       detail={"reason": "nothing to write"})
            return False
        kind, status = _conflict_type(error)
        values_side = side.other if side is not None else None
        planned = work.writes.get(side) if side is not None else None
        left_id, right_id = work.left_id, work.right_id
        if isinstance(error, DuplicateKey) and error.existing_id and work.link is None and side is not None \
                and planned is not None and planned.source_id is not None:
            # a create refused because the key is taken: link to the record holding it
            left_id = error.existing_id if side is Side.LEFT else planned.source_id
            right_id = planned.source_id if side is Side.LEFT else error.existing_id
            if db.save_link(conn, self.pair.name, entity.name, left_id=left_id, right_id=right_id, base={},
                            linked_by="natural_key"):
                self.conflict(conn, pair=self.pair.name, run_id=self.run_id, entity=entity.name,
                              type=ConflictType.DUPLICATE_KEY, left_id=left_id, right_id=right_id,
                              fields=[entity.key], message=str(error), status="auto_resolved",
                              resolution={"linked": error.existing_id})
                self._item(conn, work, ItemStatus.DONE, left_id=left_id, right_id=right_id,
                           attempts=work.attempts, detail={"linked_existing": error.existing_id})
                return False
        self.conflict(conn, pair=self.pair.name, run_id=self.run_id, entity=entity.name, type=kind,
                      left_id=left_id, right_id=right_id, fields=sorted(planned.values) if planned else [],
                      left=planned.values if planned and values_side is Side.LEFT else None,
                      right=planned.values if planned and values_side is Side.RIGHT else None,
                      message=f"{side} refused: {error}" if side else str(error))
        self._item(conn, work, status, attempts=work.attempts,
                   detail={"error": str(error), "side": side.value if side else None, "type": kind.value})
        return True


def _one(name: str, value: Any, present: bool) -> dict[str, Any] | None:
    return {name: value} if present else None


def _conflict_type(error: ProviderError) -> tuple[ConflictType, ItemStatus]:
    if isinstance(error, ReauthRequired | AuthExpired):
        return ConflictType.AUTH_ERROR, ItemStatus.CONFLICT
    if isinstance(error, DuplicateKey):
        return ConflictType.DUPLICATE_KEY, ItemStatus.CONFLICT
    if isinstance(error, TransientError):
        return ConflictType.RETRY_EXHAUSTED, ItemStatus.FAILED
    if isinstance(error, Rejected | ItemError | PermanentError):
        return ConflictType.VALIDATION_ERROR, ItemStatus.CONFLICT
    return ConflictType.VALIDATION_ERROR, ItemStatus.CONFLICT
