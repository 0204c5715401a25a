"""Typed views of the synced data: one SQL view per provider entity, built from the streams' columns.

Apps read ``freshd_woocommerce.customers`` instead of digging into ``freshd.records.payload``::

    id             the record's external id (text, or the type a column named `id` declares)
    <columns>      each declared Column: `path` into the payload, read as `type` by the
                   freshd.as_<type> functions (migration 0011): a value that does not fit is NULL
    connection     the connection's name          tenant      the connection's tenant
    modified_at    records.changed_at             deleted_at  records.deleted_at (tombstones stay)
    version        records.version

`ensure_views(url)` runs at store open, after the migrations (blocking: run in a thread).  Each
view's definition is hashed; the hashes are kept in ``freshd.views``, and only views whose hash
changed (or that are missing) are dropped and created again, in one transaction under an advisory
lock, so members starting together do not race and an unchanged start runs no DDL.  A view no
stream declares any more is dropped.  A rebuild the database refuses (someone's object built on a
view) is logged as ``store.views_failed`` and leaves the old views: it never stops a start.

Where the declarations come from: each provider's class streams, plus the streams of the stored
connections (`Connector.declared_streams(options)`: the generic REST connector's come from its
options), read once per distinct (provider, options).  Several connections declaring one entity
differently: the columns are merged, and for a name declared twice differently the first
connection (by name) wins, with a warning (naming the first connection of each declaration).

    python -m freshd.store.views --markdown    the views of the built-in providers, as docs/DATA.md lists them
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql

from freshd.connectors.base import VIEW_COLUMNS, Column, StreamSpec, connector_class, providers
from freshd.errors import ConfigError, StoreUnavailable
from freshd.store.migrate import SCHEMA

log = structlog.get_logger(__name__)

_LOCK_KEY = 0x76696577  # "view": held while views are rebuilt
SCHEMA_PREFIX = "freshd_"
_CASTS = {"text": "as_text", "integer": "as_integer", "numeric": "as_numeric", "boolean": "as_boolean",
          "timestamptz": "as_timestamptz", "jsonb": "as_jsonb"}
_SQL_TYPES = {"text": "text", "integer": "bigint", "numeric": "numeric", "boolean": "boolean",
              "timestamptz": "timestamptz", "jsonb": "jsonb"}


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """One view: a provider's entity and its columns (`id_type`: a declared `id` column's type)."""

    provider: str
    entity: str
    columns: tuple[Column, ...]
    id_type: str = "text"

    @property
    def schema(self) -> str:
        return SCHEMA_PREFIX + self.provider

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.entity}"

    def statement(self) -> sql.Composed:
        """``CREATE VIEW`` for it: every identifier quoted, every path a literal."""
        fields: list[sql.Composable] = [
            sql.SQL("r.external_id AS id") if self.id_type == "text"
            else sql.SQL("{}.{}(to_jsonb(r.external_id)) AS id").format(
                sql.Identifier(SCHEMA), sql.Identifier(_CASTS[self.id_type]))]
        fields += [sql.SQL("{}.{}(r.payload #> {}::text[]) AS {}").format(
            sql.Identifier(SCHEMA), sql.Identifier(_CASTS[c.type]), sql.Literal(c.path.split(".")),
            sql.Identifier(c.name)) for c in self.columns]
        fields.append(sql.SQL("c.name AS connection, c.tenant, r.changed_at AS modified_at, r.deleted_at, "
                              "r.version"))
        return sql.SQL(
            "CREATE VIEW {view} AS SELECT {fields} FROM {records} AS r JOIN {connections} AS c"
            " ON c.id = r.connection_id WHERE c.provider = {provider} AND r.entity = {entity}"
        ).format(view=sql.Identifier(self.schema, self.entity), fields=sql.SQL(", ").join(fields),
                 records=sql.Identifier(SCHEMA, "records"), connections=sql.Identifier(SCHEMA, "connections"),
                 provider=sql.Literal(self.provider), entity=sql.Literal(self.entity))

    def digest(self) -> str:
        shape = repr((self.provider, self.entity, self.id_type, self.columns, _CASTS, _GENERATION))
        return hashlib.blake2b(shape.encode(), digest_size=16).hexdigest()


# bump when statement() changes shape, so every view is rebuilt once
_GENERATION = 1


def view_spec(provider: str, stream: StreamSpec) -> ViewSpec:
    """A stream's view; ValueError if its columns clash (a duplicate name)."""
    counts = Counter(c.name for c in stream.columns)
    if dupes := sorted(n for n, count in counts.items() if count > 1):
        raise ValueError(f"{provider} {stream.name}: column(s) declared twice: {', '.join(dupes)}")
    id_type = next((c.type for c in stream.columns if c.name == "id"), "text")
    return ViewSpec(provider, stream.name, tuple(c for c in stream.columns if c.name != "id"), id_type)


def builtin_views() -> list[ViewSpec]:
    """The views of every provider's own (class-declared) streams."""
    return [view_spec(provider, stream) for provider in providers()
            for stream in connector_class(provider).streams]


