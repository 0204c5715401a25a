"""Helpers for tests that read the store as a user would."""

from __future__ import annotations

import psycopg


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, options="-c search_path=freshd,public") as conn:
        return conn.execute(sql, params).fetchall()
