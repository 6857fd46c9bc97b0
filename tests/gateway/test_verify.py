# SPDX-License-Identifier: Apache-2.0
"""`metrogate verify` on real stores tampered with through SQL, and on files of payloads.

Each test builds a store the way the daemon does (stamped readings, checkpoints signed with
the station key every 10 readings, the key recorded), edits it behind the gateway's back,
and expects exactly the problems — seq and kind — that the edit leaves.
"""

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import create_engine, event, text

from gateway.canonical import canonical_json
from gateway.checkpoints import sign_checkpoint
from gateway.cli import main
from gateway.keys import ensure_signing_key, read_public_keys, trusted_keys
from gateway.stamp import (
    GENESIS_HASH,
    Stamper,
    chain_hash,
    published_object,
    published_payload,
    reading_body,
)
from gateway.store import Store
from gateway.verify import ChainVerifier, verify_store
from tests.gateway.factories import measured

NOW = "2026-11-27T00:00:00.000000Z"
STATION = "lab-1"
COUNT = 50
EVERY = 10


def build(url: str, key_dir: Path, *, count: int = COUNT, every: int = EVERY) -> list[Any]:
    """A store of `count` readings with a checkpoint every `every`; returns the stamped."""
    key, _ = ensure_signing_key(key_dir, station=STATION, now=NOW)
    store = Store.open(url, station=STATION)
    try:
        store.register_keys(read_public_keys(key_dir), current=key.fingerprint, now=NOW)
        stamper = Stamper(STATION)
        stamped = []
        for start in range(0, count, every):
            batch = stamper.stamp(
                [measured(1000.0 + i / 100) for i in range(start, start + every)]
            )
            store.append(batch)
            stamper.advance(batch)
            stamped += batch
            last = batch[-1]
            store.add_checkpoint(
                sign_checkpoint(
                    key.private_key, station=STATION, seq=last.seq, hash_hex=last.hash, time=NOW
                )
            )
    finally:
        store.close()
    return stamped


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "metrogate.db"
    build(f"sqlite:///{path}", tmp_path / "keys")
    return path


def run_verify(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["verify", *args, "--json"])
    document = orjson.loads(capsys.readouterr().out)
    assert document["ok"] == (code == 0)
    return code, document


def problems_of(document: dict[str, Any]) -> list[tuple[int, str]]:
    return [(p["seq"], p["kind"]) for report in document["reports"] for p in report["problems"]]


def found(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[tuple[int, str]]]:
    code, document = run_verify("--db", f"sqlite:///{db}", capsys=capsys)
    return code, problems_of(document)


def sql(db: Path, statement: str, *parameters: Any) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(statement, parameters)


def read_body(db: Path, seq: int) -> bytes:
    with sqlite3.connect(db) as conn:
        (body,) = conn.execute("SELECT body FROM readings WHERE seq = ?", (seq,)).fetchone()
    return bytes(body)


