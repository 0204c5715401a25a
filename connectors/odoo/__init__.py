"""odoo connector."""
