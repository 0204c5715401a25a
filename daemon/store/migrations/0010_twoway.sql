-- Two-way sync between two connections (docs/TWO-WAY.md).

-- A pair: two connections of one tenant and the entities kept in agreement between them.
-- `spec` is the validated declaration (entities, models, direction, key, fields, rules).
CREATE TABLE pairs (
    name       text PRIMARY KEY,
    tenant     text NOT NULL,
    left_id    bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    right_id   bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    spec       jsonb NOT NULL,
    source     text NOT NULL CHECK (source IN ('config', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (left_id <> right_id)
);

-- The identity map: one row per pair of records known to be the same thing, unique on each side.
-- `base` holds the mapped values both sides last agreed on (the three-way merge's ancestor).
CREATE TABLE links (
    pair       text NOT NULL REFERENCES pairs (name) ON DELETE CASCADE,
    entity     text NOT NULL,
    left_id    text NOT NULL,
    right_id   text NOT NULL,
    base       jsonb NOT NULL,
    linked_by  text NOT NULL CHECK (linked_by IN ('natural_key', 'created_left', 'created_right', 'resolution')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pair, entity, left_id),
    UNIQUE (pair, entity, right_id)
);

-- A run: a job on the pair.  States: draft -> queued -> processing -> done | partial | failed,
-- plus paused and cancelled.  `phase` says where a processing run is (syncing, planning, writing).
CREATE TABLE twoway_runs (
    id          bigserial PRIMARY KEY,
    pair        text NOT NULL REFERENCES pairs (name) ON DELETE CASCADE,
    tenant      text NOT NULL,
    entities    text[] NOT NULL,
    state       text NOT NULL CHECK (state IN ('draft', 'queued', 'processing', 'paused', 'done', 'partial',
                                               'failed', 'cancelled')),
    phase       text CHECK (phase IN ('syncing', 'planning', 'writing')),
    options     jsonb NOT NULL,            -- batch_size, batch_delay
    dry_run     boolean NOT NULL DEFAULT false,
    plan        jsonb,                     -- per entity: creates, updates and conflicts per side
    writes      jsonb NOT NULL DEFAULT '{"left": 0, "right": 0}',
    sync_jobs   bigint[] NOT NULL DEFAULT '{}',
    requested   text CHECK (requested IN ('pause', 'cancel')),  -- honoured at the next batch boundary
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One live run per pair: two runs on the same records would race each other's writes.
CREATE UNIQUE INDEX twoway_runs_live ON twoway_runs (pair) WHERE state IN ('queued', 'processing', 'paused');
CREATE INDEX twoway_runs_by_pair ON twoway_runs (pair, id);

-- A run's queue: one item per pair of records that needs work, in batches of `seq` order.
CREATE TABLE twoway_items (
    run_id    bigint NOT NULL REFERENCES twoway_runs (id) ON DELETE CASCADE,
    seq       integer NOT NULL,
    entity    text NOT NULL,
    left_id   text,                        -- NULL: to be created on the left
    right_id  text,                        -- NULL: to be created on the right
    status    text NOT NULL DEFAULT 'pending'
              CHECK (status IN ('pending', 'done', 'failed', 'skipped', 'conflict')),
    attempts  integer NOT NULL DEFAULT 0,
    detail    jsonb,
    PRIMARY KEY (run_id, seq)
);

-- The idempotency log: every provider write, committed as an intent before it is sent and
-- settled after.  `key` is the write's idempotency key (a create's reference, carried by the
-- record it makes); an intent that is not settled is looked up at the provider before any retry.
CREATE TABLE twoway_writes (
    key        text PRIMARY KEY,
    run_id     bigint REFERENCES twoway_runs (id) ON DELETE SET NULL,
    pair       text NOT NULL REFERENCES pairs (name) ON DELETE CASCADE,
    entity     text NOT NULL,
    side       text NOT NULL CHECK (side IN ('left', 'right')),
    op         text NOT NULL CHECK (op IN ('create', 'update', 'archive')),
    source_id  text,                       -- the record on the other side this write comes from
    target_id  text,                       -- the record written (known at once for updates)
    fields     jsonb NOT NULL,             -- the mapped values written
    state      text NOT NULL CHECK (state IN ('intended', 'applied', 'refused')),
    error      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    seconds    double precision            -- the provider call's duration
);
CREATE INDEX twoway_writes_unsettled ON twoway_writes (pair, entity) WHERE state = 'intended';
CREATE INDEX twoway_writes_by_run ON twoway_writes (run_id);

-- Conflicts: what a run could not settle by itself.  One open conflict per record pair and type.
CREATE TABLE conflicts (
    id           bigserial PRIMARY KEY,
    pair         text NOT NULL REFERENCES pairs (name) ON DELETE CASCADE,
    run_id       bigint REFERENCES twoway_runs (id) ON DELETE SET NULL,       -- the run that found it
    last_run_id  bigint REFERENCES twoway_runs (id) ON DELETE SET NULL,       -- the last run that saw it
    entity       text NOT NULL,
    type         text NOT NULL CHECK (type IN ('DataMismatch', 'DuplicateKey', 'ValidationError', 'AuthError',
                                                'RetryExhausted')),
    left_id      text,
    right_id     text,
    fields       text[] NOT NULL DEFAULT '{}',
    base         jsonb,
    left_values  jsonb,
    right_values jsonb,
    message      text,
    status       text NOT NULL DEFAULT 'unresolved'
                 CHECK (status IN ('unresolved', 'resolved', 'auto_resolved', 'skipped')),
    resolution   jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);
CREATE UNIQUE INDEX conflicts_open ON conflicts (pair, entity, type, coalesce(left_id, ''), coalesce(right_id, ''))
    WHERE status = 'unresolved';
CREATE INDEX conflicts_by_pair ON conflicts (pair, id);

-- The activity log also records runs, batches and writes.
ALTER TABLE activity_log ADD COLUMN run_id bigint REFERENCES twoway_runs (id) ON DELETE SET NULL;
CREATE INDEX activity_log_by_run ON activity_log (run_id) WHERE run_id IS NOT NULL;