def test_a_clean_store_verifies_with_a_summary(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--db", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert f"station {STATION} (sqlite:///{db})" in out
    assert "readings     50 (seq 1..50)" in out
    assert "checkpoints  5, keys from the store (1 keys)" in out
    assert "signed       up to seq 50 (the last)" in out
    assert "problems     0" in out
    assert out.rstrip().endswith("OK: every hash, link, seq and checkpoint verifies")
    code, document = run_verify("--db", f"sqlite:///{db}", capsys=capsys)
    assert code == 0
    report = document["reports"][0]
    assert {k: report[k] for k in ("readings", "checkpoints", "first_seq", "last_seq")} == {
        "readings": 50,
        "checkpoints": 5,
        "first_seq": 1,
        "last_seq": 50,
    }
    assert report["covered_seq"] == 50
    assert report["problems"] == []


def test_an_edited_value_is_named_by_seq(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = read_body(db, 23)
    assert b'"value":1000.22' in body
    sql(db, "UPDATE readings SET body = ? WHERE seq = 23", body.replace(b"1000.22", b"1000.32"))
    assert main(["verify", "--db", f"sqlite:///{db}"]) == 1
    out = capsys.readouterr().out
    assert "hash       seq 23: content does not match its hash" in out
    assert "FAILED: 1 problems" in out
    assert found(db, capsys) == (1, [(23, "hash")])


def test_an_edit_written_as_text_is_still_read_and_caught(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql(db, "UPDATE readings SET body = replace(body, '1000.22', '1000.32') WHERE seq = 23")
    assert found(db, capsys) == (1, [(23, "hash")])


def test_a_deleted_reading_is_a_gap(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(db, "DELETE FROM readings WHERE seq = 23")
    code, document = run_verify("--db", f"sqlite:///{db}", capsys=capsys)
    assert (code, problems_of(document)) == (1, [(23, "gap")])
    assert document["reports"][0]["problems"][0]["detail"] == (
        "seq 23: missing (seq 24 follows seq 22): deleted"
    )


def test_deleted_readings_under_a_checkpoint_and_at_the_end(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql(db, "DELETE FROM readings WHERE seq BETWEEN 19 AND 21")
    sql(db, "DELETE FROM readings WHERE seq > 46")
    assert found(db, capsys) == (1, [(19, "gap"), (20, "checkpoint"), (50, "checkpoint")])


def test_an_inserted_reading_is_named_even_with_a_correct_hash(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The strongest forgery short of the private key: renumber the rows after seq 23 and
    # slip in a reading whose hash and link are computed correctly.
    with sqlite3.connect(db) as conn:
        (prev_hash,) = conn.execute("SELECT hash FROM readings WHERE seq = 23").fetchone()
        conn.execute("UPDATE readings SET seq = -seq WHERE seq > 23")
        conn.execute("UPDATE readings SET seq = 1 - seq WHERE seq < 0")
        body = reading_body(STATION, 24, "01a21a6a-0000-7000-8000-000000000000",
                            measured(1234.5), prev_hash)  # fmt: skip
        conn.execute(
            "INSERT INTO readings (seq, id, instrument, channel, time, flags, hash, body) "
            "VALUES (24, 'forged', 'balance-1', 'mass', ?, '', ?, ?)",
            (NOW, chain_hash(prev_hash, body), body),
        )
    assert found(db, capsys) == (1, [(24, "inserted"), (25, "order")])


def test_swapped_seqs_are_a_reordering(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE readings SET seq = -23 WHERE seq = 23")
        conn.execute("UPDATE readings SET seq = 23 WHERE seq = 24")
        conn.execute("UPDATE readings SET seq = 24 WHERE seq = -23")
    code, document = run_verify("--db", f"sqlite:///{db}", capsys=capsys)
    assert (code, problems_of(document)) == (1, [(23, "order"), (24, "order")])
    assert document["reports"][0]["problems"][0]["detail"] == (
        "seq 23: the row holds the reading stamped seq 24: reordered"
    )


def test_a_corrupted_checkpoint_signature(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(db) as conn:
        (signature,) = conn.execute("SELECT signature FROM checkpoints WHERE seq = 30").fetchone()
        flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
        conn.execute("UPDATE checkpoints SET signature = ? WHERE seq = 30", (flipped,))
    assert found(db, capsys) == (1, [(30, "signature")])


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoints(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Edit seq 27 and recompute every hash after it: the chain alone cannot tell.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, hash, body FROM readings ORDER BY seq").fetchall()
        prev_hash = rows[25][1]
        for seq, _hash, body in rows[26:]:
            document = orjson.loads(body)
            document["prev_hash"] = prev_hash
            if seq == 27:
                document["value"] = 1000.5
            new_body = canonical_json(document)
            prev_hash = chain_hash(prev_hash, new_body)
            conn.execute(
                "UPDATE readings SET body = ?, hash = ? WHERE seq = ?", (new_body, prev_hash, seq)
            )
    assert found(db, capsys) == (1, [(30, "checkpoint"), (40, "checkpoint"), (50, "checkpoint")])


def test_a_checkpoint_with_another_hash(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(db, "UPDATE checkpoints SET hash = ? WHERE seq = 40", "0" * 64)
    # Its signature no longer verifies either: both are said.
    assert found(db, capsys) == (1, [(40, "signature"), (40, "checkpoint")])


def test_verify_with_the_config_and_a_keys_file(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = tmp_path / "station.toml"
    station.write_text(
        f'[station]\nid = "{STATION}"\ndata_dir = "{tmp_path}"\n\n'
        f'[store]\nurl = "sqlite:///{db}"\n\n[signing]\nkey_dir = "{tmp_path / "keys"}"\n'
    )
    code, document = run_verify("--config", str(station), capsys=capsys)
    assert code == 0
    assert "the store (1 keys) and" in document["reports"][0]["keys"]
    stranger = tmp_path / "stranger.pub"
    stranger.write_text("# someone else's key\n" + "3b" * 32 + "\n")
    code, document = run_verify("--config", str(station), "--keys", str(stranger), capsys=capsys)
    assert code == 1
    assert problems_of(document) == [(seq, "key") for seq in (10, 20, 30, 40, 50)]


def test_postgresql_store(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS metrogate_verify"))
        conn.execute(text("CREATE DATABASE metrogate_verify"))
    engine.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/metrogate_verify"
    build(url, tmp_path / "keys")
    code, document = run_verify("--db", url, capsys=capsys)
    assert (code, problems_of(document)) == (0, [])
    engine = create_engine(url)
    with engine.begin() as conn:
        body = conn.execute(text("SELECT body FROM readings WHERE seq = 23")).scalar_one()
        conn.execute(
            text("UPDATE readings SET body = :body WHERE seq = 23"),
            {"body": bytes(body).replace(b"1000.22", b"1000.32")},
        )
        conn.execute(text("DELETE FROM readings WHERE seq = 35"))
    engine.dispose()
    code, document = run_verify("--db", url, capsys=capsys)
    assert (code, problems_of(document)) == (1, [(23, "hash"), (35, "gap")])


def build_fast(path: Path, key_dir: Path, *, count: int, every: int) -> None:
    """Like `build`, for a long chain: the stamper's own body encoder and hash, without
    UUIDv7 generation or an fsync per batch (durability is not under test here)."""
    key, _ = ensure_signing_key(key_dir, station=STATION, now=NOW)
    store = Store.open(f"sqlite:///{path}", station=STATION)
    store.register_keys(read_public_keys(key_dir), current=key.fingerprint, now=NOW)
    store.close()
    reading = measured(1000.25)
    prev_hash, rows, checkpoints = GENESIS_HASH, [], []
    for seq in range(1, count + 1):
        body = reading_body(
            STATION, seq, f"00000000-0000-7000-8000-{seq:012d}", reading, prev_hash
        )
        prev_hash = chain_hash(prev_hash, body)
        rows.append((seq, str(seq), "balance-1", "mass", NOW, "", prev_hash, body))
        if seq % every == 0:
            checkpoint = sign_checkpoint(
                key.private_key, station=STATION, seq=seq, hash_hex=prev_hash, time=NOW
            )
            checkpoints.append(tuple(checkpoint.to_object().values()))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT INTO checkpoints (station, seq, hash, time, key, signature) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            checkpoints,
        )


def test_verification_streams_in_pages(tmp_path: Path) -> None:
    count, page_size = 200_000, 10_000
    build_fast(tmp_path / "big.db", tmp_path / "keys", count=count, every=5000)
    url = f"sqlite:///{tmp_path / 'big.db'}"
    store = Store.open(url, station="", create=False)
    selects: list[str] = []

    def count_reads(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM readings" in statement:
            selects.append(statement)

    event.listen(store._engine, "before_cursor_execute", count_reads)
    trusted = trusted_keys([k.public_key for k in store.station_keys()])
    started = time.perf_counter()
    report = verify_store(store, trusted, source="big", keys_source="store", page_size=page_size)
    elapsed = time.perf_counter() - started
    store.close()
    assert report.ok, report.problems
    assert (report.readings, report.checkpoints, report.last_seq) == (count, 40, count)
    # One query per page plus the empty one that ends it: never the whole table at once.
    assert len(selects) == count // page_size + 1
    assert all("LIMIT" in statement.upper() for statement in selects)
    assert elapsed < 10.0


def test_the_verifier_holds_at_most_a_window_of_readings() -> None:
    # Memory is bounded by the window however long the chain: 30 000 readings through a
    # window of 1000; in order, a reading waits only for the next one.
    stamper = Stamper(STATION)
    verifier = ChainVerifier(STATION, {}, window=1000)
    held = 0
    for _ in range(30):
        batch = stamper.stamp([measured(1.0)] * 1000)
        stamper.advance(batch)
        for item in batch:
            verifier.add_reading(orjson.loads(published_object(item.hash, item.body)))
            held = max(held, verifier._pending_count)
    report = verifier.finish(source="memory", keys_source="")
    assert report.ok
    assert report.readings == 30_000
    assert held <= 2
    assert len(verifier._recent) == 1000


# -- files of published payloads ------------------------------------------------------------


def published_lines(tmp_path: Path) -> list[bytes]:
    """What a subscriber saves: each MQTT payload on a line, checkpoints included."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    stamped = build(url, tmp_path / "keys")
    store = Store.open(url, station=STATION, create=False)
    checkpoints = [c for _, c in store.pending_checkpoints(0, 100)]
    store.close()
    lines = [
        published_payload((s.hash, s.body) for s in stamped[i : i + 7]) for i in range(0, 50, 7)
    ]
    lines += [c.to_json() for c in checkpoints]
    lines += lines[2:4]  # at-least-once: some messages arrive twice
    random.Random(5).shuffle(lines)  # and in any order
    return lines


def test_a_file_of_published_payloads_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = published_lines(tmp_path)
    capture = tmp_path / "captured.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")
    keys = tmp_path / "trusted"
    keys.mkdir()
    assert main(["keys", "show", "--config", str(_station_file(tmp_path))]) == 0
    (keys / f"{STATION}.pub").write_text(capsys.readouterr().out)
    code, document = run_verify("--file", str(capture), "--keys", str(keys), capsys=capsys)
    assert (code, problems_of(document)) == (0, [])
    report = document["reports"][0]
    assert (report["readings"], report["checkpoints"], report["covered_seq"]) == (50, 5, 50)
    assert report["duplicates"] > 0

    code, document = run_verify("--file", str(capture), capsys=capsys)  # no keys given
    assert (code, {kind for _, kind in problems_of(document)}) == (1, {"key"})

    edited = [line.replace(b'"value":1000.22', b'"value":1000.32') for line in lines]
    capture.write_bytes(b"\n".join(edited) + b"\nnot json\n")
    code, document = run_verify("--file", str(capture), "--keys", str(keys), capsys=capsys)
    assert (code, problems_of(document)) == (1, [(0, "malformed"), (23, "hash")])


def test_a_readings_json_export_verifies(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["readings", "--db", f"sqlite:///{db}", "--limit", "100", "--json"]) == 0
    export = tmp_path / "export.jsonl"
    export.write_text(capsys.readouterr().out)
    code, document = run_verify("--file", str(export), capsys=capsys)
    assert (code, problems_of(document)) == (0, [])
    assert document["reports"][0]["readings"] == 50


def _station_file(tmp_path: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(
        f'[station]\nid = "{STATION}"\ndata_dir = "{tmp_path}"\n\n'
        f'[signing]\nkey_dir = "{tmp_path / "keys"}"\n'
    )
    return path


def test_a_capture_that_starts_mid_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A subscriber that came late: readings from seq 21, checkpoints from seq 20 on.
    url = f"sqlite:///{tmp_path / 'source.db'}"
    stamped = build(url, tmp_path / "keys")
    store = Store.open(url, station=STATION, create=False)
    checkpoints = [c for _, c in store.pending_checkpoints(0, 100)]
    store.close()
    lines = [published_payload((s.hash, s.body) for s in stamped[20:])]
    lines += [c.to_json() for c in checkpoints if c.seq >= 20]
    capture = tmp_path / "late.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")
    keys = tmp_path / "keys.pub"
    keys.write_text("\n".join(r.public_key for r in read_public_keys(tmp_path / "keys")) + "\n")
    code, document = run_verify("--file", str(capture), "--keys", str(keys), capsys=capsys)
    assert (code, problems_of(document)) == (0, [])
    report = document["reports"][0]
    assert (report["first_seq"], report["last_seq"], report["checkpoints"]) == (21, 50, 4)
