# SPDX-License-Identifier: Apache-2.0
"""Forwarding the outbox upstream over MQTT (aiomqtt, QoS 1), losing nothing.

The store is the outbox. The forwarder reads a window of committed readings above the
``forwarded_seq`` mark, publishes them as JSON arrays on
``<prefix>/<station>/<instrument>/readings`` (consecutive readings of one instrument share a
message), waits for the broker's PUBACK of every message of the window, and only then moves
the mark past the window. A broker that is down, refuses, or stalls past the publish timeout
ends the session; the forwarder reconnects with exponential backoff and publishes the window
again: delivery is at-least-once, and subscribers de-duplicate by reading ``id``.

Signed checkpoints (`gateway.checkpoints`) go to ``<prefix>/<station>/checkpoints``, one
JSON object per message (QoS 1), through the same discipline with an outbox of their own:
a checkpoint is published only once the broker has acknowledged every reading it covers, so
a subscriber holds those readings when it arrives and can check it at once; its mark (a
checkpoint id) moves after the checkpoint's PUBACK, and what was not acknowledged is
published again (at-least-once; subscribers de-duplicate by ``signature``).

The retained ``<prefix>/<station>/status`` topic carries ``{"state": "online", ...}`` with
instrument health while connected, ``{"state": "offline", ...}`` on a clean stop, and the
same offline object as the MQTT last will when the station vanishes.

``mqtts://`` verifies the broker against ``ca_file`` (hostname checked) and may present a
client certificate; the password is read from ``password_file`` at each connection. Both
secret files are refused when group or others may read them (`gateway.secrets`): the
forwarder then retries as for a refusing broker, buffering in the store.
"""

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import orjson

from gateway.checkpoints import Checkpoint
from gateway.config import UpstreamSection
from gateway.errors import ForwardError, StoreError
from gateway.pipeline import rfc3339
from gateway.secrets import SecretFileError, check_private_file, read_secret
from gateway.stamp import Stamped, published_payload
from gateway.store import AsyncStore, Pending

log = logging.getLogger(__name__)


def readings_topic(prefix: str, station: str, instrument: str) -> str:
    """Topic of an instrument's readings."""
    return f"{prefix}/{station}/{instrument}/readings"


def status_topic(prefix: str, station: str) -> str:
    """Retained status topic of a station."""
    return f"{prefix}/{station}/status"


def checkpoints_topic(prefix: str, station: str) -> str:
    """Topic of a station's signed checkpoints."""
    return f"{prefix}/{station}/checkpoints"


#: Checkpoints read from the store per query of the checkpoints' outbox.
_CHECKPOINT_BATCH = 100


def group_messages(
    window: Sequence[Pending], max_per_message: int
) -> list[tuple[str, list[Pending]]]:
    """Split a window into messages: runs of one instrument, at most `max_per_message` each.

    Readings of one instrument keep their seq order inside and across messages.
    """
    by_instrument: dict[str, list[Pending]] = {}
    for item in window:
        by_instrument.setdefault(item.instrument, []).append(item)
    messages: list[tuple[str, list[Pending]]] = []
    for instrument, items in by_instrument.items():
        messages.extend(
            (instrument, items[start : start + max_per_message])
            for start in range(0, len(items), max_per_message)
        )
    return messages


def tls_context(settings: UpstreamSection) -> ssl.SSLContext | None:
    """Build the TLS context for an ``mqtts://`` broker (CA file, optional client cert).

    The server's certificate is verified against `ca_file` (the system's CAs when it is
    not given) and must name the broker's host. The client key is refused when exposed.

    Raises:
        SecretFileError: the client key is missing or group or others may read it.
        ForwardError: the CA file or the client certificate or key cannot be loaded.
    """
    if not settings.tls:
        return None
    if settings.key_file is not None:
        check_private_file(settings.key_file, "TLS client key")
    try:
        # create_default_context: CERT_REQUIRED and check_hostname on, TLS >= 1.2.
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        if settings.cert_file is not None:
            context.load_cert_chain(
                str(settings.cert_file), str(settings.key_file) if settings.key_file else None
            )
    # Mapped here, where the files are read: ssl reports a missing or malformed file as an
    # OSError (SSLError is one), which the forwarder must not take for a broken connection.
    except OSError as exc:
        files = ", ".join(
            str(path)
            for path in (settings.ca_file, settings.cert_file, settings.key_file)
            if path is not None
        )
        msg = f"cannot load the TLS files ({files or 'system CAs'}): {exc}"
        raise ForwardError(msg) from exc
    return context


