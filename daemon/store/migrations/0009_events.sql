-- Change events (docs/EVENTS.md): a transactional outbox relayed to Redis Streams.

-- Every record carries a version that only grows (a change, a tombstone, a revival), and when
-- its content last changed: an event's dedup key and order, and `--since` for backfills.
ALTER TABLE records ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE records ADD COLUMN changed_at timestamptz;
UPDATE records SET changed_at = coalesce(deleted_at, last_seen_at, first_seen_at);
ALTER TABLE records ALTER COLUMN changed_at SET DEFAULT now();
ALTER TABLE records ALTER COLUMN changed_at SET NOT NULL;

-- One row per event, written in the transaction that commits the change.  No payload is copied:
-- the relay reads it from the record while the record still is that version (a superseded
-- event goes out without one, followed by the newer version's event, which has it).  The relay reads the
-- committed unpublished rows in id order and marks them published one by one, so a row whose
-- transaction commits late is read later, never skipped.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    entity        text NOT NULL,
    external_id   text NOT NULL,
    type          text NOT NULL CHECK (type IN ('record.created', 'record.updated', 'record.deleted')),
    version       bigint NOT NULL,
    historical    boolean NOT NULL DEFAULT false,
    consumer      text,                     -- a backfill's application (its history stream); NULL: live
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Applications that read the streams (a consumer group each, named after the application).
CREATE TABLE consumers (
    app        text PRIMARY KEY,
    tenant     text NOT NULL,
    entities   text[],                      -- NULL: every entity of the tenant
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Historical backfills: every current record of the application's entities as an event.
CREATE TABLE backfills (
    id          bigserial PRIMARY KEY,
    app         text NOT NULL REFERENCES consumers (app) ON DELETE CASCADE,
    entities    text[],
    since       timestamptz,
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    progress    jsonb NOT NULL DEFAULT '{}',
    cursor      jsonb,                      -- the last (connection_id, entity, external_id) queued
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
CREATE UNIQUE INDEX backfills_one_live ON backfills (app) WHERE status IN ('queued', 'running', 'paused');
