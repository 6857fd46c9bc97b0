# SPDX-License-Identifier: Apache-2.0
"""The upstream collector: stations' readings from MQTT into PostgreSQL, verified.

Reference: MQTT 5.0 §4.8.2 (shared subscriptions), §4.6 (PUBACKs in the order of the
PUBLISHes), §3.1.2.11.2 (session expiry); README "Wire format"; RFC 8032 (Ed25519).

``metrogate collect`` subscribes to ``$share/<group>/<prefix>/+/+/readings`` and
``$share/<group>/<prefix>/+/checkpoints`` with QoS 1 in a persistent MQTT v5 session, so
that several collector processes share the load and a restarted one finds its unacknowledged
messages waiting. Each message is parsed and its readings' hashes checked as it arrives
(`triage_readings`, `triage_checkpoints`: pure, bytes in, rows or quarantine records out),
on the event loop. Batches are committed by `gateway.collector_store` on worker threads,
one per database connection ("lanes"; a station always takes the same lane), while the
next batch arrives. A message is acknowledged (PUBACK, manually) only after everything in
it has committed, so a crash loses nothing: the broker sends the unacknowledged messages
again, and the store recognises what it already holds as duplicates.

Trusted keys: ``--keys DIR`` holds ``<station>.pub`` files, one hex Ed25519 public key
(32 bytes) per line, ``#`` starts a comment. A station without a file is unknown: its
messages go to the quarantine. A checkpoint is the JSON object ``{"station", "seq",
"hash", "time", "key", "signature"}``: ``key`` is the hex SHA-256 of the raw public key,
``signature`` the base64 Ed25519 signature over the canonical JSON of the object without
``signature``.
"""

import argparse
import asyncio
import binascii
import collections
import contextlib
import hashlib
import logging
import re
import signal
import socket
import ssl
import sys
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiomqtt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.canonical import NeedsSlowPathError, canonical_json, plain_number, right_sized
from gateway.collector_store import (
    CollectorStore,
    Incoming,
    Outcome,
    Rejected,
    SignedCheckpoint,
    Triaged,
    read_status,
    wait_seconds,
)
from gateway.errors import ConfigError, ConfigProblem, StampError, StoreError
from gateway.secrets import read_secret
from gateway.systemd import notify, watchdog_period
from gateway.tuning import keep_heap, settle

log = logging.getLogger(__name__)

DEFAULT_GROUP = "metrogate-collectors"
DEFAULT_PREFIX = "metrogate/v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_READING_KEYS = frozenset(
    ("hash", "id", "station", "seq", "instrument", "channel", "quantity", "indication",
     "value", "unit", "u", "U", "k", "certificate", "chain", "time", "flags", "prev_hash")
)  # fmt: skip
#: Readings of stations from before the ``chain`` member: still accepted and verified.
_READING_KEYS_WITHOUT_CHAIN = _READING_KEYS - {"chain"}
_FLOAT_KEYS = ("U", "indication", "k", "u", "value")
_MAX_SEQ = 2**63 - 1
_SUBACK_FAILURE = 0x80  # MQTT 5.0 §3.9.3: reason codes from 0x80 on refuse a subscription


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """Each known station's Ed25519 public keys, by fingerprint (hex SHA-256 of the key)."""

    stations: dict[str, dict[str, bytes]]

    def __contains__(self, station: object) -> bool:
        return station in self.stations


def fingerprint(public_key: bytes) -> str:
    """The ``key`` field of a checkpoint: hex SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).hexdigest()


def load_trusted_keys(directory: Path) -> TrustedKeys:
    """Read every ``<station>.pub`` in `directory`.

    Raises:
        ConfigError: the directory is missing, or a line is not a 64-digit hex key.
    """
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), "", "no such key directory")])
    stations: dict[str, dict[str, bytes]] = {}
    problems: list[ConfigProblem] = []
    for path in sorted(directory.glob("*.pub")):
        keys: dict[str, bytes] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            entry = line.split("#", 1)[0].strip().lower()
            if not entry:
                continue
            if not _HEX64.fullmatch(entry):
                message = f"not a hex Ed25519 public key (64 hex digits): {entry[:20]!r}"
                problems.append(ConfigProblem(str(path), "", message, number))
                continue
            raw = bytes.fromhex(entry)
            keys[fingerprint(raw)] = raw
        stations[path.stem] = keys
    if problems:
        raise ConfigError(problems)
    return TrustedKeys(stations)


class _MalformedError(ValueError):
    """A reading or checkpoint that does not have the wire format's shape."""


