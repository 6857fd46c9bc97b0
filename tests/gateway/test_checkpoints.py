# SPDX-License-Identifier: Apache-2.0
"""Signed checkpoints: the pinned encoding, what each kind of tampering looks like, the
daemon's checkpointer on a real store, and the README's snippet run against a real one."""

import asyncio
import base64
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.checkpoints import (
    Checkpoint,
    CheckpointFormatError,
    check_signature,
    fingerprint,
    parse_checkpoint,
    public_key_hex,
    sign_checkpoint,
)
from gateway.config import UpstreamSection
from gateway.daemon import Checkpointer
from gateway.forward import Forwarder
from gateway.keys import SigningKey, ensure_signing_key, trusted_keys
from gateway.stamp import GENESIS_HASH, Stamped, Stamper, published_payload
from gateway.store import AsyncStore
from tests.gateway.factories import measured
from tests.services import Mosquitto

ROOT = Path(__file__).resolve().parents[2]

# RFC 8032 §7.1, TEST 1: secret key, public key, and the signature of the empty message.
RFC8032_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # noqa: S105
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_EMPTY_SIGNATURE = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701"
    "cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
# sha256(bytes.fromhex(RFC8032_PUBLIC)), computed independently with `sha256sum`.
RFC8032_FINGERPRINT = "21fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9"
READING_HASH = "5d0c" + "ab" * 30
TIME = "2026-11-27T00:28:49.806211Z"
# The bytes that are signed, and the signature: pinned so that any change to the canonical
# encoding or to what is signed shows here (Ed25519 is deterministic).
PINNED_INPUT = (
    b'{"hash":"5d0cabababababababababababababababababababababababababababababab",'
    b'"key":"21fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9",'
    b'"seq":1000,"station":"hb-wuhan-lab3","time":"2026-11-27T00:28:49.806211Z"}'
)
PINNED_SIGNATURE = (
    "iG+Fol20GQx7kXGEIXFWNGPsUX7XsEZfOmk5QCxJfXPKWioVJtsfhtPxBl42CYculDXjZnjtxbff0SySHKPrBA=="
)


def rfc_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET))


def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def pinned() -> Checkpoint:
    return sign_checkpoint(
        rfc_key(), station="hb-wuhan-lab3", seq=1000, hash_hex=READING_HASH, time=TIME
    )


def trusted(*keys: Ed25519PrivateKey) -> dict[str, Any]:
    return trusted_keys([public_key_hex(key.public_key()) for key in keys])


def test_the_library_meets_rfc8032_test_1() -> None:
    key = rfc_key()
    assert public_key_hex(key.public_key()) == RFC8032_PUBLIC
    assert key.sign(b"").hex() == RFC8032_EMPTY_SIGNATURE
    assert fingerprint(key.public_key()) == fingerprint(RFC8032_PUBLIC) == RFC8032_FINGERPRINT


def test_signing_input_and_signature_are_pinned() -> None:
    checkpoint = pinned()
    assert checkpoint.key == RFC8032_FINGERPRINT
    assert checkpoint.signing_input() == PINNED_INPUT
    assert checkpoint.signing_input() == rfc8785.dumps(checkpoint.unsigned())
    assert checkpoint.signature == PINNED_SIGNATURE
    assert len(base64.b64decode(checkpoint.signature, validate=True)) == 64
    published = orjson.loads(checkpoint.to_json())
    assert checkpoint.to_json() == rfc8785.dumps(published)
    assert set(published) == {"station", "seq", "hash", "time", "key", "signature"}


def test_round_trip_through_the_published_object() -> None:
    checkpoint = pinned()
    again = parse_checkpoint(orjson.loads(checkpoint.to_json()))
    assert again == checkpoint
    assert check_signature(again, trusted(rfc_key())) is None


def _forged_signature(checkpoint: Checkpoint) -> Checkpoint:
    return dataclasses.replace(checkpoint, signature=base64.b64encode(bytes(64)).decode())


def _signed_by_another_key_claiming_this_one(checkpoint: Checkpoint) -> Checkpoint:
    impostor = sign_checkpoint(
        other_key(), station=checkpoint.station, seq=checkpoint.seq, hash_hex=checkpoint.hash,
        time=checkpoint.time,
    )  # fmt: skip
    return dataclasses.replace(impostor, key=checkpoint.key)


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (_forged_signature, "signature"),
        (_signed_by_another_key_claiming_this_one, "signature"),
        (lambda c: dataclasses.replace(c, seq=c.seq + 1), "signature"),
        (lambda c: dataclasses.replace(c, hash="0" * 64), "signature"),
        (lambda c: dataclasses.replace(c, time="2026-11-27T00:28:49.806212Z"), "signature"),
        (lambda c: dataclasses.replace(c, station="hb-wuhan-lab4"), "signature"),
        (lambda c: dataclasses.replace(c, signature="not base64!"), "signature"),
        (lambda c: dataclasses.replace(c, signature=c.signature[:-4]), "signature"),
        (
            lambda c: sign_checkpoint(
                other_key(), station=c.station, seq=c.seq, hash_hex=c.hash, time=c.time
            ),
            "key",
        ),
    ],
    ids=[
        "forged-signature",
        "another-key-claiming-this-one",
        "edited-seq",
        "edited-hash",
        "edited-time",
        "edited-station",
        "signature-not-base64",
        "signature-truncated",
        "signed-by-untrusted-key",
    ],
)
def test_each_kind_of_tampering_is_detected(tamper: Any, kind: str) -> None:
    checkpoint = pinned()
    assert check_signature(checkpoint, trusted(rfc_key())) is None
    failure = check_signature(tamper(checkpoint), trusted(rfc_key()))
    assert failure is not None
    assert failure[0] == kind


