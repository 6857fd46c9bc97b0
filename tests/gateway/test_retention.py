# SPDX-License-Identifier: Apache-2.0
"""Retention: forwarded readings are pruned after an age, unforwarded ones never.

What stays verifies from the signed checkpoint retention pruned up to: `metrogate verify`
checks the first kept reading's link against that checkpoint's hash, and the checkpoint's
signature, so pruning cannot hide a deletion or a rewrite of what is kept.
"""

import sqlite3
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.stamp import Stamper
from gateway.store import Store
from tests.gateway.factories import measured
from tests.gateway.test_verify import STATION, build, found, run_verify

LATER = "2099-01-01T00:00:00.000000Z"  # every reading of `build` is older than this
EARLIER = "2000-01-01T00:00:00.000000Z"  # and none older than this


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """50 readings, a checkpoint every 10 (ids 1..5 at seqs 10..50)."""
    path = tmp_path / "metrogate.db"
    build(f"sqlite:///{path}", tmp_path / "keys")
    return path


def opened(db: Path) -> Store:
    return Store.open(f"sqlite:///{db}", station=STATION, create=False)


def forwarded(db: Path, *, readings: int, checkpoints: int) -> None:
    store = opened(db)
    try:
        store.mark_forwarded(readings)
        store.mark_checkpoints_forwarded(checkpoints)
    finally:
        store.close()


def prune(db: Path, cutoff: str) -> tuple[int, int]:
    store = opened(db)
    try:
        return store.prune(cutoff, chunk=7)  # several chunks
    finally:
        store.close()


def seqs(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT seq FROM readings ORDER BY seq")]


def test_prunes_forwarded_readings_up_to_a_forwarded_checkpoint(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forwarded(db, readings=35, checkpoints=3)  # checkpoints at seq 10, 20, 30 acknowledged
    assert prune(db, LATER) == (30, 30)
    assert seqs(db) == list(range(31, 51))
    code, document = run_verify("--db", f"sqlite:///{db}", capsys=capsys)
    [report] = document["reports"]
    assert code == 0, report["problems"]
    assert (report["pruned_seq"], report["first_seq"], report["last_seq"]) == (30, 31, 50)
    assert main(["verify", "--db", f"sqlite:///{db}"]) == 0
    assert "retention    seq 1..30 pruned" in capsys.readouterr().out
    assert prune(db, LATER) == (0, 30)  # nothing more may go yet


def test_unforwarded_and_recent_readings_are_never_pruned(db: Path) -> None:
    assert prune(db, LATER) == (0, 0)  # nothing acknowledged by the broker
    forwarded(db, readings=50, checkpoints=0)
    assert prune(db, LATER) == (0, 0)  # no checkpoint acknowledged to anchor the rest
    forwarded(db, readings=50, checkpoints=5)
    assert prune(db, EARLIER) == (0, 0)  # every reading is younger than the cutoff
    assert seqs(db) == list(range(1, 51))


def test_the_chain_head_stays_and_the_station_continues_its_seq(db: Path) -> None:
    forwarded(db, readings=50, checkpoints=5)
    assert prune(db, LATER) == (40, 40)  # not through seq 50: the head stays
    store = opened(db)
    try:
        last_seq, last_hash = store.head()
        assert last_seq == 50
        stamper = Stamper(STATION, last_seq=last_seq, last_hash=last_hash)
        batch = stamper.stamp([measured(1.0)])
        store.append(batch)
    finally:
        store.close()
    assert seqs(db) == list(range(41, 52))


def test_a_rewritten_anchor_or_a_deleted_kept_reading_is_found(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forwarded(db, readings=35, checkpoints=3)
    prune(db, LATER)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM readings WHERE seq = 31")
    code, problems = found(db, capsys)
    assert code == 1
    assert problems == [(31, "gap")]
    other = tmp_path / "other.db"
    build(f"sqlite:///{other}", tmp_path / "other-keys")
    forwarded(other, readings=35, checkpoints=3)
    prune(other, LATER)
    with sqlite3.connect(other) as conn:  # the anchor no longer says what was signed
        conn.execute("UPDATE checkpoints SET hash = ? WHERE seq = 30", ("0" * 64,))
    code, problems = found(other, capsys)
    assert code == 1
    assert problems == [(30, "signature"), (31, "link")]
