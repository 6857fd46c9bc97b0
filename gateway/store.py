# SPDX-License-Identifier: Apache-2.0
"""The durable store: SQLite (WAL, synchronous=FULL) by default, PostgreSQL by URL.

A reading is acknowledged when the transaction that inserts it commits: with SQLite in WAL
mode and ``synchronous=FULL`` the commit returns after the WAL is fsynced, so a power cut
after it loses nothing. Hot-path inserts go through SQLAlchemy Core ``executemany`` on the
SQLModel tables, one transaction per batch.

`Store` is synchronous and owned by one thread; `AsyncStore` runs every call on a single
dedicated worker thread so an fsync never stalls the event loop and calls never interleave.
"""

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import Engine, delete, event, func, insert, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel, create_engine

from gateway.checkpoints import Checkpoint
from gateway.errors import StoreError
from gateway.keys import PublicKeyRecord
from gateway.models import CheckpointRow, ForwardState, ReadingRow, StationKeyRow, StationMeta
from gateway.stamp import GENESIS_HASH, Stamped

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_READINGS = ReadingRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table models
_FORWARD = ForwardState.__table__  # type: ignore[attr-defined]
_META = StationMeta.__table__  # type: ignore[attr-defined]
_CHECKPOINTS = CheckpointRow.__table__  # type: ignore[attr-defined]
_KEYS = StationKeyRow.__table__  # type: ignore[attr-defined]
_OUTBOX = "mqtt"
#: The checkpoints' outbox mark in `ForwardState`: there, forwarded_seq holds a checkpoint id.
_CHECKPOINT_OUTBOX = "mqtt-checkpoints"

T = TypeVar("T")


class Pending(NamedTuple):
    """A committed reading not yet acknowledged by the broker."""

    seq: int
    instrument: str
    hash: str
    body: bytes


class StoredKey(NamedTuple):
    """A row of the station's keys: a public key it has signed checkpoints with."""

    fingerprint: str
    public_key: str
    created: str
    retired: str | None


class StoredReading(NamedTuple):
    """A stored reading as `Store.reading_pages` streams it: row seq, hash, body bytes."""

    seq: int
    hash: str
    body: bytes


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:  # noqa: ANN401
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_store_engine(url: str) -> Engine:
    """Create the engine for `url`, with SQLite's durability pragmas where it applies."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in {"", ":memory:"}:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def redact(url: str) -> str:
    """Return `url` with any password replaced by ``***``, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in credentials else url


