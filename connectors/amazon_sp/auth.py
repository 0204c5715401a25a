"""Login with Amazon: the refresh grant, its errors, and the access token's header.

``POST {token_url}`` (default ``https://api.amazon.com/auth/o2/token``), form-encoded
``grant_type=refresh_token``; the 1-hour access token goes in ``x-amz-access-token``.
LWA ``invalid_grant``/``invalid_client``/``unauthorized_client``/``access_denied`` are
ReauthRequired (sticky, no loop).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from freshd.connectors.errors import ErrorTable, classify_with
from freshd.connectors.http import ProviderClient
from freshd.errors import TransientError
from freshd.policies.tokens import Token

LWA_TOKEN_URL = "https://api.amazon.com/auth/o2/token"

# Login with Amazon's `{"error", "error_description"}` answers (LWAExceptionErrorCode.java)
LWA_ERRORS = ErrorTable(
    "Login with Amazon", code=("error",), message=("error_description",), transient_statuses=frozenset(),
    transient=frozenset({"server_error", "temporarily_unavailable"}),
    # "these credentials will not work again"
    reauth=frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "access_denied"}),
    reauth_statuses=frozenset({401, 403}),
)
classify_lwa = classify_with(LWA_ERRORS)


def access_token_header(token: Token) -> dict[str, str]:
    return {"x-amz-access-token": token.access_token}


async def refresh(lwa: ProviderClient, token_url: str, credentials: Mapping[str, str], current: Token | None) -> Token:
    """A new access token from the refresh grant (the refresh token does not rotate; a returned one is kept)."""
    grant = (current.refresh_token if current is not None else None) or credentials["refresh_token"]
    body, _ = await lwa.request_json("POST", token_url, data={
        "grant_type": "refresh_token", "refresh_token": grant,
        "client_id": credentials["client_id"], "client_secret": credentials["client_secret"],
    }, limit="token")
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise TransientError("Login with Amazon: no access_token in the token response")
    try:
        expires_in = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    return Token(body["access_token"], time.time() + expires_in, body.get("refresh_token") or grant,
                 {"token_type": body.get("token_type", "bearer")})
