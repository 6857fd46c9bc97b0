# SPDX-License-Identifier: Apache-2.0
"""Stamping readings so that anyone can check them: id, sequence, time, hash chain.

The contract (README, "Wire format"), which `verify_chain` checks as a subscriber would:

* ``body`` = RFC 8785 canonical JSON of the reading object exactly as published, without
  its ``hash`` member (see `gateway.canonical`);
* ``hash`` = lowercase hex SHA-256 of ``bytes.fromhex(prev_hash) + body``;
* ``prev_hash`` is the ``hash`` of the reading with the previous ``seq`` of the same station,
  or 64 zeros (`GENESIS_HASH`) for seq 1;
* ``seq`` starts at 1 and increases by exactly one per reading, never reused.

A `Stamper` holds the head of the chain. It stamps a batch without moving the head; the
pipeline calls `Stamper.advance` only once the batch's store transaction has committed, so
a failed commit leaves the chain as it was and the same seqs are used again (nothing with
those seqs was ever acknowledged or published).
"""

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from uuid_utils import uuid7

from gateway.canonical import NeedsSlowPathError, canonical_json, plain_number, right_sized

GENESIS_HASH = "0" * 64

#: Flags that make a reading not traceable (the value is still recorded and forwarded).
UNTRACEABLE_FLAGS = frozenset(
    {
        "NO_CERTIFICATE",
        "CERT_EXPIRED",
        "CERT_NOT_YET_VALID",
        "OUT_OF_CALIBRATED_RANGE",
        "UNIT_MISMATCH",
        "CHAIN_BROKEN",
        "OUT_OF_CHAIN_RANGE",
    }
)


class Measured(NamedTuple):
    """A reading after calibration, before stamping.

    Hot-path values are named tuples, not frozen dataclasses: equally immutable and typed,
    and three times cheaper to create (0.3 µs against 0.9 µs, at 100 000 a second).

    Attributes:
        instrument: instrument id from the station file.
        channel: channel id within the instrument.
        quantity: the measured quantity, e.g. ``"mass"``.
        indication: the raw indication, in `unit`.
        value: the corrected value (the indication when no correction applies), in `unit`.
        unit: unit of `indication`, `value` and the uncertainties.
        u: combined standard uncertainty, or None when the reading is not traceable.
        expanded_u: expanded uncertainty U = k·u, or None.
        k: coverage factor, or None.
        certificate: id of the certificate applied (or that should have applied), or None.
        chain: ids of every certificate up the calibration chain, `certificate` first, each
            once; empty when there is no certificate.
        time: acquisition time, RFC 3339 UTC with microseconds (``...T12:00:00.000000Z``).
        flags: quality flags, sorted; empty when all is well.
    """

    instrument: str
    channel: str
    quantity: str
    indication: float
    value: float
    unit: str
    u: float | None
    expanded_u: float | None
    k: float | None
    certificate: str | None
    chain: tuple[str, ...]
    time: str
    flags: tuple[str, ...]


class Stamped(NamedTuple):
    """A stamped reading: what is stored and published.

    Attributes:
        seq: station sequence number.
        id: UUIDv7 of the reading, globally unique and time-ordered.
        measured: the reading's content.
        prev_hash: hash of the previous reading (hex).
        hash: this reading's hash (hex).
        body: the canonical JSON the hash covers (the published object without ``hash``).
    """

    seq: int
    id: str
    measured: Measured
    prev_hash: str
    hash: str
    body: bytes


def reading_document(
    station: str, seq: int, reading_id: str, measured: Measured, prev_hash: str
) -> dict[str, Any]:
    """Return the published reading object without its ``hash`` member."""
    return {
        "id": reading_id,
        "station": station,
        "seq": seq,
        "instrument": measured.instrument,
        "channel": measured.channel,
        "quantity": measured.quantity,
        "indication": measured.indication,
        "value": measured.value,
        "unit": measured.unit,
        "u": measured.u,
        "U": measured.expanded_u,
        "k": measured.k,
        "certificate": measured.certificate,
        "chain": list(measured.chain),
        "time": measured.time,
        "flags": list(measured.flags),
        "prev_hash": prev_hash,
    }


def reading_body(
    station: str, seq: int, reading_id: str, measured: Measured, prev_hash: str
) -> bytes:
    """The canonical JSON of `reading_document`, written fast (the hot path).

    Equal byte for byte to ``canonical_json(reading_document(...))`` (a property test checks
    it): the members are inserted in JCS order (sorted by UTF-16 code units) so orjson need
    not sort, and the rare number orjson writes differently takes the general path.
    """
    try:
        document = {
            "U": plain_number(measured.expanded_u),
            "certificate": measured.certificate,
            "chain": list(measured.chain),
            "channel": measured.channel,
            "flags": list(measured.flags),
            "id": reading_id,
            "indication": plain_number(measured.indication),
            "instrument": measured.instrument,
            "k": plain_number(measured.k),
            "prev_hash": prev_hash,
            "quantity": measured.quantity,
            "seq": seq,
            "station": station,
            "time": measured.time,
            "u": plain_number(measured.u),
            "unit": measured.unit,
            "value": plain_number(measured.value),
        }
    except NeedsSlowPathError:
        return canonical_json(reading_document(station, seq, reading_id, measured, prev_hash))
    return right_sized(orjson.dumps(document))


