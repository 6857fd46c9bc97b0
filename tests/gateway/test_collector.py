# SPDX-License-Identifier: Apache-2.0
"""The collector's verification and storage, on a real PostgreSQL (one database per test).

Messages are built as a station builds them (`Stamper`, `published_payload`), triaged by
`triage_readings` / `triage_checkpoints` and applied by `CollectorStore`, the same calls the
collector process makes for what it receives.
"""

import base64
import random
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from gateway.canonical import canonical_json
from gateway.collector import (
    TrustedKeys,
    fingerprint,
    load_trusted_keys,
    main,
    triage_checkpoints,
    triage_readings,
)
from gateway.collector_store import CollectorStore, Outcome, Triaged, read_status
from gateway.errors import ConfigError
from gateway.stamp import (
    GENESIS_HASH,
    Stamped,
    Stamper,
    chain_hash,
    published_payload,
    reading_body,
    verify_chain,
)
from tests.gateway.factories import measured

PREFIX = "metrogate/v1"
STATION = "plant-a"
TRUSTED = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
UNTRUSTED = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)


def raw(private: Ed25519PrivateKey) -> bytes:
    public = private.public_key()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def db_url(postgres_url: str) -> Iterator[str]:
    """A fresh database of this test's own on the session's PostgreSQL."""
    admin = "postgresql://" + postgres_url.split("://", 1)[1]
    name = f"collector_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def keys(tmp_path: Path) -> TrustedKeys:
    directory = tmp_path / "keys"
    directory.mkdir()
    for station in (STATION, "plant-b"):
        (directory / f"{station}.pub").write_text(f"# {station}\n{raw(TRUSTED).hex()}\n")
    return load_trusted_keys(directory)


@pytest.fixture
def store(db_url: str) -> Iterator[CollectorStore]:
    opened = CollectorStore.open(db_url, client_id="unit")
    yield opened
    opened.close()


def stamped(count: int, *, station: str = STATION) -> list[Stamped]:
    return Stamper(station).stamp([measured(100.0 + i) for i in range(count)])


def message(readings: Sequence[Stamped], keys: TrustedKeys, *, station: str = STATION) -> Triaged:
    payload = published_payload((s.hash, s.body) for s in readings)
    return triage_readings(f"{PREFIX}/{station}/balance-1/readings", payload, keys, PREFIX)


def signed_checkpoint(
    reading: Stamped, *, private: Ed25519PrivateKey = TRUSTED, hash_: str | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "station": STATION,
        "seq": reading.seq,
        "hash": hash_ or reading.hash,
        "time": "2026-06-01T12:00:05.000000Z",
        "key": fingerprint(raw(private)),
    }
    document["signature"] = base64.b64encode(private.sign(canonical_json(document))).decode()
    return document


def checkpoints(documents: Sequence[dict[str, Any]], keys: TrustedKeys) -> Triaged:
    topic = f"{PREFIX}/{STATION}/checkpoints"
    return triage_checkpoints(topic, orjson.dumps(list(documents)), keys, PREFIX)


