"""WooCommerce in the conformance suite."""

from __future__ import annotations

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.rig import ConformanceCase

CREDS = {"consumer_key": "ck_conformance", "consumer_secret": "cs_conformance"}

CASE = ConformanceCase(
    provider="woocommerce",
    make_simulator=lambda records, seed: WooCommerceSimulator(records=records, seed=seed, credentials=CREDS),
    settings=lambda url: ConnectionSettings("woo", "woocommerce", url, credentials=CREDS),
    entities=("orders", "customers", "products"),
    deletes="tombstone",  # orders go to the trash, which an incremental sync sees
)
