"""Powens open banking: connections, accounts, transactions."""

from freshd.connectors.registry import Provider

PROVIDER = Provider(
    "powens",
    connector="freshd.connectors.powens.connector:PowensConnector",
    simulator="freshd.connectors.powens.simulator:PowensSimulator",
    doc="docs/connectors/powens.md",
)
