"""The Odoo simulator's ORM writes: create, write, unlink and load, each call one transaction.

Every change goes to an undo journal, and an error rolls the whole call back (ids drawn stay drawn,
as PostgreSQL sequences do).  write_date is the call's start for every record it touches (B.5).
Constraints and their texts follow B.3/B.4.
"""

from __future__ import annotations

from typing import Any

from freshd.connectors.odoo.models import (
    COMPUTED,
    DESCRIPTIONS,
    FIELDS,
    FIXED_RELATIONS,
    MAGIC,
    UID,
    OdooError,
    _fmt,
)
from freshd.connectors.simcollection import RecordSimulator


class OrmWrites(RecordSimulator):
    """The journaled record store and the ORM's write methods (OdooSimulator is one)."""

    docs: dict[str, dict[int, dict[str, Any]]]  # model -> id -> record (the collections' docs)
    forbidden: set[tuple[str, str]]  # (model, "create"|"write"|"unlink"): AccessError
    unique_default_code: bool  # the OCA product_default_code_unique constraint, opt in
    _journal: list[tuple[str, int, dict[str, Any] | None]] | None  # undo log of one call

    def _put(self, model: str, record: dict[str, Any]) -> None:
        if self._journal is not None:
            self._journal.append((model, record["id"], self.docs[model].get(record["id"])))
        self.collections[model].put(record)

    def delete(self, model: str, rid: int) -> dict[str, Any]:
        record = super().delete(model, rid)
        if self._journal is not None:
            self._journal.append((model, rid, record))
        return record

    unlink = delete  # Odoo's name

    def _draw_id(self, model: str) -> int:
        """The model's next id, drawn even if the call is rolled back, as a sequence is."""
        self.collections[model].next_id += 1
        return self.collections[model].next_id - 1

    def _m2o_value(self, model: str, rid: int) -> list[Any]:
        if model in FIXED_RELATIONS:
            return [rid, FIXED_RELATIONS[model][rid]]
        return [rid, self.docs[model][rid]["display_name"]]

    def _exists(self, model: str, rid: int) -> bool:
        if model in FIXED_RELATIONS:
            return rid in FIXED_RELATIONS[model]
        return model in self.docs and rid in self.docs[model]

    def _allow(self, model: str, operation: str) -> None:
        verb = {"create": "create", "write": "modify", "unlink": "delete"}[operation]
        if (model, operation) in self.forbidden or model in ("res.country", "ir.model.data"):
            raise OdooError("odoo.exceptions.AccessError",
                            f"You are not allowed to {verb} '{DESCRIPTIONS.get(model, model)}' ({model}) records."
                            "\n\nThis operation is allowed for the following groups:\n\t- Administration/Settings"
                            "\n\nContact your administrator to request access if necessary.")

    def _convert(self, model: str, vals: Any) -> dict[str, Any]:
        """Written values -> stored ones: unknown fields refused, magic and computed ones dropped."""
        if not isinstance(vals, dict):
            raise OdooError("builtins.TypeError", f"expected a dict of values for {model}, got {vals!r}")
        spec = FIELDS[model]
        out: dict[str, Any] = {}
        for name, given in vals.items():
            field = spec.get(name)
            if field is None:
                raise OdooError("builtins.ValueError", f"Invalid field {name!r} on model {model!r}")
            if name in MAGIC or name in COMPUTED.get(model, ()):
                continue
            kind = field["type"]
            value = False if given is None else given
            if kind == "many2one":
                # an id; a JSON list (even [id, name] as read) is refused: Many2one takes a tuple only
                if value is False:
                    out[name] = False
                    continue
                if not isinstance(value, int) or isinstance(value, bool):
                    raise OdooError("builtins.ValueError", f"Wrong value for {model}.{name}: {value!r}")
                if not self._exists(field["relation"], value):
                    table = model.replace(".", "_")
                    raise OdooError(
                        "odoo.exceptions.ValidationError",
                        "The operation cannot be completed: another model requires the record being deleted. "
                        f"If possible, archive it instead.\n\nModel: {DESCRIPTIONS[model]} ({model})\n"
                        f"Constraint: {table}_{name}_fkey\n",
                        load_message=f'insert or update on table "{table}" violates foreign key constraint '
                                     f'"{table}_{name}_fkey"\nDETAIL:  Key ({name})=({value}) is not present in '
                                     f'table "{field["relation"].replace(".", "_")}".')
                out[name] = self._m2o_value(field["relation"], value)
            elif kind == "one2many":
                out[name] = value  # commands, applied by _apply_lines
            elif kind == "selection":
                if value is not False and value not in [c[0] for c in field["selection"]]:
                    raise OdooError("builtins.ValueError", f"Wrong value for {model}.{name}: {value!r}")
                out[name] = value
            elif kind == "boolean":
                out[name] = bool(value)
            elif kind in ("float", "monetary"):
                out[name] = float(value) if value is not False else 0.0
            elif kind == "integer":
                out[name] = int(value) if value is not False else 0
            else:
                out[name] = value if value is False or isinstance(value, str) else str(value)
        return out

    def _defaults(self, model: str, rid: int, now: str) -> dict[str, Any]:
        common = {"id": rid, "create_date": now, "write_date": now, "create_uid": [UID, "API User"],
                  "write_uid": [UID, "API User"]}
        if model == "res.partner":
            return {**common, "name": False, "is_company": False, "active": True, "email": False, "phone": False,
                    "street": False, "city": False, "zip": False, "country_id": False, "parent_id": False,
                    "lang": "en_US", "vat": False, "ref": False, "customer_rank": 0, "supplier_rank": 0,
                    "comment": False}
        if model == "product.product":
            return {**common, "name": False, "default_code": False, "barcode": False, "list_price": 1.0,
                    "standard_price": 0.0, "active": True, "type": "consu", "categ_id": [1, "All"],
                    "uom_id": [1, "Units"], "qty_available": 0.0, "description_sale": False}
        if model == "sale.order":
            return {**common, "name": f"S{rid:05d}", "partner_id": False, "date_order": now, "state": "draft",
                    "amount_untaxed": 0.0, "amount_tax": 0.0, "amount_total": 0.0, "currency_id": [1, "EUR"],
                    "user_id": [UID, "API User"], "client_order_ref": False, "origin": False,
                    "invoice_status": "no", "note": False, "order_line": []}
        return {**common, "order_id": False, "name": False, "product_id": False, "product_uom_qty": 1.0,
                "price_unit": None, "price_subtotal": 0.0}

    def _finish(self, model: str, record: dict[str, Any]) -> None:
        """Computed fields and constraints (B.3, B.4) of a record about to be stored."""
        if model == "res.partner" and not record.get("name"):
            raise OdooError("odoo.exceptions.ValidationError",
                            "The operation cannot be completed: Contacts require a name",
                            load_message="Contacts require a name")
        for name, field in FIELDS[model].items():
            if field.get("required") and name not in MAGIC and name not in COMPUTED.get(model, ()) \
                    and record.get(name) in (False, None, ""):
                table = "product_template" if model == "product.product" and name == "name" else \
                    model.replace(".", "_")
                raise OdooError(
                    "odoo.exceptions.ValidationError",
                    "The operation cannot be completed:\n- Create/update: a mandatory field is not set.\n"
                    "- Delete: another model requires the record being deleted. If possible, archive it instead."
                    f"\n\nModel: {DESCRIPTIONS[model]} ({model})\nField: {field['string']} ({name})\n",
                    load_message=f'null value in column "{name}" of relation "{table}" violates not-null '
                                 "constraint")
        if model == "product.product":
            code = record.get("default_code")
            others = [r for r in self.docs[model].values() if r["id"] != record["id"]]
            if self.unique_default_code and code and any(r.get("default_code") == code for r in others):
                raise OdooError("odoo.exceptions.ValidationError",
                                "The operation cannot be completed: Internal Reference must be unique across "
                                "the database!", load_message="Internal Reference must be unique across the "
                                "database!")
            barcode = record.get("barcode")
            holders = [r["name"] for r in others if barcode and r.get("barcode") == barcode]
            if holders:
                message = f'Barcode(s) already assigned:\n\n- Barcode "{barcode}" already assigned to product(s): ' \
                          + ", ".join(holders)
                raise OdooError("odoo.exceptions.ValidationError", message)
            record["display_name"] = f"[{code}] {record['name']}" if code else record["name"]
            record["product_tmpl_id"] = [record["id"], record["name"]]
        elif model == "sale.order.line":
            if record.get("price_unit") is None:
                product = record["product_id"] and self.docs["product.product"][record["product_id"][0]]
                record["price_unit"] = float(product["list_price"]) if product else 0.0
            if not record.get("name") and record["product_id"]:
                record["name"] = record["product_id"][1]
            record["price_subtotal"] = round(record["product_uom_qty"] * record["price_unit"], 2)
            record["display_name"] = f"{record['order_id'][1]} - {record['name'] or ''}"
        else:
            record["display_name"] = record.get("name") or False

    def _apply_lines(self, order: dict[str, Any], commands: Any, now: str) -> None:
        """sale.order.order_line x2many commands: (0, 0, vals) create, (1, id, vals) update, (2, id) delete,
        (5,) remove all; then the order's amounts (no taxes in the simulator)."""
        if not isinstance(commands, list):
            raise OdooError("builtins.ValueError", f"Wrong value for sale.order.order_line: {commands!r}")
        lines = list(order["order_line"])
        for command in commands:
            if not isinstance(command, list | tuple) or not command or command[0] not in (0, 1, 2, 5):
                raise OdooError("builtins.ValueError", f"Wrong value for sale.order.order_line: {command!r}")
            if command[0] == 0:
                lid = self._draw_id("sale.order.line")
                vals = {**self._convert("sale.order.line", command[2]), "order_id": [order["id"], order["name"]]}
                line = {**self._defaults("sale.order.line", lid, now), **vals}
                self._finish("sale.order.line", line)
                self._put("sale.order.line", line)
                lines.append(lid)
            elif command[1] not in lines:
                raise OdooError("odoo.exceptions.MissingError", "Record does not exist or has been deleted.\n"
                                f"(Record: sale.order.line({command[1]},), User: {UID})")
            elif command[0] == 1:
                line = {**self.docs["sale.order.line"][command[1]],
                        **self._convert("sale.order.line", command[2]), "write_date": now}
                self._finish("sale.order.line", line)
                self._put("sale.order.line", line)
            else:
                drop = lines if command[0] == 5 else [command[1]]
                for lid in list(drop):
                    self.unlink("sale.order.line", lid)
                lines = [] if command[0] == 5 else [i for i in lines if i != command[1]]
        order["order_line"] = lines
        total = round(sum(self.docs["sale.order.line"][i]["price_subtotal"] for i in lines), 2)
        order.update(amount_untaxed=total, amount_tax=0.0, amount_total=total)

    def _insert(self, model: str, vals: Any, now: str) -> int:
        values = self._convert(model, vals)
        rid = self._draw_id(model)
        lines = values.pop("order_line", None)
        record = {**self._defaults(model, rid, now), **values}
        self._finish(model, record)
        self._put(model, record)
        if lines is not None:
            self._apply_lines(record, lines, now)
        return rid

    def _update(self, model: str, ids: list[int], vals: Any, now: str) -> None:
        missing = [i for i in ids if i not in self.docs[model]]
        if missing:
            raise OdooError("odoo.exceptions.MissingError", "Record does not exist or has been deleted.\n"
                            f"(Record: {model}({', '.join(map(str, missing))},), User: {UID})")
        values = self._convert(model, vals)
        lines = values.pop("order_line", None)
        for rid in ids:
            record = {**self.docs[model][rid], **values, "write_date": now}  # bumped even if nothing changed
            self._finish(model, record)
            self._put(model, record)
            if lines is not None:
                self._apply_lines(record, lines, now)

    def _delete(self, model: str, ids: list[int]) -> None:
        for rid in ids:
            if rid not in self.docs[model]:
                continue  # "no need to warn about deleting an already deleted record" (B.7)
            record = self.docs[model][rid]
            if model == "sale.order" and record["state"] in ("sale", "done"):
                raise OdooError("odoo.exceptions.UserError", "You can not delete a sent quotation or a confirmed "
                                "sales order. You must first cancel it.")
            if model == "res.partner" and any(o["partner_id"] and o["partner_id"][0] == rid
                                              for o in self.docs["sale.order"].values()):
                raise OdooError("odoo.exceptions.ValidationError",
                                "The operation cannot be completed: another model requires the record being "
                                "deleted. If possible, archive it instead.\n\nModel: Sales Order (sale.order)\n"
                                "Constraint: sale_order_partner_id_fkey\n")
            for lid in record.get("order_line") or []:
                self.unlink("sale.order.line", lid)
            for xid in [x["id"] for x in self.docs["ir.model.data"].values()
                        if x["model"] == model and x["res_id"] == rid]:
                self.unlink("ir.model.data", xid)
            self.unlink(model, rid)

    def _rollback(self, mark: int) -> None:
        """Undo the journal back to `mark` (a failed call, or one row of `load`)."""
        journal, self._journal = self._journal, None
        assert journal is not None
        while len(journal) > mark:
            model, rid, old = journal.pop()
            if rid in self.docs[model]:
                self.unlink(model, rid)
            if old is not None:
                self._put(model, old)
        self._journal = journal

    def _load(self, model: str, fields: Any, data: Any, context: dict[str, Any], now: str) -> dict[str, Any]:
        """`load(fields, rows)`: import-format strings; `id` is an external id (module from the context's
        `module`, default `__import__`), created with its record or updating it; any row error rolls the
        whole call back (`ids: false`) and is reported in `messages`."""
        if not isinstance(fields, list) or not isinstance(data, list):
            raise OdooError("builtins.TypeError", "load() expects a list of fields and a list of rows")
        spec = FIELDS[model]
        for name in fields:
            base = str(name).split("/")[0]
            if base != "id" and base not in spec:
                raise OdooError("builtins.ValueError", f"Invalid field {base!r} on model {model!r}")
        module = str(context.get("module") or "__import__")
        messages: list[dict[str, Any]] = []
        ids: list[int] = []
        assert self._journal is not None
        for index, row in enumerate(data):
            mark = len(self._journal)
            try:
                values, xmlid = self._import_row(model, fields, row)
                self._allow(model, "create")
                ids.append(self._import_record(model, values, xmlid, module, now))
            except OdooError as exc:
                self._rollback(mark)
                messages.append({"type": "error", "message": exc.load_message or exc.message, "record": index,
                                 "rows": {"from": index, "to": index}})
        if messages:
            self._rollback(0)
            return {"ids": False, "messages": messages, "nextrow": 0}
        return {"ids": ids, "messages": [], "nextrow": 0}

    def _import_row(self, model: str, fields: list[Any], row: Any) -> tuple[dict[str, Any], str | None]:
        if not isinstance(row, list) or len(row) != len(fields):
            raise OdooError("builtins.ValueError", "a row must have one value per field")
        values: dict[str, Any] = {}
        xmlid = None
        for name, cell in zip(fields, row, strict=True):
            text = "" if cell is None or cell is False else str(cell)
            base, _, sub = str(name).partition("/")
            if base == "id":
                xmlid = text or None
                continue
            field = FIELDS[model][base]
            label = field["string"]
            if not text:
                values[base] = False
            elif field["type"] == "many2one":
                values[base] = self._import_m2o(field, label, sub, text)
            elif field["type"] == "boolean":
                values[base] = text.lower() in ("1", "true", "yes")
            elif field["type"] in ("float", "monetary", "integer"):
                try:
                    values[base] = int(text) if field["type"] == "integer" else float(text)
                except ValueError:
                    raise OdooError("builtins.ValueError", f"'{text}' does not seem to be a number for field "
                                    f"'{label}'") from None
            elif field["type"] == "selection":
                keys = {k: k for k, _ in field["selection"]} | {v: k for k, v in field["selection"]}
                if text not in keys:
                    raise OdooError("builtins.ValueError", f"Value '{text}' not found in selection field '{label}'")
                values[base] = keys[text]
            elif field["type"] in ("char", "text", "html"):
                values[base] = text
            else:
                raise OdooError("builtins.ValueError", f"cannot import field '{label}' of type {field['type']}")
        return values, xmlid

    def _import_m2o(self, field: dict[str, Any], label: str, sub: str, text: str) -> Any:
        relation = field["relation"]
        if sub == ".id":
            if not text.isdigit():
                raise OdooError("builtins.ValueError", f"Invalid database id '{text}' for the field '{label}'")
            return int(text)  # an id that does not exist fails in _convert, as the foreign key does
        if sub == "id":
            module, _, name = text.partition(".") if "." in text else ("__import__", "", text)
            found = [x["res_id"] for x in self.docs["ir.model.data"].values()
                     if (x["module"], x["name"], x["model"]) == (module, name, relation)]
        else:
            found = [r["id"] for r in self.docs.get(relation, {}).values() if r.get("display_name") == text
                     or r.get("name") == text or (relation == "res.country" and r.get("code") == text)]
        if not found:
            raise OdooError("builtins.ValueError", f"No matching record found for {'external id' if sub else 'name'}"
                            f" '{text}' in field '{label}'")
        return found[0]

    def _import_record(self, model: str, values: dict[str, Any], xmlid: str | None, module: str, now: str) -> int:
        if xmlid is None:
            return self._insert(model, values, now)
        module, _, name = xmlid.partition(".") if "." in xmlid else (module, "", xmlid)
        for entry in self.docs["ir.model.data"].values():
            if (entry["module"], entry["name"]) == (module, name):
                if entry["model"] != model or entry["res_id"] not in self.docs[model]:
                    break  # a dangling xmlid: Odoo replaces it with a new record
                self._update(model, [entry["res_id"]], values, now)
                return int(entry["res_id"])
        else:
            entry = None
        rid = self._insert(model, values, now)
        if entry is not None:
            self.unlink("ir.model.data", entry["id"])
        xid = self._draw_id("ir.model.data")
        self._put("ir.model.data", {"id": xid, "module": module, "name": name, "model": model, "res_id": rid,
                                    "complete_name": f"{module}.{name}", "display_name": f"{module}.{name}",
                                    "noupdate": False, "create_date": now, "write_date": now,
                                    "create_uid": [UID, "API User"], "write_uid": [UID, "API User"]})
        return rid

    def _orm_write(self, model: str, method: str, params: dict[str, Any], context: dict[str, Any],
                   json2: bool) -> Any:
        """create / write / unlink / load, in one transaction."""
        if model not in self.docs:
            raise OdooError("builtins.KeyError", repr(model))
        now = _fmt(self._now())
        self._journal = []
        try:
            if method == "create":
                vals = params.get("vals_list")
                one = isinstance(vals, dict)
                self._allow(model, "create")
                ids = [self._insert(model, v, now) for v in ([vals] if one else vals or [])]
                result: Any = ids[0] if one and not json2 else ids  # B.1: RPC create({..}) is an int
            elif method in ("write", "unlink"):
                given = params.get("ids")
                ids = [given] if isinstance(given, int) else list(given or [])
                self._allow(model, method)
                if method == "write":
                    self._update(model, ids, params.get("vals"), now)
                else:
                    self._delete(model, ids)
                result = True
            else:
                result = self._load(model, params.get("fields"), params.get("data"), context, now)
        except BaseException:
            self._rollback(0)
            raise
        finally:
            self._journal = None
        return result
