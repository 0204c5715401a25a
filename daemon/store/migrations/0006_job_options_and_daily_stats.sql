-- Per-run options of a pull sync (`freshctl sync NAME --entities a,b --since DATE --dry-run`),
-- kept on the job row so a resumed job keeps them: {"entities": [...], "since": iso, "dry_run": bool}.
ALTER TABLE sync_jobs ADD COLUMN options jsonb NOT NULL DEFAULT '{}';

-- Daily statistics per connection (and its tenant), computed by the cleanup sweep for the
-- previous day (UTC) and kept for [sync] stats_retention_days.
CREATE TABLE daily_stats (
    day            date NOT NULL,
    connection_id  bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    tenant         text NOT NULL,
    syncs          integer NOT NULL,   -- jobs that finished that day
    successes      integer NOT NULL,   -- completed or partial
    records        jsonb NOT NULL DEFAULT '{}',  -- entity -> records processed
    created        integer NOT NULL DEFAULT 0,
    changed        integer NOT NULL DEFAULT 0,
    deleted        integer NOT NULL DEFAULT 0,
    failed_items   integer NOT NULL DEFAULT 0,
    errors         jsonb NOT NULL DEFAULT '{}',  -- error kind -> jobs
    avg_duration_seconds double precision,
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, connection_id)
);
CREATE INDEX daily_stats_by_tenant ON daily_stats (tenant, day);
