"""WordPress' view of a request: PHP's $_GET/$_POST parsing, WP_REST_Request's parameter checks, and
the WP_Error answer.

WordPress reads every parameter from PHP's $_GET/$_POST (API_FACTS_WRITES §A.1), and the OAuth
check signs those arrays (§A.7), so the simulator parses a query once, the PHP way, and every
handler (auth, paging, filters, links) reads that one result.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from freshd.connectors import simulator
from freshd.connectors.simulator import Request, Response

SITE_TZ = timezone(timedelta(hours=2))  # the site's timezone: local dates differ from GMT ones
OAUTH_REQUIRED = ("oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature", "oauth_signature_method")


def error(status: int, code: str, message: str, **data: Any) -> Response:
    return Response.json({"code": code, "message": message, "data": {"status": status, **data}}, status)


class ApiError(simulator.ApiError):
    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(error(status, code, message, **data))
        self.code, self.message, self.data = code, message, {"status": status, **data}

    def batch_item(self, rid: int) -> dict[str, Any]:
        """How `batch_items` reports this error for one item: the WP_Error's code, message and data."""
        return {"id": rid, "error": {"code": self.code, "message": self.message, "data": self.data}}

    @classmethod
    def invalid_param(cls, name: str, reason: str) -> ApiError:
        """WP_REST_Request's 400 for one parameter its route's schema refuses, and why."""
        return cls(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: reason})



def wp_date(moment: datetime) -> str:
    """A WordPress date as the REST API writes it: naive, to the second, in the moment's own zone."""
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


def _pct(value: str) -> str:
    """PHP's rawurlencode (RFC 3986: only A-Z a-z 0-9 - _ . ~ stay as they are)."""
    return urllib.parse.quote(value, safe="~-._")



PhpValue = str | dict[str, "PhpValue"]  # a PHP array is an ordered map; integer keys kept as decimal text
MAX_INPUT_VARS = 1000  # php.ini max_input_vars: the rest of the input is dropped


def _php_path(key: str) -> list[str | None] | None:
    """A query key as php_register_variable_ex splits it: `a.b c[x][]` -> ["a_b_c", "x", None]
    (None: append).  None when PHP drops the pair (an empty name)."""
    key = key.lstrip(" ")
    pos = key.find("[")
    name = re.sub(r"[ .]", "_", key if pos < 0 else key[:pos])
    if not name:
        return None
    if pos < 0:
        return [name]
    path: list[str | None] = [name]
    while True:
        close = key.find("]", pos + 1)
        if close < 0:  # '[' never closed: on the name it is a plain character, made '_'
            return [name + "_" + key[pos + 1:]] if len(path) == 1 else path
        index = key[pos + 1:close]
        path.append(index or None)
        pos = close + 1
        if pos >= len(key) or key[pos] != "[":
            return path  # anything after the last ']' is ignored


def _next_index(array: dict[str, PhpValue]) -> str:
    numbers = [int(k) for k in array if k.isdigit() and (k == "0" or not k.startswith("0"))]
    return str(max(numbers) + 1 if numbers else 0)


def php_parse(pairs: Iterable[tuple[str, str]]) -> dict[str, PhpValue]:
    """The array PHP builds from url-decoded pairs (parse_str, $_GET): a repeated key keeps its last
    value, `k[]` appends, `k[sub]` nests, dots and spaces in names become `_`."""
    out: dict[str, PhpValue] = {}
    for count, (key, value) in enumerate(pairs):
        if count >= MAX_INPUT_VARS:
            break
        path = _php_path(key)
        if path is None:
            continue
        node = out
        for depth, part in enumerate(path):
            name = _next_index(node) if part is None else part
            if depth == len(path) - 1:
                node[name] = value
            else:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
    return out


def _php_empty(value: PhpValue | None) -> bool:
    return value is None or value in ("", "0") or value == {}


def _encode_values(value: PhpValue) -> PhpValue:
    """wc_rest_urlencode_rfc3986 on the values: rawurlencode, recursively (inner keys stay raw)."""
    return _pct(value) if isinstance(value, str) else {k: _encode_values(v) for k, v in value.items()}


def _php_pairs(items: Iterable[tuple[str, PhpValue]], prefix: str = "") -> list[str]:
    """join_with_equals_sign: `k=v`, nested keys as `k%5Bsub%5D=v` (PHP array order, not re-sorted)."""
    out: list[str] = []
    for key, value in items:
        name = f"{prefix}%5B{key}%5D" if prefix else key
        if isinstance(value, dict):
            out += _php_pairs(value.items(), name)
        else:
            out.append(f"{name}={value}")
    return out


