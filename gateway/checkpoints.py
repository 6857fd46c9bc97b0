# SPDX-License-Identifier: Apache-2.0
"""Signed checkpoints of the hash chain: the station vouches for its readings up to a seq.

Reference: RFC 8032 (Ed25519), RFC 8785 (JCS, via `gateway.canonical`), RFC 4648 §4 (base64).
The wire format is fixed (README, "For upstream integrators"; a collector is built on it):

```
{"station": str, "seq": int, "hash": "<64 hex: hash of reading seq>",
 "time": "<RFC 3339 UTC with microseconds, when signed>",
 "key": "<64 hex: SHA-256 of the raw 32-byte Ed25519 public key = its fingerprint>",
 "signature": "<base64, standard alphabet, padded, of the Ed25519 signature>"}
```

The signature covers the RFC 8785 canonical JSON of the object without ``signature``. A
checkpoint at seq s vouches, through the hash chain, for every reading up to s: changing any
of them changes the hash at s. This module is pure: values in, values or problems out; the
daemon decides when to sign and the store keeps them.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.canonical import canonical_json

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_MEMBERS = frozenset({"station", "seq", "hash", "time", "key", "signature"})


class CheckpointFormatError(ValueError):
    """An object is not a checkpoint of the published format (names the member)."""


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as 64 lowercase hex characters (how keys are exchanged)."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def fingerprint(key: Ed25519PublicKey | str) -> str:
    """SHA-256 of the raw 32-byte public key, as 64 hex: the ``key`` member of a checkpoint.

    Args:
        key: a public key, or its 64 hex characters.
    """
    raw = bytes.fromhex(key) if isinstance(key, str) else bytes.fromhex(public_key_hex(key))
    return hashlib.sha256(raw).hexdigest()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Parse 64 hex characters into a public key.

    Raises:
        ValueError: not 64 hex characters (the message shows what was given).
    """
    text = text.strip().lower()
    if not _HEX64.match(text):
        msg = f"an Ed25519 public key is 64 hex characters, got {text[:80]!r}"
        raise ValueError(msg)
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """One signed checkpoint, member for member as published.

    Attributes:
        station: the station id.
        seq: the seq of the reading it vouches for (and, through the chain, all before).
        hash: that reading's hash (64 hex).
        time: when it was signed, RFC 3339 UTC with microseconds.
        key: fingerprint of the signing key (64 hex).
        signature: base64 of the Ed25519 signature over `signing_input`.
    """

    station: str
    seq: int
    hash: str
    time: str
    key: str
    signature: str

    def unsigned(self) -> dict[str, Any]:
        """The object without ``signature``: what the signature covers."""
        return {
            "station": self.station,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "key": self.key,
        }

    def signing_input(self) -> bytes:
        """RFC 8785 canonical JSON of `unsigned`: the bytes that are signed."""
        return canonical_json(self.unsigned())

    def to_object(self) -> dict[str, Any]:
        """The published JSON object."""
        return {**self.unsigned(), "signature": self.signature}

    def to_json(self) -> bytes:
        """The published payload: the canonical JSON of the whole object."""
        return canonical_json(self.to_object())


def sign_checkpoint(
    private_key: Ed25519PrivateKey, *, station: str, seq: int, hash_hex: str, time: str
) -> Checkpoint:
    """Sign (station, seq, hash, time) with `private_key`.

    Ed25519 is deterministic: the same key and members give the same signature.
    """
    unsigned = Checkpoint(
        station=station,
        seq=seq,
        hash=hash_hex,
        time=time,
        key=fingerprint(private_key.public_key()),
        signature="",
    )
    signature = private_key.sign(unsigned.signing_input())
    return Checkpoint(**unsigned.unsigned(), signature=base64.b64encode(signature).decode())


def parse_checkpoint(document: Mapping[str, Any]) -> Checkpoint:
    """Check that `document` has the published form and return it as a `Checkpoint`.

    Raises:
        CheckpointFormatError: a member is missing, extra or of the wrong form.
    """
    members = set(document)
    if members != _MEMBERS:
        missing, extra = sorted(_MEMBERS - members), sorted(members - _MEMBERS)
        msg = f"not a checkpoint: missing {missing}, unexpected {extra}"
        raise CheckpointFormatError(msg)
    station, seq, hash_hex = document["station"], document["seq"], document["hash"]
    time, key, signature = document["time"], document["key"], document["signature"]
    if not isinstance(station, str) or not station:
        raise CheckpointFormatError(f"station must be a non-empty string, got {station!r}")
    if type(seq) is not int or seq < 1:
        raise CheckpointFormatError(f"seq must be a positive integer, got {seq!r}")
    for name, value in (("hash", hash_hex), ("key", key)):
        if not isinstance(value, str) or not _HEX64.match(value):
            raise CheckpointFormatError(f"{name} must be 64 lowercase hex, got {value!r}")
    if not isinstance(time, str) or not _TIME.match(time):
        msg = f"time must be RFC 3339 UTC with microseconds, got {time!r}"
        raise CheckpointFormatError(msg)
    if not isinstance(signature, str):
        raise CheckpointFormatError(f"signature must be a base64 string, got {signature!r}")
    return Checkpoint(
        station=station, seq=seq, hash=hash_hex, time=time, key=key, signature=signature
    )


def check_signature(
    checkpoint: Checkpoint, trusted: Mapping[str, Ed25519PublicKey]
) -> tuple[str, str] | None:
    """Verify the checkpoint's signature with the trusted key it names.

    Args:
        checkpoint: the checkpoint.
        trusted: public keys by fingerprint (see `fingerprint`).

    Returns:
        None when the signature verifies; else (kind, sentence): kind ``"key"`` when the
        checkpoint names a key that is not trusted, ``"signature"`` when the signature is
        malformed or does not verify (a forged or altered checkpoint).
    """
    public_key = trusted.get(checkpoint.key)
    if public_key is None:
        return "key", f"signed with key {checkpoint.key[:16]}…, which is not a trusted key"
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
    except binascii.Error:
        return "signature", "the signature is not base64"
    try:
        public_key.verify(signature, checkpoint.signing_input())
    except InvalidSignature:
        return "signature", "the signature does not verify (the checkpoint was altered)"
    return None
