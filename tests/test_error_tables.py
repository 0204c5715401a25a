"""Every provider's declared error table, fed the answers its docs (docs/connectors/*.md) and tests
state: the class, code and Retry-After each becomes."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from freshd.connectors.amazon_sp.connector import StaleNextToken
from freshd.connectors.amazon_sp.connector import classify as sp_api
from freshd.connectors.amazon_sp.connector import classify_lwa as lwa
from freshd.connectors.errors import ErrorTable, classify_with, refusal
from freshd.connectors.http import Classify
from freshd.connectors.odoo.connector import ERRORS as ODOO
from freshd.connectors.odoo.connector import classify as odoo
from freshd.connectors.orion.connector import classify as orion
from freshd.connectors.orion.connector import classify_token as orion_token
from freshd.connectors.powens.connector import classify as powens
from freshd.connectors.rest.connector import classify_token as rest_token
from freshd.connectors.rest.connector import make_classify
from freshd.connectors.woocommerce.connector import ERRORS as WOOCOMMERCE
from freshd.connectors.woocommerce.connector import classify as woocommerce
from freshd.errors import (
    AuthExpired,
    DuplicateKey,
    ItemError,
    PermanentError,
    ProviderError,
    RateLimited,
    ReauthRequired,
    Rejected,
    TransientError,
)

rest_oauth = make_classify(refreshable=True)
rest_static = make_classify(refreshable=False)

SP = "https://sellingpartnerapi-na.amazon.com"


def sp(code: str, message: str, details: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": details}]}


def rpc(name: str, message: str = "boom", code: int = 200) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": "Odoo Server Error",
                                                 "data": {"name": name, "message": message}}}


def rpc_call(method: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "call", "params": {
        "service": "object", "method": "execute_kw", "args": ["db", 2, "key", "res.partner", method, [[]], {}]}}


# (name, classify, status, body, headers, (method, url, request json)) -> (class, code, retry_after)
Case = tuple[str, Classify, int, Any, dict[str, str], tuple[str, str, Any],
             tuple[type[ProviderError] | None, str | None, float | None]]
GET = ("GET", "https://provider.example/api/things", None)

CASES: list[Case] = [
    # WooCommerce (docs/connectors/woocommerce.md "Error mapping")
    ("woo 429", woocommerce, 429, {"code": "too_many"}, {"Retry-After": "5"}, GET, (RateLimited, "too_many", 5)),
    ("woo 429 ratelimit header", woocommerce, 429, "", {"RateLimit-Retry-After": "3"}, GET, (RateLimited, None, 3)),
    ("woo 503", woocommerce, 503, "<html>", {}, GET, (TransientError, None, None)),
    ("woo 408", woocommerce, 408, "", {}, GET, (TransientError, None, None)),
    ("woo 401", woocommerce, 401, {"code": "woocommerce_rest_authentication_error", "message": "Consumer key is "
                                   "invalid."}, {}, GET,
     (ReauthRequired, "woocommerce_rest_authentication_error", None)),
    ("woo 403 cannot view", woocommerce, 403, {"code": "woocommerce_rest_cannot_view", "message": "Sorry, you "
                                               "cannot list resources."}, {}, GET,
     (ReauthRequired, "woocommerce_rest_cannot_view", None)),
    ("woo nonce", woocommerce, 401, {"code": "woocommerce_rest_authentication_error",
                                     "message": "Invalid nonce - nonce has already been used."}, {}, GET,
     (TransientError, "woocommerce_rest_authentication_error", None)),
    ("woo 403 other", woocommerce, 403, {"code": "rest_forbidden", "message": "no"}, {}, GET,
     (PermanentError, "rest_forbidden", None)),
    ("woo 404", woocommerce, 404, {"code": "rest_no_route"}, {}, GET, (PermanentError, "rest_no_route", None)),
    ("woo 200", woocommerce, 200, [], {}, GET, (None, None, None)),
    # SP-API and Login with Amazon (docs/connectors/amazon_sp.md "Error mapping")
    ("sp quota by plan", sp_api, 429, sp("QuotaExceeded", "You exceeded your quota"), {},
     ("GET", f"{SP}/finances/v0/financialEvents?PostedAfter=2024-01-01T00:00:00Z", None),
     (RateLimited, "QuotaExceeded", 2.0)),
    ("sp quota report plan", sp_api, 429, sp("QuotaExceeded", "quota"), {},
     ("POST", f"{SP}/reports/2021-06-30/reports", None), (RateLimited, "QuotaExceeded", 1 / 0.0167)),
    ("sp quota retry-after", sp_api, 429, sp("QuotaExceeded", "quota"), {"Retry-After": "9"},
     ("GET", f"{SP}/fba/inventory/v1/summaries", None), (RateLimited, "QuotaExceeded", 9)),
    ("sp 503", sp_api, 503, sp("ServiceUnavailable", "later"), {}, GET,
     (TransientError, "ServiceUnavailable", None)),
    ("sp 500", sp_api, 500, sp("InternalFailure", "oops"), {}, GET, (TransientError, "InternalFailure", None)),
    ("sp 408", sp_api, 408, "", {}, GET, (TransientError, None, None)),
    ("sp 401", sp_api, 401, sp("Unauthorized", "no"), {}, GET, (AuthExpired, "Unauthorized", None)),
    ("sp 403 expired token", sp_api, 403, sp("Unauthorized", "Access to requested resource is denied.",
                                             "The access token you provided has expired."), {}, GET,
     (AuthExpired, "Unauthorized", None)),
    ("sp 403 revoked token", sp_api, 403, sp("Unauthorized", "Access to requested resource is denied.",
                                             "The access token you provided is revoked, malformed or invalid."),
     {}, GET, (AuthExpired, "Unauthorized", None)),
    ("sp 403 no role", sp_api, 403, sp("Unauthorized", "Access to requested resource is denied."), {}, GET,
     (PermanentError, "Unauthorized", None)),
    ("sp stale next token", sp_api, 400, sp("InvalidInput", "Next token is invalid or expired"), {},
     ("GET", f"{SP}/fba/inventory/v1/summaries?nextToken=abc", None), (StaleNextToken, "InvalidInput", None)),
    ("sp token words unpaged", sp_api, 400, sp("InvalidInput", "Next token is invalid or expired"), {}, GET,
     (PermanentError, "InvalidInput", None)),
    ("sp 400", sp_api, 400, sp("InvalidInput", "Invalid Input"), {}, GET, (PermanentError, "InvalidInput", None)),
    ("sp 404", sp_api, 404, sp("NotFound", "gone"), {}, GET, (PermanentError, "NotFound", None)),
    ("sp 200", sp_api, 200, {"payload": {}}, {}, GET, (None, None, None)),
    ("lwa invalid_grant", lwa, 400, {"error": "invalid_grant", "error_description": "revoked"}, {}, GET,
     (ReauthRequired, "invalid_grant", None)),
    ("lwa invalid_client", lwa, 401, {"error": "invalid_client"}, {}, GET, (ReauthRequired, "invalid_client", None)),
    ("lwa 403", lwa, 403, "", {}, GET, (ReauthRequired, None, None)),
    ("lwa server_error", lwa, 500, {"error": "server_error"}, {}, GET, (TransientError, "server_error", None)),
    ("lwa temporarily_unavailable", lwa, 400, {"error": "temporarily_unavailable"}, {}, GET,
     (TransientError, "temporarily_unavailable", None)),
    ("lwa 429", lwa, 429, {"error": "slow_down"}, {"Retry-After": "2"}, GET, (RateLimited, "slow_down", 2)),
    ("lwa invalid_scope", lwa, 400, {"error": "invalid_scope"}, {}, GET, (PermanentError, "invalid_scope", None)),
    # Odoo (docs/connectors/odoo.md "Errors"): JSON-RPC's envelope in a 200, JSON-2's statuses
    ("odoo rpc AccessDenied", odoo, 200, rpc("odoo.exceptions.AccessDenied"), {}, GET,
     (ReauthRequired, "odoo.exceptions.AccessDenied", None)),
    ("odoo rpc wrong database", odoo, 200, rpc("psycopg2.OperationalError", 'database "x" does not exist'), {}, GET,
     (ReauthRequired, "psycopg2.OperationalError", None)),
    ("odoo rpc OperationalError", odoo, 200, rpc("psycopg2.OperationalError", "server closed"), {}, GET,
     (TransientError, "psycopg2.OperationalError", None)),
    ("odoo rpc serialization", odoo, 200, rpc("psycopg2.errors.SerializationFailure"), {}, GET,
     (TransientError, "psycopg2.errors.SerializationFailure", None)),
    ("odoo rpc session code 100", odoo, 200, rpc("odoo.http.SessionExpiredException", code=100), {}, GET,
     (TransientError, "odoo.http.SessionExpiredException", None)),
    ("odoo rpc ValidationError read", odoo, 200, rpc("odoo.exceptions.ValidationError"), {}, GET,
     (PermanentError, "odoo.exceptions.ValidationError", None)),
    ("odoo rpc unknown", odoo, 200, rpc("something.Unknown"), {}, GET, (PermanentError, "something.Unknown", None)),
    ("odoo rpc result", odoo, 200, {"jsonrpc": "2.0", "id": 1, "result": [1]}, {}, GET, (None, None, None)),
    ("odoo json2 body", odoo, 200, [{"id": 1}], {}, GET, (None, None, None)),
    ("odoo rpc neither", odoo, 200, {"jsonrpc": "2.0", "id": 1}, {}, GET, (TransientError, None, None)),
    ("odoo rpc write unique", odoo, 200, rpc("odoo.exceptions.ValidationError", "The email must be unique"), {},
     ("POST", "https://odoo.example/jsonrpc", rpc_call("create")), (DuplicateKey, "odoo.exceptions.ValidationError",
                                                                     None)),
    ("odoo rpc write rejected", odoo, 200, rpc("odoo.exceptions.UserError", "not allowed"), {},
     ("POST", "https://odoo.example/jsonrpc", rpc_call("write")), (Rejected, "odoo.exceptions.UserError", None)),
    ("odoo rpc write missing", odoo, 200, rpc("odoo.exceptions.MissingError", "deleted"), {},
     ("POST", "https://odoo.example/jsonrpc", rpc_call("unlink")), (ItemError, "odoo.exceptions.MissingError", None)),
    ("odoo json2 401", odoo, 401, {"name": "odoo.exceptions.AccessDenied", "message": "bad key"}, {}, GET,
     (ReauthRequired, "odoo.exceptions.AccessDenied", None)),
    ("odoo json2 422", odoo, 422, {"name": "odoo.exceptions.UserError", "message": "no"}, {}, GET,
     (PermanentError, "odoo.exceptions.UserError", None)),
    ("odoo json2 422 on a write", odoo, 422, {"name": "odoo.exceptions.ValidationError", "message": "duplicate key"},
     {}, ("POST", "https://odoo.example/json/2/res.partner/create", None),
     (DuplicateKey, "odoo.exceptions.ValidationError", None)),
    ("odoo json2 503", odoo, 503, {"name": "odoo.exceptions.UserError", "message": "later"}, {}, GET,
     (TransientError, "odoo.exceptions.UserError", None)),
    ("odoo 429", odoo, 429, "slow down", {"Retry-After": "7"}, GET, (RateLimited, None, 7)),
    ("odoo 502 proxy", odoo, 502, "<html>", {}, GET, (TransientError, None, None)),
    # Orion (docs/connectors/orion.md "Errors")
    ("orion 401 data", orion, 401, {"Message": "no"}, {}, GET, (AuthExpired, None, None)),
    ("orion 401 token", orion_token, 401, {"Message": "no"}, {}, GET, (ReauthRequired, None, None)),
    ("orion 400 token", orion_token, 400, {"Message": "no"}, {}, GET, (ReauthRequired, None, None)),
    ("orion 403 data", orion, 403, {"Message": "no"}, {}, GET, (PermanentError, None, None)),
    ("orion 404", orion, 404, {"Message": "no"}, {}, GET, (PermanentError, None, None)),
    ("orion 500", orion, 500, {"Message": "no"}, {"X-OAS-CorrelationId": "c0ffee"}, GET, (TransientError, None, None)),
    ("orion 429", orion, 429, {"Message": "no"}, {"Retry-After": "4"}, GET, (RateLimited, None, 4)),
    ("orion token 503", orion_token, 503, "", {}, GET, (TransientError, None, None)),
    # Powens (docs/connectors/powens.md "Errors")
    ("powens 401", powens, 401, {"code": "invalidToken"}, {}, GET, (ReauthRequired, "invalidToken", None)),
    ("powens wrongpass", powens, 400, {"code": "wrongpass"}, {}, GET, (ReauthRequired, "wrongpass", None)),
    ("powens SCARequired", powens, 400, {"code": "SCARequired"}, {}, GET, (ReauthRequired, "SCARequired", None)),
    ("powens websiteUnavailable", powens, 400, {"code": "websiteUnavailable"}, {}, GET,
     (TransientError, "websiteUnavailable", None)),
    ("powens bug", powens, 400, {"code": "bug"}, {}, GET, (TransientError, "bug", None)),
    ("powens 409", powens, 409, {"code": "conflict"}, {}, GET, (TransientError, "conflict", None)),
    ("powens 503", powens, 503, {"code": "maintenance"}, {}, GET, (TransientError, "maintenance", None)),
    ("powens 429", powens, 429, {"code": "tooManyRequests"}, {"Retry-After": "3"}, GET,
     (RateLimited, "tooManyRequests", 3)),
    ("powens rateLimiting", powens, 400, {"code": "rateLimiting"}, {}, GET, (RateLimited, "rateLimiting", None)),
    ("powens invalidValue", powens, 400, {"code": "invalidValue"}, {}, GET, (PermanentError, "invalidValue", None)),
    ("powens unknown code", powens, 400, {"code": "someCodeAddedLater"}, {}, GET,
     (PermanentError, "someCodeAddedLater", None)),
    ("powens 200", powens, 200, {"transactions": []}, {}, GET, (None, None, None)),
    # the generic REST connector (docs/connectors/rest.md "Limits and errors")
    ("rest 429", rest_oauth, 429, {"error": {"code": "slow", "message": "m"}}, {"Retry-After": "6"}, GET,
     (RateLimited, "slow", 6)),
    ("rest 503 retry-after", rest_static, 503, {"detail": "maintenance"}, {"Retry-After": "30"}, GET,
     (RateLimited, None, 30)),
    ("rest 503", rest_static, 503, {"detail": "maintenance"}, {}, GET, (TransientError, None, None)),
    ("rest 425", rest_static, 425, "", {}, GET, (TransientError, None, None)),
    ("rest 401 oauth", rest_oauth, 401, {"error": "invalid_token"}, {}, GET, (AuthExpired, "invalid_token", None)),
    ("rest 401 static", rest_static, 401, {"code": "unauthorized"}, {}, GET, (ReauthRequired, "unauthorized", None)),
    ("rest 403", rest_static, 403, {"title": "Forbidden"}, {}, GET, (PermanentError, None, None)),
    ("rest token invalid_grant", rest_token, 400, {"error": "invalid_grant", "error_description": "expired"}, {},
     GET, (ReauthRequired, "invalid_grant", None)),
    ("rest token 401", rest_token, 401, "", {}, GET, (ReauthRequired, None, None)),
    ("rest token invalid_scope", rest_token, 400, {"error": "invalid_scope"}, {}, GET,
     (PermanentError, "invalid_scope", None)),
]


def _response(status: int, body: Any, headers: dict[str, str], call: tuple[str, str, Any]) -> httpx.Response:
    method, url, sent = call
    request = httpx.Request(method, url, json=sent) if sent is not None else httpx.Request(method, url)
    content = body.encode() if isinstance(body, str) else orjson.dumps(body)
    return httpx.Response(status, headers=headers, content=content, request=request)


@pytest.mark.parametrize(("classify", "status", "body", "headers", "call", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_provider_table_maps_its_documented_answers(
    classify: Classify, status: int, body: Any, headers: dict[str, str], call: tuple[str, str, Any],
    expected: tuple[type[ProviderError] | None, str | None, float | None],
) -> None:
    kind, code, retry_after = expected
    error = classify(_response(status, body, headers, call))
    if kind is None:
        assert error is None
        return
    assert type(error) is kind, error
    assert error.code == code
    if status >= 400:
        assert error.status == status
    if isinstance(error, RateLimited):
        assert error.retry_after == pytest.approx(retry_after)
    assert str(error)  # every error says something


def test_error_texts_keep_the_provider_its_status_and_what_it_said() -> None:
    get = httpx.Request("GET", "https://provider.example/api/things?secret=x")
    woo = woocommerce(httpx.Response(403, json={"code": "rest_forbidden", "message": "Sorry"}, request=get))
    assert str(woo) == "WooCommerce 403 rest_forbidden: Sorry"
    quota = sp_api(httpx.Response(400, json=sp("InvalidInput", "Invalid", "the marketplace"), request=get))
    assert str(quota) == "SP-API 400 InvalidInput: Invalid (the marketplace)"
    correlated = orion(httpx.Response(500, json={"Message": "no"}, headers={"X-OAS-CorrelationId": "c0"}, request=get))
    assert str(correlated) == "Orion 500: no (correlation c0)"
    assert str(orion_token(httpx.Response(401, json={"Message": "no"}, request=get))) \
        == "Orion refused the credentials (401): no"
    assert str(rest_static(httpx.Response(404, json={"detail": "gone"}, request=get))) \
        == "HTTP 404 from https://provider.example/api/things: gone"  # the query (credentials?) left out
    assert str(odoo(httpx.Response(200, json=rpc("odoo.exceptions.AccessDenied", "bad")))) \
        == "Odoo odoo.exceptions.AccessDenied: bad"
    assert str(powens(httpx.Response(400, json={"code": "invalidValue"}))) == "Powens 400 invalidValue: HTTP 400"


def test_a_table_without_a_hook_reads_no_successful_body() -> None:
    """A 2xx is no error and is not parsed: a listing's 100k records cost the table nothing."""
    classify = classify_with(ErrorTable("X", code=("code",)))
    assert classify(httpx.Response(200, content=b"not json at all")) is None
    assert type(classify(httpx.Response(418, content=b"not json at all"))) is PermanentError