def oauth_base_string(method: str, url: str, params: dict[str, PhpValue]) -> str:
    """`check_oauth_signature`'s string to sign: the parameters as PHP parsed them (a repeated key
    once, with its last value), sorted by raw top-level key (strcmp), each pair rawurlencoded twice."""
    pairs = sorted(((k, v) for k, v in params.items() if k != "oauth_signature"), key=lambda kv: kv[0].encode())
    encoded = "%26".join(_pct(pair) for pair in _php_pairs([(_pct(k), _encode_values(v)) for k, v in pairs]))
    return f"{method.upper()}&{_pct(url)}&{encoded}"


def _php_query_string(params: Iterable[tuple[str, PhpValue]], prefix: str = "") -> list[tuple[str, str]]:
    """http_build_query's pairs for a parsed array (`k[0]=a&k[1]=b`), for Link headers."""
    out: list[tuple[str, str]] = []
    for key, value in params:
        name = f"{prefix}[{key}]" if prefix else key
        out += _php_query_string(value.items(), name) if isinstance(value, dict) else [(name, value)]
    return out


@dataclass(frozen=True, slots=True)
class PhpInput:
    """One request's $_GET and $_POST (a form-encoded POST body), parsed once."""

    get: dict[str, PhpValue]
    post: dict[str, PhpValue]

    @classmethod
    def of(cls, request: Request) -> PhpInput:
        post: dict[str, PhpValue] = {}
        if request.method == "POST" and request.headers.get("content-type", "").lower().startswith(
                "application/x-www-form-urlencoded"):
            post = php_parse(urllib.parse.parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        return cls(php_parse(request.query), post)

    def value(self, name: str) -> PhpValue | None:
        """WP_REST_Request::get_param for our routes: the form body first, then the query."""
        found = self.post.get(name)
        return self.get.get(name) if found is None else found

    def text(self, name: str) -> str | None:
        """A scalar parameter; an array where a string is expected is WordPress' 400."""
        found = self.value(name)
        if isinstance(found, dict):
            raise ApiError.invalid_param(name, f"{name} is not of type string.")
        return found

    def items(self, name: str) -> list[str] | None:
        """An array-typed parameter: `k[]=a&k[]=b`, or `k=a,b` (wp_parse_list splits on commas and spaces)."""
        found = self.value(name)
        if found is None:
            return None
        if isinstance(found, dict):
            return [v for v in found.values() if isinstance(v, str)]
        return [part for part in re.split(r"[\s,]+", found) if part]

    def date(self, name: str, *, gmt: bool) -> str | None:
        """A date parameter as GMT text (`wp_date`); a naive one is GMT or site time as `gmt` says."""
        value = self.text(name)
        if not value:
            return None
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError.invalid_param(name, f"Invalid date: {value}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC if gmt else SITE_TZ)
        return wp_date(moment.astimezone(UTC))

    def link_query(self) -> list[tuple[str, str]]:
        """WordPress rebuilds a Link's query from the parsed $_GET (each key once), without `page`."""
        return _php_query_string((k, v) for k, v in self.get.items() if k != "page")

    def oauth_params(self, header: str) -> tuple[dict[str, PhpValue], list[str]] | None:
        """The OAuth parameters (array_merge($_GET, $_POST), the header's oauth_* pairs winning) and
        the required ones missing; None when none is given (not an OAuth attempt)."""
        params: dict[str, PhpValue] = {**self.get, **self.post}
        if header.startswith("OAuth "):
            for name, quoted, bare in re.findall(r'(oauth_[a-z_-]*)=(?:"([^"]*)"|([^,]*))', header):
                params[name] = urllib.parse.unquote_plus(quoted or bare)
        missing = [n for n in OAUTH_REQUIRED if _php_empty(params.get(n))]
        return (params, missing) if len(missing) < len(OAUTH_REQUIRED) else None

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        """An integer parameter within [low, high], as the route's schema checks it."""
        raw = self.value(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):  # an array, or not a number
            raise ApiError.invalid_param(name, f"{name} is not of type integer.") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high} (inclusive)" if high is not None else f"greater than or equal to {low}"
            raise ApiError.invalid_param(name, f"{name} must be {bound}")
        return value

    def ids(self, name: str) -> list[int] | None:
        """An array of integers (`include`, `exclude`); None when absent or empty."""
        raw = self.items(name)
        if not raw:
            return None
        try:
            return [int(x) for x in raw]
        except ValueError:
            raise ApiError.invalid_param(name, f"{name}[0] is not of type integer.") from None
