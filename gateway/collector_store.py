# SPDX-License-Identifier: Apache-2.0
"""The collector's PostgreSQL side: schema, incremental chain verification per station, status.

Reference: README "Wire format" (the hash chain); PostgreSQL 15 manual §13.3.2 (row-level
locks), §13.2.1 (Read Committed: each statement sees what committed before it began).

Concurrency. Several collector processes share the stations' messages (an MQTT v5 shared
subscription hands each message to one of them), so one station's readings reach two
processes at once and out of order. All chain state of a station — its `stations` row (head
and tail of the chain, counters), its open `gaps`, its `readings` and `checkpoints` — is
read and written only inside one transaction that first takes ``SELECT … FOR UPDATE`` on the
station's row. The second process blocks there until the first commits; under Read Committed
its next statements then see everything the first wrote, so it plans from the true state.
A transaction locks exactly one station row (a batch is applied one station per
transaction), so two processes cannot deadlock: the only other wait is PostgreSQL's on a
uniqueness check (a reading id reused across stations), which takes no station lock.
Station rows are created beforehand in their own short transactions (``INSERT … ON
CONFLICT DO NOTHING``). `stations` counts each stored reading exactly once (its counters
change in the readings' transaction); the per-process `collectors` counters are for
monitoring and count a batch applied again after a failure as duplicates.

Chain bookkeeping, for each station (the pure `plan_station` decides, the store writes):

* every stored reading's hash matches its own content (checked before, in `gateway.collector`);
* stored neighbours link: the reading at seq n+1 has ``prev_hash`` = hash of the one at n
  (and seq 1 has 64 zeros). A reading whose neighbour is already stored and does not link
  is quarantined (the first one stored wins; a signed checkpoint arbitrates and flags the
  station when the stored chain disagrees with it);
* `tail_seq` is the highest stored seq; every seq below it is stored or lies in an open
  gap; `head_seq` (last contiguous seq, verified back to seq 1) is the start of the first
  open gap minus one. A reading above the head is stored at once and becomes verified when
  the gap below it fills: linking costs no row update, only the head moving.

Rows are written with COPY (a quarter of the cost of ``INSERT … ON CONFLICT DO NOTHING``
from arrays, measured here): under the station lock the store knows which seqs are
stored, so duplicates never reach the insert; a reading id reused by another reading (only
a broken or hostile station does that) makes the COPY fail, and the slice is planned again
with that reading quarantined.
"""

import bisect
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    inspect,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import StoreError
from gateway.stamp import GENESIS_HASH, published_object
from gateway.store import create_store_engine, redact

log = logging.getLogger(__name__)

METADATA = MetaData()
_NOW = func.now()

