"""Named transforms: how a field's paths on one side read into one common value, and back.

A transform reads the values at a field's paths in one side's record (plus its options and the
reference tables it needs, such as countries by id) into the common value the merge compares,
and writes a common value back as one value per path.  Providers say "nothing" differently
(WooCommerce "", Odoo False): every transform reads them as None.  A common value a side cannot
represent (a country it does not know, a record not linked yet) raises Unmappable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

Tables = Mapping[str, Mapping[str, str]]  # reference tables a transform reads (countries: id -> code)


def _empty(value: Any) -> Any:
    """Providers say "nothing" differently (WooCommerce "", Odoo False): all of them read as None."""
    if value is None or value is False or value in ("", []):
        return None
    return value


def _text(value: Any) -> Any:
    value = _empty(value)
    return value.strip() if isinstance(value, str) else value


class Unmappable(ValueError):
    """A common value this side cannot represent (a country it does not know)."""


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

