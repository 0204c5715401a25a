"""Odoo external API (JSON-RPC and JSON-2): contacts, sale orders, product variants."""

from freshd.connectors.registry import Provider

PROVIDER = Provider(
    "odoo",
    connector="freshd.connectors.odoo.connector:OdooConnector",
    simulator="freshd.connectors.odoo.simulator:OdooSimulator",
    doc="docs/connectors/odoo.md",
)
