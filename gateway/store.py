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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import Engine, event, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel, create_engine

from gateway.errors import StoreError
from gateway.models import ForwardState, ReadingRow, StationMeta
from gateway.stamp import GENESIS_HASH, Stamped

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_READINGS = ReadingRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table models
_FORWARD = ForwardState.__table__  # type: ignore[attr-defined]
_META = StationMeta.__table__  # type: ignore[attr-defined]
_OUTBOX = "mqtt"

T = TypeVar("T")


class Pending(NamedTuple):
    """A committed reading not yet acknowledged by the broker."""

    seq: int
    instrument: str
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
                    engine, tables=[_READINGS, _FORWARD, _META], checkfirst=True
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

    def _guard(self, action: str) -> "_Guard":
        return _Guard(action)


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
