"""Generic REST in the conformance suite: the generic simulator, one stream per paging style, OAuth2."""

from __future__ import annotations

from typing import Any

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.rest.simulator import GenericRestSimulator
from tests.rig import ConformanceCase

CREDS = {"client_id": "client_conf", "client_secret": "csecret_conf", "refresh_token": "rt_conf"}

OPTIONS: dict[str, Any] = {
    "auth": {"kind": "oauth2_refresh", "token_url": "/oauth/token"},
    "streams": [
        {"name": "contacts", "path": "api/v1/page/contacts", "records_path": "data",
         "paginator": {"kind": "page_number", "size": 100, "total_pages_path": "meta.total_pages",
                       "total_path": "meta.total"},
         "cursor_field": "updated_at", "incremental_param": "updated_since", "lookback": 1,
         "item_path": "api/v1/records/contacts/{id}"},
        {"name": "deals", "path": "api/v1/cursor/deals", "records_path": "results",
         "paginator": {"kind": "cursor", "next_path": "paging.next_cursor", "size_param": "limit"},
         "cursor_field": "updated_at", "incremental_param": "updated_since", "lookback": 1},
        {"name": "tickets", "path": "api/v1/link/tickets",
         "paginator": {"kind": "link_header", "size_param": "per_page"},
         "cursor_field": "updated_at", "incremental_param": "updated_since", "lookback": 1},
    ],
}

CASE = ConformanceCase(
    provider="rest",
    make_simulator=lambda records, seed: GenericRestSimulator(records=records, seed=seed, credentials=CREDS,
                                                              auth="oauth2"),
    settings=lambda url: ConnectionSettings("generic", "rest", url, credentials=CREDS, options=OPTIONS),
    entities=("contacts", "deals", "tickets"),
    uses_tokens=True,
    deletes="reconcile",  # the simulator deletes for good: a full sync's complete listing shows it
)