@pytest.mark.parametrize(("table", "code", "status", "message", "expected"), [
    (WOOCOMMERCE, "registration-error-email-exists", 400, "", DuplicateKey),
    (WOOCOMMERCE, "woocommerce_rest_customer_invalid_email", 400, "", DuplicateKey),
    (WOOCOMMERCE, "product_invalid_sku", 400, "", DuplicateKey),
    (WOOCOMMERCE, "woocommerce_rest_product_invalid_id", 404, "", Rejected),
    (WOOCOMMERCE, "woocommerce_rest_invalid_id", 400, "", Rejected),
    (WOOCOMMERCE, "wc_user_invalid_id", 404, "", Rejected),
    (WOOCOMMERCE, "rest_invalid_param", 400, "", Rejected),
    (WOOCOMMERCE, "woocommerce_rest_cannot_create", 403, "", None),  # the write path's plain ItemError
    (ODOO, "odoo.exceptions.ValidationError", None, "The Internal Reference must be unique", DuplicateKey),
    (ODOO, "odoo.exceptions.ValidationError", None, "Invalid email", Rejected),
    (ODOO, "builtins.ValueError", None, "Invalid field 'x'", Rejected),
    (ODOO, "odoo.exceptions.MissingError", None, "Record does not exist", ItemError),
    (ODOO, "odoo.exceptions.AccessDenied", None, "", None),
])
def test_item_refusals_of_writes_are_declared(
    table: ErrorTable, code: str, status: int | None, message: str, expected: type[ItemError] | None,
) -> None:
    assert refusal(table, code, status, message) is expected
