"""The write side of the Odoo connector (freshd.connectors.writes.Writer), for two-way sync.

`OdooWrites` is a mixin of `OdooConnector`: every call goes through the connector's `call` (either
transport, the connection's policies) and its one error classification, which reads a write's
refusals as item errors (ValidationError/UserError/AccessError -> Rejected, a unique constraint ->
DuplicateKey, MissingError -> ItemError).

* **Creates are findable after a crash, atomically.**  Partners and products go through
  ``load(fields, rows)`` with the external id ``__freshd__.<reference>`` (context ``module =
  __freshd__``): Odoo makes the record and its ``ir.model.data`` row in one transaction.  Sale orders
  carry order lines as ``(0, 0, vals)`` commands, which ``load`` cannot take in a flat row, so they go
  through ``create`` with the reference in ``client_order_ref`` (the same request makes the order
  and the reference).  Creates are sent ``replay_safe=False``: a lost answer is `Ambiguous`.
* **find_created**: one ``search_read`` on ``ir.model.data`` (module ``__freshd__``, the names, the
  model), then one ``read`` of those records (sale orders: one ``search_read`` on
  ``client_order_ref``).
* **Updates**: ``write(ids, vals)`` sets the same values on every id, so updates carrying identical
  values share one call.  **Archive**: ``write`` ``active = False`` (``action_archive`` returns None
  in some versions, which XML-RPC cannot marshal).
* **Per-item isolation**: Odoo runs a call in one transaction, so one bad record fails the call (a
  ``load`` answers ``ids: false`` and rolls every row back).  A call of several items that fails as a
  whole with an item error is sent again one item at a time.
* Every outcome's record is read back with the stream's fields (the shape a listing returns,
  many2one as ``[id, name]``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from freshd.connectors.writes import Create, Update, WriteOp, WriteOutcome, Written
from freshd.errors import DuplicateKey, ItemError, PermanentError, ProviderError, Rejected

MODULE = "__freshd__"  # the ir.model.data module of the external ids freshd creates
MODELS: Mapping[str, str] = {"partners": "res.partner", "products": "product.product", "sale_orders": "sale.order"}
# models created through `create` with the reference in a field (no load: see the module docstring)
REFERENCE_FIELDS: Mapping[str, str] = {"sale_orders": "client_order_ref"}

Batch = Callable[[list[Any]], Awaitable[list[int]]]


UNIQUE = re.compile(r"must be unique|already assigned|already exists|is equal to partner|duplicate key|"
                     r"unique constraint", re.IGNORECASE)


def write_refusal(message: str, *, status: int | None = None, code: str | None = None) -> ItemError:
    """A write Odoo refused for this record: a unique key taken (DuplicateKey) or any other rule (Rejected).
    Also reads `load`'s row messages, which carry no exception name."""
    if UNIQUE.search(message):
        return DuplicateKey(message, status=status, code=code)
    return Rejected(message, status=status, code=code)


def xmlid(reference: str) -> str:
    """The external id of a create; the module is spelt out, so a reference with dots stays whole."""
    return f"{MODULE}.{reference}"


def _canonical(values: Mapping[str, Any]) -> bytes:
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS, default=str)


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """A many2one as read (``[id, "name"]``) written back is its id: Odoo refuses a JSON list there."""
    return {k: v[0] if isinstance(v, list | tuple) and len(v) == 2 and isinstance(v[0], int)
            and not isinstance(v[0], bool) and isinstance(v[1], str) else v for k, v in values.items()}


def _cell(kind: str, value: Any) -> str:
    """A value in `load`'s import format (strings; booleans as 1/0; empty is false)."""
    if value is None or (value is False and kind != "boolean"):
        return ""
    if kind == "boolean":
        return "1" if value else "0"
    return str(value)