def topic_station(topic: str, prefix: str) -> str | None:
    """The station named by a readings or checkpoints topic under `prefix`, or None."""
    levels = topic.removeprefix(prefix + "/").split("/") if topic.startswith(prefix) else []
    if len(levels) in (2, 3) and levels[-1] in ("readings", "checkpoints") and levels[0]:
        return levels[0]
    return None


def _time(value: object, key: str = "time") -> str:
    if type(value) is not str or not _RFC3339.fullmatch(value):
        raise _MalformedError(f"{key} is not an RFC 3339 time with offset")
    datetime.fromisoformat(value)  # ValueError for 2026-13-40 and the like
    return value


def _number(value: object, key: str, *, optional: bool = True) -> float | None:
    """A JSON number as float (ints are rare here: integral floats travel as ints)."""
    if type(value) is int:
        return float(value)
    if value is None and optional:
        return None
    raise _MalformedError(f"{key} is not a number")


def _flags(value: object) -> str:
    """Flags as a PostgreSQL array literal (COPY parses it), every element quoted."""
    if value == []:
        return "{}"
    if type(value) is not list or any(type(f) is not str or "\x00" in f for f in value):
        raise _MalformedError("flags is not a list of strings")
    quoted = ('"' + flag.replace("\\", "\\\\").replace('"', '\\"') + '"' for flag in value)
    return "{" + ",".join(quoted) + "}"


