# SPDX-License-Identifier: Apache-2.0
"""The station's Ed25519 keys: created at first start, refused when exposed, rotated on demand.

Reference: RFC 8032 (Ed25519); RFC 5958 / PKCS #8 in PEM for the private key file.

Layout of the key directory (``[signing] key_dir``, default ``DATA_DIR/keys``, mode 0700):

```
signing.key            the private key that signs checkpoints (PEM PKCS #8), mode 0600
<fingerprint>.pub      one per key the station has ever signed with, never deleted:
                       "# ..." comment lines, then the 64-hex public key
```

Each ``.pub`` file is in the form collectors read from ``DIR/<station>.pub`` (one hex public
key per line, ``#`` comments), so old checkpoints stay verifiable after a rotation. The
private key is refused — `SigningKeyError`, naming the file and its mode — when group or
others may read or write it. Rotation writes the new key beside the old one and renames it
over ``signing.key``: at every moment the file holds a whole key, and the old private key is
gone (a retired key must not sign again), while its public half stays.
"""

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from gateway.checkpoints import fingerprint, public_key_from_hex, public_key_hex
from gateway.errors import GatewayError

PRIVATE_KEY_FILE = "signing.key"
_EXPOSED = stat.S_IRWXG | stat.S_IRWXO


class SigningKeyError(GatewayError):
    """The station's signing key cannot be used (unreadable, malformed or exposed)."""


@dataclass(frozen=True, slots=True)
class PublicKeyRecord:
    """A public key the station has signed with.

    Attributes:
        public_key: the raw 32-byte key as 64 hex characters.
        fingerprint: SHA-256 of the raw key, 64 hex (the ``key`` member of checkpoints).
        created: when the key was made, RFC 3339 UTC, or "" when unknown.
    """

    public_key: str
    fingerprint: str
    created: str = ""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key that signs checkpoints, with its public half.

    Attributes:
        private_key: the Ed25519 private key.
        public_key: its public key as 64 hex characters.
        fingerprint: SHA-256 of the raw public key, 64 hex.
        path: the file it was read from.
    """

    private_key: Ed25519PrivateKey
    public_key: str
    fingerprint: str
    path: Path


def private_key_path(key_dir: Path) -> Path:
    """Where the signing key lives in `key_dir`."""
    return key_dir / PRIVATE_KEY_FILE


def load_signing_key(key_dir: Path) -> SigningKey:
    """Read the signing key, refusing it when group or others may read or write it.

    Raises:
        SigningKeyError: the file is missing, exposed or not an Ed25519 private key.
    """
    path = private_key_path(key_dir)
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & _EXPOSED:
                msg = (
                    f"{path} has mode {stat.S_IMODE(mode):04o}; a private key must be readable "
                    f"and writable by its owner only (chmod 600 {path})"
                )
                raise SigningKeyError(msg)
            pem = file.read()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    try:
        private_key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(private_key).__name__}, not an Ed25519 key")
    public = public_key_hex(private_key.public_key())
    return SigningKey(private_key, public, fingerprint(public), path)


def ensure_signing_key(key_dir: Path, *, station: str, now: str) -> tuple[SigningKey, bool]:
    """Load the signing key, creating the key directory and a first key when there is none.

    Args:
        key_dir: the key directory.
        station: the station id, written into the ``.pub`` file's comment.
        now: the current time, RFC 3339 UTC, recorded as the key's creation time.

    Returns:
        The key, and whether it was created now.

    Raises:
        SigningKeyError: as `load_signing_key`, or the directory cannot be written.
    """
    if private_key_path(key_dir).exists():
        key = load_signing_key(key_dir)
        # Restores a lost .pub file (its creation time is then unknown).
        _write_public(key_dir, key.public_key, station=station, created="", replace=False)
        return key, False
    return _install_new_key(key_dir, station=station, now=now), True


def rotate_signing_key(key_dir: Path, *, station: str, now: str) -> tuple[SigningKey, str | None]:
    """Make a new signing key; keep the old public key (its ``.pub`` file) for verification.

    Returns:
        The new key, and the fingerprint of the key it replaces (None if there was none).

    Raises:
        SigningKeyError: the current key is exposed or malformed (fix that first: rotating
            would hide it), or the directory cannot be written.
    """
    old = load_signing_key(key_dir) if private_key_path(key_dir).exists() else None
    if old is not None:
        # A station whose .pub file went missing would lose the old key's verifiability.
        _write_public(key_dir, old.public_key, station=station, created="", replace=False)
    new = _install_new_key(key_dir, station=station, now=now)
    return new, None if old is None else old.fingerprint


def _install_new_key(key_dir: Path, *, station: str, now: str) -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public = public_key_hex(private_key.public_key())
    path = private_key_path(key_dir)
    temporary = key_dir / f".{PRIVATE_KEY_FILE}.new"
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Public half first: a crash after this leaves an unused .pub, never a key that
        # signed without its public half on record.
        _write_public(key_dir, public, station=station, created=now, replace=True)
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask said
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
        _fsync_directory(key_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise SigningKeyError(f"cannot write a signing key in {key_dir}: {exc}") from exc
    return SigningKey(private_key, public, fingerprint(public), path)


def _write_public(
    key_dir: Path, public_key: str, *, station: str, created: str, replace: bool
) -> None:
    path = key_dir / f"{fingerprint(public_key)}.pub"
    if path.exists() and not replace:
        return
    created_note = f", created {created}" if created else ""
    text = (
        f"# metrogate station {station}: Ed25519 public key{created_note}\n"
        f"# fingerprint {fingerprint(public_key)}\n"
        f"{public_key}\n"
    )
    try:
        temporary = path.with_suffix(".pub.tmp")
        temporary.write_text(text, encoding="ascii")
        temporary.chmod(0o644)
        temporary.replace(path)
    except OSError as exc:
        raise SigningKeyError(f"cannot write {path}: {exc.strerror}") from exc


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def parse_public_keys(text: str, *, source: str = "<keys>") -> list[str]:
    """Read a keys file: one 64-hex public key per line, ``#`` comments, blank lines.

    Returns:
        The keys, lowercase, in file order, without repeats.

    Raises:
        ValueError: a line is neither a comment nor a key (names the source and line).
    """
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            public_key_from_hex(content)
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: {exc}") from exc
        if content.lower() not in keys:
            keys.append(content.lower())
    return keys


def read_public_keys(key_dir: Path) -> list[PublicKeyRecord]:
    """Every public key in `key_dir`'s ``.pub`` files, oldest first (by creation note).

    Raises:
        SigningKeyError: a ``.pub`` file cannot be read or holds something else than keys.
    """
    records: dict[str, PublicKeyRecord] = {}
    for path in sorted(key_dir.glob("*.pub")):
        try:
            text = path.read_text(encoding="ascii")
            keys = parse_public_keys(text, source=str(path))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SigningKeyError(f"cannot use {path}: {exc}") from exc
        created = _created_note(text)
        for key in keys:
            records.setdefault(key, PublicKeyRecord(key, fingerprint(key), created))
    return sorted(records.values(), key=lambda record: (record.created or "~", record.public_key))


def _created_note(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#") and ", created " in line:
            return line.rsplit(", created ", 1)[1].strip()
    return ""


def trusted_keys(public_keys: list[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by fingerprint, ready for `gateway.checkpoints.check_signature`."""
    return {fingerprint(key): public_key_from_hex(key) for key in public_keys}
