"""Secrets at rest: sealed in PostgreSQL, bound to their row, rotatable, never shown."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from freshd.errors import ConfigError
from freshd.secrets import Keyring, SecretError, generate_key_file, load_keyring
from freshd.store import connections, open_store
from tests.helpers import query

SECRET = "cs_live_5f2b9c0e7a1d4b8e9f3a6c2d1e0b7a94"


def key_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    generate_key_file(path)
    return path


def test_seal_and_open_round_trip_bound_to_its_place(tmp_path: Path) -> None:
    keyring = Keyring.from_files([key_file(tmp_path, "k1")])
    blob = keyring.seal(b"hello", "freshd:credentials:1")
    assert b"hello" not in blob
    assert keyring.open(blob, "freshd:credentials:1") == b"hello"
    with pytest.raises(SecretError, match="does not belong here"):
        keyring.open(blob, "freshd:credentials:2")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SecretError):
        keyring.open(tampered, "freshd:credentials:1")
    with pytest.raises(SecretError, match="not a sealed value"):
        keyring.open(b'{"plain": "json"}', "freshd:credentials:1")


def test_rotation_opens_with_any_key_seals_with_the_newest(tmp_path: Path) -> None:
    old, new = key_file(tmp_path, "old"), key_file(tmp_path, "new")
    before = Keyring.from_files([old])
    blob = before.seal(b"s", "a")
    after = Keyring.from_files([new, old])
    assert after.open(blob, "a") == b"s" and after.needs_reseal(blob)
    assert not after.needs_reseal(after.seal(b"s", "a"))
    with pytest.raises(SecretError, match="not in the keyring"):
        Keyring.from_files([new]).open(blob, "a")


def test_key_files_must_be_private_and_well_formed(tmp_path: Path) -> None:
    loose = key_file(tmp_path, "loose")
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Keyring.from_files([loose])
    short = tmp_path / "short"
    short.write_text("dG9vIHNob3J0\n")
    os.chmod(short, 0o600)
    with pytest.raises(ConfigError, match="32 bytes"):
        Keyring.from_files([short])
    with pytest.raises(ConfigError, match="cannot read"):
        Keyring.from_files([tmp_path / "missing"])


def test_default_key_is_created_once_in_the_state_dir(tmp_path: Path) -> None:
    first, paths = load_keyring((), None, tmp_path, env={})
    assert paths == [tmp_path / "secret.key"] and (paths[0].stat().st_mode & 0o777) == 0o600
    second, _ = load_keyring((), None, tmp_path, env={})
    assert second.current == first.current
    creds = tmp_path / "creds"
    creds.mkdir()
    generate_key_file(creds / "freshd-key")
    from_systemd, paths = load_keyring((), "freshd-key", tmp_path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert paths == [creds / "freshd-key"] and from_systemd.current != first.current
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_keyring((), "freshd-key", tmp_path, env={})


async def add(store, name: str, credentials: dict[str, str]) -> connections.ConnectionRow:  # type: ignore[no-untyped-def]
    row, _ = await store.call(
        connections.upsert_connection, store.keyring, name=name, tenant="t", provider="woocommerce",
        base_url="http://127.0.0.1:1", options={}, credentials=credentials, source="admin")
    return row  # type: ignore[no-any-return]


async def test_credentials_and_tokens_are_sealed_in_the_database(database_url: str, tmp_path: Path) -> None:
    keyring = Keyring.from_files([key_file(tmp_path, "k")])
    async with open_store(database_url, keyring=keyring) as store:
        row = await add(store, "shop", {"consumer_key": "ck_x", "consumer_secret": SECRET})
        await store.call(connections.save_tokens, keyring, row.id,
                         {"access_token": "at_" + SECRET, "expires_at": 1.0, "refresh_token": "rt_" + SECRET})
        again = await store.call(connections.get_connection, "shop", keyring)
    assert again is not None and again.credentials["consumer_secret"] == SECRET
    assert again.tokens is not None and again.tokens["refresh_token"] == "rt_" + SECRET
    assert SECRET not in repr(again)
    with psycopg.connect(database_url) as conn:
        dump = b"".join(bytes(v) for row in conn.execute(
            "SELECT scheme::bytea, secret, tokens FROM freshd.credentials") for v in row if v is not None)
    assert SECRET.encode() not in dump and b"ck_x" not in dump and dump.startswith(b"aesgcm")


async def test_a_ciphertext_copied_to_another_connection_fails(database_url: str) -> None:
    async with open_store(database_url) as store:
        await add(store, "a", {"token": SECRET})
        await add(store, "b", {"token": "other-secret-value"})
        query(database_url, "UPDATE credentials SET secret = (SELECT secret FROM credentials c JOIN connections n"
              " ON n.id = c.connection_id WHERE n.name = 'a') WHERE connection_id = (SELECT id FROM connections"
              " WHERE name = 'b') RETURNING 1")
        with pytest.raises(SecretError, match="does not belong here"):
            await store.call(connections.get_connection, "b", store.keyring)


async def test_new_credentials_clear_tokens_same_credentials_keep_them(database_url: str) -> None:
    async with open_store(database_url) as store:
        row = await add(store, "a", {"refresh_token": "r1"})
        await store.call(connections.save_tokens, store.keyring, row.id, {"access_token": "x", "expires_at": None})
        same = await add(store, "a", {"refresh_token": "r1"})
        assert same.tokens == {"access_token": "x", "expires_at": None}
        changed = await store.call(connections.set_credentials, store.keyring, "a", {"refresh_token": "r2"})
        assert changed.tokens is None and changed.credentials == {"refresh_token": "r2"}


async def test_rotation_and_plain_rows_are_resealed(database_url: str, tmp_path: Path) -> None:
    old, new = key_file(tmp_path, "old"), key_file(tmp_path, "new")
    async with open_store(database_url, keyring=Keyring.from_files([old])) as store:
        await add(store, "sealed-old", {"k": SECRET})
        legacy = await add(store, "legacy", {"k": "v"})
    # a row as written before sealing existed
    query(database_url, "UPDATE credentials SET scheme = 'plain', secret = convert_to('{\"k\": \"plain-one\"}',"
          " 'UTF8') WHERE connection_id = %s RETURNING 1", legacy.id)
    rotated = Keyring.from_files([new, old])
    async with open_store(database_url, keyring=rotated) as store:
        assert await store.call(connections.reseal_all, rotated) == 2
        assert await store.call(connections.reseal_all, rotated) == 0
    only_new = Keyring.from_files([new])
    async with open_store(database_url, keyring=only_new) as store:
        rows = {r.name: r.credentials for r in await store.call(connections.list_connections, only_new)}
    assert rows == {"legacy": {"k": "plain-one"}, "sealed-old": {"k": SECRET}}
