"""Orion Advisor API (wealth management): clients, accounts, AUM history."""

from freshd.connectors.registry import Provider

PROVIDER = Provider(
    "orion",
    connector="freshd.connectors.orion.connector:OrionConnector",
    simulator="freshd.connectors.orion.simulator:OrionSimulator",
    doc="docs/connectors/orion.md",
)
