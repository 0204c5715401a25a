"""Secrets at rest: credentials and tokens sealed with AES-256-GCM, bound to their row.

    Keyring.from_files(paths)   keys from files (newest first); the first one encrypts
    Keyring.ephemeral()         one random in-memory key (tests, throwaway stores)
    keyring.seal(data, aad)     -> bytes     keyring.open(blob, aad) -> bytes
    generate_key_file(path)     a new key file, mode 0600

Policy:

* A sealed blob is ``b"fd1" | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag``.  The key id
  is the first 4 bytes of SHA-256 of the key, so a blob names the key that sealed it.
* Decryption tries the key the blob names among every known key: rotation is adding a new key
  file in front of the list (it encrypts from then on) and keeping the old ones until the
  daemon has re-sealed everything (it does so at start; `Keyring.needs_reseal` tells which).
* The associated data binds a blob to its place (``freshd:credentials:<connection id>``), so a
  ciphertext copied to another connection's row fails to open: `SecretError`, never garbage.
* Key files hold 32 random bytes, base64 (urlsafe); a file that is readable by group or others
  is refused, like ssh refuses a loose private key.  Under systemd, `LoadCredential=` puts the key
  in $CREDENTIALS_DIRECTORY, which `[secrets] credential = "name"` reads.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from freshd.errors import ConfigError, FreshdError

log = structlog.get_logger(__name__)

MAGIC = b"fd1"
KEY_BYTES = 32
NONCE_BYTES = 12


class SecretError(FreshdError):
    """A sealed value cannot be opened: unknown key, wrong row, or tampered with."""


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:4]


def _read_key(path: Path) -> bytes:
    try:
        info = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}", where="secrets") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o});"
                          f" run: chmod 600 {path}", where="secrets")
    try:
        key = base64.urlsafe_b64decode(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"key file {path} must hold {KEY_BYTES} bytes in base64 (make one with "
                          f"`freshd keygen {path}`)", where="secrets")
    return key


def generate_key_file(path: Path) -> None:
    """Write a new random key to `path` (mode 0600); refuses to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode() + "\n")


class Keyring:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("at least one key is needed", where="secrets")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.current = key_id(keys[0])

    def __repr__(self) -> str:
        return f"Keyring(keys={len(self._keys)}, current={self.current.hex()})"

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> Keyring:
        return cls([_read_key(path) for path in paths])

    @classmethod
    def ephemeral(cls) -> Keyring:
        return cls([os.urandom(KEY_BYTES)])

    def seal(self, data: bytes, aad: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + self.current + nonce + self._keys[self.current].encrypt(nonce, data, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        blob = bytes(blob)
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4 + NONCE_BYTES + 16:
            raise SecretError(f"{aad}: not a sealed value")
        kid = blob[3:7]
        cipher = self._keys.get(kid)
        if cipher is None:
            raise SecretError(f"{aad}: sealed with key {kid.hex()}, which is not in the keyring "
                              "(add its key file to [secrets] key_files)")
        nonce, sealed = blob[7:7 + NONCE_BYTES], blob[7 + NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, sealed, aad.encode())
        except InvalidTag:
            raise SecretError(f"{aad}: the sealed value does not belong here or was altered") from None

    def needs_reseal(self, blob: bytes) -> bool:
        return bytes(blob[3:7]) != self.current


DEFAULT_KEY_NAME = "secret.key"


def load_keyring(key_files: Sequence[Path], credential: str | None, state_dir: Path,
                 env: Mapping[str, str] | None = None) -> tuple[Keyring, list[Path]]:
    """The daemon's keyring from its configuration; returns it and the files it read.

    Order: the systemd credential (if named), then `key_files`.  With neither, a key file in
    the state directory, created on first start (back it up: without it the stored
    credentials cannot be read).
    """
    env = os.environ if env is None else env
    paths: list[Path] = []
    if credential:
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(f"credential {credential!r} is configured but $CREDENTIALS_DIRECTORY is not set "
                              "(add LoadCredential= to the unit)", where="secrets.credential")
        paths.append(Path(directory) / credential)
    paths.extend(key_files)
    if not paths:
        default = state_dir / DEFAULT_KEY_NAME
        if not default.exists():
            generate_key_file(default)
            log.warning("secrets.key_created", path=str(default),
                        hint="back this file up: stored credentials cannot be read without it")
        paths.append(default)
    return Keyring.from_files(paths), paths
