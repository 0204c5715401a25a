"""freshd's one error taxonomy, grouped by what the daemon does next.

    FreshdError
    ├── ConfigError              configuration is invalid: refuse it whole, change nothing
    │   └── ConfigErrors         several problems found at once, each a ConfigError, one message
    ├── StoreUnavailable         PostgreSQL cannot be reached: back off and retry
    │   └── StoreTimeout         it did not answer in time (statement/lock timeout, stop deadline)
    ├── Fenced                   this member lost the connection's lease: stop, write nothing more
    ├── StartupError             the daemon cannot run here (e.g. its socket path): say why, exit 1
    ├── AdminError               a bad admin request: reply with its stable code
    └── ProviderError            anything a provider said (or failed to say)
        ├── TransientError       retry later with backoff (timeouts, connection errors, 5xx)
        │   ├── RateLimited      429 / quota: wait `retry_after` seconds, then retry
        │   ├── CircuitOpen      the connection's breaker is open: fail fast, probe later
        │   └── Ambiguous        a write that may or may not have been applied: look, then retry
        ├── AuthExpired          the access token is stale: refresh once, then retry
        ├── ReauthRequired       credentials rejected: stop syncing until an operator acts
        ├── ItemError            this one record is bad: skip it, record why, go on
        │   ├── DuplicateKey     a write refused: a unique key (email, SKU) is already taken
        │   └── Rejected         a write refused by the target's validation (its message kept)
        └── PermanentError       the request cannot succeed as asked: fail this entity
            └── ResponseTooLarge a body over policies.limits.max_response_bytes (as sent or inflated)

Policy code (retries, breaker, job outcome) looks only at these classes.  Each
connector translates its provider's errors into them in exactly one place
(`classify`), always with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class FreshdError(Exception):
    """Base of every error freshd raises on purpose."""


class ConfigError(FreshdError):
    """The configuration is invalid; `where` names the key (and file/line when known)."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigErrors(ConfigError):
    """Every problem one check found (`errors`, each naming its key), reported in one line."""

    def __init__(self, errors: list[ConfigError], *, where: str | None = None) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} problems: " + "; ".join(str(e) for e in errors), where=where)


@contextmanager
def collecting(errors: list[ConfigError]) -> Iterator[None]:
    """Record a ConfigError (or each of ConfigErrors) raised inside into `errors`, and go on: every
    problem of a file or a connection is reported at once."""
    try:
        yield
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    except ConfigError as exc:
        errors.append(exc)


class StoreUnavailable(FreshdError):
    """The database cannot be reached or refused the connection."""


class StartupError(FreshdError):
    """The daemon cannot start where it was told to (an unusable admin socket path); one line says why."""


class Fenced(FreshdError):
    """A write for a connection whose lease this member no longer holds (scale-out): refused whole."""


class StoreTimeout(StoreUnavailable):
    """The database did not answer within a timeout (a statement or lock wait was cancelled
    server-side, so nothing of the call was committed); retried like an outage."""


class AdminError(FreshdError):
    """A bad admin request. `code` is one of freshd.admin.protocol.ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ProviderError(FreshdError):
    """Something went wrong talking to a provider.

    `status` is the HTTP status when there was one; `code` the provider's own
    error code (e.g. ``woocommerce_rest_cannot_view``) when it gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class TransientError(ProviderError):
    """Worth retrying later: timeouts, connection failures, 5xx."""


class RateLimited(TransientError):
    """The provider asked us to slow down (429 or a quota error)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        code: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code=code)


class CircuitOpen(TransientError):
    """The connection's circuit breaker is open: no request was sent."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Ambiguous(TransientError):
    """A request that is not safe to resend (a create) failed in a way that leaves open whether the
    provider applied it (a timeout, a dropped connection, a 5xx): look before trying again."""


class AuthExpired(ProviderError):
    """The access token expired or was rejected in a way a refresh can fix."""


class ReauthRequired(ProviderError):
    """The credentials themselves were rejected; an operator must supply new ones."""


class ItemError(ProviderError):
    """One record cannot be processed (validation, malformed); skip it and go on."""

    def __init__(self, message: str, *, external_id: str | None = None, **kwargs: object) -> None:
        self.external_id = external_id
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class DuplicateKey(ItemError):
    """A write the target refused because a unique key is taken (WooCommerce's email-exists error,
    a duplicate SKU, an Odoo unique constraint); `existing_id` is the holder when the target says."""

    def __init__(self, message: str, *, existing_id: str | None = None, external_id: str | None = None,
                 status: int | None = None, code: str | None = None) -> None:
        self.existing_id = existing_id
        super().__init__(message, external_id=external_id, status=status, code=code)


class Rejected(ItemError):
    """A write the target's validation refused (WooCommerce's 400, Odoo's ValidationError or
    UserError): it will not succeed as asked; a person must look at the message."""


class PermanentError(ProviderError):
    """The request will not succeed if repeated (400, 404 on a listing, ...)."""


class ResponseTooLarge(PermanentError):
    """A response body larger than the configured limit, as received or once decompressed."""
