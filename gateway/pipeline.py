# SPDX-License-Identifier: Apache-2.0
"""raw → corrected → stamped → stored, in batches.

Bus workers `submit` acquired readings into a bounded queue (a full queue makes them wait:
backpressure, never a silent drop). The pipeline takes what has gathered — up to
``batch_max`` readings, waiting at most ``batch_latency`` seconds for more — corrects it
channel by channel with one vectorised call each (`calibration.correct`), stamps it and
commits it in one transaction. Only after the commit does the chain head move and the
forwarder hear of it.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np

from calibration import Certificate, correct
from gateway.stamp import Measured, Stamped, Stamper
from gateway.store import AsyncStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSpec:
    """What the pipeline needs to know of a configured channel.

    Attributes:
        instrument: instrument id.
        channel: channel id.
        quantity: measured quantity.
        unit: the unit the channel (and its certificate) is in.
        resolution: resolution of the indication, in `unit` (0 if not applicable).
        certificate_id: the certificate named in the config, or None.
        certificate: the certificate model, or None.
        coverage_factor: k for the expanded uncertainty.
    """

    instrument: str
    channel: str
    quantity: str
    unit: str
    resolution: float
    certificate_id: str | None
    certificate: Certificate | None
    coverage_factor: float = 2.0


class Acquired(NamedTuple):
    """A raw indication as received, with the channel it belongs to and its UTC time.

    A named tuple for the hot path (see `gateway.stamp.Measured`).
    """

    spec: ChannelSpec
    indication: float
    unit: str
    stable: bool
    time: datetime


def rfc3339(moment: datetime) -> str:
    """Format an aware UTC datetime as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def measure(batch: Sequence[Acquired]) -> list[Measured]:
    """Correct a batch channel by channel and flag what is not traceable, keeping order.

    Flags: ``UNSTABLE`` (the instrument said so), ``UNIT_MISMATCH`` (the instrument reported
    another unit than the channel's: not corrected), ``NO_CERTIFICATE``,
    ``CERT_NOT_YET_VALID`` / ``CERT_EXPIRED`` (corrected, but not traceable),
    ``OUT_OF_CALIBRATED_RANGE`` (never extrapolated: value = indication, no uncertainty).
    """
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(batch):
        groups.setdefault(id(item.spec), []).append(index)
    results: list[Measured | None] = [None] * len(batch)
    times = _TimeText()
    for indexes in groups.values():
        spec = batch[indexes[0]].spec
        usable = [i for i in indexes if batch[i].unit == spec.unit]
        for i in indexes:
            if batch[i].unit != spec.unit:
                results[i] = _uncorrected(batch[i], ("UNIT_MISMATCH",), times)
        if spec.certificate is None:
            for i in usable:
                results[i] = _uncorrected(batch[i], ("NO_CERTIFICATE",), times)
        elif usable:
            _correct_group(batch, usable, spec, spec.certificate, results=results, times=times)
    return [result for result in results if result is not None]


class _TimeText(dict[datetime, str]):
    """RFC 3339 text of acquisition times; the readings of one poll share one time."""

    def __missing__(self, moment: datetime) -> str:
        text = self[moment] = rfc3339(moment)
        return text


def _correct_group(
    batch: Sequence[Acquired],
    indexes: list[int],
    spec: ChannelSpec,
    certificate: Certificate,
    *,
    results: list[Measured | None],
    times: _TimeText,
) -> None:
    indication = np.fromiter(
        (batch[i].indication for i in indexes), dtype=np.float64, count=len(indexes)
    )
    corrected = correct(
        indication, certificate, resolution=spec.resolution, coverage_factor=spec.coverage_factor
    )
    values = corrected.value.tolist()
    u = corrected.standard_uncertainty.tolist()
    expanded = corrected.expanded_uncertainty.tolist()
    in_range = corrected.in_range.tolist()
    k = float(corrected.coverage_factor)
    validity: dict[datetime, tuple[str, ...]] = {}
    for position, i in enumerate(indexes):
        item = batch[i]
        flags = validity.get(item.time)
        if flags is None:
            flags = validity[item.time] = _validity_flags(item.time, certificate)
        if not item.stable or not in_range[position]:
            extra = ("UNSTABLE",) if not item.stable else ()
            if not in_range[position]:
                results[i] = _uncorrected(
                    item,
                    (*flags, *extra, "OUT_OF_CALIBRATED_RANGE"),
                    times,
                    certificate=spec.certificate_id,
                )
                continue
            flags = tuple(sorted((*flags, *extra)))
        results[i] = Measured(
            instrument=spec.instrument,
            channel=spec.channel,
            quantity=spec.quantity,
            indication=item.indication,
            value=values[position],
            unit=spec.unit,
            u=u[position],
            expanded_u=expanded[position],
            k=k,
            certificate=spec.certificate_id,
            time=times[item.time],
            flags=flags,
        )