def declared_views(connections: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[ViewSpec]:
    """The built-in views, plus those the stored connections (name, provider, options) declare."""
    merged: dict[tuple[str, str], ViewSpec] = {(v.provider, v.entity): v for v in builtin_views()}
    # a fleet's connections mostly share their provider's streams (the class's own, or the same options):
    # each distinct declaration is turned into views once, not once per connection
    declared: dict[tuple[str, str], tuple[ViewSpec, ...] | ConfigError] = {}
    for name, provider, options in sorted(connections, key=lambda row: row[0]):
        key = (provider, json.dumps(options, sort_keys=True, default=str))
        views = declared.get(key)
        if views is None:
            try:
                views = tuple(view_spec(provider, stream)
                              for stream in connector_class(provider).declared_streams(options))
            except ConfigError as exc:
                views = exc
            declared[key] = views
        if isinstance(views, ConfigError):
            log.warning("store.views_skipped", connection=name, error=str(views))
            continue
        for view in views:
            known = merged.get((provider, view.entity))
            if known is None or known == view:
                merged[(provider, view.entity)] = known or view
            else:
                merged[(provider, view.entity)] = _merge(known, view, name)
    return sorted(merged.values(), key=lambda v: (v.provider, v.entity))


def _merge(known: ViewSpec, other: ViewSpec, connection: str) -> ViewSpec:
    by_name = {c.name: c for c in known.columns}
    added = list(known.columns)
    for column in other.columns:
        if column.name not in by_name:
            added.append(column)
        elif by_name[column.name] != column:
            log.warning("store.views_conflict", view=known.qualified, column=column.name, connection=connection,
                        kept=f"{by_name[column.name].path}:{by_name[column.name].type}")
    return ViewSpec(known.provider, known.entity, tuple(added), known.id_type)


def ensure_views(url: str) -> list[str]:
    """Bring the views in line with the declarations; return the views (re)built or dropped."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to the database: {exc}") from exc
    with conn:
        # one row per distinct declaration, named by its first connection (by name): a fleet's 10,000
        # connections sharing their provider's options are a handful of rows
        rows = conn.execute(sql.SQL("SELECT min(name), provider, options FROM {} GROUP BY provider, options").format(
            sql.Identifier(SCHEMA, "connections"))).fetchall()
        wanted = {(v.schema, v.entity): v for v in declared_views((r[0], r[1], r[2]) for r in rows)}
        if not _stale(conn, wanted):
            return []  # the common start: nothing to do, no lock taken
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                return _rebuild(conn, wanted)  # again under the lock: another member may have done it
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            # e.g. an object of someone else's built on a view (DROP refused): the sync must not stop
            # for the views' sake; the old views stay and the next start tries again
            log.error("store.views_failed", error=" ".join(str(exc).split()))
            return []


def _stored(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], tuple[str, bool]]:
    """(schema, view) -> (hash, the view exists)."""
    rows = conn.execute(sql.SQL(
        "SELECT schema_name, view_name, hash, to_regclass(format('%I.%I', schema_name, view_name)) IS NOT NULL"
        " FROM {}").format(sql.Identifier(SCHEMA, "views"))).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _stale(conn: psycopg.Connection[Any], wanted: Mapping[tuple[str, str], ViewSpec]) -> bool:
    stored = _stored(conn)
    return stored.keys() != wanted.keys() or any(stored[key] != (view.digest(), True)
                                                 for key, view in wanted.items())


def _rebuild(conn: psycopg.Connection[Any], wanted: Mapping[tuple[str, str], ViewSpec]) -> list[str]:
    stored = _stored(conn)
    table = sql.Identifier(SCHEMA, "views")
    changed: list[str] = []
    for key in sorted(stored.keys() - wanted.keys()):
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(*key)))
        conn.execute(sql.SQL("DELETE FROM {} WHERE schema_name = %s AND view_name = %s").format(table), key)
        changed.append(".".join(key))
    for key, view in sorted(wanted.items()):
        if stored.get(key) == (view.digest(), True):
            continue
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(view.schema)))
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(*key)))
        conn.execute(view.statement())
        conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(
            sql.Identifier(*key), sql.Literal(f"{view.provider} {view.entity}, maintained by freshd (docs/DATA.md)")))
        conn.execute(sql.SQL(
            "INSERT INTO {} (schema_name, view_name, hash) VALUES (%s, %s, %s) ON CONFLICT (schema_name, view_name)"
            " DO UPDATE SET hash = excluded.hash, created_at = now()").format(table), (*key, view.digest()))
        changed.append(view.qualified)
    if changed:
        log.info("store.views_updated", views=changed)
    return changed


def markdown(views: Sequence[ViewSpec]) -> str:
    """The views as docs/DATA.md lists them: one table row per view."""
    lines = ["| view | columns (JSON path, type) |", "|---|---|"]
    for view in views:
        cols = [f"`id` {view.id_type}"] + [
            f"`{c.name}`" + ("" if c.path == c.name else f" (`{c.path}`)") + f" {c.type}" for c in view.columns]
        lines.append(f"| `{view.qualified}` | {', '.join(cols)} |")
    fixed = ", ".join(f"`{name}`" for name in VIEW_COLUMNS[1:])
    lines.append(f"\nEvery view also has {fixed}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m freshd.store.views --markdown")
    sys.stdout.write(markdown(builtin_views()))
