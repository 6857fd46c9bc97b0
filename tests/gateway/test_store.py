# SPDX-License-Identifier: Apache-2.0
"""The store on real SQLite (WAL, synchronous=FULL) and real PostgreSQL."""

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.errors import StoreError
from gateway.stamp import GENESIS_HASH, Stamper
from gateway.store import Store, redact
from tests.gateway.factories import measured


def fill(store: Store, count: int, *, start: int = 0) -> None:
    head_seq, head_hash = store.head()
    stamper = Stamper(store.station, last_seq=head_seq, last_hash=head_hash)
    batch = stamper.stamp([measured(float(start + i)) for i in range(count)])
    store.append(batch)
    stamper.advance(batch)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'metrogate.db'}"
    url: str = request.getfixturevalue("postgres_url")
    # Each test starts from an empty database: drop what an earlier test left.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS readings, forward_state, station_meta"))
    engine.dispose()
    return url


def test_append_head_pending_and_mark(store_url: str) -> None:
    store = Store.open(store_url, station="lab-1")
    assert store.head() == (0, GENESIS_HASH)
    fill(store, 10)
    fill(store, 5, start=10)
    seq, last_hash = store.head()
    assert seq == 15
    assert store.count() == 15
    pending = store.pending(after=0, limit=100)
    assert [p.seq for p in pending] == list(range(1, 16))
    assert pending[-1].hash == last_hash
    store.mark_forwarded(12)
    store.mark_forwarded(7)  # never moves backwards
    assert store.forwarded_seq() == 12
    assert [p.seq for p in store.pending(after=store.forwarded_seq(), limit=2)] == [13, 14]
    store.close()


def test_reopen_continues_where_it_was(store_url: str) -> None:
    store = Store.open(store_url, station="lab-1")
    fill(store, 3)
    store.mark_forwarded(2)
    store.close()
    again = Store.open(store_url, station="lab-1")
    assert again.head()[0] == 3
    assert again.forwarded_seq() == 2
    again.close()


def test_a_database_belongs_to_one_station(store_url: str) -> None:
    Store.open(store_url, station="lab-1").close()
    with pytest.raises(StoreError, match='belongs to station "lab-1"'):
        Store.open(store_url, station="lab-2")
    opened = Store.open(store_url, station="", create=False)  # inspection takes the owner
    assert opened.station == "lab-1"
    opened.close()


def test_duplicate_seq_is_refused_and_nothing_of_the_batch_stays(store_url: str) -> None:
    store = Store.open(store_url, station="lab-1")
    fill(store, 3)
    stamper = Stamper("lab-1", last_seq=2, last_hash=GENESIS_HASH)  # a stale head
    batch = stamper.stamp([measured(1.0), measured(2.0)])
    with pytest.raises(StoreError, match=r"cannot commit seq 3\.\.4"):
        store.append(batch)
    assert store.count() == 3
    store.close()


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "metrogate.db"
    store = Store.open(f"sqlite:///{path}", station="lab-1")
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unwritable_database_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open store"):
        Store.open(f"sqlite:///{blocker / 'metrogate.db'}", station="lab-1")


def test_redact_hides_passwords() -> None:
    assert redact("postgresql+psycopg://u:secret@db/x") == "postgresql+psycopg://u:***@db/x"
    assert redact("sqlite:////var/lib/x.db") == "sqlite:////var/lib/x.db"
