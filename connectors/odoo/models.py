"""What the simulated Odoo database holds: its models and fields (as `fields_get` describes them),
fixed records, and Odoo's exception as the server serializes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

UID = 2  # the API user's id (1 is OdooBot/superuser)
MODELS = ("res.partner", "sale.order", "product.product")  # seeded, synced by the connector
AUX_MODELS = ("res.country", "sale.order.line", "ir.model.data")  # served alongside (writes: see §writes)
# a few countries with their ISO code, readable with search_read on res.country (ids are the simulator's)
COUNTRIES = ((20, "BE", "Belgium"), (57, "DE", "Germany"), (68, "ES", "Spain"), (75, "FR", "France"),
             (109, "IT", "Italy"), (165, "NL", "Netherlands"), (222, "GB", "United Kingdom"),
             (233, "US", "United States"))
COUNTRY_IDS = {code: cid for cid, code, _ in COUNTRIES}
# many2one targets that are not served as models: the ids that exist there
FIXED_RELATIONS = {"res.users": {UID: "API User"}, "res.currency": {1: "EUR"}, "product.category": {1: "All"},
                   "uom.uom": {1: "Units"}}
# the model's description, as Odoo's error texts name it
DESCRIPTIONS = {"res.partner": "Contact", "sale.order": "Sales Order", "product.product": "Product",
                "sale.order.line": "Sales Order Line", "res.country": "Country", "ir.model.data": "Model Data"}
ORDER_STATES = ("draft", "sent", "sale", "done", "cancel")

def _f(kind: str, label: str, **more: Any) -> dict[str, Any]:
    return {"type": kind, "string": label, **more}


def _m2o(label: str, relation: str) -> dict[str, Any]:
    return {"type": "many2one", "string": label, "relation": relation}


def _sel(label: str, *choices: tuple[str, str]) -> dict[str, Any]:
    return {"type": "selection", "string": label, "selection": [list(c) for c in choices]}


_LOG_ACCESS = {"id": _f("integer", "ID", readonly=True), "display_name": _f("char", "Display Name", readonly=True,
                                                                            store=False),
               "create_date": _f("datetime", "Created on", readonly=True),
               "create_uid": _m2o("Created by", "res.users") | {"readonly": True},
               "write_date": _f("datetime", "Last Updated on", readonly=True),
               "write_uid": _m2o("Last Updated by", "res.users") | {"readonly": True}}
# fields_get: every field the simulator's records carry, typed as Odoo types them (many2one with
# its relation, selection with its choices); other attributes default in `_describe`.
FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "res.partner": {
        **_LOG_ACCESS, "name": _f("char", "Name"), "is_company": _f("boolean", "Is a Company"),
        "active": _f("boolean", "Active"), "email": _f("char", "Email"), "phone": _f("char", "Phone"),
        "street": _f("char", "Street"), "city": _f("char", "City"), "zip": _f("char", "Zip"),
        "country_id": _m2o("Country", "res.country"), "parent_id": _m2o("Related Company", "res.partner"),
        "lang": _sel("Language", ("en_US", "English (US)"), ("fr_FR", "French / Français")),
        "vat": _f("char", "Tax ID"), "ref": _f("char", "Reference"),
        "customer_rank": _f("integer", "Customer Rank"), "supplier_rank": _f("integer", "Supplier Rank"),
        "comment": _f("html", "Notes"),
    },
    "sale.order": {
        **_LOG_ACCESS, "name": _f("char", "Order Reference", required=True),
        "partner_id": _m2o("Customer", "res.partner") | {"required": True},
        "date_order": _f("datetime", "Order Date", required=True),
        "state": _sel("Status", ("draft", "Quotation"), ("sent", "Quotation Sent"), ("sale", "Sales Order"),
                      ("done", "Locked"), ("cancel", "Cancelled")) | {"readonly": True},
        "amount_untaxed": _f("monetary", "Untaxed Amount", readonly=True, currency_field="currency_id"),
        "amount_tax": _f("monetary", "Taxes", readonly=True, currency_field="currency_id"),
        "amount_total": _f("monetary", "Total", readonly=True, currency_field="currency_id"),
        "currency_id": _m2o("Currency", "res.currency"), "user_id": _m2o("Salesperson", "res.users"),
        "client_order_ref": _f("char", "Customer Reference"),
        "invoice_status": _sel("Invoice Status", ("upselling", "Upselling Opportunity"),
                               ("invoiced", "Fully Invoiced"), ("to invoice", "To Invoice"),
                               ("no", "Nothing to Invoice")) | {"readonly": True},
        "note": _f("html", "Terms and conditions"), "origin": _f("char", "Source Document"),
        "order_line": {"type": "one2many", "string": "Order Lines", "relation": "sale.order.line",
                       "relation_field": "order_id"},
    },
    "product.product": {
        **_LOG_ACCESS, "name": _f("char", "Name", required=True), "default_code": _f("char", "Internal Reference"),
        "barcode": _f("char", "Barcode"), "list_price": _f("float", "Sales Price"),
        "standard_price": _f("float", "Cost"), "active": _f("boolean", "Active"),
        "type": _sel("Product Type", ("consu", "Goods"), ("service", "Service"), ("combo", "Combo")),
        "product_tmpl_id": _m2o("Product Template", "product.template") | {"required": True},
        "categ_id": _m2o("Product Category", "product.category"), "uom_id": _m2o("Unit", "uom.uom"),
        "qty_available": _f("float", "Quantity On Hand", readonly=True),
        "description_sale": _f("text", "Sales Description"),
    },
    "res.country": {**_LOG_ACCESS, "name": _f("char", "Country Name", required=True),
                    "code": _f("char", "Country Code")},
    "sale.order.line": {
        **_LOG_ACCESS, "order_id": _m2o("Order Reference", "sale.order") | {"required": True},
        "name": _f("text", "Description"), "product_id": _m2o("Product", "product.product"),
        "product_uom_qty": _f("float", "Quantity"), "price_unit": _f("float", "Unit Price"),
        "price_subtotal": _f("monetary", "Subtotal", readonly=True, currency_field="currency_id"),
    },
    "ir.model.data": {
        **_LOG_ACCESS, "name": _f("char", "External Identifier", required=True),
        "module": _f("char", "Module", required=True), "model": _f("char", "Model Name", required=True),
        "res_id": {"type": "many2one_reference", "string": "Record ID", "model_field": "model"},
        "complete_name": _f("char", "Complete ID", readonly=True, store=False),
        "noupdate": _f("boolean", "Non Updatable"),
    },
}
# written values Odoo drops: the log-access columns (stripped, B.5) and computed fields without an
# inverse (their value is recomputed; the write changes nothing)
MAGIC = frozenset({"id", "create_date", "create_uid", "write_date", "write_uid", "display_name"})
COMPUTED = {"sale.order": frozenset({"amount_untaxed", "amount_tax", "amount_total", "invoice_status"}),
            "product.product": frozenset({"qty_available", "product_tmpl_id"}),
            "sale.order.line": frozenset({"price_subtotal"})}

def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class OdooError(Exception):
    """An Odoo exception as the server serializes it (`name` is module.Class)."""

    def __init__(self, name: str, message: str, *, status: int = 200, code: int = 200,
                 load_message: str | None = None) -> None:
        super().__init__(message)
        self.name, self.message, self.status, self.code = name, message, status, code
        self.load_message = load_message  # how `load` reports it in `messages` (SQL errors read differently)

    def data(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "arguments": [self.message], "context": {},
                "debug": f"Traceback (most recent call last):\n  ...\n{self.name}: {self.message}\n"}