# ``U`` of the wire format is stored as ``expanded_u``: PostgreSQL folds unquoted names to
# lower case, so a column "U" would be shadowed by "u" in every hand-written query.
READINGS = Table(
    "readings",
    METADATA,
    Column("id", Uuid(as_uuid=False), primary_key=True),
    Column("station", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("instrument", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("indication", Double),
    Column("value", Double, nullable=False),
    Column("unit", Text, nullable=False),
    Column("u", Double),
    Column("expanded_u", Double),
    Column("k", Double),
    Column("certificate", Text),
    Column("flags", ARRAY(Text), nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    # Exactly the canonical JSON the hash covers: sha256(prev_hash + body) re-verifies a row.
    Column("body", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    UniqueConstraint("station", "seq", name="readings_station_seq_key"),
    Index("readings_station_instrument_time", "station", "instrument", "time"),
)
STATIONS = Table(
    "stations",
    METADATA,
    Column("station", Text, primary_key=True),
    Column("head_seq", BigInteger, nullable=False, server_default="0"),
    Column("head_hash", Text, nullable=False, server_default=GENESIS_HASH),
    Column("tail_seq", BigInteger, nullable=False, server_default="0"),
    Column("tail_hash", Text, nullable=False, server_default=GENESIS_HASH),
    Column("open_gaps", Integer, nullable=False, server_default="0"),
    Column("readings", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("rejected", BigInteger, nullable=False, server_default="0"),
    Column("pending_checkpoints", Integer, nullable=False, server_default="0"),
    Column("checkpoint_seq", BigInteger),
    Column("flagged", Boolean, nullable=False, server_default="false"),
    Column("flag_reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
)
GAPS = Table(
    "gaps",
    METADATA,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("station", Text, nullable=False),
    Column("from_seq", BigInteger, nullable=False),
    Column("to_seq", BigInteger, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("closed_at", DateTime(timezone=True)),
)
Index("gaps_open", GAPS.c.station, GAPS.c.from_seq, postgresql_where=GAPS.c.closed_at.is_(None))
CHECKPOINTS = Table(
    "checkpoints",
    METADATA,
    Column("station", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("key", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("signature", Text, nullable=False),
    Column("state", Text, nullable=False),  # matched, mismatch, or pending (seq not stored)
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("station", "seq", "key"),
)
QUARANTINE = Table(
    "quarantine",
    METADATA,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("topic", Text, nullable=False),
    Column("station", Text),
    Column("seq", BigInteger),
    Column("reading_id", Text),
    Column("kind", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Index("quarantine_station_received", "station", "received_at"),
)
COLLECTORS = Table(
    "collectors",
    METADATA,
    Column("client_id", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("last_commit_at", DateTime(timezone=True)),
    Column("messages", BigInteger, nullable=False, server_default="0"),
    Column("readings", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("quarantined", BigInteger, nullable=False, server_default="0"),
)
_SCHEMA_LOCK = 0x6D677463  # pg_advisory_xact_lock key: "mgtc"; serialises create_all


class Incoming(NamedTuple):
    """A reading whose hash matches its content, in `readings` column order."""

    id: str
    station: str
    seq: int
    instrument: str
    channel: str
    quantity: str
    time: str
    indication: float | None
    value: float
    unit: str
    u: float | None
    expanded_u: float | None
    k: float | None
    certificate: str | None
    flags: str  # a PostgreSQL array literal, e.g. ``{"CERT_EXPIRED"}``
    prev_hash: str
    hash: str
    body: str


class Rejected(NamedTuple):
    """Something for the quarantine: a reading, a checkpoint or a whole message."""

    topic: str
    station: str | None
    seq: int | None
    reading_id: str | None
    kind: str
    reason: str
    payload: bytes


class SignedCheckpoint(NamedTuple):
    """A checkpoint whose Ed25519 signature verified with a trusted key of its station."""

    station: str
    seq: int
    hash: str
    time: str
    key: str
    signature: str


class Triaged(NamedTuple):
    """One MQTT message after parsing and hash verification.

    Attributes:
        topic: the topic it came on.
        station: the station of the topic, or None when the topic names none.
        known: the station has a key file (its readings may enter `readings`).
        readings: readings whose own hash verified.
        rejected: what goes to the quarantine already.
        checkpoints: checkpoints with a good signature.
    """

    topic: str
    station: str | None
    known: bool
    readings: list[Incoming]
    rejected: list[Rejected]
    checkpoints: list[SignedCheckpoint]


@dataclass(slots=True)
class Outcome:
    """What a batch did (counts, for logs and the collectors table)."""

    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    first_reason: str = ""

    def add(self, other: "Outcome") -> None:
        """Accumulate `other` into this outcome."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        for kind, count in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + count
        self.first_reason = self.first_reason or other.first_reason

    def reject(self, rejected: Iterable[Rejected]) -> None:
        """Count quarantined items."""
        for item in rejected:
            self.quarantined += 1
            self.kinds[item.kind] = self.kinds.get(item.kind, 0) + 1
            self.first_reason = self.first_reason or item.reason


class Gap(NamedTuple):
    """An open gap of a station: seqs from_seq..to_seq (inclusive) are not stored."""

    id: int
    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class ChainState:
    """A station's chain as stored: highest stored seq (tail) and open gaps below it."""

    tail_seq: int = 0
    tail_hash: str = GENESIS_HASH
    gaps: tuple[Gap, ...] = ()


@dataclass(slots=True)
class StationPlan:
    """What `plan_station` decided for one station's slice of a batch."""

    accepted: dict[int, Incoming] = field(default_factory=dict)
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    tail_seq: int = 0
    tail_hash: str = GENESIS_HASH
    closed: list[int] = field(default_factory=list)  # gap ids now filled
    shrunk: list[tuple[int, int, int]] = field(default_factory=list)  # (id, from, to)
    split: list[tuple[int, int, int]] = field(default_factory=list)  # (origin id, from, to)
    opened: list[tuple[int, int]] = field(default_factory=list)  # (from, to)
    open_intervals: list[tuple[int, int]] = field(default_factory=list)

    @property
    def head_seq(self) -> int:
        """Last seq up to which every reading is stored and linked back to seq 1."""
        if self.open_intervals:
            return min(start for start, _ in self.open_intervals) - 1
        return self.tail_seq


def stored_seqs_needed(state: ChainState, readings: Iterable[Incoming]) -> set[int]:
    """Seqs whose stored (hash, prev_hash) `plan_station` needs: at or below the tail."""
    tail = state.tail_seq
    needed: set[int] = set()
    for reading in readings:
        if reading.seq <= tail:
            needed.update((reading.seq - 1, reading.seq, reading.seq + 1))
    return {seq for seq in needed if 1 <= seq <= tail}


def plan_station(
    state: ChainState,
    readings: Sequence[Incoming],
    stored: Mapping[int, tuple[str, str]],
    topic_of: Callable[[Incoming], str],
) -> StationPlan:
    """Decide which readings of one station to store, drop as duplicates or quarantine.

    Args:
        state: the station's chain as stored (read under the station lock).
        readings: the slice's readings (hash already verified), in arrival order.
        stored: ``seq -> (hash, prev_hash)`` of stored readings, for at least
            `stored_seqs_needed`.
        topic_of: the topic a reading came on, for quarantine records.

    Pure: the store runs it under the station lock and writes what it returns.
    """
    plan = StationPlan(tail_seq=state.tail_seq, tail_hash=state.tail_hash)
    accepted = plan.accepted

    def reject(reading: Incoming, kind: str, reason: str) -> None:
        payload = published_object(reading.hash, reading.body.encode("utf-8"))
        plan.rejected.append(
            Rejected(
                topic_of(reading), reading.station, reading.seq, reading.id, kind, reason, payload
            )
        )

    def lower_hash(seq: int) -> str | None:
        if seq - 1 in accepted:
            return accepted[seq - 1].hash
        if seq == 1:
            return GENESIS_HASH
        if seq - 1 == state.tail_seq:
            return state.tail_hash
        row = stored.get(seq - 1)
        return row[0] if row else None

    for reading in sorted(readings, key=lambda r: r.seq):  # stable: arrival order per seq
        seq = reading.seq
        known = accepted[seq].hash if seq in accepted else stored.get(seq, ("", ""))[0]
        if known:
            if known == reading.hash:
                plan.duplicates += 1
            else:
                reject(reading, "conflict", f"seq {seq} is already stored with another hash")
            continue
        lower = lower_hash(seq)
        if lower is not None and reading.prev_hash != lower:
            reject(reading, "link", f"seq {seq}: prev_hash is not the hash of seq {seq - 1}")
            continue
        upper = stored.get(seq + 1)
        if upper is not None and upper[1] != reading.hash:
            reject(reading, "link", f"seq {seq}: the stored seq {seq + 1} does not follow it")
            continue
        accepted[seq] = reading
    _plan_gaps(state, plan)
    return plan


def _missing(start: int, end: int, present: Sequence[int]) -> list[tuple[int, int]]:
    """Intervals of start..end not in `present` (sorted, all within start..end)."""
    pieces: list[tuple[int, int]] = []
    for seq in present:
        if seq > start:
            pieces.append((start, seq - 1))
        start = seq + 1
    if start <= end:
        pieces.append((start, end))
    return pieces


def _plan_gaps(state: ChainState, plan: StationPlan) -> None:
    seqs = sorted(plan.accepted)
    for gap in state.gaps:
        inside = seqs[
            bisect.bisect_left(seqs, gap.from_seq) : bisect.bisect_right(seqs, gap.to_seq)
        ]
        if not inside:
            plan.open_intervals.append((gap.from_seq, gap.to_seq))
            continue
        pieces = _missing(gap.from_seq, gap.to_seq, inside)
        plan.open_intervals.extend(pieces)
        if not pieces:
            plan.closed.append(gap.id)
            continue
        plan.shrunk.append((gap.id, *pieces[0]))
        plan.split.extend((gap.id, *piece) for piece in pieces[1:])
    above = seqs[bisect.bisect_right(seqs, state.tail_seq) :]
    if above:
        plan.opened = _missing(state.tail_seq + 1, above[-1], above)
        plan.open_intervals.extend(plan.opened)
        plan.tail_seq = above[-1]
        plan.tail_hash = plan.accepted[above[-1]].hash


_COPY_READINGS = f"COPY readings ({', '.join(Incoming._fields)}) FROM STDIN"
_STATION_STATE = (
    "SELECT head_seq, head_hash, tail_seq, tail_hash, open_gaps, pending_checkpoints "
    "FROM stations WHERE station = %s FOR UPDATE"
)
_UPDATE_STATION = (
    "UPDATE stations SET head_seq = %s, head_hash = %s, tail_seq = %s, tail_hash = %s, "
    "open_gaps = %s, readings = readings + %s, duplicates = duplicates + %s, "
    "rejected = rejected + %s, pending_checkpoints = pending_checkpoints + %s, "
    "checkpoint_seq = GREATEST(checkpoint_seq, %s), flagged = flagged OR %s, "
    "flag_reason = COALESCE(flag_reason, %s), updated_at = now() WHERE station = %s"
)
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine (topic, station, seq, reading_id, kind, reason, payload) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


@dataclass(slots=True)
class _CheckpointEffect:
    pending: int = 0
    matched_seq: int | None = None
    flag_reason: str | None = None

    def resolve(self, station: str, seq: int, key: str, signed: str, stored: str) -> str:
        if signed == stored:
            self.matched_seq = max(seq, self.matched_seq or 0)
            return "matched"
        self.flag_reason = self.flag_reason or (
            f"checkpoint of {station} at seq {seq} signed by key {key[:16]}… says hash "
            f"{signed[:16]}…, the stored reading has {stored[:16]}…: altered upstream"
        )
        return "mismatch"


class CollectorStore:
    """The collector's database connection; owned by one thread (the collector's worker)."""

    def __init__(self, url: str, *, client_id: str) -> None:
        self._url = url
        self._conninfo = "postgresql://" + url.split("://", 1)[1]
        self.client_id = client_id
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._stations: set[str] = set()

    @classmethod
    def open(cls, url: str, *, client_id: str) -> "CollectorStore":
        """Create the schema if needed, connect, and register this collector.

        Raises:
            StoreError: the database cannot be reached, or holds a station store's tables.
        """
        create_schema(url)
        store = cls(url, client_id=client_id)
        with store._guard("register collector"):
            store._connection().execute(
                "INSERT INTO collectors (client_id) VALUES (%s) ON CONFLICT (client_id) "
                "DO UPDATE SET started_at = now()",
                (client_id,),
            )
        return store

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # A collector that stops talking mid-transaction (hung, or cut off) holds a
            # station's lock; the server ends such a session after a minute, and TCP
            # keepalives notice a peer that vanished.
            self._conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=10,
                keepalives_idle=30,
                options="-c idle_in_transaction_session_timeout=60000",
            )
            self._stations.clear()
        return self._conn

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Map a lost or unreachable database to `StoreError` (the caller retries later)."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            msg = f"database {redact(self._url)} unavailable ({what}): {exc}"
            raise StoreError(msg) from exc

    def apply(self, messages: Sequence[Triaged]) -> Outcome:
        """Store a batch of triaged messages; return once all of it is committed.

        Each station's slice is one transaction under its row lock. Should the database
        refuse a slice for its data (a value it cannot hold: the triage lets none through
        that we know of), its messages are applied one by one and one still refused is
        quarantined whole, so that no message can block the others.

        Raises:
            StoreError: the database is unavailable. Slices committed before stay; applied
                again they count as duplicates (`stations` counts each reading once).
        """
        with self._guard("apply a batch"):
            conn = self._connection()
            slices: dict[str, list[Triaged]] = {}
            stationless: list[Rejected] = []
            for message in messages:
                if message.known and message.station is not None:
                    slices.setdefault(message.station, []).append(message)
                else:
                    stationless.extend(message.rejected)
            outcome = Outcome()
            for station in sorted(slices):
                self._ensure_station(conn, station)
                try:
                    outcome.add(self._apply_station(conn, station, slices[station]))
                except (pg_errors.DataError, pg_errors.IntegrityError) as exc:
                    log.error(  # noqa: TRY400 - the data is at fault, not the code
                        "the database refused %s's readings (%s); one message at a time",
                        station,
                        exc,
                    )
                    for message in slices[station]:
                        try:
                            outcome.add(self._apply_station(conn, station, [message]))
                        except (pg_errors.DataError, pg_errors.IntegrityError) as refused:
                            reason = f"the database refused the message: {refused}"
                            stationless.extend(_as_rejected(message, reason))
            outcome.reject(stationless)
            with conn.transaction(), conn.cursor() as cursor:
                if stationless:
                    cursor.executemany(_INSERT_QUARANTINE, stationless)
                cursor.execute(
                    "UPDATE collectors SET messages = messages + %s, readings = readings + %s, "
                    "duplicates = duplicates + %s, quarantined = quarantined + %s, "
                    "last_commit_at = now() WHERE client_id = %s",
                    (
                        len(messages),
                        outcome.stored,
                        outcome.duplicates,
                        outcome.quarantined,
                        self.client_id,
                    ),
                )
            return outcome

    def _ensure_station(self, conn: psycopg.Connection[tuple[Any, ...]], station: str) -> None:
        if station not in self._stations:
            conn.execute(
                "INSERT INTO stations (station) VALUES (%s) ON CONFLICT DO NOTHING", (station,)
            )
            self._stations.add(station)

    def _apply_station(
        self, conn: psycopg.Connection[tuple[Any, ...]], station: str, slice_: list[Triaged]
    ) -> Outcome:
        readings = [reading for message in slice_ for reading in message.readings]
        excluded: dict[str, str] = {}
        for attempt in range(3):
            try:
                with conn.transaction():
                    return self._apply_locked(conn, station, slice_, readings, excluded)
            except pg_errors.UniqueViolation:
                excluded = self._reused_ids(conn, readings)
                if not excluded or attempt == 2:  # noqa: PLR2004 - then `apply` falls back
                    raise
        raise AssertionError  # unreachable: the last attempt returns or raises

    @staticmethod
    def _reused_ids(
        conn: psycopg.Connection[tuple[Any, ...]], readings: Sequence[Incoming]
    ) -> dict[str, str]:
        """Ids of `readings` stored already for another station or seq."""
        rows = conn.execute(
            "SELECT id::text, station, seq FROM readings WHERE id = ANY(%s::uuid[])",
            ([reading.id for reading in readings],),
        ).fetchall()
        mine = {reading.id: (reading.station, reading.seq) for reading in readings}
        return {
            reading_id: f"reading id {reading_id} is already stored as {other} seq {seq}"
            for reading_id, other, seq in rows
            if mine.get(reading_id) != (other, seq)
        }

    def _apply_locked(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        station: str,
        slice_: list[Triaged],
        readings: list[Incoming],
        excluded: Mapping[str, str],
    ) -> Outcome:
        row = conn.execute(_STATION_STATE, (station,)).fetchone()
        if row is None:
            msg = f"station {station} has no row"
            raise StoreError(msg)
        head_seq, head_hash, tail_seq, tail_hash, open_gaps, pending = row
        gaps: tuple[Gap, ...] = ()
        if open_gaps:
            gaps = tuple(
                Gap(*gap)
                for gap in conn.execute(
                    "SELECT id, from_seq, to_seq FROM gaps "
                    "WHERE station = %s AND closed_at IS NULL ORDER BY from_seq",
                    (station,),
                )
            )
        state = ChainState(tail_seq, tail_hash, gaps)
        topics: dict[str, str] = {}

        def topic_of(reading: Incoming) -> str:  # only for the rare quarantined reading
            if not topics:
                topics.update((r.id, m.topic) for m in slice_ for r in m.readings)
            return topics[reading.id]

        signed = [checkpoint for message in slice_ for checkpoint in message.checkpoints]
        usable = [reading for reading in readings if reading.id not in excluded]
        needed = stored_seqs_needed(state, usable)
        needed.update(cp.seq for cp in signed if cp.seq <= tail_seq)
        stored: dict[int, tuple[str, str]] = {}
        if needed:
            stored = {
                seq: (hash_, prev)
                for seq, hash_, prev in conn.execute(
                    "SELECT seq, hash, prev_hash FROM readings "
                    "WHERE station = %s AND seq = ANY(%s::int8[])",
                    (station, sorted(needed)),
                )
            }
        plan = plan_station(state, usable, stored, topic_of)
        rejected = [reading for message in slice_ for reading in message.rejected]
        rejected += plan.rejected
        rejected += [
            Rejected(
                topic_of(r),
                station,
                r.seq,
                r.id,
                "conflict",
                excluded[r.id],
                published_object(r.hash, r.body.encode("utf-8")),
            )
            for r in readings
            if r.id in excluded
        ]
        with conn.cursor() as cursor:
            if plan.accepted:
                with cursor.copy(_COPY_READINGS) as copy:
                    for reading in plan.accepted.values():
                        copy.write_row(reading)
            if rejected:
                cursor.executemany(_INSERT_QUARANTINE, rejected)
            self._write_gaps(cursor, station, plan)
            effect = _CheckpointEffect()
            self._checkpoints(
                cursor, station, signed=signed, plan=plan, stored=stored, effect=effect
            )
            if pending and plan.accepted:
                self._resolve_pending(cursor, station, plan, effect)
            new_head = plan.head_seq
            if new_head != head_seq:
                head_hash = self._hash_at(cursor, station, new_head, plan, stored)
            cursor.execute(
                _UPDATE_STATION,
                (
                    new_head, head_hash, plan.tail_seq, plan.tail_hash,
                    len(plan.open_intervals), len(plan.accepted), plan.duplicates,
                    len(rejected), effect.pending, effect.matched_seq,
                    effect.flag_reason is not None, effect.flag_reason, station,
                ),
            )  # fmt: skip
        outcome = Outcome(stored=len(plan.accepted), duplicates=plan.duplicates)
        outcome.reject(rejected)
        if effect.flag_reason:
            log.error("station %s flagged: %s", station, effect.flag_reason)
        return outcome

    @staticmethod
    def _write_gaps(
        cursor: psycopg.Cursor[tuple[Any, ...]], station: str, plan: StationPlan
    ) -> None:
        if plan.closed:
            cursor.execute(
                "UPDATE gaps SET closed_at = now() WHERE id = ANY(%s::int8[])", (plan.closed,)
            )
        if plan.shrunk:
            cursor.executemany(
                "UPDATE gaps SET from_seq = %s, to_seq = %s WHERE id = %s",
                [(start, end, gap_id) for gap_id, start, end in plan.shrunk],
            )
        if plan.split:
            cursor.executemany(
                "INSERT INTO gaps (station, from_seq, to_seq, opened_at) "
                "SELECT station, %s, %s, opened_at FROM gaps WHERE id = %s",
                [(start, end, gap_id) for gap_id, start, end in plan.split],
            )
        if plan.opened:
            cursor.executemany(
                "INSERT INTO gaps (station, from_seq, to_seq) VALUES (%s, %s, %s)",
                [(station, start, end) for start, end in plan.opened],
            )

    @staticmethod
    def _hash_at(
        cursor: psycopg.Cursor[tuple[Any, ...]],
        station: str,
        seq: int,
        plan: StationPlan,
        stored: Mapping[int, tuple[str, str]],
    ) -> str:
        if seq == 0:
            return GENESIS_HASH
        if seq == plan.tail_seq:
            return plan.tail_hash
        if seq in plan.accepted:
            return plan.accepted[seq].hash
        if seq in stored:
            return stored[seq][0]
        row = cursor.execute(
            "SELECT hash FROM readings WHERE station = %s AND seq = %s", (station, seq)
        ).fetchone()
        if row is None:
            msg = f"station {station}: seq {seq} below the head is not stored"
            raise StoreError(msg)
        return str(row[0])

    @staticmethod
    def _checkpoints(
        cursor: psycopg.Cursor[tuple[Any, ...]],
        station: str,
        *,
        signed: Sequence[SignedCheckpoint],
        plan: StationPlan,
        stored: Mapping[int, tuple[str, str]],
        effect: _CheckpointEffect,
    ) -> None:
        for checkpoint in signed:
            seq = checkpoint.seq
            stored_hash = plan.accepted[seq].hash if seq in plan.accepted else None
            stored_hash = stored_hash or (stored[seq][0] if seq in stored else None)
            state = (
                "pending"
                if stored_hash is None
                else effect.resolve(station, seq, checkpoint.key, checkpoint.hash, stored_hash)
            )
            cursor.execute(
                "INSERT INTO checkpoints (station, seq, key, hash, time, signature, state) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (station, seq, checkpoint.key, checkpoint.hash, checkpoint.time,
                 checkpoint.signature, state),
            )  # fmt: skip
            if state == "pending" and cursor.rowcount == 1:
                effect.pending += 1

    @staticmethod
    def _resolve_pending(
        cursor: psycopg.Cursor[tuple[Any, ...]],
        station: str,
        plan: StationPlan,
        effect: _CheckpointEffect,
    ) -> None:
        """Compare checkpoints that waited for their reading with the readings now stored."""
        rows = cursor.execute(
            "SELECT seq, key, hash FROM checkpoints WHERE station = %s AND state = 'pending' "
            "AND seq BETWEEN %s AND %s",
            (station, min(plan.accepted), max(plan.accepted)),
        ).fetchall()
        for seq, key, signed in rows:
            if seq in plan.accepted:
                state = effect.resolve(station, seq, key, signed, plan.accepted[seq].hash)
                cursor.execute(
                    "UPDATE checkpoints SET state = %s WHERE station = %s AND seq = %s "
                    "AND key = %s",
                    (state, station, seq, key),
                )
                effect.pending -= 1


def _as_rejected(message: Triaged, reason: str) -> Iterator[Rejected]:
    """Everything of a message the database refused, for the quarantine."""
    yield from message.rejected
    for reading in message.readings:
        payload = published_object(reading.hash, reading.body.encode("utf-8"))
        yield Rejected(
            message.topic, reading.station, reading.seq, reading.id, "refused", reason, payload
        )
    for checkpoint in message.checkpoints:
        payload = orjson.dumps(checkpoint._asdict())
        yield Rejected(
            message.topic, checkpoint.station, checkpoint.seq, None, "refused", reason, payload
        )


def create_schema(url: str) -> None:
    """Create the collector's tables if missing (any number of processes may race here).

    Raises:
        StoreError: the database cannot be reached, or its ``readings`` table is a station
            store's (give the collector a database of its own).
    """
    engine = None
    try:
        engine = create_store_engine(url)
        with engine.begin() as conn:
            conn.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            METADATA.create_all(conn, checkfirst=True)
            columns = {column["name"] for column in inspect(conn).get_columns("readings")}
    except SQLAlchemyError as exc:
        msg = f"cannot open the collector database {redact(url)}: {exc}"
        raise StoreError(msg) from exc
    finally:
        if engine is not None:
            engine.dispose()
    if not set(Incoming._fields) <= columns:
        msg = (
            f"{redact(url)} holds a readings table that is not the collector's (a station "
            "store?); give the collector a database of its own"
        )
        raise StoreError(msg)


@dataclass(frozen=True, slots=True)
class StationStatus:
    """A station's state as the collectors have stored it."""

    station: str
    head_seq: int
    tail_seq: int
    readings: int
    duplicates: int
    rejected: int
    pending_checkpoints: int
    checkpoint_seq: int | None
    flagged: bool
    flag_reason: str | None
    gaps: tuple[tuple[int, int], ...]


def read_status(url: str) -> tuple[list[StationStatus], list[dict[str, Any]]]:
    """Every station's chain state and every collector's counters.

    Raises:
        StoreError: the database cannot be read.
    """
    conninfo = "postgresql://" + url.split("://", 1)[1]
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            open_gaps: dict[str, list[tuple[int, int]]] = {}
            for station, start, end in conn.execute(
                "SELECT station, from_seq, to_seq FROM gaps WHERE closed_at IS NULL "
                "ORDER BY station, from_seq"
            ):
                open_gaps.setdefault(station, []).append((start, end))
            cursor = conn.execute(
                "SELECT station, head_seq, tail_seq, readings, duplicates, rejected, "
                "pending_checkpoints, checkpoint_seq, flagged, flag_reason "
                "FROM stations ORDER BY station"
            )
            names = [column.name for column in cursor.description or ()]
            stations = [
                StationStatus(
                    **dict(zip(names, row, strict=True)), gaps=tuple(open_gaps.get(row[0], ()))
                )
                for row in cursor
            ]
            cursor = conn.execute(
                "SELECT client_id, started_at, last_commit_at, messages, readings, duplicates, "
                "quarantined FROM collectors ORDER BY client_id"
            )
            names = [column.name for column in cursor.description or ()]
            collectors = [dict(zip(names, row, strict=True)) for row in cursor]
    except psycopg.Error as exc:
        msg = f"cannot read the collector database {redact(url)}: {exc}"
        raise StoreError(msg) from exc
    return stations, collectors


def wait_seconds(failures: int, *, first: float = 0.5, most: float = 30.0) -> float:
    """Backoff before the next attempt after `failures` consecutive failures."""
    return float(min(most, first * 2 ** min(failures - 1, 10)))
