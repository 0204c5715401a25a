-- freshd's initial schema. Everything lives in the `freshd` schema.

CREATE TABLE connections (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    tenant          text NOT NULL DEFAULT 'default',
    provider        text NOT NULL,
    base_url        text NOT NULL,
    options         jsonb NOT NULL DEFAULT '{}',
    -- 'config' rows follow the config file (removed when it drops them); 'admin' rows were
    -- added with `freshctl connections add` and survive restarts and reloads.
    source          text NOT NULL CHECK (source IN ('config', 'admin')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_success_at timestamptz,
    last_error      text
);

CREATE TABLE credentials (
    connection_id bigint PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    -- 'plain' is JSON bytes; encrypted schemes are added by a later migration.
    scheme        text NOT NULL DEFAULT 'plain',
    secret        bytea NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE records (
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    entity        text NOT NULL,
    external_id   text NOT NULL,
    payload       jsonb NOT NULL,
    content_hash  bytea NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    -- refreshed when the content changes and by full listings (reconciliation uses it)
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    PRIMARY KEY (connection_id, entity, external_id)
);

-- Each entity's sync state, owned by its connector; written in the same
-- transaction as the page of records it describes.
CREATE TABLE cursors (
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    entity        text NOT NULL,
    state         jsonb NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, entity)
);

CREATE TABLE sync_jobs (
    id            bigserial PRIMARY KEY,
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('initial', 'full', 'incremental')),
    status        text NOT NULL CHECK (status IN ('queued', 'running', 'paused', 'completed', 'partial',
                                                 'failed', 'cancelled', 'interrupted')),
    trigger       text NOT NULL,
    -- per entity: {"total": n|null, "processed": n, "failed": n, "skipped": n}
    progress      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    error         text
);
-- One live job per connection, enforced by the database itself.
CREATE UNIQUE INDEX sync_jobs_one_live ON sync_jobs (connection_id)
    WHERE status IN ('queued', 'running', 'paused', 'interrupted');
CREATE INDEX sync_jobs_by_connection ON sync_jobs (connection_id, id DESC);

CREATE TABLE failed_items (
    id          bigserial PRIMARY KEY,
    job_id      bigint NOT NULL REFERENCES sync_jobs (id) ON DELETE CASCADE,
    entity      text NOT NULL,
    external_id text,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failed_items_by_job ON failed_items (job_id);

CREATE TABLE activity_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    connection_id bigint REFERENCES connections (id) ON DELETE SET NULL,
    job_id        bigint REFERENCES sync_jobs (id) ON DELETE SET NULL,
    kind          text NOT NULL,
    message       text NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX activity_log_at ON activity_log (at);
