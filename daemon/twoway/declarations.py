"""Pair declarations: the shipped defaults, and a declaration checked into a Pair.

Declared in the config (`[pairs.NAME]`) or with `freshctl pairs add`; a pair of a WooCommerce
and an Odoo connection gets working defaults for `customers`, `products` and `orders`
(`DEFAULTS`), which a declaration overrides entity by entity and field by field.  A declaration
is checked whole (unknown keys, streams the connector lacks, transforms, rules, the natural key,
links to entities not in the pair) and every problem reported at once (ConfigErrors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from freshd.errors import ConfigError, ConfigErrors
from freshd.twoway.mapping import Direction, EntityMap, FieldMap, Pair, Rule, Side, SideMap
from freshd.twoway.transforms import TRANSFORMS

# --- the shipped mapping for WooCommerce (left) and Odoo (right) ------------------------------------

_F = dict[str, Any]
DEFAULTS: Mapping[tuple[str, str], Mapping[str, _F]] = {
    ("woocommerce", "odoo"): {
        "customers": {
            "left": "customers", "right": "partners", "direction": "both", "key": "email", "rule": "manual",
            "fields": {
                "email": {"left": "email", "right": "email", "transform": "lower"},
                "name": {"left": ["first_name", "last_name"], "left_transform": "join_name", "right": "name"},
                "phone": {"left": "billing.phone", "right": "phone"},
                "street": {"left": "billing.address_1", "right": "street"},
                "city": {"left": "billing.city", "right": "city"},
                "zip": {"left": "billing.postcode", "right": "zip"},
                "country": {"left": "billing.country", "right": "country_id", "right_transform": "country_id"},
            },
        },
        # Odoo is the product master: price and stock set there reach the shop
        "products": {
            "left": "products", "right": "products", "direction": "right_to_left", "key": "sku",
            "rule": "prefer_right",
            "fields": {
                "sku": {"left": "sku", "right": "default_code"},
                "name": {"left": "name", "right": "name"},
                "price": {"left": "regular_price", "left_transform": "money",
                          "right": "list_price", "right_transform": "money_float"},
                "stock": {"left": "stock_quantity", "right": "qty_available", "transform": "int"},
            },
        },
        # an order placed in the shop becomes a sale order in Odoo: created once, never compared after
        # (its partner and its lines' products through the customers' and products' links)
        "orders": {
            "left": "orders", "right": "sale_orders", "direction": "left_to_right", "key": "number",
            "rule": "prefer_left", "updates": False,
            "fields": {
                "number": {"left": "number", "right": "origin"},
                "customer": {"left": "customer_id", "right": "partner_id", "transform": "link",
                             "entity": "customers"},
                "lines": {"left": "line_items", "right": "order_line", "transform": "order_lines",
                          "entity": "products"},
            },
        },
    },
}

_MODIFIED = {"woocommerce": "date_modified_gmt", "odoo": "write_date"}
_NULL: Mapping[str, Any] = {"odoo": False, "woocommerce": ""}
_ENTITY_KEYS = {"left", "right", "direction", "key", "rule", "rules", "fields", "creates", "updates"}
_FIELD_KEYS = {"left", "right", "transform", "left_transform", "right_transform", "left_values",
               "right_values", "rule", "entity", "left_entity", "right_entity"}


def _choice(enum: type[StrEnum], value: Any, where: str, problems: list[ConfigError]) -> Any:
    try:
        return enum(value)
    except ValueError:
        problems.append(ConfigError(f"must be one of {', '.join(e.value for e in enum)}, got {value!r}",
                                    where=where))
        return None


def _side_map(spec: Mapping[str, Any], side: Side, provider: str, where: str,
              problems: list[ConfigError]) -> SideMap | None:
    raw = spec.get(side.value)
    paths = (raw,) if isinstance(raw, str) else tuple(raw) if isinstance(raw, list) else ()
    if not paths or not all(isinstance(p, str) and p for p in paths):
        problems.append(ConfigError("needs a path (or a list of paths) on this side", where=f"{where}.{side}"))
        return None
    name = spec.get(f"{side}_transform", spec.get("transform", "same"))
    transform = TRANSFORMS.get(name) if isinstance(name, str) else None
    if transform is None:
        problems.append(ConfigError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}",
                                    where=f"{where}.{side}_transform"))
        return None
    if transform.arity != len(paths):
        problems.append(ConfigError(f"transform {name} takes {transform.arity} path(s), got {len(paths)}",
                                    where=f"{where}.{side}"))
        return None
    options: dict[str, Any] = {}
    if transform.linked:
        entity = spec.get(f"{side}_entity", spec.get("entity"))
        if not isinstance(entity, str) or not entity:
            problems.append(ConfigError(f"transform {transform.name} needs the entity it refers to (entity = "
                                        "\"customers\")", where=f"{where}.entity"))
            return None
        options.update(entity=entity, side=side.value)
    if transform.name == "map":
        values = spec.get(f"{side}_values")
        if not isinstance(values, Mapping) or not values:
            problems.append(ConfigError("transform map needs a table of values (common value = this side's)",
                                        where=f"{where}.{side}_values"))
            return None
        options["values"] = dict(values)
    return SideMap(paths, transform, options, _NULL.get(provider))


def build_entity(name: str, spec: Mapping[str, Any], providers: tuple[str, str], *, where: str,
                 streams: tuple[frozenset[str], frozenset[str]], problems: list[ConfigError]) -> EntityMap | None:
    """One entity from its declaration (already merged over the defaults); problems are appended."""
    start = len(problems)
    for key in sorted(set(spec) - _ENTITY_KEYS):
        problems.append(ConfigError(f"unknown key; known: {', '.join(sorted(_ENTITY_KEYS))}", where=f"{where}.{key}"))
    for side, known in zip(Side, streams, strict=True):
        stream = spec.get(side.value)
        if not isinstance(stream, str) or stream not in known:
            problems.append(ConfigError(f"{providers[side is Side.RIGHT]} has no stream {stream!r}; it has "
                                        f"{', '.join(sorted(known))}", where=f"{where}.{side}"))
    direction = _choice(Direction, spec.get("direction", "both"), f"{where}.direction", problems)
    rule = _choice(Rule, spec.get("rule", "manual"), f"{where}.rule", problems)
    rules = spec.get("rules") or {}
    fields_spec = spec.get("fields")
    if not isinstance(fields_spec, Mapping) or not fields_spec:
        problems.append(ConfigError("needs fields", where=f"{where}.fields"))
        fields_spec = {}
    fields: list[FieldMap] = []
    fname: Any
    for fname, fspec in fields_spec.items():
        fwhere = f"{where}.fields.{fname}"
        if not isinstance(fspec, Mapping):
            problems.append(ConfigError("must be a table with left and right", where=fwhere))
            continue
        for key in sorted(set(fspec) - _FIELD_KEYS):
            problems.append(ConfigError(f"unknown key; known: {', '.join(sorted(_FIELD_KEYS))}",
                                        where=f"{fwhere}.{key}"))
        left = _side_map(fspec, Side.LEFT, providers[0], fwhere, problems)
        right = _side_map(fspec, Side.RIGHT, providers[1], fwhere, problems)
        frule_raw = rules.get(fname, fspec.get("rule")) if isinstance(rules, Mapping) else fspec.get("rule")
        frule = None if frule_raw is None else _choice(Rule, frule_raw, f"{where}.rules.{fname}", problems)
        if left and right:
            fields.append(FieldMap(str(fname), left, right, frule))
    if isinstance(rules, Mapping):
        for fname in sorted(set(rules) - set(fields_spec)):
            problems.append(ConfigError("a rule for a field the entity does not map", where=f"{where}.rules.{fname}"))
    natural_key = spec.get("key")
    if natural_key not in fields_spec:
        problems.append(ConfigError(f"the natural key must be one of the mapped fields, got {natural_key!r}",
                                    where=f"{where}.key"))
    for flag in ("creates", "updates"):
        if not isinstance(spec.get(flag, True), bool):
            problems.append(ConfigError("must be true or false", where=f"{where}.{flag}"))
    if len(problems) > start:
        return None
    return EntityMap(
        name=name, left_stream=spec["left"], right_stream=spec["right"], direction=direction, key=str(natural_key),
        fields=tuple(fields), rule=rule, creates=spec.get("creates", True), updates=spec.get("updates", True),
        left_modified=_MODIFIED.get(providers[0]), right_modified=_MODIFIED.get(providers[1]),
    )


def build_pair(name: str, left: str, right: str, spec: Mapping[str, Any], *, providers: tuple[str, str],
               streams: tuple[frozenset[str], frozenset[str]]) -> Pair:
    """The pair from its stored declaration: `spec` is {"entities": {name: overrides}}; an entity
    with the shipped defaults for these providers starts from them.  Raises ConfigError(s)."""
    problems: list[ConfigError] = []
    where = f"pairs.{name}"
    entities_spec = spec.get("entities")
    if not isinstance(entities_spec, Mapping) or not entities_spec:
        raise ConfigError("needs at least one entity", where=f"{where}.entities")
    defaults = DEFAULTS.get(providers, {})
    entities: dict[str, EntityMap] = {}
    for ename, overrides in entities_spec.items():
        ewhere = f"{where}.{ename}"
        if not isinstance(overrides, Mapping):
            problems.append(ConfigError("must be a table", where=ewhere))
            continue
        base = defaults.get(ename)
        if base is None and "fields" not in overrides:
            known = ", ".join(defaults) or "none"
            problems.append(ConfigError(
                f"no shipped mapping for {ename} between {providers[0]} and {providers[1]} (shipped: {known}); "
                "declare left, right, key and fields", where=ewhere))
            continue
        merged = dict(base or {})
        for key, value in overrides.items():
            if key == "fields" and base is not None and isinstance(value, Mapping):
                merged["fields"] = {**base["fields"], **value}
            else:
                merged[key] = value
        entity = build_entity(str(ename), merged, providers, where=ewhere, streams=streams, problems=problems)
        if entity is not None:
            entities[entity.name] = entity
    for entity in entities.values():
        for other in sorted(entity.linked_entities() - set(entities)):
            problems.append(ConfigError(f"{entity.name} refers to {other} records through their links: add "
                                        f"{other} to the pair's entities", where=f"{where}.{entity.name}"))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigErrors(problems)
    return Pair(name, left, right, entities)


def entities_spec(names: Sequence[str] | None, providers: tuple[str, str]) -> dict[str, Any]:
    """`pairs add --entities a,b`: the declaration of a pair that uses the shipped mappings."""
    defaults = DEFAULTS.get(providers, {})
    chosen = list(names) if names else list(defaults)
    return {"entities": {name: {} for name in chosen}}
