"""Pairs and their entities: the model the merge works on.

An entity of a pair maps one stream of the left connection to one stream of the right through
*common fields*.  Each field reads a value from each side's record (a path, or several paths
joined by a named transform, see freshd.twoway.transforms) and can write a value back as a
fragment of the provider's own shape.  The merge compares common values only, so `"Ann Lee"`
from WooCommerce's first and last name equals Odoo's `name`, and `"12.50"` equals `12.5`.
How a pair is declared and checked is freshd.twoway.declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from freshd.twoway.transforms import Tables, Transform


class Direction(StrEnum):
    BOTH = "both"
    LEFT_TO_RIGHT = "left_to_right"  # the left is the source of truth: right-side edits are overwritten
    RIGHT_TO_LEFT = "right_to_left"


class Rule(StrEnum):
    """How a field changed on both sides to different values (a DataMismatch) is settled."""

    MANUAL = "manual"  # a conflict for a person to resolve
    PREFER_LEFT = "prefer_left"
    PREFER_RIGHT = "prefer_right"
    NEWEST = "newest"  # the record modified last wins (manual when either time is unknown)


class Side(StrEnum):
    LEFT = "left"
    RIGHT = "right"

    @property
    def other(self) -> Side:
        return Side.RIGHT if self is Side.LEFT else Side.LEFT


@dataclass(frozen=True, slots=True)
class SideMap:
    """How one field sits in one side's records."""

    paths: tuple[str, ...]
    transform: Transform
    options: Mapping[str, Any] = field(default_factory=dict)
    null: Any = None  # what this provider writes for "nothing" ("" for WooCommerce, False for Odoo)

    def read(self, record: Mapping[str, Any], tables: Tables) -> Any:
        return self.transform.read([_get(record, path) for path in self.paths], self.options, tables)

    def write(self, value: Any, tables: Tables) -> dict[str, Any]:
        fragment: dict[str, Any] = {}
        for path, part in zip(self.paths, self.transform.write(value, self.options, tables), strict=True):
            _put(fragment, path, self.null if part is None else part)
        return fragment


def _get(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def deep_merge(into: dict[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in fragment.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
    return into


@dataclass(frozen=True, slots=True)
class FieldMap:
    name: str
    left: SideMap
    right: SideMap
    rule: Rule | None = None  # None: the entity's rule

    def side(self, side: Side) -> SideMap:
        return self.left if side is Side.LEFT else self.right


@dataclass(frozen=True, slots=True)
class EntityMap:
    name: str
    left_stream: str
    right_stream: str
    direction: Direction
    key: str  # the common field that links existing records the first time (email, SKU)
    fields: tuple[FieldMap, ...]
    rule: Rule = Rule.MANUAL
    creates: bool = True  # unlinked records are created on the other side (where the direction allows)
    updates: bool = True  # linked records are compared and updated (False: create only, e.g. orders)
    left_modified: str | None = None  # the path of each side's modified time (the `newest` rule)
    right_modified: str | None = None

    def stream(self, side: Side) -> str:
        return self.left_stream if side is Side.LEFT else self.right_stream

    def writes_to(self, side: Side) -> bool:
        if self.direction is Direction.BOTH:
            return True
        return (self.direction is Direction.LEFT_TO_RIGHT) == (side is Side.RIGHT)

    def common(self, side: Side, record: Mapping[str, Any], tables: Tables) -> dict[str, Any]:
        return {f.name: f.side(side).read(record, tables) for f in self.fields}

    def fragment(self, side: Side, values: Mapping[str, Any], tables: Tables) -> dict[str, Any]:
        """The provider-shaped body that sets these common values on `side`."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.name in values:
                deep_merge(out, f.side(side).write(values[f.name], tables))
        return out

    def modified(self, side: Side, record: Mapping[str, Any]) -> datetime | None:
        path = self.left_modified if side is Side.LEFT else self.right_modified
        return parse_time(_get(record, path)) if path else None

    def tables(self, side: Side) -> frozenset[str]:
        """Reference tables from the side's connector (the "links:" ones come from the store)."""
        return frozenset().union(*(f.side(side).transform.tables for f in self.fields))

    def linked_entities(self) -> frozenset[str]:
        """The pair's other entities whose links this one's fields read."""
        return frozenset(str(f.side(side).options["entity"]) for f in self.fields for side in Side
                         if f.side(side).transform.linked)

    def field_rule(self, name: str) -> Rule:
        for f in self.fields:
            if f.name == name:
                return f.rule or self.rule
        return self.rule


def parse_time(value: Any) -> datetime | None:
    """WooCommerce's date_modified_gmt ("2026-01-02T03:04:05") and Odoo's write_date
    ("2026-01-02 03:04:05"), both UTC without an offset."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Pair:
    name: str
    left: str  # connection names
    right: str
    entities: Mapping[str, EntityMap]
