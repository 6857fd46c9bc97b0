# SPDX-License-Identifier: Apache-2.0
"""The hash chain: anyone recomputes it from the payload; tampering of any kind shows."""

import hashlib
import itertools
import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json
from gateway.errors import StampError
from gateway.stamp import (
    GENESIS_HASH,
    UNTRACEABLE_FLAGS,
    Measured,
    Stamper,
    parse_payload,
    published_payload,
    reading_body,
    reading_document,
    verify_chain,
)
from tests.gateway.factories import measured


def published(count: int) -> list[dict[str, Any]]:
    stamper = Stamper("lab-1")
    stamped = stamper.stamp([measured(1000.0 + i / 100) for i in range(count)])
    return parse_payload(published_payload((s.hash, s.body) for s in stamped))


def test_hash_is_recomputable_with_any_json_library() -> None:
    first = published(1)[0]
    document = {key: value for key, value in first.items() if key != "hash"}
    expected = hashlib.sha256(bytes.fromhex(GENESIS_HASH) + rfc8785.dumps(document)).hexdigest()
    assert first["hash"] == expected
    assert first["seq"] == 1
    assert first["prev_hash"] == GENESIS_HASH
    assert first["value"] == 1000.0
    assert len(str(first["id"])) == 36


def test_published_fields() -> None:
    assert set(published(1)[0]) == {
        "id",
        "station",
        "seq",
        "instrument",
        "channel",
        "quantity",
        "indication",
        "value",
        "unit",
        "u",
        "U",
        "k",
        "certificate",
        "chain",
        "time",
        "flags",
        "prev_hash",
        "hash",
    }


def test_chain_links_and_seq_is_contiguous() -> None:
    readings = published(50)
    assert [r["seq"] for r in readings] == list(range(1, 51))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(readings))
    assert list(verify_chain(readings)) == []


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [str(r["id"]) for r in published(200)]
    assert len(set(ids)) == 200
    assert ids == sorted(ids)


def test_edited_value_is_found() -> None:
    readings = published(10)
    readings[4]["value"] = 1000.5
    problems = list(verify_chain(readings))
    assert [(p.seq, p.kind) for p in problems] == [(5, "hash")]


def test_deleted_reading_is_found() -> None:
    readings = published(10)
    del readings[3]
    kinds = {(p.seq, p.kind) for p in verify_chain(readings)}
    assert kinds == {(5, "gap"), (5, "link")}


def test_reordered_readings_are_found() -> None:
    readings = published(10)
    readings[2], readings[3] = readings[3], readings[2]
    assert {p.kind for p in verify_chain(readings)} == {"gap", "link"}


def test_inserted_reading_is_found() -> None:
    readings = published(5)
    forged = dict(readings[2])
    readings.insert(3, forged)
    assert any(p.kind in {"gap", "link"} for p in verify_chain(readings))


def test_head_moves_only_on_advance() -> None:
    stamper = Stamper("lab-1")
    batch = stamper.stamp([measured(1.0), measured(2.0)])
    again = stamper.stamp([measured(1.0), measured(2.0)])
    assert [s.seq for s in again] == [1, 2]  # a failed commit re-uses the seqs
    stamper.advance(batch)
    assert stamper.last_seq == 2
    assert stamper.last_hash == batch[-1].hash
    with pytest.raises(ValueError, match="head is 2"):
        stamper.advance(batch)


def test_nan_is_refused_before_stamping() -> None:
    with pytest.raises(StampError):
        Stamper("lab-1").stamp([measured(float("nan"))])


def test_payload_is_a_json_array_of_objects() -> None:
    stamper = Stamper("lab-1")
    stamped = stamper.stamp([measured(1.0), measured(2.0)])
    payload = published_payload((s.hash, s.body) for s in stamped)
    decoded = orjson.loads(payload)
    assert [d["hash"] for d in decoded] == [s.hash for s in stamped]


def test_payload_follows_the_published_schema() -> None:
    schema = orjson.loads(
        (Path(__file__).parents[2] / "schema" / "readings.schema.json").read_bytes()
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    stamper = Stamper("lab-1")
    stamped = stamper.stamp([measured(1.0), measured(2.5)])
    payload = orjson.loads(published_payload((s.hash, s.body) for s in stamped))
    jsonschema.validate(payload, schema)
    payload[0]["flags"] = ["SOMETHING_ELSE"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, schema)


maybe_float = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
texts = st.text(max_size=12)


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
readings = st.builds(
    Measured,
    instrument=texts,
    channel=texts,
    quantity=texts,
    indication=finite_floats,
    value=finite_floats,
    unit=texts,
    u=maybe_float,
    expanded_u=maybe_float,
    k=maybe_float,
    certificate=st.one_of(st.none(), texts),
    chain=st.lists(texts, max_size=4, unique=True).map(tuple),
    time=texts,
    flags=st.lists(st.sampled_from(sorted(UNTRACEABLE_FLAGS | {"UNSTABLE"})), unique=True).map(
        lambda flags: tuple(sorted(flags))
    ),
)


@given(station=texts, reading=readings)
@settings(max_examples=500)
def test_hot_path_body_equals_the_canonical_json(station: str, reading: Measured) -> None:
    reading_id = "01a21a6a-355c-71b1-b40c-837b9fc7eae2"
    document = reading_document(station, 7, reading_id, reading, GENESIS_HASH)
    body = reading_body(station, 7, reading_id, reading, GENESIS_HASH)
    assert body == canonical_json(document) == rfc8785.dumps(document)


def test_hot_path_refuses_infinity() -> None:
    with pytest.raises(StampError, match="value is inf"):
        reading_body("s", 1, "id", measured(1.0)._replace(value=math.inf), GENESIS_HASH)


def _bytes_held_each(make: Callable[[int], bytes], count: int = 2000) -> tuple[float, float]:
    """Memory allocated per object kept, and the objects' mean length (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(i) for i in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / count, sum(map(len, kept)) / count


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(
            lambda i: reading_body("lab-1", i, f"id-{i}", measured(1.0 + i), GENESIS_HASH),
            id="stamped body",
        ),
        pytest.param(
            lambda i: canonical_json(reading_document("lab-1", i, "id", measured(1.0 + i), "0")),
            id="canonical_json",
        ),
    ],
)
def test_kept_bodies_hold_only_their_length(encode: Callable[[int], bytes]) -> None:
    # Bodies are kept by the thousand (a batch, the forwarder's window); an encoder that
    # returns over-allocated buffers (orjson >= 3.12 rounds up to 4 KiB) multiplies the
    # station's memory by ten. The list's own slot (8 B) and the bytes header (33 B) and
    # malloc's rounding are allowed for.
    held, length = _bytes_held_each(encode)
    assert held <= length + 80, (held, length)
