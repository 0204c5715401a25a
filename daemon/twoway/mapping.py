"""Pairs and their entities, declared as data.

An entity of a pair maps one stream of the left connection to one stream of the right through
*common fields*.  Each field reads a value from each side's record (a path, or several paths
joined by a named transform) and can write a value back as a fragment of the provider's own
shape.  The merge compares common values only, so `"Ann Lee"` from WooCommerce's first and last
name equals Odoo's `name`, and `"12.50"` equals `12.5`.

Declared in the config (`[pairs.NAME]`) or with `freshctl pairs add`; a pair of a WooCommerce
and an Odoo connection gets working defaults for `customers`, `products` and `orders`
(`DEFAULTS`).  A declaration is checked whole and every problem reported at once (ConfigErrors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from freshd.errors import ConfigError, ConfigErrors


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


Tables = Mapping[str, Mapping[str, str]]  # reference tables a transform reads (countries: id -> code)


def _empty(value: Any) -> Any:
    """Providers say "nothing" differently (WooCommerce "", Odoo False): all of them read as None."""
    if value is None or value is False or value in ("", []):
        return None
    return value


def _text(value: Any) -> Any:
    value = _empty(value)
    return value.strip() if isinstance(value, str) else value


# --- named transforms: (read the side's values into one common value, write it back) -------------

@dataclass(frozen=True, slots=True)
class Transform:
    name: str
    arity: int  # how many paths it reads and writes
    read: Callable[[Sequence[Any], Mapping[str, Any], Tables], Any]
    write: Callable[[Any, Mapping[str, Any], Tables], list[Any]]
    tables: frozenset[str] = frozenset()  # reference tables it needs from the side's connector
    linked: bool = False  # reads another entity's links (options.entity): "links:ENTITY" tables


def _same_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    return _text(values[0])


def _same_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    return [value]


def _lower_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    value = _text(values[0])
    return value.lower() if isinstance(value, str) else value


def _join_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    parts = [str(_text(v)) for v in values if _text(v) is not None]
    return " ".join(parts) or None


def _split_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    if value is None:
        return [None, None]
    first, _, rest = str(value).partition(" ")
    return [first, rest or None]


def _money_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    value = _empty(values[0])
    if value is None:
        return None
    try:
        return str(Decimal(str(value)).quantize(Decimal("0.01")))
    except InvalidOperation:
        return str(value)  # compared as given; the target's validation says what is wrong


def _money_string_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    return [value]


def _money_float_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    return [None if value is None else float(value)]


def _int_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    value = values[0]
    if value is None or value is False or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return value


def _int_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    return [value]


def _many2one_id(value: Any) -> str | None:
    if isinstance(value, list | tuple) and value:
        value = value[0]
    value = _empty(value)
    return None if value is None else str(value)


def _country_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    rid = _many2one_id(values[0])
    if rid is None:
        return None
    return tables.get("countries", {}).get(rid, f"#{rid}")


def _country_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    if value is None:
        return [None]
    for rid, code in tables.get("countries", {}).items():
        if code == value:
            return [int(rid)]
    raise Unmappable(f"no country with code {value!r} on this side")


def _links(options: Mapping[str, Any], tables: Tables, *, reverse: bool = False) -> Mapping[str, str]:
    return tables.get(f"links:{options['entity']}{':reverse' if reverse else ''}", {})


def _link_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    """A reference to a record of another entity of the pair, read as the *left* record's id (the
    right side's id is translated through that entity's links; one not linked reads as "right:ID")."""
    rid = _many2one_id(values[0])
    if rid is None or rid == "0":
        return None
    if options["side"] == "left":
        return rid
    return _links(options, tables, reverse=True).get(rid, f"right:{rid}")


def _link_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    if value is None:
        return [None]
    if options["side"] == "left":
        return [int(value)]
    target = _links(options, tables).get(str(value))
    if target is None:
        raise Unmappable(f"{options['entity']} {value} of the left is not linked to a record of the right yet")
    return [int(target)]


def _lines_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    """Order lines as [{product (the left product's id), quantity, price}]; Odoo's own lines are
    ids only (not compared: orders are created, not updated)."""
    lines = values[0]
    if not isinstance(lines, list) or not all(isinstance(line, Mapping) for line in lines):
        return None
    return [{"product": _link_read([line.get("product_id")], {**options, "side": "left"}, tables),
             "quantity": line.get("quantity"), "price": _money_read([line.get("price")], options, tables)}
            for line in lines]


def _lines_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    if not value:
        return [[]]
    if options["side"] == "left":
        return [[{"product_id": int(line["product"]), "quantity": line["quantity"]} for line in value]]
    out = []
    for line in value:
        [product] = _link_write(line["product"], options, tables)
        out.append([0, 0, {"product_id": product, "product_uom_qty": line["quantity"],
                           "price_unit": None if line["price"] is None else float(line["price"])}])
    return [out]


def _map_read(values: Sequence[Any], options: Mapping[str, Any], tables: Tables) -> Any:
    value = _text(values[0])
    reverse = {v: k for k, v in options["values"].items()}
    return reverse.get(value, value)


def _map_write(value: Any, options: Mapping[str, Any], tables: Tables) -> list[Any]:
    return [options["values"].get(value, value)]


TRANSFORMS: Mapping[str, Transform] = {t.name: t for t in (
    Transform("same", 1, _same_read, _same_write),
    Transform("lower", 1, _lower_read, _same_write),  # case-insensitive values (emails)
    Transform("join_name", 2, _join_read, _split_write),  # first + last <-> one name
    Transform("money", 1, _money_read, _money_string_write),  # "12.5" -> "12.50", written as a string
    Transform("money_float", 1, _money_read, _money_float_write),  # 12.5 -> "12.50", written as a float
    Transform("int", 1, _int_read, _int_write),
    Transform("country_id", 1, _country_read, _country_write, frozenset({"countries"})),  # Odoo id <-> ISO
    Transform("map", 1, _map_read, _map_write),  # options.values: common value -> this side's value
    # a record of another entity of the pair (options.entity), through its links
    Transform("link", 1, _link_read, _link_write, linked=True),
    # order lines whose products are another entity of the pair (options.entity)
    Transform("order_lines", 1, _lines_read, _lines_write, linked=True),
)}


class Unmappable(ValueError):
    """A common value this side cannot represent (a country it does not know)."""


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
