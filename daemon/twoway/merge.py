"""The three-way merge of one linked pair of records.

Each common field is compared with the `base`, the value both sides last agreed on:
- equal on both sides: agreed (the base follows);
- changed on one side only: the change goes to the other side;
- changed on both sides to different values (or no base yet, as when two existing records are
  first linked by their natural key): a DataMismatch, settled by the field's rule; `manual`
  leaves the field as it is on both sides and reports it for a person to resolve.
A one-way entity copies its source's value whatever the base says.

Pure: no I/O, so the rules are tested directly (tests/test_twoway_merge.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from freshd.twoway.mapping import Direction, EntityMap, Rule


@dataclass(frozen=True, slots=True)
class Mismatch:
    field: str
    base: Any
    left: Any
    right: Any
    has_base: bool


@dataclass(slots=True)
class Decision:
    to_left: dict[str, Any] = field(default_factory=dict)  # common values to write on the left
    to_right: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)  # the agreed values once those writes are made
    mismatches: list[Mismatch] = field(default_factory=list)  # left for a person (manual)
    settled: list[tuple[Mismatch, Rule]] = field(default_factory=list)  # settled by a rule

    @property
    def writes(self) -> bool:
        return bool(self.to_left or self.to_right)


def merge(entity: EntityMap, base: Mapping[str, Any] | None, left: Mapping[str, Any], right: Mapping[str, Any],
          *, left_modified: datetime | None = None, right_modified: datetime | None = None) -> Decision:
    out = Decision()
    for f in entity.fields:
        name = f.name
        lv, rv = left.get(name), right.get(name)
        has_base = base is not None and name in base
        bv = base.get(name) if base is not None else None
        if lv == rv:
            out.base[name] = lv
            continue
        if entity.direction is Direction.LEFT_TO_RIGHT:
            out.to_right[name] = out.base[name] = lv
            continue
        if entity.direction is Direction.RIGHT_TO_LEFT:
            out.to_left[name] = out.base[name] = rv
            continue
        if has_base and lv == bv:
            out.to_left[name] = out.base[name] = rv
            continue
        if has_base and rv == bv:
            out.to_right[name] = out.base[name] = lv
            continue
        mismatch = Mismatch(name, bv, lv, rv, has_base)
        rule = f.rule or entity.rule
        winner = _winner(rule, left_modified, right_modified)
        if winner == "left":
            out.to_right[name] = out.base[name] = lv
            out.settled.append((mismatch, rule))
        elif winner == "right":
            out.to_left[name] = out.base[name] = rv
            out.settled.append((mismatch, rule))
        else:
            out.mismatches.append(mismatch)
            if has_base:
                out.base[name] = bv  # still the last agreement
    return out


def _winner(rule: Rule, left_modified: datetime | None, right_modified: datetime | None) -> str | None:
    if rule is Rule.PREFER_LEFT:
        return "left"
    if rule is Rule.PREFER_RIGHT:
        return "right"
    if rule is Rule.NEWEST and left_modified is not None and right_modified is not None \
            and left_modified != right_modified:
        return "left" if left_modified > right_modified else "right"
    return None
