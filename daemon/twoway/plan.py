"""What a run must do: the pairs of records that need work, decided from the store alone.

For each entity of the pair:
- a linked pair of records goes in the queue when the merge has something to write or a field to
  report; when both sides simply agree on new values, only the link's base moves on;
- unlinked records are matched by the natural key: exactly one record on each side with the same
  key are linked (their first merge has no base); a key held by several records, or by a record
  already linked to another, is a DuplicateKey conflict, never a second link;
- an unlinked record without a match is created on the other side (where the direction allows);
  records without a key value take no part (nothing could find them again).
Deletions are not propagated: a linked record gone from one side is left alone on the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from freshd.store.twoway import Link
from freshd.twoway.mapping import EntityMap, Side
from freshd.twoway.merge import Decision, merge
from freshd.twoway.transforms import Tables


@dataclass(slots=True)
class EntityPlan:
    entity: str
    items: list[tuple[str | None, str | None]] = field(default_factory=list)  # (left id, right id); None: create
    natural_links: list[tuple[str, str]] = field(default_factory=list)
    base_moves: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # agreed without writes
    duplicates: list[tuple[str | None, str | None, str]] = field(default_factory=list)  # (left, right, message)
    counts: dict[str, int] = field(default_factory=lambda: {
        "create_left": 0, "create_right": 0, "update_left": 0, "update_right": 0, "conflicts": 0,
        "duplicates": 0, "linked_by_key": 0, "unchanged": 0, "without_key": 0})

    def summary(self) -> dict[str, int]:
        return dict(self.counts)


def decide(entity: EntityMap, link: Link, left: Mapping[str, Any], right: Mapping[str, Any],
           tables: tuple[Tables, Tables]) -> Decision:
    """The merge of one linked pair of stored records."""
    return merge(entity, link.base, entity.common(Side.LEFT, left, tables[0]),
                 entity.common(Side.RIGHT, right, tables[1]),
                 left_modified=entity.modified(Side.LEFT, left), right_modified=entity.modified(Side.RIGHT, right))


def plan_entity(entity: EntityMap, left: Mapping[str, Mapping[str, Any]], right: Mapping[str, Mapping[str, Any]],
                links: list[Link], tables: tuple[Tables, Tables]) -> EntityPlan:
    plan = EntityPlan(entity.name)
    counts = plan.counts
    linked_left = {link.left_id for link in links}
    linked_right = {link.right_id for link in links}
    for link in links:
        lrec, rrec = left.get(link.left_id), right.get(link.right_id)
        if lrec is None or rrec is None or not entity.updates:
            continue  # gone on one side (not propagated), or a create-only entity
        decision = decide(entity, link, lrec, rrec, tables)
        if decision.writes or decision.mismatches:
            plan.items.append((link.left_id, link.right_id))
            counts["update_left"] += bool(decision.to_left)
            counts["update_right"] += bool(decision.to_right)
            counts["conflicts"] += bool(decision.mismatches)
        elif decision.base != link.base:
            plan.base_moves.append((link.left_id, link.right_id, decision.base))
        else:
            counts["unchanged"] += 1

    key = next(f for f in entity.fields if f.name == entity.key)

    def keys(records: Mapping[str, Mapping[str, Any]], side: Side, tab: Tables) -> dict[Any, list[str]]:
        out: dict[Any, list[str]] = {}
        for rid, record in records.items():
            value = key.side(side).read(record, tab)
            if value is not None:
                out.setdefault(value, []).append(rid)
        return out

    left_keys, right_keys = keys(left, Side.LEFT, tables[0]), keys(right, Side.RIGHT, tables[1])
    for value in sorted(set(left_keys) | set(right_keys), key=str):
        lids, rids = left_keys.get(value, []), right_keys.get(value, [])
        free_l = [i for i in lids if i not in linked_left]
        free_r = [i for i in rids if i not in linked_right]
        if not free_l and not free_r:
            continue
        if len(free_l) == 1 and len(free_r) == 1 and len(lids) == 1 and len(rids) == 1:
            plan.natural_links.append((free_l[0], free_r[0]))
            plan.items.append((free_l[0], free_r[0]))
            counts["linked_by_key"] += 1
            continue
        if len(lids) > 1 or len(rids) > 1 or (free_l and rids) or (free_r and lids):
            where = "left" if len(lids) > 1 else "right" if len(rids) > 1 else "both sides"
            message = (f"{entity.key} {value!r} is held by {len(lids)} left and {len(rids)} right record(s) "
                       f"({where}): not linked; merge or rename the duplicates, then run again")
            plan.duplicates.append((free_l[0] if free_l else None, free_r[0] if free_r else None, message))
            counts["duplicates"] += 1
            continue
        for lid in free_l:
            if entity.creates and entity.writes_to(Side.RIGHT):
                plan.items.append((lid, None))
                counts["create_right"] += 1
        for rid in free_r:
            if entity.creates and entity.writes_to(Side.LEFT):
                plan.items.append((None, rid))
                counts["create_left"] += 1
    keyed_l = {i for ids in left_keys.values() for i in ids}
    keyed_r = {i for ids in right_keys.values() for i in ids}
    counts["without_key"] = (sum(1 for r in left if r not in linked_left and r not in keyed_l)
                             + sum(1 for r in right if r not in linked_right and r not in keyed_r))
    return plan