def query(url: str, text: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(text, params).fetchall()


def station_row(url: str, station: str = STATION) -> dict[str, Any]:
    (status,) = [s for s in read_status(url)[0] if s.station == station]
    return {name: getattr(status, name) for name in status.__slots__}


def stored_chain_problems(url: str, station: str = STATION) -> list[str]:
    """Verify the stored readings from their bodies alone, as an auditor would."""
    rows = query(url, "SELECT hash, body FROM readings WHERE station = %s ORDER BY seq", station)
    objects = [{"hash": hash_, **orjson.loads(body)} for hash_, body in rows]
    return [problem.detail for problem in verify_chain(objects)]


def test_duplicates_are_stored_once(store: CollectorStore, keys: TrustedKeys, db_url: str) -> None:
    readings = stamped(5)
    first = store.apply([message(readings, keys), message(readings, keys)])
    again = store.apply([message(readings[1:3], keys)])
    assert (first.stored, first.duplicates, again.stored, again.duplicates) == (5, 5, 0, 2)
    assert query(db_url, "SELECT count(*), count(DISTINCT id) FROM readings") == [(5, 5)]
    row = station_row(db_url)
    assert (row["head_seq"], row["readings"], row["duplicates"], row["gaps"]) == (5, 5, 7, ())
    assert stored_chain_problems(db_url) == []


def test_a_later_reading_first_links_up_when_the_earlier_arrives(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    one, two, three = stamped(3)
    store.apply([message([one], keys)])
    store.apply([message([three], keys)])
    row = station_row(db_url)
    assert (row["head_seq"], row["tail_seq"], row["gaps"]) == (1, 3, ((2, 2),))
    store.apply([message([two], keys)])
    row = station_row(db_url)
    assert (row["head_seq"], row["tail_seq"], row["gaps"]) == (3, 3, ())
    assert query(db_url, "SELECT from_seq, to_seq, closed_at IS NOT NULL FROM gaps") == [
        (2, 2, True)
    ]
    assert query(db_url, "SELECT count(*) FROM quarantine") == [(0,)]
    assert stored_chain_problems(db_url) == []


def test_a_gap_is_recorded_then_closed_by_the_stations_replay(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    readings = stamped(15)
    store.apply([message(readings[:5], keys), message(readings[10:], keys)])
    opened = query(db_url, "SELECT from_seq, to_seq, opened_at FROM gaps WHERE closed_at IS NULL")
    assert [(start, end) for start, end, _ in opened] == [(6, 10)]
    store.apply([message(readings[7:8], keys)])  # seq 8 alone: the gap splits
    assert station_row(db_url)["gaps"] == ((6, 7), (9, 10))
    pieces = query(db_url, "SELECT DISTINCT opened_at FROM gaps WHERE closed_at IS NULL")
    assert pieces == [(opened[0][2],)]  # still dated from when the readings went missing
    replay = store.apply([message(readings, keys)])  # after an outage: everything again
    assert (replay.stored, replay.duplicates) == (4, 11)
    row = station_row(db_url)
    assert (row["head_seq"], row["tail_seq"], row["gaps"], row["readings"]) == (15, 15, (), 15)
    assert query(db_url, "SELECT count(*) FROM gaps WHERE closed_at IS NULL") == [(0,)]
    assert stored_chain_problems(db_url) == []


def test_a_tampered_value_is_quarantined_with_the_reason(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    readings = stamped(3)
    objects = orjson.loads(published_payload((s.hash, s.body) for s in readings))
    objects[1]["value"] += 0.5  # changed in transit; its hash is left as it was
    tampered = orjson.dumps(objects)
    topic = f"{PREFIX}/{STATION}/balance-1/readings"
    outcome = store.apply([triage_readings(topic, tampered, keys, PREFIX)])
    assert (outcome.stored, outcome.quarantined, outcome.kinds) == (2, 1, {"hash": 1})
    [(kind, reason, seq, reading_id, payload)] = query(
        db_url, "SELECT kind, reason, seq, reading_id, payload FROM quarantine"
    )
    assert (kind, seq, reading_id) == ("hash", 2, readings[1].id)
    assert "does not match its hash" in reason
    assert orjson.loads(payload)["value"] == objects[1]["value"]
    assert query(db_url, "SELECT seq FROM readings ORDER BY seq") == [(1,), (3,)]
    row = station_row(db_url)
    assert (row["head_seq"], row["rejected"], row["gaps"]) == (1, 1, ((2, 2),))
    store.apply([message(readings[1:2], keys)])  # the genuine reading, sent again
    assert station_row(db_url)["head_seq"] == 3


def test_readings_that_do_not_link_are_quarantined(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    readings = stamped(3)
    store.apply([message(readings, keys)])
    # Both hash correctly over their own content, but neither belongs to the stored chain.
    fork = Stamper(STATION, last_seq=1, last_hash=readings[0].hash).stamp([measured(555.0)])
    spliced = Stamper(STATION, last_seq=3, last_hash="ab" * 32).stamp([measured(556.0)])
    topic = f"{PREFIX}/{STATION}/balance-1/readings"
    other = f"{PREFIX}/{STATION}/balance-2/readings"
    spliced_payload = published_payload((s.hash, s.body) for s in spliced)
    outcome = store.apply(
        [message(fork, keys), triage_readings(other, spliced_payload, keys, PREFIX)]
    )
    assert (outcome.stored, outcome.kinds) == (0, {"conflict": 1, "link": 1})
    assert query(db_url, "SELECT kind, seq, topic FROM quarantine ORDER BY seq") == [
        ("conflict", 2, topic),
        ("link", 4, other),  # each with the topic it came on
    ]
    assert station_row(db_url)["head_seq"] == 3


def test_a_reading_id_used_by_another_reading_is_quarantined(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    [original] = stamped(1)
    body = reading_body("plant-b", 1, original.id, measured(7.0), GENESIS_HASH)
    copy_ = published_payload([(chain_hash(GENESIS_HASH, body), body)])
    topic = f"{PREFIX}/plant-b/balance-1/readings"
    store.apply([message([original], keys)])
    outcome = store.apply([triage_readings(topic, copy_, keys, PREFIX)])
    assert (outcome.stored, outcome.kinds) == (0, {"conflict": 1})
    [(reason,)] = query(db_url, "SELECT reason FROM quarantine")
    assert f"already stored as {STATION} seq 1" in reason


def test_checkpoints_verify_match_and_flag(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    readings = stamped(4)
    store.apply([message(readings[:3], keys)])
    good = signed_checkpoint(readings[1])
    early = signed_checkpoint(readings[3])  # its reading has not arrived yet
    outcome = store.apply([checkpoints([good, early], keys)])
    assert outcome.quarantined == 0
    assert station_row(db_url)["pending_checkpoints"] == 1
    store.apply([message(readings[3:], keys)])
    assert query(db_url, "SELECT seq, state FROM checkpoints ORDER BY seq") == [
        (2, "matched"),
        (4, "matched"),
    ]
    row = station_row(db_url)
    assert (row["checkpoint_seq"], row["pending_checkpoints"], row["flagged"]) == (4, 0, False)
    # Signed with the station's own key, but over another hash: the stored reading at seq 3
    # is not what the station produced, so the station is flagged.
    disagreeing = signed_checkpoint(readings[2], hash_="cd" * 32)
    store.apply([checkpoints([disagreeing], keys)])
    row = station_row(db_url)
    assert row["flagged"]
    assert "seq 3" in row["flag_reason"]
    assert "altered upstream" in row["flag_reason"]


def test_a_forged_checkpoint_signature_is_quarantined(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    readings = stamped(2)
    store.apply([message(readings, keys)])
    forged = signed_checkpoint(readings[1], private=UNTRUSTED)
    forged["key"] = fingerprint(raw(TRUSTED))  # claims the trusted key
    altered = signed_checkpoint(readings[0])
    altered["seq"] = 2  # the signed object was changed after signing
    outcome = store.apply([checkpoints([forged, altered], keys)])
    assert outcome.kinds == {"signature": 2}
    assert query(db_url, "SELECT count(*) FROM checkpoints") == [(0,)]
    assert not station_row(db_url)["flagged"]


def test_unknown_stations_and_keys_are_quarantined(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    stranger = stamped(3, station="plant-x")
    checkpoint = signed_checkpoint(stamped(1)[0], private=UNTRUSTED)
    outcome = store.apply(
        [message(stranger, keys, station="plant-x"), checkpoints([checkpoint], keys)]
    )
    assert outcome.kinds == {"unknown-station": 1, "unknown-key": 1}
    rows = query(db_url, "SELECT kind, station, payload FROM quarantine ORDER BY kind")
    assert [(kind, station) for kind, station, _ in rows] == [
        ("unknown-key", STATION),
        ("unknown-station", "plant-x"),
    ]
    assert len(orjson.loads(rows[1][2])) == 3  # the whole message, as received
    assert query(db_url, "SELECT count(*) FROM readings") == [(0,)]
    assert query(db_url, "SELECT station FROM stations") == [(STATION,)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not a JSON array"),
        (b'{"seq": 1}', "not a JSON array"),
        (b"[1]", "not a JSON object"),
        (b'[{"seq": 1, "hash": "00"}]', "hash is not 64"),
    ],
)
def test_malformed_messages_are_quarantined(
    store: CollectorStore, keys: TrustedKeys, db_url: str, payload: bytes, reason: str
) -> None:
    outcome = store.apply(
        [triage_readings(f"{PREFIX}/{STATION}/x/readings", payload, keys, PREFIX)]
    )
    assert outcome.kinds == {"malformed": 1}
    [(stored_reason,)] = query(db_url, "SELECT reason FROM quarantine")
    assert reason in stored_reason


@pytest.mark.parametrize(
    ("instrument", "time", "reason"),
    [
        ("balance\x00", "2026-06-01T12:00:00.000000Z", "instrument"),  # text cannot hold NUL
        ("balance-1", "2026-13-01T12:00:00.000000Z", "month must be in 1..12"),
        ("balance-1", "2026-06-01 12:00:00", "RFC 3339"),
    ],
)
def test_readings_postgresql_cannot_hold_are_quarantined(
    store: CollectorStore, keys: TrustedKeys, instrument: str, time: str, reason: str
) -> None:
    odd = measured(1.0, instrument=instrument)._replace(time=time)
    readings = Stamper(STATION).stamp([odd])  # correctly hashed, all the same
    outcome = store.apply([message(readings, keys)])
    assert (outcome.stored, outcome.kinds) == (0, {"malformed": 1})
    assert reason in outcome.first_reason


def test_a_message_the_database_refuses_is_quarantined_and_blocks_nothing(
    store: CollectorStore, keys: TrustedKeys, db_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:  # a site's own sanity rule
        conn.execute("ALTER TABLE readings ADD CONSTRAINT plausible CHECK (value < 1e6)")
    huge = Stamper("plant-b").stamp([measured(5e6), measured(6.0)])
    fine = Stamper("plant-b", last_seq=2, last_hash=huge[-1].hash).stamp([measured(7.0)])
    outcome = store.apply(
        [
            message(stamped(2), keys),
            message(huge, keys, station="plant-b"),
            message(fine, keys, station="plant-b"),
        ]
    )
    assert (outcome.stored, outcome.kinds) == (3, {"refused": 2})
    assert query(db_url, "SELECT station, seq FROM readings ORDER BY station, seq") == [
        (STATION, 1),
        (STATION, 2),
        ("plant-b", 3),  # behind the gap the refused message left
    ]
    refused = query(db_url, "SELECT seq, reason FROM quarantine ORDER BY seq")
    assert [seq for seq, _ in refused] == [1, 2]
    assert all("plausible" in reason for _, reason in refused)
    assert station_row(db_url, "plant-b")["gaps"] == ((1, 2),)


def test_two_collectors_writing_one_station_at_once_keep_its_chain(
    db_url: str, keys: TrustedKeys
) -> None:
    """Two store connections (as two collector processes) share two stations' messages.

    Each message goes to one of them, a fifth to both (a station's re-send), in shuffled
    order; they apply their batches at the same time. Whatever the interleaving, every
    reading is stored once, the chains are whole and no gap stays open.
    """
    per_station, per_message = 600, 5
    shuffle = random.Random(20261127)
    shares: list[list[Triaged]] = [[], []]
    for station in (STATION, "plant-b"):
        readings = stamped(per_station, station=station)
        for start in range(0, per_station, per_message):
            part = message(readings[start : start + per_message], keys, station=station)
            chosen = shuffle.randrange(2)
            shares[chosen].append(part)
            if shuffle.random() < 0.2:
                shares[1 - chosen].append(part)
    for share in shares:
        shuffle.shuffle(share)
    stores = [CollectorStore.open(db_url, client_id=f"unit-{n}") for n in (1, 2)]
    together = threading.Barrier(2)

    def run(store: CollectorStore, share: list[Triaged]) -> Outcome:
        total = Outcome()
        together.wait()
        for batch in range(0, len(share), 2):
            total.add(store.apply(share[batch : batch + 2]))
        return total

    try:
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(run, stores, shares))
    finally:
        for store in stores:
            store.close()
    assert sum(outcome.stored for outcome in outcomes) == 2 * per_station
    assert all(outcome.quarantined == 0 for outcome in outcomes)
    assert query(db_url, "SELECT count(*) FROM quarantine") == [(0,)]
    for station in (STATION, "plant-b"):
        row = station_row(db_url, station)
        assert (row["head_seq"], row["tail_seq"], row["gaps"]) == (per_station, per_station, ())
        assert row["readings"] == per_station
        assert stored_chain_problems(db_url, station) == []
    assert query(db_url, "SELECT count(*) FROM gaps WHERE closed_at IS NULL") == [(0,)]
    [(gaps,)] = query(db_url, "SELECT count(*) FROM gaps")
    assert gaps > 10  # the shuffle did reorder: gaps opened, and all closed


def test_status_is_printed(
    store: CollectorStore, keys: TrustedKeys, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    readings = stamped(6)
    store.apply([message(readings[:2], keys), message(readings[4:], keys)])
    assert main(["collect", "--status", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert f"{STATION:<24} {2:>10} {6:>10} {4:>10} {0:>8}  3-4" in out
    assert "collector unit: 4 stored" in out
    assert main(["collect", "--status", "--json", "--db", db_url]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["stations"][0]["gaps"] == [[3, 4]]


def test_a_bad_key_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "plant-a.pub").write_text(f"# comment\n{raw(TRUSTED).hex()}\nnot-a-key\n")
    with pytest.raises(ConfigError) as caught:
        load_trusted_keys(tmp_path)
    assert f"{tmp_path / 'plant-a.pub'}:3" in str(caught.value)


def test_collect_needs_broker_and_keys_unless_status(db_url: str) -> None:
    assert main(["collect", "--db", db_url]) == 2


@given(st.binary(max_size=300))
def test_triage_takes_any_bytes(payload: bytes) -> None:
    keys = TrustedKeys({STATION: {}})
    for triage in (triage_readings, triage_checkpoints):
        triaged = triage(f"{PREFIX}/{STATION}/x/readings", payload, keys, PREFIX)
        assert len(triaged.readings) + len(triaged.rejected) + len(triaged.checkpoints) >= 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
wire_keys = st.sampled_from(
    ["hash", "id", "station", "seq", "value", "time", "flags", "prev_hash", "unit", "k"]
)


@given(st.lists(st.dictionaries(wire_keys, json_values, max_size=10), max_size=3))
def test_triage_takes_any_json(objects: list[dict[str, Any]]) -> None:
    keys = TrustedKeys({STATION: {}})
    payload = orjson.dumps(objects)
    triaged = triage_readings(f"{PREFIX}/{STATION}/x/readings", payload, keys, PREFIX)
    assert len(triaged.rejected) == len(objects)  # none of these hashes can verify
    triaged = triage_checkpoints(f"{PREFIX}/{STATION}/checkpoints", payload, keys, PREFIX)
    assert len(triaged.rejected) == len(objects)


def test_triage_accepts_the_chain_member_and_readings_from_before_it(keys: TrustedKeys) -> None:
    topic = f"{PREFIX}/{STATION}/balance-1/readings"
    [reading] = stamped(1)
    accepted = triage_readings(
        topic, published_payload([(reading.hash, reading.body)]), keys, PREFIX
    )
    assert [r.seq for r in accepted.readings] == [1]
    assert orjson.loads(accepted.readings[0].body)["chain"] == ["CAL-2026-0117"]
    # A station from before `chain`: the same reading without it, hashed as published.
    document = {k: v for k, v in orjson.loads(reading.body).items() if k != "chain"}
    old_hash = chain_hash(GENESIS_HASH, canonical_json(document))
    old = triage_readings(topic, orjson.dumps([{"hash": old_hash, **document}]), keys, PREFIX)
    assert ([r.seq for r in old.readings], old.rejected) == ([1], [])
    # A chain that is not a list of ids is malformed, even with a matching hash.
    document["chain"] = [1, 2]
    bad_hash = chain_hash(GENESIS_HASH, canonical_json(document))
    bad = triage_readings(topic, orjson.dumps([{"hash": bad_hash, **document}]), keys, PREFIX)
    assert bad.readings == []
    assert [(r.kind, "chain" in r.reason) for r in bad.rejected] == [("malformed", True)]