def test_a_second_trusted_key_verifies_its_own_checkpoints() -> None:
    mine = sign_checkpoint(other_key(), station="s", seq=1, hash_hex=READING_HASH, time=TIME)
    assert check_signature(mine, trusted(rfc_key(), other_key())) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"signature": None}, "signature must be a base64 string"),
        ({"seq": "1000"}, "seq must be a positive integer"),
        ({"seq": 0}, "seq must be a positive integer"),
        ({"hash": "AB" * 32}, "hash must be 64 lowercase hex"),
        ({"key": "ab"}, "key must be 64 lowercase hex"),
        ({"time": "2026-11-27T00:28:49Z"}, "time must be RFC 3339 UTC with microseconds"),
        ({"station": ""}, "station must be a non-empty string"),
        ({"extra": 1}, "unexpected ['extra']"),
    ],
)
def test_malformed_checkpoints_are_refused_naming_the_member(
    change: dict[str, Any], message: str
) -> None:
    document = {**pinned().to_object(), **change}
    with pytest.raises(CheckpointFormatError, match=re.escape(message)):
        parse_checkpoint(document)


def test_a_checkpoint_without_a_member_is_refused() -> None:
    without = pinned().to_object()
    del without["time"]
    with pytest.raises(CheckpointFormatError, match=re.escape("missing ['time']")):
        parse_checkpoint(without)


# -- the daemon's checkpointer, on a real store ------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    opened = await AsyncStore.open(f"sqlite:///{tmp_path / 'metrogate.db'}", station="lab-1")
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return ensure_signing_key(tmp_path / "keys", station="lab-1", now=TIME)[0]


async def commit(store: AsyncStore, stamper: Stamper, count: int) -> list[Stamped]:
    batch = stamper.stamp([measured(1000.0 + i / 100) for i in range(count)])
    await store.call(store.store.append, batch)
    stamper.advance(batch)
    return batch


