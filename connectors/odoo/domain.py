"""Odoo domains: prefix notation parsed to a tree, matched against records, and the index bounds
a listing can start from."""

from __future__ import annotations

import operator
from typing import Any

from freshd.connectors.odoo.models import OdooError

_ORDERINGS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _term_ok(record: dict[str, Any], term: list[Any]) -> bool:
    field, op, value = term
    have = record.get(field)
    if isinstance(have, list) and len(have) == 2 and isinstance(have[0], int):
        have = have[0]  # many2one compares by id
    if have is False:
        have = None if op not in ("=", "!=") else have
    match op:
        case "=":
            return bool(have == value or (value is False and have in (None, False)))
        case "!=":
            return bool(have != value)
        case ">" | ">=" | "<" | "<=":
            if have is None or value is None or value is False:
                return False
            return bool(_ORDERINGS[op](have, value))
        case "in":
            return have in value
        case "not in":
            return have not in value
        case "ilike":
            return isinstance(have, str) and str(value).lower() in have.lower()
    raise OdooError("builtins.ValueError", f"Invalid leaf {term!r}")


def _parse(domain: list[Any], pos: int = 0) -> tuple[Any, int]:
    """Prefix notation -> a tree ("&"|"|", a, b) / ("!", a) / term; implicit "&" between top-level items."""
    item = domain[pos]
    if item in ("&", "|"):
        left, pos = _parse(domain, pos + 1)
        right, pos = _parse(domain, pos)
        return (item, left, right), pos
    if item == "!":
        inner, pos = _parse(domain, pos + 1)
        return ("!", inner), pos
    if not isinstance(item, list | tuple) or len(item) != 3:
        raise OdooError("builtins.ValueError", f"Invalid domain term {item!r}")
    return list(item), pos + 1


def parse_domain(domain: Any) -> Any:
    if not isinstance(domain, list):
        raise OdooError("builtins.ValueError", f"Invalid domain {domain!r}")
    if not domain:
        return None
    trees, pos = [], 0
    while pos < len(domain):
        tree, pos = _parse(domain, pos)
        trees.append(tree)
    tree = trees[0]
    for more in trees[1:]:
        tree = ("&", tree, more)
    return tree


def matches(tree: Any, record: dict[str, Any]) -> bool:
    if tree is None:
        return True
    if isinstance(tree, tuple):
        if tree[0] == "&":
            return matches(tree[1], record) and matches(tree[2], record)
        if tree[0] == "|":
            return matches(tree[1], record) or matches(tree[2], record)
        return not matches(tree[1], record)
    return _term_ok(record, tree)


def lower_bound(tree: Any, field: str) -> Any:
    """A value every matching record's `field` is >= to (None: no bound), for index scans."""
    if tree is None:
        return None
    if isinstance(tree, tuple):
        if tree[0] == "&":
            bounds = [b for b in (lower_bound(tree[1], field), lower_bound(tree[2], field)) if b is not None]
            return max(bounds) if bounds else None
        if tree[0] == "|":
            left, right = lower_bound(tree[1], field), lower_bound(tree[2], field)
            return None if left is None or right is None else min(left, right)
        return None
    name, op, value = tree
    return value if name == field and op in (">", ">=", "=") and value not in (None, False) else None


def mentions(tree: Any, field: str) -> bool:
    if tree is None:
        return False
    if isinstance(tree, tuple):
        return any(mentions(t, field) for t in tree[1:])
    return bool(tree[0] == field)
