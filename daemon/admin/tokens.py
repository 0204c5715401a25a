"""Admin commands for the HTTP API's bearer tokens: tokens.add, tokens.list, tokens.revoke.

Administrators only (a tenant-scoped caller is forbidden).  A token is scoped to one tenant and
shown once, in the reply to `tokens.add`: the store keeps its hash; listings show its prefix.
"""

from __future__ import annotations

from typing import Any

import structlog

from freshd.admin.lookups import CommandGroup, Handler
from freshd.admin.protocol import Caller, ErrorCode
from freshd.admin.views import iso
from freshd.errors import AdminError
from freshd.store import activity, tokens

log = structlog.get_logger(__name__)


class TokenCommands(CommandGroup):
    def handlers(self) -> dict[str, Handler]:
        return {"tokens.add": self.tokens_add, "tokens.list": self.tokens_list, "tokens.revoke": self.tokens_revoke}

    @staticmethod
    def _require_admin(caller: Caller, what: str) -> None:
        if caller.tenants is not None:
            raise AdminError(ErrorCode.FORBIDDEN, f"{what}: only administrators may manage API tokens")

    @staticmethod
    def _token_json(row: tokens.TokenRow) -> dict[str, Any]:
        return {"id": row.id, "tenant": row.tenant, "label": row.label, "prefix": row.prefix,
                "created_at": iso(row.created_at), "last_used_at": iso(row.last_used_at),
                "revoked_at": iso(row.revoked_at)}

    async def tokens_add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A bearer token for the HTTP API, scoped to one tenant; the reply is the only place it appears."""
        self._require_admin(caller, "tokens.add")

        def add(conn: Any) -> tuple[tokens.TokenRow, str]:
            row, token = tokens.create_token(conn, args["tenant"], args.get("label"))
            activity.log_activity(conn, "api_token.added", f"API token {row.id} ({row.prefix}...) for tenant "
                                  f"{row.tenant} added by {caller.who}",
                                  details={"id": row.id, "tenant": row.tenant, "label": row.label})
            return row, token

        row, token = await self.daemon.store.call(add)
        log.info("api_token.added", id=row.id, tenant=row.tenant, prefix=row.prefix)
        return {**self._token_json(row), "token": token}

    async def tokens_list(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._require_admin(caller, "tokens.list")
        rows = await self.daemon.store.call(tokens.list_tokens, tenant=args.get("tenant"))
        return {"tokens": [self._token_json(row) for row in rows]}

    async def tokens_revoke(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._require_admin(caller, "tokens.revoke")

        def revoke(conn: Any) -> tokens.TokenRow | None:
            row = tokens.revoke_token(conn, args["id"])
            if row is not None:
                activity.log_activity(conn, "api_token.revoked", f"API token {row.id} of tenant {row.tenant} "
                                      f"revoked by {caller.who}", details={"id": row.id})
            return row

        row = await self.daemon.store.call(revoke)
        if row is None:
            raise AdminError(ErrorCode.NOT_FOUND, f"no API token {args['id']}")
        log.info("api_token.revoked", id=row.id, tenant=row.tenant)
        return self._token_json(row)