class OdooWrites:
    writable: ClassVar[Mapping[str, frozenset[str]]] = {
        "partners": frozenset({"create", "update", "archive"}),
        "products": frozenset({"create", "update", "archive"}),
        "sale_orders": frozenset({"create", "update"}),
    }

    fields: dict[str, list[str]]  # the stream's field lists (OdooConnector sets them)

    if TYPE_CHECKING:
        async def call(self, model: str, method: str, *args: Any, replay_safe: bool = True,
                       **kwargs: Any) -> Any: ...

    # -- Writer ---------------------------------------------------------------------------------------

    async def write(self, entity: str, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        model = self._model(entity)
        results: dict[int, int | ProviderError] = {}
        creates = [(i, op) for i, op in enumerate(ops) if isinstance(op, Create)]
        updates = [(i, op) for i, op in enumerate(ops) if isinstance(op, Update)]
        if creates:
            self._check(entity, "create")
            if entity in REFERENCE_FIELDS:
                groups = [creates]
            else:  # one load per set of fields: an empty cell would clear a field another row leaves alone
                by_fields: dict[tuple[str, ...], list[tuple[int, Create]]] = {}
                for i, op in creates:
                    by_fields.setdefault(tuple(sorted(op.values)), []).append((i, op))
                groups = list(by_fields.values())
            for group in groups:
                batch = self._creator(entity, model)
                outcomes = await self._isolated([op for _, op in group], batch)
                results.update({i: out for (i, _), out in zip(group, outcomes, strict=True)})
        by_values: dict[bytes, list[tuple[int, Update]]] = {}
        for i, up in updates:
            by_values.setdefault(_canonical(_plain(up.values)), []).append((i, up))
        for same in by_values.values():
            vals = _plain(same[0][1].values)
            outcomes = await self._isolated([up for _, up in same], self._writer(model, vals))
            results.update({i: out for (i, _), out in zip(same, outcomes, strict=True)})
        return await self._outcomes(entity, [results[i] for i in range(len(ops))])

    async def find_created(self, entity: str, creates: Sequence[Create]) -> dict[str, Written]:
        model = self._model(entity)
        references = [c.reference for c in creates]
        if not references:
            return {}
        if entity in REFERENCE_FIELDS:
            field = REFERENCE_FIELDS[entity]
            rows = await self.call(model, "search_read", [[field, "in", references]],
                                   fields=self._fields(entity, field), context={"active_test": False})
            return {str(r[field]): Written(str(r["id"]), self._shaped(entity, r, field)) for r in rows
                    if r.get(field) in references}
        entries = await self.call("ir.model.data", "search_read",
                                  [["module", "=", MODULE], ["model", "=", model], ["name", "in", references]],
                                  fields=["name", "res_id"])
        wanted = {int(e["res_id"]): str(e["name"]) for e in entries}
        found = await self._read(entity, list(wanted))
        return {wanted[rid]: Written(str(rid), row) for rid, row in found.items()}

    async def archive(self, entity: str, external_id: str) -> WriteOutcome:
        self._check(entity, "archive")
        (outcome,) = await self.write(entity, [Update(external_id, {"active": False})])
        return outcome

    # -- calls ----------------------------------------------------------------------------------------

    def _model(self, entity: str) -> str:
        if entity not in self.writable:
            raise PermanentError(f"Odoo stream {entity!r} is not writable; writable: {', '.join(self.writable)}")
        return MODELS[entity]

    def _check(self, entity: str, what: str) -> None:
        if what not in self.writable[entity]:
            raise PermanentError(f"Odoo stream {entity!r} cannot {what} (it takes {sorted(self.writable[entity])})")

    def _creator(self, entity: str, model: str) -> Batch:
        if entity in REFERENCE_FIELDS:
            field = REFERENCE_FIELDS[entity]

            async def create(ops: list[Create]) -> list[int]:
                vals_list = [{**_plain(op.values), field: op.reference} for op in ops]
                ids = await self.call(model, "create", vals_list, replay_safe=False)
                return [int(i) for i in ids]

            return create

        async def load(ops: list[Create]) -> list[int]:
            types = await self._types(model)
            names = sorted(ops[0].values)
            columns = ["id"]
            for name in names:
                kind = types.get(name, "char")
                if kind in ("one2many", "many2many", "binary", "properties", "json"):
                    raise Rejected(f"Odoo {model}.{name}: a {kind} field cannot be created through load")
                columns.append(f"{name}/.id" if kind == "many2one" else name)  # a many2one by database id
            rows = [[xmlid(op.reference), *(_cell(types.get(n, "char"), _plain(op.values)[n]) for n in names)]
                    for op in ops]
            answer = await self.call(model, "load", columns, rows, context={"module": MODULE}, replay_safe=False)
            ids = answer.get("ids") if isinstance(answer, dict) else None
            if isinstance(ids, list) and len(ids) == len(ops):
                return [int(i) for i in ids]
            errors = [m for m in (answer or {}).get("messages") or [] if m.get("type") == "error"]
            if not errors:
                raise PermanentError(f"Odoo {model}.load answered neither ids nor errors: {str(answer)[:200]}")
            raise write_refusal(f"Odoo {model}.load: {errors[0].get('message')}", code="load")

        return load

    def _writer(self, model: str, vals: dict[str, Any]) -> Batch:
        async def write(ups: list[Update]) -> list[int]:
            ids = [self._id(up.external_id) for up in ups]
            await self.call(model, "write", ids, vals)
            return ids

        return write

    @staticmethod
    def _id(external_id: str) -> int:
        if not str(external_id).isdigit():
            raise ItemError(f"Odoo ids are integers, not {external_id!r}", external_id=external_id)
        return int(external_id)

    @staticmethod
    async def _isolated(items: list[Any], batch: Batch) -> list[int | ProviderError]:
        """One call for all `items`; if it fails as a whole for an item's sake (Odoo rolled it back),
        one call per item, so one bad record does not fail the others.  Anything else is raised."""
        if len(items) > 1:
            try:
                return list(await batch(items))
            except ItemError:
                pass
        outcomes: list[int | ProviderError] = []
        for item in items:
            try:
                outcomes.extend(await batch([item]))
            except ItemError as exc:
                if isinstance(item, Update) and exc.external_id is None:
                    exc.external_id = item.external_id
                outcomes.append(exc)
        return outcomes

    async def _types(self, model: str) -> dict[str, str]:
        """field -> Odoo type (fields_get, once per model): load names many2one columns by type."""
        cache: dict[str, dict[str, str]] = self.__dict__.setdefault("_field_types", {})
        if model not in cache:
            described = await self.call(model, "fields_get", attributes=["type"])
            cache[model] = {name: str(spec.get("type")) for name, spec in described.items()}
        return dict(cache[model])

    def _fields(self, entity: str, *extra: str) -> list[str]:
        return [*self.fields[entity], *(f for f in extra if f not in self.fields[entity])]

    def _shaped(self, entity: str, row: Mapping[str, Any], *extra: str) -> dict[str, Any]:
        """A row as a listing has it: the stream's fields only."""
        keep = {"id", *self.fields[entity]}
        return {k: v for k, v in row.items() if k in keep or k not in extra}

    async def _read(self, entity: str, ids: list[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        rows = await self.call(MODELS[entity], "read", ids, fields=self.fields[entity],
                               context={"active_test": False})
        return {int(r["id"]): dict(r) for r in rows}

    async def _outcomes(self, entity: str, results: list[int | ProviderError]) -> list[WriteOutcome]:
        """Each applied write read back with the stream's fields; errors as they are."""
        found = await self._read(entity, sorted({r for r in results if isinstance(r, int)}))
        outcomes: list[WriteOutcome] = []
        for result in results:
            if isinstance(result, ProviderError):
                outcomes.append(result)
            elif result in found:
                outcomes.append(Written(str(result), found[result]))
            else:  # deleted between the write and the read
                outcomes.append(ItemError(f"Odoo {MODELS[entity]} {result} is gone after the write",
                                          external_id=str(result)))
        return outcomes