def _validity_flags(moment: datetime, certificate: Certificate) -> tuple[str, ...]:
    if moment < certificate.valid_from:
        return ("CERT_NOT_YET_VALID",)
    if moment > certificate.valid_until:
        return ("CERT_EXPIRED",)
    return ()


def _uncorrected(
    item: Acquired, flags: tuple[str, ...], times: _TimeText, *, certificate: str | None = None
) -> Measured:
    spec = item.spec
    all_flags = set(flags)
    if not item.stable:
        all_flags.add("UNSTABLE")
    return Measured(
        instrument=spec.instrument,
        channel=spec.channel,
        quantity=spec.quantity,
        indication=item.indication,
        value=item.indication,
        unit=item.unit,
        u=None,
        expanded_u=None,
        k=None,
        certificate=certificate or spec.certificate_id,
        time=times[item.time],
        flags=tuple(sorted(all_flags)),
    )


class Pipeline:
    """Owns the acquisition queue and the path from it into the store."""

    def __init__(
        self,
        store: AsyncStore,
        stamper: Stamper,
        *,
        batch_max: int = 5000,
        batch_latency: float = 0.05,
        on_commit: Callable[[Sequence[Stamped]], None] = lambda _stamped: None,
    ) -> None:
        self._store = store
        self._stamper = stamper
        self._batch_max = batch_max
        self._batch_latency = batch_latency
        self._on_commit = on_commit
        self._queue: asyncio.Queue[Acquired | None] = asyncio.Queue(maxsize=4 * batch_max)
        self.committed = 0

    @property
    def last_seq(self) -> int:
        """The seq of the last committed reading."""
        return self._stamper.last_seq

    @property
    def backlog(self) -> int:
        """Readings acquired and not yet committed."""
        return self._queue.qsize()

    async def submit(self, items: Sequence[Acquired]) -> None:
        """Queue acquired readings; waits while the queue is full (backpressure)."""
        queue = self._queue
        for item in items:
            if queue.full():
                await queue.put(item)
            else:
                queue.put_nowait(item)

    async def close(self) -> None:
        """Ask `run` to commit what is queued and return (acquisition has stopped)."""
        await self._queue.put(None)

    async def run(self) -> None:
        """Commit batches until `close`; a `StoreError` propagates (acquisition stops)."""
        while True:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            closing = await self._gather(batch)
            await self.commit(batch)
            if closing:
                break
        await self._drain()

    async def _drain(self) -> None:
        while not self._queue.empty():
            batch: list[Acquired] = []
            while len(batch) < self._batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    batch.append(item)
            await self.commit(batch)

    async def _gather(self, batch: list[Acquired]) -> bool:
        """Add what arrives within the batch latency; True when `close` was seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._batch_latency
        while len(batch) < self._batch_max:
            while len(batch) < self._batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    return True
                batch.append(item)
            remaining = deadline - loop.time()
            if len(batch) >= self._batch_max or remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    item = await self._queue.get()
            except TimeoutError:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    async def commit(self, batch: Sequence[Acquired]) -> list[Stamped]:
        """Correct, stamp and durably store `batch`; return what was committed."""
        if not batch:
            return []
        stamped = self._stamper.stamp(measure(batch))
        await self._store.call(self._store.store.append, stamped)
        self._stamper.advance(stamped)
        self.committed += len(stamped)
        if stamped:
            self._on_commit(stamped)
        return stamped
