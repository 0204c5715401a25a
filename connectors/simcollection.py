"""The record half every provider simulator shares: a simulated collection, paging, and the test contract.

`Collection` keeps one kind of record by id, with the two orders listings walk (ids ascending, and
(modified stamp, id) ascending) so that keyset and `modified_after` paging over 100,000 records
stays a bisect.  `RecordSimulator` is the clock, the fake data and the test contract
(`Simulator.count/mutate/corrupt/random_changes`), driven by one `Entity` declaration per entity
instead of four methods per simulator.
"""

from __future__ import annotations

import bisect
import math
import random
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from freshd.connectors.cursors import iso
from freshd.connectors.simulator import FakeData, Request

__all__ = ["Collection", "Entity", "RecordSimulator", "iso", "link_header", "page_count", "random_churn",
           "seed_times"]


class Collection:
    """Records of one kind by id, indexed by id and by their modified stamp (a sortable text field)."""

    def __init__(self, name: str, stamp: str) -> None:
        self.name, self.stamp = name, stamp
        self.docs: dict[int, Any] = {}  # id -> record (as `encode` stores it)
        self.ids: list[int] = []  # ascending
        self.by_modified: list[tuple[str, int]] = []  # ascending (stamp, id)
        self.stamps: dict[int, str] = {}
        self.next_id = 1
        self.version = 0  # bumped by every put and remove: what a cached listing was computed from

    def encode(self, record: dict[str, Any]) -> Any:
        """What `docs` keeps of a record (the record itself; WooCommerce keeps its JSON)."""
        return record

    def get(self, rid: int) -> dict[str, Any]:
        return self.docs[rid]  # type: ignore[no-any-return]

    def put(self, record: dict[str, Any]) -> None:
        rid = int(record["id"])
        self.version += 1
        if rid in self.docs:
            self.by_modified.remove((self.stamps[rid], rid))
        else:
            bisect.insort(self.ids, rid)
        self.docs[rid] = self.encode(record)
        self.stamps[rid] = record[self.stamp]
        bisect.insort(self.by_modified, (record[self.stamp], rid))
        self.next_id = max(self.next_id, rid + 1)

    def remove(self, rid: int) -> None:
        self.version += 1
        self.by_modified.remove((self.stamps.pop(rid), rid))
        self.ids.remove(rid)
        del self.docs[rid]

    def modified_between(self, after: str | None = None, before: str | None = None) -> list[int]:
        """Ids with after < stamp < before (None: unbounded), by stamp."""
        lo = bisect.bisect_right(self.by_modified, (after, math.inf)) if after else 0
        hi = bisect.bisect_left(self.by_modified, (before, -1)) if before else len(self.by_modified)
        return [rid for _, rid in self.by_modified[lo:hi]]

    def modified_from(self, bound: str | None) -> Iterator[int]:
        """Ids with stamp >= bound, by stamp."""
        start = bisect.bisect_left(self.by_modified, (bound, -1)) if bound is not None else 0
        return (rid for _, rid in self.by_modified[start:])

    def ids_from(self, bound: Any) -> list[int]:
        """Ids >= bound (an int; anything else: all), ascending."""
        return self.ids[bisect.bisect_left(self.ids, bound) if isinstance(bound, int) else 0:]


def seed_times(rng: random.Random, count: int, now: datetime, *, history: timedelta, span: timedelta,
               drift: timedelta, latest: datetime) -> Iterator[tuple[datetime, datetime]]:
    """`count` (created, modified) pairs: created spread over `span` from `now - history`, modified up
    to `drift` later but never after `latest` (one rng draw each, made as the pair is taken)."""
    start, step = now - history, span / max(count, 1)
    for i in range(count):
        created = start + step * i
        yield created, min(created + timedelta(seconds=rng.randint(0, int(drift.total_seconds()))), latest)


def page_count(total: int, size: int) -> int:
    return math.ceil(total / size) if total else 0


def link_header(request: Request, query: list[tuple[str, str]], page: int, pages: int,
                rels: Sequence[str]) -> list[tuple[str, str]]:
    """The RFC 8288 `Link` header of a page-numbered listing at `request`'s URL (none without a link),
    relations in `rels` order (first/last only when there is more than one page)."""
    base = f"{request.scheme}://{request.host}{request.path}"
    numbers = {"first": 1, "prev": page - 1, "next": page + 1, "last": pages}
    links = []
    for rel in rels:
        if 1 <= numbers[rel] <= pages and not (rel in ("first", "last") and pages <= 1):
            links.append(f'<{base}?{urllib.parse.urlencode([*query, ("page", str(numbers[rel]))])}>; rel="{rel}"')
    return [("link", ", ".join(links))] if links else []


