"""The generic REST connector: collections, paging and auth declared in the connection's options."""

from freshd.connectors.registry import Provider

PROVIDER = Provider(
    "rest",
    connector="freshd.connectors.rest.connector:RestConnector",
    simulator="freshd.connectors.rest.simulator:GenericRestSimulator",
    doc="docs/connectors/rest.md",
)
