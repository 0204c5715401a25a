-- Several daemons on one database (docs/SCALE-OUT.md): PostgreSQL is the coordinator.

-- One row per daemon process; `heartbeat_at` is on the database's clock.
CREATE TABLE members (
    id           text PRIMARY KEY,          -- this incarnation (name + a random suffix)
    name         text NOT NULL,             -- stable across restarts: what connections hash to
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz                -- a clean leave
);
CREATE INDEX members_name ON members (name);

-- One owner per connection.  `epoch` grows at every acquisition: it is the fencing token that
-- every write made for the connection checks in its own transaction.
CREATE TABLE leases (
    connection_id bigint PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    owner         text,
    epoch         bigint NOT NULL DEFAULT 0,
    expires_at    timestamptz NOT NULL DEFAULT now(),
    acquired_at   timestamptz
);
CREATE INDEX leases_owner ON leases (owner);

-- Running syncs, claimed by the member that runs them: the caps hold for the whole cluster.
CREATE TABLE sync_slots (
    connection_id bigint PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    member        text NOT NULL,
    tenant        text NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now()
);

-- Admin commands for a connection another member owns: the caller's member writes the row and
-- NOTIFYs; the owner runs it as if it were local and writes the reply.
CREATE TABLE cluster_commands (
    id          bigserial PRIMARY KEY,
    member      text NOT NULL,              -- the owner that must run it
    request     jsonb NOT NULL,             -- {"cmd", "args", "caller": {...}}
    reply       jsonb,                      -- {"ok": true, "result"} or {"ok": false, "error": {...}}
    created_at  timestamptz NOT NULL DEFAULT now(),
    answered_at timestamptz
);
CREATE INDEX cluster_commands_pending ON cluster_commands (member) WHERE answered_at IS NULL;