def _first_mqtt_error(failures: BaseExceptionGroup[BaseException]) -> BaseException:
    """Unwrap a task group that failed only because the connection was lost."""
    lost, other = failures.split(aiomqtt.MqttError)
    if other is not None or lost is None:
        return failures
    first: BaseException = lost
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class Forwarder:
    """Publishes committed readings; see the module docstring."""

    def __init__(
        self,
        settings: UpstreamSection,
        station: str,
        store: AsyncStore,
        *,
        forwarded_seq: int,
        forwarded_checkpoint: int = 0,
        health: Callable[[], dict[str, Any]] = dict,
        details: Callable[[], dict[str, Any]] = dict,
        window: int = 5000,
    ) -> None:
        self._settings = settings
        self._station = station
        self._store = store
        self._health = health
        self._details = details
        self._window = window
        self._wake = asyncio.Event()
        self._recent: collections.deque[Pending] = collections.deque()
        # Committed readings kept in memory for publishing without a store read: four
        # windows (some 15 MiB at 5000 a window). Further behind (an outage, or commits
        # outrunning the broker under overload), the store serves them, a window per query.
        self._recent_max = 4 * window
        self._progress = asyncio.Condition()
        self.forwarded_seq = forwarded_seq
        self.forwarded_checkpoint = forwarded_checkpoint
        # The store may hold checkpoints an earlier run did not get acknowledged.
        self._checkpoints_waiting = True
        self._mark_failing = False
        self.connected = False
        self.published_messages = 0
        self.reconnects = 0
        prefix = settings.topic_prefix
        self._status_topic = status_topic(prefix, station)
        self._checkpoints_topic = checkpoints_topic(prefix, station)

    def notify_checkpoint(self, checkpoint_id: int, checkpoint: Checkpoint) -> None:
        """Tell the forwarder that a checkpoint was stored (it publishes from the store)."""
        log.debug("checkpoint %d at seq %d stored", checkpoint_id, checkpoint.seq)
        self._checkpoints_waiting = True
        self._wake.set()

    def notify(self, committed: Sequence[Stamped] = ()) -> None:
        """Tell the forwarder that readings were committed (handing them over if it can).

        While the forwarder keeps up, committed readings go to the broker from memory; when
        it falls behind by more than its memory bound (an outage), it forgets them and reads
        the store, which holds everything, until it has caught up.
        """
        if committed:
            if len(self._recent) + len(committed) <= self._recent_max:
                self._recent.extend(
                    Pending(s.seq, s.measured.instrument, s.hash, s.body) for s in committed
                )
            else:
                self._recent.clear()
        self._wake.set()

    async def _next_window(self) -> list[Pending]:
        """The next readings to publish: from memory when they follow on, else from the store."""
        recent, after = self._recent, self.forwarded_seq
        while recent and recent[0].seq <= after:
            recent.popleft()
        if recent and recent[0].seq == after + 1:
            return list(itertools.islice(recent, self._window))
        return await self._store.call(self._store.store.pending, after, self._window)

    async def run(self) -> None:
        """Connect, forward, reconnect with backoff; runs until cancelled."""
        failures = 0
        while True:
            try:
                await self._session()
            # A refused secret or TLS file is retried like a refusing broker: the readings
            # stay in the outbox until an operator fixes the file (`chmod 600`).
            except (aiomqtt.MqttError, ForwardError, SecretFileError) as exc:
                self.connected = False
                failures += 1
                delay = min(
                    self._settings.reconnect_max,
                    self._settings.reconnect_min * 2 ** min(failures - 1, 10),
                )
                delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
                if failures == 1:
                    log.warning(
                        "broker %s: %s; buffering in the store, retrying",
                        self._settings.broker,
                        exc,
                    )
                else:
                    log.info(
                        "broker %s still unreachable (%s); next try in %.1f s",
                        self._settings.broker,
                        exc,
                        delay,
                    )
                self.reconnects += 1
                await asyncio.sleep(delay)
            else:
                failures = 0

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        password = read_secret(settings.password_file) if settings.password_file else None
        offline = orjson.dumps({"state": "offline", "station": self._station})
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=settings.client_id or f"metrogate-{self._station}",
            protocol=(
                aiomqtt.ProtocolVersion.V5
                if settings.protocol == 5  # noqa: PLR2004
                else aiomqtt.ProtocolVersion.V311
            ),
            will=aiomqtt.Will(self._status_topic, offline, qos=1, retain=True),
            keepalive=settings.keepalive,
            timeout=settings.publish_timeout,
            username=settings.username,
            password=password,
            tls_context=tls_context(settings),
            max_inflight_messages=max(settings.max_inflight, 20),
            max_concurrent_outgoing_calls=settings.max_inflight,
        )
        # Up to max_inflight publications are awaited at once by design; aiomqtt would log a
        # warning for each beyond its default threshold of 10.
        client.pending_calls_threshold = settings.max_inflight + 1
        return client

    async def _session(self) -> None:
        client = self._client()
        try:
            await self._connected_session(client)
        finally:
            _retrieve_late_disconnect(client)

    async def _connected_session(self, client: aiomqtt.Client) -> None:
        async with client:
            self.connected = True
            self._checkpoints_waiting = True  # one may have been cut off by the last session
            log.info("connected to broker %s", self._settings.broker)
            await self._publish_status(client, "online")
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._status_loop(client))
                    group.create_task(self._forward_loop(client))
            except BaseExceptionGroup as failures:
                raise _first_mqtt_error(failures) from failures
            except asyncio.CancelledError:
                # A clean stop: say so on the retained status topic before disconnecting,
                # so the broker does not publish the last will.
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._publish_status(client, "offline")
                raise
            finally:
                self.connected = False

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self._settings.status_interval)
            await self._publish_status(client, "online")

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        status = {
            "state": state,
            "station": self._station,
            "time": rfc3339(datetime.now(UTC)),
            "forwarded_seq": self.forwarded_seq,
            "instruments": self._health(),
            **self._details(),
        }
        await client.publish(self._status_topic, orjson.dumps(status), qos=1, retain=True)

    async def _forward_loop(self, client: aiomqtt.Client) -> None:
        prefix, station = self._settings.topic_prefix, self._station
        while True:
            self._wake.clear()
            window = await self._next_window()
            if window:
                messages = group_messages(window, self._settings.max_readings_per_message)
                async with asyncio.TaskGroup() as group:
                    for instrument, items in messages:
                        payload = published_payload((item.hash, item.body) for item in items)
                        group.create_task(
                            client.publish(
                                readings_topic(prefix, station, instrument), payload, qos=1
                            )
                        )
                await self._record(window[-1].seq)
                self.published_messages += len(messages)
                async with self._progress:
                    self.forwarded_seq = window[-1].seq
                    self._progress.notify_all()
            if self._checkpoints_waiting:
                await self._forward_checkpoints(client)
            if not window:
                await self._wake.wait()

    async def _forward_checkpoints(self, client: aiomqtt.Client) -> None:
        """Publish stored checkpoints whose readings are all acknowledged, in signing order."""
        # Cleared first: a checkpoint stored while the store is read sets it again.
        self._checkpoints_waiting = False
        while True:
            try:
                batch = await self._store.call(
                    self._store.store.pending_checkpoints,
                    self.forwarded_checkpoint,
                    _CHECKPOINT_BATCH,
                )
            except StoreError as exc:
                log.warning("cannot read checkpoints to publish (%s); retrying later", exc)
                self._checkpoints_waiting = True
                return
            ready = list(
                itertools.takewhile(lambda item: item[1].seq <= self.forwarded_seq, batch)
            )
            if ready:
                async with asyncio.TaskGroup() as group:
                    for _id, checkpoint in ready:
                        group.create_task(
                            client.publish(self._checkpoints_topic, checkpoint.to_json(), qos=1)
                        )
                last_id = ready[-1][0]
                await self._record_checkpoints(last_id)
                async with self._progress:
                    self.forwarded_checkpoint = last_id
                    self._progress.notify_all()
            if len(ready) < len(batch):  # their readings are not acknowledged yet
                self._checkpoints_waiting = True
                return
            if len(batch) < _CHECKPOINT_BATCH:
                return

    async def _record_checkpoints(self, checkpoint_id: int) -> None:
        """Persist the checkpoints' mark; like `_record`, a failure does not stop publishing."""
        try:
            await self._store.call(self._store.store.mark_checkpoints_forwarded, checkpoint_id)
        except StoreError as exc:
            log.warning("cannot record checkpoint %d as forwarded (%s)", checkpoint_id, exc)

    async def wait_checkpoints_forwarded(self, checkpoint_id: int) -> None:
        """Return once every checkpoint up to `checkpoint_id` is acknowledged."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.forwarded_checkpoint >= checkpoint_id)

    async def _record(self, seq: int) -> None:
        """Persist the high-water mark; a store that cannot take it does not stop forwarding.

        The broker has acknowledged the window, so the mark moves on in memory. The store
        catches up at the next mark it can write (marks only move forward); if the station
        stops before that, the window is published again at the next start (at-least-once).
        """
        try:
            await self._store.call(self._store.store.mark_forwarded, seq)
        except StoreError as exc:
            if not self._mark_failing:
                log.warning(
                    "cannot record forwarding up to seq %d (%s); publishing goes on", seq, exc
                )
            self._mark_failing = True
        else:
            if self._mark_failing:
                log.info("forwarding state recorded again (up to seq %d)", seq)
            self._mark_failing = False

    async def wait_forwarded(self, seq: int) -> None:
        """Return once every reading up to `seq` is acknowledged (callers set a deadline)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.forwarded_seq >= seq)


def _retrieve_late_disconnect(client: aiomqtt.Client) -> None:
    """Retrieve the disconnect error aiomqtt may record after a session has ended.

    When a session ends on a publish timeout (a frozen broker), paho notices the dead socket
    only later and aiomqtt then sets an "Unexpected disconnection" exception on the old
    client's disconnect future, which nobody awaits any more: asyncio would log "Future
    exception was never retrieved" at ERROR when it is collected, alarming an operator for
    a disconnection the forwarder has already handled.
    """
    future = getattr(client, "_disconnected", None)  # aiomqtt 2.x's private future
    if isinstance(future, asyncio.Future):
        future.add_done_callback(_consume)


def _consume(future: "asyncio.Future[None]") -> None:
    if not future.cancelled():
        future.exception()