class Store:
    """Readings, outbox state and station metadata in one database."""

    def __init__(self, engine: Engine, station: str) -> None:
        self._engine = engine
        self.station = station
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        columns = ("seq", "id", "instrument", "channel", "time", "flags", "hash", "body")
        self._insert_sql = (  # constants only: nothing from outside reaches this text
            f"INSERT INTO readings ({', '.join(columns)}) "  # noqa: S608
            f"VALUES ({', '.join(mark for _ in columns)})"
        )

    @classmethod
    def open(cls, url: str, *, station: str, create: bool = True) -> "Store":
        """Open (and create if needed) the store at `url` for `station`.

        Raises:
            StoreError: the database cannot be opened, or belongs to another station.
        """
        engine: Engine | None = None
        try:
            engine = create_store_engine(url)
            if create:
                SQLModel.metadata.create_all(
                    engine,
                    tables=[_READINGS, _FORWARD, _META, _CHECKPOINTS, _KEYS],
                    checkfirst=True,
                )
            store = cls(engine, station)
            store._claim(create=create)
        except (SQLAlchemyError, OSError, StoreError) as exc:
            if engine is not None:
                engine.dispose()
            if isinstance(exc, StoreError):
                raise
            reason = _reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
            raise StoreError(f"cannot open store {redact(url)}: {reason}") from exc
        return store

    def _claim(self, *, create: bool) -> None:
        with self._engine.begin() as conn:
            rows = {str(k): str(v) for k, v in conn.execute(select(_META.c.key, _META.c.value))}
            owner = rows.get("station")
            if owner is None and create:
                conn.execute(
                    insert(_META),
                    [
                        {"key": "station", "value": self.station},
                        {"key": "schema", "value": SCHEMA_VERSION},
                    ],
                )
                conn.execute(insert(_FORWARD), [{"name": _OUTBOX, "forwarded_seq": 0}])
            elif owner is not None and self.station and owner != self.station:
                msg = f'the database belongs to station "{owner}", not "{self.station}"'
                raise StoreError(msg)
            elif owner is not None and not self.station:
                self.station = owner

    def close(self) -> None:
        """Release every connection."""
        self._engine.dispose()

    def head(self) -> tuple[int, str]:
        """Return the last committed (seq, hash), or (0, GENESIS_HASH) when empty."""
        with self._guard("read the chain head"), self._engine.connect() as conn:
            row = conn.execute(
                select(_READINGS.c.seq, _READINGS.c.hash).order_by(_READINGS.c.seq.desc()).limit(1)
            ).first()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def append(self, stamped: Sequence[Stamped]) -> None:
        """Insert a stamped batch in one transaction; on return it is durable.

        Raises:
            StoreError: the transaction did not commit (nothing of the batch is stored).
        """
        if not stamped:
            return
        rows = [
            (
                item.seq,
                item.id,
                item.measured.instrument,
                item.measured.channel,
                item.measured.time,
                ",".join(item.measured.flags),
                item.hash,
                item.body,
            )
            for item in stamped
        ]
        # The driver's executemany with positional rows: SQLAlchemy's per-row parameter
        # processing would cost more than the insert itself at 100 000 readings/s.
        action = f"commit seq {stamped[0].seq}..{stamped[-1].seq}"
        with self._guard(action), self._engine.begin() as conn:
            conn.exec_driver_sql(self._insert_sql, rows)

    def forwarded_seq(self) -> int:
        """Return the highest seq up to which every reading was acknowledged by the broker."""
        with self._guard("read the outbox state"), self._engine.connect() as conn:
            value = conn.execute(
                select(_FORWARD.c.forwarded_seq).where(_FORWARD.c.name == _OUTBOX)
            ).scalar()
        return int(value or 0)

    def pending(self, after: int, limit: int) -> list[Pending]:
        """Return up to `limit` committed readings with seq > `after`, in seq order."""
        query = (
            select(_READINGS.c.seq, _READINGS.c.instrument, _READINGS.c.hash, _READINGS.c.body)
            .where(_READINGS.c.seq > after)
            .order_by(_READINGS.c.seq)
            .limit(limit)
        )
        with self._guard("read the outbox"), self._engine.connect() as conn:
            return [
                Pending(int(s), str(i), str(h), bytes(b)) for s, i, h, b in conn.execute(query)
            ]

    def mark_forwarded(self, seq: int) -> None:
        """Record that every reading up to `seq` was acknowledged (never moves backwards)."""
        with self._guard(f"mark seq {seq} forwarded"), self._engine.begin() as conn:
            conn.execute(
                update(_FORWARD)
                .where(_FORWARD.c.name == _OUTBOX, _FORWARD.c.forwarded_seq < seq)
                .values(forwarded_seq=seq)
            )

    def count(self) -> int:
        """Return the number of stored readings."""
        with self._guard("count readings"), self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_READINGS)).scalar() or 0)

    def reading(self, seq: int) -> dict[str, Any] | None:
        """Return the stored reading `seq` (as `readings` does), or None."""
        query = select(_READINGS.c.hash, _READINGS.c.body).where(_READINGS.c.seq == seq)
        with self._guard(f"read seq {seq}"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {"hash": str(row[0]), **orjson.loads(row[1]), "body": bytes(row[1])}

    def readings(
        self, *, instrument: str | None = None, limit: int | None = None, ascending: bool = False
    ) -> list[dict[str, Any]]:
        """Return stored readings, newest first unless `ascending`.

        Each is the reading object as published (``hash`` included) plus ``body``, the exact
        bytes its hash covers.
        """
        order = _READINGS.c.seq.asc() if ascending else _READINGS.c.seq.desc()
        query = select(_READINGS.c.hash, _READINGS.c.body).order_by(order)
        if instrument is not None:
            query = query.where(_READINGS.c.instrument == instrument)
        if limit is not None:
            query = query.limit(limit)
        with self._guard("list readings"), self._engine.connect() as conn:
            return [
                {"hash": str(digest), **orjson.loads(body), "body": bytes(body)}
                for digest, body in conn.execute(query)
            ]

    # Checkpoints and keys (issue 5). Stores created before them get the tables at the
    # daemon's next start; until then the reading methods below see none.

    def _has_table(self, name: str) -> bool:
        with self._guard(f"look for table {name}"):
            return bool(inspect(self._engine).has_table(name))

    def add_checkpoint(self, checkpoint: Checkpoint) -> int:
        """Store a signed checkpoint in its own transaction; return its id (signing order).

        Raises:
            StoreError: the transaction did not commit.
        """
        row = {
            "station": checkpoint.station,
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "time": checkpoint.time,
            "key": checkpoint.key,
            "signature": checkpoint.signature,
        }
        action = f"store the checkpoint at seq {checkpoint.seq}"
        with self._guard(action), self._engine.begin() as conn:
            result = conn.execute(insert(_CHECKPOINTS).values(**row))
            key = result.inserted_primary_key
        if key is None or key[0] is None:  # pragma: no cover - both dialects report it
            raise StoreError(f"cannot {action}: the database returned no id")
        return int(key[0])

    def last_checkpoint_seq(self) -> int:
        """The highest seq a stored checkpoint covers (0 when there is none)."""
        if not self._has_table("checkpoints"):
            return 0
        with self._guard("read the last checkpoint"), self._engine.connect() as conn:
            return int(conn.execute(select(func.max(_CHECKPOINTS.c.seq))).scalar() or 0)

    def checkpoint_count(self) -> int:
        """The number of stored checkpoints."""
        if not self._has_table("checkpoints"):
            return 0
        with self._guard("count checkpoints"), self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_CHECKPOINTS)).scalar() or 0)

    def pending_checkpoints(self, after_id: int, limit: int) -> list[tuple[int, Checkpoint]]:
        """Up to `limit` checkpoints with id > `after_id`, in signing order, with their ids."""
        query = (
            select(_CHECKPOINTS)
            .where(_CHECKPOINTS.c.id > after_id)
            .order_by(_CHECKPOINTS.c.id)
            .limit(limit)
        )
        with self._guard("read the checkpoints outbox"), self._engine.connect() as conn:
            return [(int(row.id), _checkpoint(row)) for row in conn.execute(query)]

    def checkpoints_forwarded(self) -> int:
        """The highest checkpoint id up to which the broker acknowledged every checkpoint."""
        with self._guard("read the checkpoints outbox state"), self._engine.connect() as conn:
            value = conn.execute(
                select(_FORWARD.c.forwarded_seq).where(_FORWARD.c.name == _CHECKPOINT_OUTBOX)
            ).scalar()
        return int(value or 0)

    def mark_checkpoints_forwarded(self, checkpoint_id: int) -> None:
        """Record that every checkpoint up to `checkpoint_id` was acknowledged (only forward)."""
        action = f"mark checkpoint {checkpoint_id} forwarded"
        with self._guard(action), self._engine.begin() as conn:
            exists = conn.execute(
                select(_FORWARD.c.forwarded_seq).where(_FORWARD.c.name == _CHECKPOINT_OUTBOX)
            ).first()
            if exists is None:
                conn.execute(
                    insert(_FORWARD),
                    [{"name": _CHECKPOINT_OUTBOX, "forwarded_seq": checkpoint_id}],
                )
                return
            conn.execute(
                update(_FORWARD)
                .where(
                    _FORWARD.c.name == _CHECKPOINT_OUTBOX,
                    _FORWARD.c.forwarded_seq < checkpoint_id,
                )
                .values(forwarded_seq=checkpoint_id)
            )

    def register_keys(
        self, known: Sequence[PublicKeyRecord], *, current: str, now: str
    ) -> list[str]:
        """Record the station's public keys; `current` (a fingerprint) is the signing key.

        Keys not yet recorded are added (with their creation time, or `now`); every other
        key still marked current is retired at `now`. Nothing is ever deleted.

        Returns:
            The fingerprints that were added.
        """
        with self._guard("record the station's keys"), self._engine.begin() as conn:
            stored = {str(row[0]) for row in conn.execute(select(_KEYS.c.fingerprint))}
            added = [record for record in known if record.fingerprint not in stored]
            if added:
                conn.execute(
                    insert(_KEYS),
                    [
                        {
                            "fingerprint": record.fingerprint,
                            "public_key": record.public_key,
                            "created": record.created or now,
                            "retired": None if record.fingerprint == current else now,
                        }
                        for record in added
                    ],
                )
            conn.execute(
                update(_KEYS)
                .where(_KEYS.c.fingerprint != current, _KEYS.c.retired.is_(None))
                .values(retired=now)
            )
            conn.execute(update(_KEYS).where(_KEYS.c.fingerprint == current).values(retired=None))
        return [record.fingerprint for record in added]

    def station_keys(self) -> list[StoredKey]:
        """Every public key the station has recorded, oldest first."""
        if not self._has_table("station_keys"):
            return []
        query = select(_KEYS).order_by(_KEYS.c.created, _KEYS.c.fingerprint)
        with self._guard("read the station's keys"), self._engine.connect() as conn:
            return [
                StoredKey(str(r.fingerprint), str(r.public_key), str(r.created), r.retired)
                for r in conn.execute(query)
            ]

    def reading_pages(self, page_size: int = 10_000) -> Iterator[list[StoredReading]]:
        """Every stored reading in seq order, a page (one short query) at a time.

        Keyset paging (``seq > last``) costs the same on the last page as on the first, and
        no connection is held between pages, so verifying years of readings runs in
        constant memory beside a running daemon.
        """
        after: int | None = None  # the first page has no lower bound: any seq an intruder wrote
        while True:
            query = (
                select(_READINGS.c.seq, _READINGS.c.hash, _READINGS.c.body)
                .order_by(_READINGS.c.seq)
                .limit(page_size)
            )
            if after is not None:
                query = query.where(_READINGS.c.seq > after)
            with self._guard("read readings"), self._engine.connect() as conn:
                page = [
                    # A body rewritten as text (SQLite lets anyone) is still read, and checked.
                    StoredReading(int(s), str(h), b.encode() if isinstance(b, str) else bytes(b))
                    for s, h, b in conn.execute(query)
                ]
            if not page:
                return
            yield page
            after = page[-1].seq

    def checkpoint_pages(self, page_size: int = 10_000) -> Iterator[list[Checkpoint]]:
        """Every stored checkpoint in (seq, id) order, a page at a time."""
        if not self._has_table("checkpoints"):
            return
        after: tuple[int, int] | None = None
        while True:
            query = (
                select(_CHECKPOINTS)
                .order_by(_CHECKPOINTS.c.seq, _CHECKPOINTS.c.id)
                .limit(page_size)
            )
            if after is not None:
                seq, checkpoint_id = after
                query = query.where(
                    (_CHECKPOINTS.c.seq > seq)
                    | ((_CHECKPOINTS.c.seq == seq) & (_CHECKPOINTS.c.id > checkpoint_id))
                )
            with self._guard("read checkpoints"), self._engine.connect() as conn:
                rows = list(conn.execute(query))
            if not rows:
                return
            yield [_checkpoint(row) for row in rows]
            after = (int(rows[-1].seq), int(rows[-1].id))

    # -- retention ----------------------------------------------------------------------

    def prune(self, cutoff: str, *, chunk: int = 10_000) -> tuple[int, int]:
        """Delete forwarded readings older than `cutoff`, up to a forwarded checkpoint.

        Only readings that are all of these go: acknowledged by the broker, timed before
        `cutoff` (RFC 3339 text, as stored), at or below a checkpoint that is itself stored
        and acknowledged — the anchor — and below the chain head (the head stays, so a
        restart continues the seq). The anchor's seq is recorded first (``pruned_seq`` in
        station_meta), so a verification starts at the signed anchor checkpoint even after a
        crash between two chunks. Unforwarded readings are never deleted.

        Returns:
            (readings deleted now, the anchor's seq; 0 when nothing may go).
        """
        anchor = self._prune_anchor(cutoff)
        if anchor == 0:
            return 0, self.pruned_seq()
        deleted = 0
        with self._guard("record the retention anchor"), self._engine.begin() as conn:
            self._set_meta(conn, "pruned_seq", str(anchor))
        while True:
            with self._guard(f"prune readings up to seq {anchor}"), self._engine.begin() as conn:
                low = conn.execute(select(func.min(_READINGS.c.seq))).scalar()
                if low is None or int(low) > anchor:
                    break
                high = min(anchor, int(low) + chunk - 1)
                result = conn.execute(delete(_READINGS).where(_READINGS.c.seq <= high))
                deleted += int(result.rowcount or 0)
        return deleted, anchor

    def _prune_anchor(self, cutoff: str) -> int:
        """The highest seq retention may delete through (0: none); see `prune`."""
        forwarded = self.forwarded_seq()
        checkpoints_forwarded = self.checkpoints_forwarded()
        head, _hash = self.head()
        query = (
            select(func.max(_CHECKPOINTS.c.seq))
            .select_from(_CHECKPOINTS.join(_READINGS, _READINGS.c.seq == _CHECKPOINTS.c.seq))
            .where(
                _CHECKPOINTS.c.seq <= forwarded,
                _CHECKPOINTS.c.seq < head,
                _CHECKPOINTS.c.id <= checkpoints_forwarded,
                _CHECKPOINTS.c.station == self.station,
                _READINGS.c.time < cutoff,
            )
        )
        with self._guard("find the retention anchor"), self._engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def pruned_seq(self) -> int:
        """The seq up to which retention deleted readings (0: none ever deleted)."""
        with self._guard("read the retention anchor"), self._engine.connect() as conn:
            value = conn.execute(select(_META.c.value).where(_META.c.key == "pruned_seq")).scalar()
        return int(value or 0)

    def pruned_anchor(self) -> Checkpoint | None:
        """The checkpoint the kept readings continue from, when retention deleted any."""
        seq = self.pruned_seq()
        if seq == 0:
            return None
        query = (
            select(_CHECKPOINTS)
            .where(_CHECKPOINTS.c.seq == seq, _CHECKPOINTS.c.station == self.station)
            .order_by(_CHECKPOINTS.c.id)
            .limit(1)
        )
        with self._guard("read the retention anchor"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _checkpoint(row)

    @staticmethod
    def _set_meta(conn: Any, key: str, value: str) -> None:  # noqa: ANN401 - a Connection
        updated = conn.execute(update(_META).where(_META.c.key == key).values(value=value))
        if not updated.rowcount:
            conn.execute(insert(_META), [{"key": key, "value": value}])

    def _guard(self, action: str) -> "_Guard":
        return _Guard(action)


def _checkpoint(row: Any) -> Checkpoint:  # noqa: ANN401 - a SQLAlchemy Row
    return Checkpoint(
        station=str(row.station),
        seq=int(row.seq),
        hash=str(row.hash),
        time=str(row.time),
        key=str(row.key),
        signature=str(row.signature),
    )


class _Guard:
    """Map database failures to `StoreError`, naming what was being done."""

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"cannot {self._action}: {_reason(exc)}") from exc


def _reason(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    return str(original if original is not None else exc).strip().splitlines()[0]


class AsyncStore:
    """`Store` driven from asyncio: every call runs on one dedicated worker thread."""

    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self.store = store
        self._executor = executor

    @classmethod
    async def open(cls, url: str, *, station: str) -> "AsyncStore":
        """Open the store on its worker thread; see `Store.open`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrogate-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, lambda: Store.open(url, station=station))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def call(self, function: Callable[..., T], *args: Any) -> T:  # noqa: ANN401
        """Run `function(*args)` on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def aclose(self) -> None:
        """Close the store and stop its thread."""
        await self.call(self.store.close)
        self._executor.shutdown(wait=True)
