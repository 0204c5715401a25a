"""WooCommerce writes for two-way sync: the `Writer` side of `WooCommerceConnector` (a mixin).

What is written how (API_FACTS_WRITES §A; docs/connectors/woocommerce.md "Writes"):

* **customers**: create, update; **products**: create, update, archive; **orders**: update,
  archive.  Orders are never created: an order has no natural key, so after a crash nothing
  could find the create again (`find_created`), and a resent create would be a second order.
* **Creates and updates** go through ``POST /{entity}/batch`` (at most 100 items a request; more
  are split, in order).  Each create carries ``{"key": "_freshd_ref", "value": <reference>}`` in
  its ``meta_data``, in the same request.  A batch holding a create is sent with
  ``replay_safe=False``: a timeout or 5xx raises `Ambiguous` and nothing is resent; a batch of
  updates only is idempotent and retried like a read.
* **Per-item errors** (the batch answers 200 whatever failed) become outcomes: the email or SKU
  already taken -> `DuplicateKey` (with the holder's id when it is known), any other 400 or an
  unknown id -> `Rejected` (the provider's code and message kept), anything else -> `ItemError`.
  A duplicate whose holder carries this very create's reference is the create itself, applied by
  an earlier attempt: `Written`.
* **find_created** looks creates up by their natural key (customers ``?email=&role=all``,
  products ``?sku=a,b``) and keeps only records carrying the create's reference.
* **archive** is ``DELETE /{entity}/{id}`` without ``force`` (the trash); 410 "already trashed"
  counts as done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from freshd import logs
from freshd.connectors.errors import ErrorTable, refusal
from freshd.connectors.http import ProviderClient
from freshd.connectors.writes import REFERENCE_KEY, Create, Update, WriteOp, WriteOutcome, Written
from freshd.errors import (
    Ambiguous,
    DuplicateKey,
    ItemError,
    PermanentError,
    Rejected,
    TransientError,
)

BATCH_LIMIT = 100  # items per batch request, create + update + delete (API_FACTS 2.5)

# per-item codes that say "this natural key is taken" (API_FACTS_WRITES §A.3): the connector's error
# table declares them duplicates; these sets say where the holder is found
EMAIL_TAKEN = frozenset({
    "registration-error-email-exists",  # customer create: any user, any role, holds the email
    "woocommerce_rest_customer_invalid_email",  # customer update: the email belongs to another user
})
KEY_TAKEN_WITH_HOLDER = frozenset({
    "product_invalid_sku",  # data.resource_id: the product holding the SKU
    "product_invalid_global_unique_id",  # GTIN/UPC/EAN/ISBN (9.1+), also with resource_id
})


def _reference_of(record: Mapping[str, Any]) -> str | None:
    for meta in record.get("meta_data") or []:
        if isinstance(meta, dict) and meta.get("key") == REFERENCE_KEY:
            value = meta.get("value")
            return value if isinstance(value, str) else None
    return None


def _create_body(op: Create) -> dict[str, Any]:
    """The create as sent: its values, with freshd's reference as the one `_freshd_ref` meta row."""
    values = dict(op.values)
    meta = [m for m in values.get("meta_data") or []
            if not (isinstance(m, Mapping) and m.get("key") == REFERENCE_KEY)]
    values["meta_data"] = [*meta, {"key": REFERENCE_KEY, "value": op.reference}]
    return values


def record_id(record: Any) -> str | None:
    """A record's WooCommerce id (a positive integer) as text; None when it has none."""
    rid = record.get("id") if isinstance(record, dict) else None
    return str(rid) if isinstance(rid, int) and not isinstance(rid, bool) and rid > 0 else None


def is_id(text: str) -> bool:
    """Whether an external id (text) is a WooCommerce id."""
    return text.isdigit() and int(text) > 0


def not_an_id(text: str) -> str:
    return f"{text[:40]!r} is not a WooCommerce id (a positive integer)"


