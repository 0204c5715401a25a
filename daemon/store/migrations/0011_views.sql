-- Typed views of the synced data (docs/DATA.md): one view per provider entity, e.g.
-- freshd_woocommerce.customers, built from the streams' declared columns by freshd.store.views at
-- every store open (after the migrations), and rebuilt only when a declaration changes.
--
-- A later migration that changes a records or connections column the views read must drop the
-- views first (DROP VIEW ...; DELETE FROM views): the next start builds them again.

-- The views' casts: a JSON value read as a type, or NULL when it is not one (never an error, so one
-- malformed record cannot break a query).  Apps may use them too: freshd.as_numeric(payload -> 'total').

CREATE FUNCTION as_text(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'null' THEN NULL ELSE v #>> '{}' END
$$;

CREATE FUNCTION as_jsonb(v jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'null' THEN NULL ELSE v END
$$;

-- a JSON integer (or a number with no fraction), or a string of one ("42"); bigint
CREATE FUNCTION as_integer(v jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'number' THEN CASE WHEN v::numeric = trunc(v::numeric) AND abs(v::numeric) < 9e18
                                THEN v::numeric::bigint END
        WHEN 'string' THEN CASE WHEN v #>> '{}' ~ '^\s*[-+]?\d{1,18}\s*$' THEN (v #>> '{}')::bigint END
    END
$$;

-- a JSON number, or a string of one ("19.99", "1e3")
CREATE FUNCTION as_numeric(v jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'number' THEN v::numeric
        WHEN 'string' THEN CASE WHEN v #>> '{}' ~ '^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d{1,3})?\s*$'
                                THEN (v #>> '{}')::numeric END
    END
$$;

-- a JSON boolean, the strings "true"/"false" (any case), or the numbers 1/0
CREATE FUNCTION as_boolean(v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'boolean' THEN v::boolean
        WHEN 'string' THEN CASE lower(btrim(v #>> '{}')) WHEN 'true' THEN true WHEN 'false' THEN false END
        WHEN 'number' THEN CASE v::numeric WHEN 1 THEN true WHEN 0 THEN false END
    END
$$;

-- an ISO 8601 date or date-time string ("2024-05-01", "2024-05-01T10:00:00Z", "2024-05-01 10:00:00+02:00");
-- one without an offset is UTC.  A number is epoch seconds (milliseconds from 1e11 on).
-- Parsed by hand rather than cast, so an impossible date (Feb 30) is NULL, not an error, and
-- nothing depends on the session's TimeZone or DateStyle.
CREATE FUNCTION as_timestamptz(v jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text[];
    y int; mo int; d int; h int; mi int; s numeric; oh int; om int;
    local timestamp;
BEGIN
    IF jsonb_typeof(v) = 'number' THEN
        IF abs(v::numeric) < 1e11 THEN
            RETURN to_timestamp(v::numeric::float8);
        ELSIF abs(v::numeric) < 1e14 THEN
            RETURN to_timestamp(v::numeric::float8 / 1000);
        END IF;
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) IS DISTINCT FROM 'string' THEN
        RETURN NULL;
    END IF;
    m := regexp_match(btrim(v #>> '{}'),
        '^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?)?\s*(Z|z|([+-])(\d{2}):?(\d{2})?)?$');
    IF m IS NULL THEN
        RETURN NULL;
    END IF;
    y := m[1]::int; mo := m[2]::int; d := m[3]::int;
    h := coalesce(m[4], '0')::int; mi := coalesce(m[5], '0')::int; s := coalesce(m[6], '0')::numeric;
    oh := coalesce(m[9], '0')::int; om := coalesce(m[10], '0')::int;
    IF y < 1 OR mo NOT BETWEEN 1 AND 12 OR d < 1 OR h > 23 OR mi > 59 OR s >= 60 OR oh > 15 OR om > 59
       OR d > extract(day FROM make_date(y, mo, 1) + interval '1 month - 1 day') THEN
        RETURN NULL;
    END IF;
    local := make_timestamp(y, mo, d, h, mi, s::float8);
    IF m[8] = '-' THEN
        local := local + make_interval(hours => oh, mins => om);
    ELSIF m[8] = '+' THEN
        local := local - make_interval(hours => oh, mins => om);
    END IF;
    RETURN local AT TIME ZONE 'UTC';
END
$$;

-- What freshd.store.views last built: one row per view, with the hash of its definition (the
-- stream's declared columns and the SQL made of them).  A start whose hashes all match runs no DDL.
CREATE TABLE views (
    schema_name text NOT NULL,
    view_name   text NOT NULL,
    hash        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, view_name)
);
