"""WooCommerce REST API v3."""

from freshd.connectors.registry import Provider

PROVIDER = Provider(
    "woocommerce",
    connector="freshd.connectors.woocommerce.connector:WooCommerceConnector",
    simulator="freshd.connectors.woocommerce.simulator:WooCommerceSimulator",
    doc="docs/connectors/woocommerce.md",
)