def _canonical_body(document: dict[str, Any], *, wire_members: bool) -> bytes:
    """Canonical JSON of `document` (mutated: integral floats become ints, same value).

    With exactly the wire format's members it takes the stamper's fast path, which knows
    where floats can be (`plain_number`); anything else takes the general encoder.
    """
    if wire_members:
        try:
            for key in _FLOAT_KEYS:
                value = document[key]
                if type(value) is float:
                    document[key] = plain_number(value)
            return right_sized(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
        except NeedsSlowPathError:
            pass
    return canonical_json(document)


def _incoming(document: dict[str, Any], claimed: str, body: bytes) -> Incoming:
    """The row of a reading whose hash checked; raises `_MalformedError` or KeyError.

    It runs for every reading, so it is written flat: one look-up per member, inline type
    checks, a call only for the rare value (an int where a float is usual).
    """
    get = document.__getitem__
    reading_id, certificate = get("id"), get("certificate")
    instrument, channel, quantity, unit = (
        get("instrument"),
        get("channel"),
        get("quantity"),
        get("unit"),
    )
    if type(reading_id) is not str or not _UUID.fullmatch(reading_id):
        raise _MalformedError("id is not a UUID")
    chain = document.get("chain", [])
    if type(chain) is not list or any(type(number) is not str for number in chain):
        raise _MalformedError("chain is not a list of certificate ids")
    for text in (instrument, channel, quantity, unit, certificate or ""):
        if type(text) is not str or "\x00" in text:  # PostgreSQL text cannot hold NUL
            raise _MalformedError("instrument, channel, quantity, unit or certificate")
    indication, value, u, expanded_u, k = (
        get("indication"),
        get("value"),
        get("u"),
        get("U"),
        get("k"),
    )
    if type(value) is not float:
        value = _number(value, "value", optional=False)
    if type(indication) is not float:
        indication = _number(indication, "indication")
    if type(u) is not float:
        u = _number(u, "u")
    if type(expanded_u) is not float:
        expanded_u = _number(expanded_u, "U")
    if type(k) is not float:
        k = _number(k, "k")
    return Incoming(
        reading_id, get("station"), get("seq"), instrument, channel, quantity,
        _time(get("time")), indication, value, unit, u, expanded_u, k, certificate,
        _flags(get("flags")), get("prev_hash"), claimed, body.decode("utf-8"),
    )  # fmt: skip


def _check_reading(  # noqa: PLR0911 - one return per check reads best
    item: object, station: str
) -> Incoming | tuple[str, str]:
    """Verify one published reading object: an `Incoming`, or ``(kind, reason)``."""
    if type(item) is not dict:
        return "malformed", "a reading is not a JSON object"
    document = dict(item)
    claimed = document.pop("hash", None)
    seq = document.get("seq")
    prev_hash = document.get("prev_hash")
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ:
        return "malformed", "seq is not a positive integer"
    if type(claimed) is not str or not _HEX64.fullmatch(claimed):
        return "malformed", f"seq {seq}: hash is not 64 lowercase hex digits"
    if type(prev_hash) is not str or not _HEX64.fullmatch(prev_hash):
        return "malformed", f"seq {seq}: prev_hash is not 64 lowercase hex digits"
    if document.get("station") != station:
        return "malformed", f"seq {seq}: station {document.get('station')!r} on {station}'s topic"
    try:
        keys = item.keys()
        wire_members = keys in (_READING_KEYS, _READING_KEYS_WITHOUT_CHAIN)
        body = _canonical_body(document, wire_members=wire_members)
    except (StampError, TypeError) as exc:
        return "malformed", f"seq {seq}: no canonical JSON ({exc})"
    if hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest() != claimed:
        return "hash", f"seq {seq}: content does not match its hash (altered)"
    try:
        return _incoming(document, claimed, body)
    except (_MalformedError, KeyError, ValueError) as exc:
        return "malformed", f"seq {seq}: {type(exc).__name__} {exc}"


def triage_readings(topic: str, payload: bytes, keys: TrustedKeys, prefix: str) -> Triaged:
    """Parse a readings message and check each reading's hash against its content.

    Total: any payload yields readings to store and records to quarantine, never an error.
    """
    station = topic_station(topic, prefix)
    if station is None or station not in keys:
        reason = f"unknown station {station!r}: no key file" if station else "unknown topic"
        rejected = [Rejected(topic, station, None, None, "unknown-station", reason, payload)]
        return Triaged(topic, station, known=False, readings=[], rejected=rejected, checkpoints=[])
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError:
        items = None
    if not isinstance(items, list):
        rejected = [Rejected(topic, station, None, None, "malformed", "not a JSON array", payload)]
        return Triaged(topic, station, known=True, readings=[], rejected=rejected, checkpoints=[])
    readings: list[Incoming] = []
    rejected = []
    for item in items:
        checked = _check_reading(item, station)
        if isinstance(checked, Incoming):
            readings.append(checked)
            continue
        kind, reason = checked
        fields = item if isinstance(item, dict) else {}
        seq, reading_id = fields.get("seq"), fields.get("id")
        rejected.append(
            Rejected(
                topic, station, seq if type(seq) is int and 0 <= seq <= _MAX_SEQ else None,
                reading_id if type(reading_id) is str else None, kind, reason,
                orjson.dumps(item),
            )
        )  # fmt: skip
    return Triaged(
        topic, station, known=True, readings=readings, rejected=rejected, checkpoints=[]
    )


def verify_checkpoint(  # noqa: PLR0911 - one return per check reads best
    item: object, station: str, keys: TrustedKeys
) -> SignedCheckpoint | tuple[str, str]:
    """Check one checkpoint object's shape, key and Ed25519 signature.

    Returns:
        The checkpoint, or ``(kind, reason)`` with kind ``malformed``, ``unknown-key`` or
        ``signature``.
    """
    if type(item) is not dict:
        return "malformed", "a checkpoint is not a JSON object"
    document = dict(item)
    signature = document.pop("signature", None)
    seq, hash_, key = document.get("seq"), document.get("hash"), document.get("key")
    if document.get("station") != station:
        return "malformed", f"checkpoint for {document.get('station')!r} on {station}'s topic"
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ:
        return "malformed", "checkpoint seq is not a positive integer"
    if type(hash_) is not str or not _HEX64.fullmatch(hash_):
        return "malformed", f"checkpoint {seq}: hash is not 64 lowercase hex digits"
    if type(key) is not str or not _HEX64.fullmatch(key):
        return "malformed", f"checkpoint {seq}: key is not 64 lowercase hex digits"
    if type(signature) is not str:
        return "malformed", f"checkpoint {seq}: signature is not a base64 string"
    try:
        time = _time(document.get("time"))
        raw = binascii.a2b_base64(signature, strict_mode=True)
        body = canonical_json(document)
    except (_MalformedError, binascii.Error, StampError, TypeError, ValueError) as exc:
        return "malformed", f"checkpoint {seq}: {exc}"
    public = keys.stations[station].get(key)
    if public is None:
        return "unknown-key", f"checkpoint {seq}: key {key[:16]}… is not trusted for {station}"
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(raw, body)
    except InvalidSignature:
        return "signature", f"checkpoint {seq}: the signature does not verify"
    return SignedCheckpoint(station, seq, hash_, time, key, signature)


def triage_checkpoints(topic: str, payload: bytes, keys: TrustedKeys, prefix: str) -> Triaged:
    """Parse a checkpoints message (one object or an array) and verify each signature."""
    station = topic_station(topic, prefix)
    if station is None or station not in keys:
        reason = f"unknown station {station!r}: no key file" if station else "unknown topic"
        rejected = [Rejected(topic, station, None, None, "unknown-station", reason, payload)]
        return Triaged(topic, station, known=False, readings=[], rejected=rejected, checkpoints=[])
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError:
        rejected = [Rejected(topic, station, None, None, "malformed", "not JSON", payload)]
        return Triaged(topic, station, known=True, readings=[], rejected=rejected, checkpoints=[])
    signed: list[SignedCheckpoint] = []
    rejected = []
    for item in decoded if isinstance(decoded, list) else [decoded]:
        checked = verify_checkpoint(item, station, keys)
        if isinstance(checked, SignedCheckpoint):
            signed.append(checked)
            continue
        seq = item.get("seq") if isinstance(item, dict) else None
        seq = seq if type(seq) is int and 0 <= seq <= _MAX_SEQ else None
        rejected.append(Rejected(topic, station, seq, None, *checked, orjson.dumps(item)))
    return Triaged(topic, station, known=True, readings=[], rejected=rejected, checkpoints=signed)


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorSettings:
    """How a collector process connects; see ``metrogate collect --help``.

    Attributes:
        broker: ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
        db: PostgreSQL URL (``postgresql://user@host/db``).
        keys: the trusted-keys directory.
        group: shared-subscription group; processes with the same group share messages.
        client_id: MQTT client id; stable across restarts (it names the persistent session)
            and distinct per process.
        prefix: topic prefix of the stations.
        session_expiry: seconds the broker keeps the session (and queues for it) while the
            process is away.
        receive_maximum: unacknowledged messages the broker may have in flight to us.
        batch_max: readings committed per batch at most.
        connections: database connections (lanes) committing a batch's stations at once.
        username: broker user name, or None.
        password_file: file holding the broker password, or None.
        ca_file: CA bundle for ``mqtts://``, or None for the system's.
    """

    broker: str
    db: str
    keys: Path
    group: str = DEFAULT_GROUP
    client_id: str
    prefix: str = DEFAULT_PREFIX
    session_expiry: int = 86400
    receive_maximum: int = 1000
    batch_max: int = 5000
    connections: int = 2
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None


class _Received(NamedTuple):
    """A message triaged, waiting for its commit; the payload itself is not kept."""

    mid: int
    qos: int
    triaged: Triaged
    size: int  # readings and quarantine records, for the batch size


class Collector:
    """One collector process's MQTT session: receive, triage, commit in batches, acknowledge."""

    def __init__(self, settings: CollectorSettings, stores: Sequence[CollectorStore]) -> None:
        self._settings = settings
        self.keys = load_trusted_keys(settings.keys)
        self.totals = Outcome()
        self.connected = False
        self._stopping = threading.Event()
        # A lane is a database connection and the one thread that owns it; the event loop
        # never waits on the database. A station always takes the same lane, and lanes
        # commit at once (the GIL is released while PostgreSQL works).
        self._lanes = [
            (store, ThreadPoolExecutor(1, thread_name_prefix=f"collector-store-{number}"))
            for number, store in enumerate(stores)
        ]

    def reload_keys(self) -> None:
        """Read the key directory again (SIGHUP); keep the old keys if it is unusable."""
        try:
            self.keys = load_trusted_keys(self._settings.keys)
        except ConfigError as exc:
            log.error("keys not reloaded: %s", exc)  # noqa: TRY400 - the problems say it all
        else:
            log.info("keys reloaded: %d stations", len(self.keys.stations))

    async def run(self, stop: asyncio.Event) -> None:
        """Collect until `stop` is set; the batch being committed then is acknowledged."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._sessions(), name="collector-sessions"),
                    group.create_task(self._watchdog(), name="collector-watchdog"),
                ]
                await stop.wait()
                self._stopping.set()
                for task in tasks:
                    task.cancel()
        finally:
            self._stopping.set()
            for _, executor in self._lanes:
                executor.shutdown(wait=True)

    async def _watchdog(self) -> None:
        period = watchdog_period()
        while period is not None:
            notify("WATCHDOG=1")
            await asyncio.sleep(period)

    async def _sessions(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.connected = False
                failures += 1
                delay = wait_seconds(failures, first=0.2, most=30.0)
                log.warning(
                    "broker %s: %s; reconnecting in %.1f s", self._settings.broker, exc, delay
                )
                await asyncio.sleep(delay)
            else:
                failures = 0

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        url = urlsplit(settings.broker)
        tls = url.scheme == "mqtts"
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
        properties.SessionExpiryInterval = settings.session_expiry
        properties.ReceiveMaximum = settings.receive_maximum
        password = None
        if settings.password_file is not None:
            password = read_secret(settings.password_file, "password file")
        context = None
        if tls:
            cafile = str(settings.ca_file) if settings.ca_file else None
            context = ssl.create_default_context(cafile=cafile)
        client = aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if tls else 1883),
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            username=settings.username,
            password=password,
            tls_context=context,
            keepalive=30,
        )
        # aiomqtt 2.5 has no manual acknowledgement; the paho client it wraps has (public
        # there: `manual_ack_set`, `ack`). Without it paho sends PUBACK before we commit.
        client._client.manual_ack_set(on=True)  # noqa: SLF001
        return client

    async def _session(self) -> None:
        settings = self._settings
        async with self._client() as client:
            shared = f"$share/{settings.group}/{settings.prefix}"
            granted = await client.subscribe(
                [(f"{shared}/+/+/readings", 1), (f"{shared}/+/checkpoints", 1)]
            )
            if any(
                code.is_failure if isinstance(code, ReasonCode) else code >= _SUBACK_FAILURE
                for code in granted
            ):
                raise aiomqtt.MqttError(f"subscription refused: {granted}")
            self.connected = True
            log.info(
                "collecting from %s as %s (group %s)",
                settings.broker,
                settings.client_id,
                settings.group,
            )
            notify(f"STATUS=collecting from {settings.broker}")
            inbox: collections.deque[_Received] = collections.deque()
            arrived = asyncio.Event()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._receive(client, inbox, arrived))
                    group.create_task(self._commit(client, inbox, arrived))
            except BaseExceptionGroup as failures:
                lost, other = failures.split(aiomqtt.MqttError)
                if other is not None or lost is None:
                    raise
                raise next(_leaves(lost)) from failures
            finally:
                self.connected = False

    async def _receive(
        self,
        client: aiomqtt.Client,
        inbox: collections.deque[_Received],
        arrived: asyncio.Event,
    ) -> None:
        prefix = self._settings.prefix
        async for message in client.messages:
            topic, payload = message.topic.value, message.payload
            if topic.endswith("/checkpoints"):
                triaged = triage_checkpoints(topic, payload, self.keys, prefix)
            else:
                triaged = triage_readings(topic, payload, self.keys, prefix)
            size = len(triaged.readings) + len(triaged.rejected)
            inbox.append(_Received(message.mid, message.qos, triaged, size))
            arrived.set()

    async def _commit(
        self,
        client: aiomqtt.Client,
        inbox: collections.deque[_Received],
        arrived: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await arrived.wait()
            batch = [inbox.popleft()]
            size = batch[0].size
            while inbox and size + inbox[0].size <= self._settings.batch_max:
                batch.append(inbox.popleft())
                size += batch[-1].size
            if not inbox:
                arrived.clear()
            lanes: list[list[Triaged]] = [[] for _ in self._lanes]
            for received in batch:
                station = (received.triaged.station or "").encode("utf-8", "replace")
                lanes[zlib.crc32(station) % len(lanes)].append(received.triaged)
            done = asyncio.gather(
                *(
                    loop.run_in_executor(executor, self._apply_retrying, store, messages)
                    for (store, executor), messages in zip(self._lanes, lanes, strict=True)
                    if messages
                )
            )
            try:
                outcomes = await asyncio.shield(done)
            except asyncio.CancelledError:
                # Stopping while a batch commits: let it finish and acknowledge it, so
                # that a clean stop leaves nothing for the broker to send again.
                with contextlib.suppress(StoreError, TimeoutError):
                    async with asyncio.timeout(30):
                        self._acknowledge(client, batch, await done)
                raise
            self._acknowledge(client, batch, outcomes)

    def _apply_retrying(self, store: CollectorStore, messages: list[Triaged]) -> Outcome:
        """On a lane's thread: apply, retrying while the database is unavailable."""
        failures = 0
        while True:
            try:
                return store.apply(messages)
            except StoreError as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s; retrying (messages stay unacknowledged)", exc)
                if self._stopping.wait(wait_seconds(failures)):
                    raise  # stopping: the broker sends the batch again to whoever collects

    def _acknowledge(
        self,
        client: aiomqtt.Client,
        batch: Sequence[_Received],
        outcomes: Sequence[Outcome],
    ) -> None:
        """PUBACK every message of a committed batch, in the order they arrived (§4.6)."""
        paho = client._client  # noqa: SLF001 - see _client
        for received in batch:
            if received.qos > 0:
                paho.ack(received.mid, received.qos)
        outcome = Outcome()
        for part in outcomes:
            outcome.add(part)
        self.totals.add(outcome)
        if outcome.quarantined:
            log.warning(
                "quarantined %d (%s), e.g. %s",
                outcome.quarantined,
                ", ".join(f"{kind}: {count}" for kind, count in sorted(outcome.kinds.items())),
                outcome.first_reason,
            )


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def add_collect_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``metrogate collect`` to the command-line grammar (handler in ``args.handler``)."""
    collect = commands.add_parser(
        "collect",
        help="collect stations' readings from MQTT into PostgreSQL, verified",
        description="Subscribe (MQTT v5 shared subscription) to stations' readings and "
        "checkpoints, verify their hash chains and signatures, store them in PostgreSQL. "
        "With --status, print each station's chain state instead.",
    )
    collect.add_argument("--db", required=True, help="PostgreSQL URL: postgresql://user@host/db")
    collect.add_argument("--broker", help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    collect.add_argument("--keys", type=Path, help="directory of trusted <station>.pub files")
    collect.add_argument("--group", default=DEFAULT_GROUP, help="shared-subscription group")
    collect.add_argument(
        "--client-id",
        default=f"metrogate-collector-{socket.gethostname()}",
        help="MQTT client id, stable per process (names its persistent session)",
    )
    collect.add_argument("--topic-prefix", default=DEFAULT_PREFIX)
    collect.add_argument("--session-expiry", type=int, default=86400, help="seconds")
    collect.add_argument("--receive-maximum", type=int, default=1000)
    collect.add_argument("--batch-max", type=int, default=5000, help="readings per commit")
    collect.add_argument(
        "--connections", type=int, default=2, help="database connections committing at once"
    )
    collect.add_argument("--username")
    collect.add_argument("--password-file", type=Path)
    collect.add_argument("--ca-file", type=Path, help="CA bundle for mqtts://")
    collect.add_argument("--status", action="store_true", help="print the stations' state")
    collect.add_argument("--json", action="store_true", help="with --status: one JSON object")
    collect.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    """Run the collector until SIGTERM, or print the status (``--status``)."""
    if args.status:
        return _print_status(args.db, as_json=args.json)
    if not args.broker or not args.keys:
        sys.stderr.write("metrogate collect: --broker and --keys are required (or --status)\n")
        return 2
    settings = CollectorSettings(
        broker=args.broker,
        db=args.db,
        keys=args.keys,
        group=args.group,
        client_id=args.client_id,
        prefix=args.topic_prefix,
        session_expiry=args.session_expiry,
        receive_maximum=args.receive_maximum,
        batch_max=args.batch_max,
        connections=args.connections,
        username=args.username,
        password_file=args.password_file,
        ca_file=args.ca_file,
    )
    try:
        return asyncio.run(_collect(settings))
    except (ConfigError, StoreError) as exc:
        sys.stderr.write(f"metrogate collect: {exc}\n")
        return 1


async def _collect(settings: CollectorSettings) -> int:
    stores: list[CollectorStore] = []
    try:
        for _ in range(max(1, settings.connections)):
            opened = await asyncio.to_thread(
                CollectorStore.open, settings.db, client_id=settings.client_id
            )
            stores.append(opened)
        collector = Collector(settings, stores)
        settle()  # start-up objects frozen: collections then scan only the batches' objects
        # Ready once the database is open: a broker that is not there yet is retried, and
        # systemd should not restart the service for it.
        notify(f"READY=1\nSTATUS=connecting to {settings.broker}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, collector.reload_keys)
        await collector.run(stop)
        notify("STOPPING=1")
        totals = collector.totals
        log.info(
            "collector %s stopped: %d stored, %d duplicates, %d quarantined",
            settings.client_id, totals.stored, totals.duplicates, totals.quarantined,
        )  # fmt: skip
    finally:
        for store in stores:
            store.close()
    return 0


def _print_status(url: str, *, as_json: bool) -> int:
    try:
        stations, collectors = read_status(url)
    except StoreError as exc:
        sys.stderr.write(f"metrogate collect: {exc}\n")
        return 1
    if as_json:
        document = {
            "stations": [
                {name: getattr(status, name) for name in status.__slots__} for status in stations
            ],
            "collectors": collectors,
        }
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        return 0
    out = sys.stdout.write
    out(f"{'station':<24} {'head':>10} {'tail':>10} {'stored':>10} {'rejected':>8}  gaps\n")
    for status in stations:
        gaps = ", ".join(f"{start}-{end}" for start, end in status.gaps[:5]) or "-"
        if len(status.gaps) > 5:  # noqa: PLR2004
            gaps += f" (+{len(status.gaps) - 5} more)"
        out(
            f"{status.station:<24} {status.head_seq:>10} {status.tail_seq:>10} "
            f"{status.readings:>10} {status.rejected:>8}  {gaps}\n"
        )
        if status.flagged:
            out(f"  FLAGGED: {status.flag_reason}\n")
    for row in collectors:
        out(
            f"collector {row['client_id']}: {row['readings']} stored, {row['duplicates']} "
            f"duplicates, {row['quarantined']} quarantined, last commit {row['last_commit_at']}\n"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``metrogate collect …`` on its own (until the integrator wires it into gateway.cli)."""
    parser = argparse.ArgumentParser(prog="metrogate")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_collect_parser(commands)
    args = parser.parse_args(argv)
    keep_heap()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
