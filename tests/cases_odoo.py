"""Odoo in the conformance suite (JSON-RPC; tests/test_odoo.py covers JSON-2 too)."""

from __future__ import annotations

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.odoo.simulator import OdooSimulator
from tests.rig import ConformanceCase

CREDS = {"database": "acme", "username": "api@acme.example", "api_key": "9f2c6e1a4b7d8e0f3a5c"}

CASE = ConformanceCase(
    provider="odoo",
    make_simulator=lambda records, seed: OdooSimulator(records=records, seed=seed, credentials=CREDS),
    settings=lambda url: ConnectionSettings(
        "erp", "odoo", url, credentials={"api_key": CREDS["api_key"]},
        options={"database": CREDS["database"], "username": CREDS["username"], "page_size": 100}),
    entities=("partners", "sale_orders", "products"),
    deletes="reconcile",  # hard deletes leave no trace: the full listing (or the id reconciliation) finds them
    records=250,
)