def chain_hash(prev_hash: str, body: bytes) -> str:
    """Return ``sha256(bytes.fromhex(prev_hash) + body)`` as lowercase hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


class Stamper:
    """Gives readings their seq, id and hash-chain link; the head moves only on `advance`."""

    def __init__(self, station: str, *, last_seq: int = 0, last_hash: str = GENESIS_HASH) -> None:
        self.station = station
        self.last_seq = last_seq
        self.last_hash = last_hash

    def stamp(self, batch: Sequence[Measured]) -> list[Stamped]:
        """Stamp `batch` in order, continuing the chain from the current head.

        Raises:
            StampError: a reading holds NaN or an infinity (nothing of the batch is stamped).
        """
        seq, prev_hash = self.last_seq, self.last_hash
        prev_digest = bytes.fromhex(prev_hash)
        station = self.station
        stamped: list[Stamped] = []
        append = stamped.append
        for measured in batch:
            seq += 1
            reading_id = str(uuid7())
            body = reading_body(station, seq, reading_id, measured, prev_hash)
            digest = hashlib.sha256(prev_digest + body).digest()
            hex_digest = digest.hex()
            append(
                Stamped(
                    seq=seq,
                    id=reading_id,
                    measured=measured,
                    prev_hash=prev_hash,
                    hash=hex_digest,
                    body=body,
                )
            )
            prev_digest, prev_hash = digest, hex_digest
        return stamped

    def advance(self, stamped: Sequence[Stamped]) -> None:
        """Move the head past `stamped`, which the store has committed."""
        if stamped:
            if stamped[0].seq != self.last_seq + 1:
                msg = f"batch starts at seq {stamped[0].seq}, head is {self.last_seq}"
                raise ValueError(msg)
            self.last_seq = stamped[-1].seq
            self.last_hash = stamped[-1].hash


def published_object(hash_hex: str, body: bytes) -> bytes:
    """Return the JSON object as published: ``body`` with ``hash`` added (as first member)."""
    return b'{"hash":"' + hash_hex.encode("ascii") + b'",' + body[1:]


def published_payload(items: Iterable[tuple[str, bytes]]) -> bytes:
    """Return a JSON array of published objects from ``(hash, body)`` pairs."""
    return b"[" + b",".join(published_object(h, body) for h, body in items) + b"]"


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """A place where a chain of readings does not verify.

    Attributes:
        seq: the seq of the reading where the problem shows (or the expected seq for a gap).
        kind: ``"hash"`` (the content does not match its hash: an edited reading),
            ``"link"`` (prev_hash is not the previous reading's hash: a deletion, insertion
            or reordering), ``"gap"`` (seq does not follow on), ``"malformed"``.
        detail: a sentence for the operator.
    """

    seq: int
    kind: str
    detail: str


def verify_chain(
    readings: Iterable[Mapping[str, Any]],
    *,
    prev_seq: int = 0,
    prev_hash: str = GENESIS_HASH,
) -> Iterator[ChainProblem]:
    """Check published reading objects in seq order, as any subscriber can.

    Uses nothing but the objects: each is re-canonicalised without its ``hash``. Streams, so
    it runs over any number of readings in constant memory.
    """
    for reading in readings:
        document = dict(reading)
        claimed = document.pop("hash", None)
        seq = document.get("seq")
        if not isinstance(seq, int) or not isinstance(claimed, str):
            yield ChainProblem(prev_seq + 1, "malformed", "reading without integer seq or hash")
            continue
        if seq != prev_seq + 1:
            yield ChainProblem(seq, "gap", f"seq {seq} follows seq {prev_seq}")
        if document.get("prev_hash") != prev_hash:
            yield ChainProblem(seq, "link", f"seq {seq}: prev_hash does not match seq {prev_seq}")
        try:
            actual = chain_hash(str(document.get("prev_hash")), canonical_json(document))
        except ValueError as exc:
            yield ChainProblem(seq, "malformed", f"seq {seq}: {exc}")
            prev_seq, prev_hash = seq, claimed
            continue
        if actual != claimed:
            yield ChainProblem(seq, "hash", f"seq {seq}: content does not match its hash")
        prev_seq, prev_hash = seq, claimed


def parse_payload(payload: bytes) -> list[dict[str, Any]]:
    """Decode a readings message (a JSON array of reading objects)."""
    decoded = orjson.loads(payload)
    if not isinstance(decoded, list):
        msg = "a readings payload is a JSON array"
        raise TypeError(msg)
    return decoded
