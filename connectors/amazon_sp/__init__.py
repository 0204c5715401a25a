"""Amazon Selling Partner API: FBA inventory summaries, financial events, reimbursements."""

from freshd.connectors.registry import Provider

PROVIDER = Provider(
    "amazon_sp",
    connector="freshd.connectors.amazon_sp.connector:AmazonSPConnector",
    simulator="freshd.connectors.amazon_sp.simulator:AmazonSPSimulator",
    doc="docs/connectors/amazon_sp.md",
)