class WooCommerceWrites:
    """The Writer protocol (freshd.connectors.writes) for WooCommerce; needs the connector's `client`."""

    client: ProviderClient
    error_table: ClassVar[ErrorTable]  # the connector's: which refused items are duplicates, which rejected

    writable: ClassVar[Mapping[str, frozenset[str]]] = {
        "customers": frozenset({"create", "update"}),
        "products": frozenset({"create", "update", "archive"}),
        "orders": frozenset({"update", "archive"}),
    }

    def _refuse_unwritable(self, entity: str, kind: str) -> None:
        if kind not in self.writable.get(entity, frozenset()):
            why = " (orders have no natural key to find a create again after a crash)" \
                if (entity, kind) == ("orders", "create") else ""
            raise PermanentError(f"woocommerce cannot {kind} {entity}{why}")

    # --- write ---------------------------------------------------------------------------------

    async def write(self, entity: str, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        for op in ops:
            self._refuse_unwritable(entity, "create" if isinstance(op, Create) else "update")
        outcomes: list[WriteOutcome] = []
        for start in range(0, len(ops), BATCH_LIMIT):
            outcomes += await self._batch(entity, ops[start:start + BATCH_LIMIT])
        return outcomes

    async def _batch(self, entity: str, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        outcomes: list[WriteOutcome | None] = [None] * len(ops)
        creates: list[int] = []  # positions in `ops`, in the order sent
        updates: list[int] = []
        body: dict[str, list[dict[str, Any]]] = {}
        for position, op in enumerate(ops):
            if isinstance(op, Create):
                creates.append(position)
                body.setdefault("create", []).append(_create_body(op))
            elif is_id(op.external_id):
                updates.append(position)
                body.setdefault("update", []).append({**op.values, "id": int(op.external_id)})
            else:
                outcomes[position] = Rejected(not_an_id(op.external_id), external_id=op.external_id)
        if body:
            answer, _ = await self.client.request_json("POST", f"{entity}/batch", json=body,
                                                       replay_safe=not creates)
            for key, positions in (("create", creates), ("update", updates)):
                if not positions:
                    continue  # the answer has no key for an operation not asked for
                items = answer.get(key) if isinstance(answer, dict) else None
                if not isinstance(items, list) or len(items) != len(positions):
                    message = (f"WooCommerce {entity}/batch answered {len(items) if isinstance(items, list) else 'no'} "
                               f"{key} item(s) for {len(positions)} sent")
                    raise Ambiguous(message) if creates else TransientError(message)
                for position, item in zip(positions, items, strict=True):
                    outcomes[position] = await self._outcome(entity, ops[position], item)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _outcome(self, entity: str, op: WriteOp, item: Any) -> WriteOutcome:
        external_id = op.external_id if isinstance(op, Update) else None
        error = item.get("error") if isinstance(item, dict) else None
        if error is None:
            rid = record_id(item)
            if rid is None:
                return ItemError(f"WooCommerce {entity}/batch answered an item without an id",
                                 external_id=external_id)
            return Written(rid, item)
        return await self._item_error(entity, op, error if isinstance(error, dict) else {}, external_id)

    async def _item_error(
        self, entity: str, op: WriteOp, error: Mapping[str, Any], external_id: str | None
    ) -> WriteOutcome:
        """The one mapping of a refused batch item to the taxonomy."""
        code = str(error.get("code") or "")
        raw_data = error.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        status = data.get("status") if isinstance(data.get("status"), int) else None
        text = logs.scrub(f"WooCommerce {status or ''} {code}: {error.get('message') or 'refused'}".replace("  ", " "))
        values = op.values
        kind = refusal(self.error_table, code, status, text) or ItemError
        if kind is DuplicateKey:
            holder: dict[str, Any] | None = None
            if code in EMAIL_TAKEN and isinstance(values.get("email"), str):
                holder = await self._holder_by_email(values["email"])
            elif code in KEY_TAKEN_WITH_HOLDER and is_id(str(data.get("resource_id", ""))):
                holder = await self._holder_by_id(entity, str(data["resource_id"]))
            holder_id = record_id(holder)
            if holder is not None and holder_id and isinstance(op, Create) and _reference_of(holder) == op.reference:
                return Written(holder_id, holder)  # an earlier attempt of this very create
            return DuplicateKey(text, existing_id=holder_id, external_id=external_id, status=status, code=code)
        return kind(text, external_id=external_id, status=status, code=code or None)

    async def _holder_by_email(self, email: str) -> dict[str, Any] | None:
        """The user holding this email, whatever its role; None when the lookup fails (the duplicate is
        reported without its holder rather than not at all)."""
        try:
            found = await self._customers_by_email(email)
        except (TransientError, PermanentError):
            return None
        return found[0] if found else None

    async def _holder_by_id(self, entity: str, rid: str) -> dict[str, Any] | None:
        try:
            record = await self.client.get_json_if_found(f"{entity}/{rid}")
        except (TransientError, PermanentError):
            return {"id": int(rid)}
        return record if isinstance(record, dict) else {"id": int(rid)}

    async def _customers_by_email(self, email: str) -> list[dict[str, Any]]:
        # `role` defaults to customer: a shop manager or subscriber holding the email would be missed
        body, _ = await self.client.get_json("customers", params={"email": email, "role": "all"})
        return [r for r in body if isinstance(r, dict)] if isinstance(body, list) else []

    # --- find_created --------------------------------------------------------------------------

    async def find_created(self, entity: str, creates: Sequence[Create]) -> dict[str, Written]:
        candidates: list[dict[str, Any]] = []
        if entity == "customers":
            emails = {str(c.values["email"]).casefold(): str(c.values["email"])
                      for c in creates if isinstance(c.values.get("email"), str) and c.values["email"]}
            for email in emails.values():
                candidates += await self._customers_by_email(email)
        elif entity == "products":
            # a SKU holding a comma cannot be asked for (the filter splits on commas)
            skus = sorted({str(c.values["sku"]) for c in creates
                           if isinstance(c.values.get("sku"), str) and c.values["sku"] and "," not in c.values["sku"]})
            for start in range(0, len(skus), BATCH_LIMIT):
                body, _ = await self.client.get_json("products", params={
                    "sku": ",".join(skus[start:start + BATCH_LIMIT]), "per_page": BATCH_LIMIT})
                candidates += [r for r in body if isinstance(r, dict)] if isinstance(body, list) else []
        wanted = {c.reference for c in creates}
        found: dict[str, Written] = {}
        for record in candidates:
            reference, rid = _reference_of(record), record_id(record)
            # found by natural key but without our reference: someone else's record, never ours
            if reference in wanted and rid is not None and reference not in found:
                found[reference] = Written(rid, record)
        return found

    # --- archive -------------------------------------------------------------------------------

    async def archive(self, entity: str, external_id: str) -> WriteOutcome:
        self._refuse_unwritable(entity, "archive")
        if not is_id(external_id):
            return Rejected(not_an_id(external_id), external_id=external_id)
        try:
            # without force: the trash.  Idempotent (a resend finds it trashed: 410), so replay-safe.
            before, _ = await self.client.request_json("DELETE", f"{entity}/{external_id}")
        except PermanentError as exc:
            if exc.code == "woocommerce_rest_already_trashed" or exc.status == 410:
                record = await self.client.get_json_if_found(f"{entity}/{external_id}")
                if isinstance(record, dict):
                    return Written(external_id, record)
                return ItemError(f"WooCommerce {entity} {external_id} is gone (deleted for good)",
                                 external_id=external_id, status=404)
            if exc.status in (400, 404):  # an unknown id, or a refusal of this one record
                return Rejected(str(exc), external_id=external_id, status=exc.status, code=exc.code)
            raise
        if not isinstance(before, dict):
            raise TransientError(f"WooCommerce DELETE {entity}/{external_id}: expected a JSON object")
        # the answer is the record as it was before the delete (API_FACTS_WRITES §A.2): say it is trashed
        return Written(external_id, {**before, "status": "trash"})