def random_churn(
    rng: random.Random,
    count: int,
    resources: tuple[str, ...] | list[str],
    *,
    ids: Callable[[str], list[Any]],
    create: Callable[[str], object],
    update: Callable[[str, Any], object],
    delete: Callable[[str, Any], object],
) -> dict[str, int]:
    """`count` random changes (20 % creates, 70 % updates, 10 % deletes), deterministic for `rng`."""
    done = {"created": 0, "updated": 0, "deleted": 0}
    for _ in range(count):
        resource = rng.choice(resources)
        existing = ids(resource)
        roll = rng.random()
        if roll < 0.2 or not existing:
            create(resource)
            done["created"] += 1
        elif roll < 0.9:
            update(resource, rng.choice(existing))
            done["updated"] += 1
        else:
            delete(resource, rng.choice(existing))
            done["deleted"] += 1
    return done


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity as the test contract changes it."""

    live: Callable[[], list[int]]  # ids a complete sync ends with, ascending
    create: Callable[[], dict[str, Any]]
    update: Callable[..., object]  # update(id, **fields)
    delete: Callable[[int], object]
    touch: str  # the field mutate() changes
    corrupt: str  # the text field corrupt() breaks
    change: Callable[[int], dict[str, Any]]  # random_changes: the fields one update of this id sets


class RecordSimulator:
    """The clock, the fake data, collection-backed create/update/delete and the test contract.

    A simulator starts here (the clock, the fake data), then sets `collections` and `entities`;
    collection-backed ones define `_make` (a new record) and `_touched` (the fields a save moves)."""

    token_requests = 0  # tokens issued (key-based auth: 0 forever)
    collections: dict[str, Collection]
    entities: dict[str, Entity]
    churned: tuple[str, ...] = ()  # random_changes picks among these (default: every entity)

    def __init__(self, seed: int, clock: Callable[[], datetime] | None) -> None:
        """Fake data drawn from `seed` (the same seed, the same data), and the clock (None: the wall clock)."""
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fake = FakeData(seed)

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def _make(self, name: str, rid: int, created: datetime, modified: datetime) -> dict[str, Any]:
        raise NotImplementedError

    def _touched(self, name: str, moment: datetime) -> dict[str, Any]:
        raise NotImplementedError

    def _put(self, name: str, record: dict[str, Any]) -> None:
        self.collections[name].put(record)

    def _seed(self, counts: dict[str, int], now: datetime, **spread: Any) -> None:
        for name, count in counts.items():
            for created, modified in seed_times(self.fake.rng, count, now, **spread):
                self._put(name, self._make(name, self.collections[name].next_id, created, modified))

    def create(self, name: str, /, **fields: Any) -> dict[str, Any]:
        now = self._now()
        record = {**self._make(name, self.collections[name].next_id, now, now), **fields}
        self._put(name, record)
        return record

    def update(self, name: str, rid: int, /, **fields: Any) -> dict[str, Any]:
        record = {**self.collections[name].get(rid), **fields, **self._touched(name, self._now())}
        self._put(name, record)
        return record

    def delete(self, name: str, rid: int) -> dict[str, Any]:
        record = self.collections[name].get(rid)
        self.collections[name].remove(rid)
        return record

    def entity(self, name: str, *, touch: str, corrupt: str, change: Callable[[int], dict[str, Any]],
               live: Callable[[int], bool] | None = None) -> Entity:
        """The declaration of a collection-backed entity; `live(id)` says which records a sync ends with."""
        coll = self.collections[name]

        def live_ids() -> list[int]:
            return list(coll.ids) if live is None else [rid for rid in coll.ids if live(rid)]

        return Entity(live_ids, lambda: self.create(name), lambda rid, **f: self.update(name, rid, **f),
                      lambda rid: self.delete(name, rid), touch, corrupt, change)

    # --- the test contract (freshd.connectors.simulator.Simulator) --------------------------------

    def count(self, entity: str) -> int:
        return len(self.entities[entity].live())

    def mutate(self, entity: str) -> dict[str, str | None]:
        """One create, one update (the first live record), one delete (the last)."""
        spec = self.entities[entity]
        live = spec.live()
        updated, deleted = live[0], live[-1]
        spec.update(updated, **{spec.touch: f"changed {self._now().isoformat()}"})
        spec.delete(deleted)
        created = spec.create()
        return {"created": str(created["id"]), "updated": str(updated), "deleted": str(deleted)}

    def corrupt(self, entity: str) -> str:
        spec = self.entities[entity]
        live = spec.live()
        rid = live[len(live) // 2]
        spec.update(rid, **{spec.corrupt: "bad\u0000byte"})
        return str(rid)

    def random_changes(self, count: int) -> dict[str, int]:
        """`count` random creates, updates and deletes (deterministic for the seed)."""
        entities = self.entities
        return random_churn(self.fake.rng, count, self.churned or tuple(entities),
                            ids=lambda e: entities[e].live(), create=lambda e: entities[e].create(),
                            update=lambda e, rid: entities[e].update(rid, **entities[e].change(rid)),
                            delete=lambda e, rid: entities[e].delete(rid))
