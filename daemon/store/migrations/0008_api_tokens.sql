-- Bearer tokens of the HTTP API (docs/HTTP.md), each scoped to one tenant.  Only the token's
-- SHA-256 is kept: `freshctl tokens add` shows the token once and nobody can read it back.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    label        text,                       -- what it is for ("shop backend"), optional
    token_sha256 bytea NOT NULL UNIQUE,      -- sha256 of the whole token
    prefix       text NOT NULL,              -- its first characters, to recognise it in a list
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,                -- updated at most once a minute
    revoked_at   timestamptz                 -- revoked tokens are kept (who had access, when)
);