async def until(condition: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def test_checkpointer_signs_every_n_readings_and_a_final_one(
    store: AsyncStore, key: SigningKey
) -> None:
    stamper = Stamper("lab-1")
    made: list[tuple[int, Checkpoint]] = []
    checkpointer = Checkpointer(
        store, key, "lab-1", every=10, interval=3600.0, covered_seq=0,
        head=(0, GENESIS_HASH), on_checkpoint=lambda i, c: made.append((i, c)),
    )  # fmt: skip
    task = asyncio.create_task(checkpointer.run())
    hashes: dict[int, str] = {}
    try:
        for _ in range(5):  # batches of 4: the 10th reading falls due in the third batch
            batch = await commit(store, stamper, 4)
            hashes.update((s.seq, s.hash) for s in batch)
            checkpointer.notify(batch)
            if stamper.last_seq == 12:
                await until(lambda: len(made) == 1)
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [c.seq for _, c in made] == [12]  # 20 - 12 < 10: nothing more fell due
    final = await checkpointer.checkpoint()
    assert final is not None
    assert final.seq == 20
    assert await checkpointer.checkpoint() is None  # the last reading is covered already
    stored = await store.call(store.store.pending_checkpoints, 0, 10)
    assert stored == made
    assert [c.seq for _, c in stored] == [12, 20]
    for _, checkpoint in stored:
        assert checkpoint.hash == hashes[checkpoint.seq]
        assert checkpoint.station == "lab-1"
        assert checkpoint.key == key.fingerprint
        assert check_signature(checkpoint, trusted_keys([key.public_key])) is None
    assert await store.call(store.store.last_checkpoint_seq) == 20


async def test_checkpointer_signs_after_the_interval_only_when_readings_wait(
    store: AsyncStore, key: SigningKey
) -> None:
    stamper = Stamper("lab-1")
    made: list[Checkpoint] = []
    checkpointer = Checkpointer(
        store, key, "lab-1", every=1000, interval=0.05, covered_seq=0,
        head=(0, GENESIS_HASH), on_checkpoint=lambda _i, c: made.append(c),
    )  # fmt: skip
    task = asyncio.create_task(checkpointer.run())
    try:
        await asyncio.sleep(0.2)
        assert made == []  # nothing committed, nothing to vouch for
        checkpointer.notify(await commit(store, stamper, 3))
        await until(lambda: len(made) == 1)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [c.seq for c in made] == [3]


def readme_verify_checkpoint() -> Any:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(import base64.*?)```", readme, re.DOTALL)
    assert snippet, "the README's checkpoint snippet is missing"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - our own README, run as a reader would
    return namespace["verify_checkpoint"]


async def test_readme_snippet_verifies_a_real_checkpoint_and_catches_forgery(
    store: AsyncStore, key: SigningKey
) -> None:
    verify_checkpoint = readme_verify_checkpoint()
    stamper = Stamper("lab-1")
    batch = await commit(store, stamper, 12)
    checkpointer = Checkpointer(
        store, key, "lab-1", every=10, interval=3600.0, covered_seq=0, head=(0, GENESIS_HASH)
    )
    checkpointer.notify(batch)
    checkpoint = await checkpointer.checkpoint()
    assert checkpoint is not None
    # As a subscriber receives them: the payloads, decoded by any JSON library.
    published = orjson.loads(checkpoint.to_json())
    readings = orjson.loads(published_payload((s.hash, s.body) for s in batch))
    by_seq = {r["seq"]: r for r in readings}
    verify_checkpoint(published, [key.public_key], by_seq)

    with pytest.raises(AssertionError, match="unknown key"):
        verify_checkpoint(published, [public_key_hex(other_key().public_key())], by_seq)
    with pytest.raises(InvalidSignature):
        verify_checkpoint({**published, "seq": 11}, [key.public_key], by_seq)
    with pytest.raises(InvalidSignature):
        verify_checkpoint(
            {**published, "signature": base64.b64encode(bytes(64)).decode()},
            [key.public_key],
            by_seq,
        )
    rewritten = {**by_seq, 12: {**by_seq[12], "hash": "1" * 64}}
    with pytest.raises(AssertionError, match="seq 12 was rewritten"):
        verify_checkpoint(published, [key.public_key], rewritten)


# -- publication: after the readings they cover, through their own outbox ----------------


@contextlib.asynccontextmanager
async def listening(broker: Mosquitto) -> AsyncIterator[list[tuple[str, Any]]]:
    """(last topic level, payload) of each readings and checkpoints message, as they arrive."""
    arrived: list[tuple[str, Any]] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("metrogate/v1/lab-1/#", qos=1)
            subscribed.set()
            async for message in client.messages:
                kind = str(message.topic).rsplit("/", 1)[1]
                if kind != "status":
                    arrived.append((kind, orjson.loads(bytes(message.payload))))

    listener = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        yield arrived
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


@contextlib.asynccontextmanager
async def forwarding(forwarder: Forwarder) -> AsyncIterator[None]:
    task = asyncio.create_task(forwarder.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_forwarder_publishes_checkpoints_after_their_readings_and_again_after_a_restart(
    store: AsyncStore, key: SigningKey, mosquitto: Mosquitto
) -> None:
    settings = UpstreamSection.model_validate(
        {"broker": mosquitto.url, "reconnect_min": 0.1, "reconnect_max": 0.5}
    )
    stamper = Stamper("lab-1")
    forwarder = Forwarder(settings, "lab-1", store, forwarded_seq=0)
    checkpointer = Checkpointer(
        store, key, "lab-1", every=10, interval=3600.0, covered_seq=0,
        head=(0, GENESIS_HASH), on_checkpoint=forwarder.notify_checkpoint,
    )  # fmt: skip
    async with listening(mosquitto) as arrived:
        batch = await commit(store, stamper, 12)
        checkpointer.notify(batch)
        first = await checkpointer.checkpoint()  # stored before the forwarder even starts
        assert first is not None
        async with forwarding(forwarder), asyncio.timeout(10):
            forwarder.notify(batch)
            await forwarder.wait_forwarded(12)
            await forwarder.wait_checkpoints_forwarded(checkpointer.last_id)
            await until(lambda: any(kind == "checkpoints" for kind, _ in arrived))
        assert [kind for kind, _ in arrived][-1] == "checkpoints"
        assert {kind for kind, _ in arrived[:-1]} == {"readings"}  # what it covers came first
        assert arrived[-1][1] == orjson.loads(first.to_json())
        assert await store.call(store.store.checkpoints_forwarded) == checkpointer.last_id

        # A checkpoint stored while the station was cut off goes out at its next start.
        checkpointer.notify(await commit(store, stamper, 3))
        second = await checkpointer.checkpoint()
        assert second is not None
        restarted = Forwarder(
            settings, "lab-1", store, forwarded_seq=12,
            forwarded_checkpoint=await store.call(store.store.checkpoints_forwarded),
        )  # fmt: skip
        async with forwarding(restarted), asyncio.timeout(10):
            await restarted.wait_checkpoints_forwarded(checkpointer.last_id)
            await until(lambda: arrived[-1][1] == orjson.loads(second.to_json()))
    assert [payload["seq"] for kind, payload in arrived if kind == "checkpoints"] == [12, 15]
