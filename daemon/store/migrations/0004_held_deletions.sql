-- Reconciliations that would delete too large a share of an entity are held, not applied:
-- `freshctl sync NAME --full --confirm-deletes` runs a full sync allowed to apply them.
ALTER TABLE sync_jobs ADD COLUMN confirm_deletes boolean NOT NULL DEFAULT false;

CREATE TABLE held_deletions (
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    entity        text NOT NULL,
    job_id        bigint REFERENCES sync_jobs (id) ON DELETE SET NULL,
    count         integer NOT NULL,  -- records the reconciliation would have marked deleted
    live          integer NOT NULL,  -- live records of the entity at that moment
    held_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, entity)
);
