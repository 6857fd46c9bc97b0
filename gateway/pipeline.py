# SPDX-License-Identifier: Apache-2.0
"""raw → corrected → stamped → stored, in batches.

Bus workers `submit` acquired readings into a bounded queue (a full queue makes them wait:
backpressure, never a silent drop). The pipeline takes what has gathered — up to
``batch_max`` readings, waiting at most ``batch_latency`` seconds for more — corrects it
channel by channel with one vectorised call each (`calibration.correct`), stamps it and
commits it in one transaction. Only after the commit does the chain head move and the
forwarder hear of it.

A channel rests on a calibration certificate (corrected: `calibration.correct`), or on a
verification certificate (检定: not corrected, u = MPE/√3, `calibration.verify`); a meter
measuring through instrument transformers multiplies by their ratios
(`calibration.composite.product`). A channel's calibration chain (`ChannelChain`) is
resolved from the register at start-up and at every reload; per reading the pipeline only
compares the acquisition time with the window in which every link of the chain is valid,
and the indication with the range every link stated in the channel's unit covers.
"""

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from calibration import (
    Certificate,
    ChainResult,
    MeasurementResult,
    VerificationCertificate,
    correct,
    correct_piecewise,
    product,
    verify,
)
from gateway.errors import StoreError
from gateway.stamp import Measured, Stamped, Stamper
from gateway.store import AsyncStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelChain:
    """A channel's chain of certificates up to the national standards, as last resolved.

    Attributes:
        certificate_ids: the channel's certificate, then every certificate up the chain,
            each once, in walk order (`calibration.ChainResult.certificate_ids`).
        checked: False when the register holds nothing for the channel: the station file's
            certificate alone is the chain, not flagged (README, "Calibration chain").
        broken: the register's chain failed a check when it was resolved (route, result,
            missing standard…): every reading is flagged ``CHAIN_BROKEN``.
        valid_from: from when every link is valid (the latest issue), or None.
        valid_until: until when every link is valid (the earliest expiry, or expiry of a
            public standard's assessment), or None.
        problem: why the chain is broken (the first failing link), for the log.
        covered_range: (low, high) in the channel's unit that every link stating a range in
            that unit covers (their intersection), or None when none states one.
        certificate: the channel's certificate model loaded from the register, used when the
            station file does not state the certificate (None otherwise).
        transformer_certificates: the register's models of the channel's CT and VT
            certificates that the station file does not state (`[instrument.channel.ct]
            certificate = "…"`), used like the file's would be.
    """

    certificate_ids: tuple[str, ...]
    checked: bool = False
    broken: bool = False
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    problem: str = ""
    covered_range: tuple[float, float] | None = None
    certificate: Certificate | VerificationCertificate | None = None
    transformer_certificates: tuple[Certificate | VerificationCertificate, ...] = ()

    @classmethod
    def from_result(
        cls,
        certificate_id: str,
        result: ChainResult | None,
        *,
        unit: str | None = None,
        certificate: Certificate | VerificationCertificate | None = None,
    ) -> "ChannelChain":
        """The chain of a channel whose station file names `certificate_id`.

        `result` is the register's chain for the channel (None, or a first link without a
        certificate, when the register knows nothing of it). `unit` is the channel's: the
        links whose range is stated in it bound `covered_range`. `certificate` is the
        register's model of the channel's certificate, if the daemon loaded one.
        """
        if result is None or not result.links or result.links[0].certificate is None:
            return cls(certificate_ids=(certificate_id,), certificate=certificate)
        ids = tuple(dict.fromkeys((certificate_id, *result.certificate_ids)))
        covered = _covered_range(result, unit)
        if not result.ok:
            first = result.failures[0]
            problem = f"{first.subject}: {'; '.join(first.reasons)}"
            return cls(
                certificate_ids=ids,
                checked=True,
                broken=True,
                problem=problem,
                covered_range=covered,
                certificate=certificate,
            )
        records = [link.certificate for link in result.links if link.certificate is not None]
        ends = [record.expires for record in records] + [
            link.standard.assessment_valid_until
            for link in result.links
            if link.standard is not None
            and link.standard.level == "public"
            and link.standard.assessment_valid_until is not None
        ]
        return cls(
            certificate_ids=ids,
            checked=True,
            valid_from=max(record.issued for record in records),
            valid_until=min(ends),
            covered_range=covered,
            certificate=certificate,
        )

    def joined(self, part: str, number: str, result: ChainResult) -> "ChannelChain":
        """This chain and the register's chain of another certificate the channel rests on.

        `result` is the walk up from a CT's or VT's certificate `number` (`part`, e.g.
        ``"CT"``, `calibration.resolve_certificate_chain`):
        its certificates join the readings' chain, its failures break the channel's chain
        (the problem names `part`), and its validity window narrows the channel's. Ranges
        stay the channel's own (a transformer's are not in the channel's unit).
        """
        other = ChannelChain.from_result(number, result)
        ids = tuple(dict.fromkeys((*self.certificate_ids, *other.certificate_ids)))
        problem = self.problem or (f"{part} {other.problem}" if other.broken else "")
        starts = [t for t in (self.valid_from, other.valid_from) if t is not None]
        ends = [t for t in (self.valid_until, other.valid_until) if t is not None]
        return dataclasses.replace(
            self,
            certificate_ids=ids,
            checked=True,
            broken=self.broken or other.broken,
            problem=problem,
            valid_from=max(starts, default=None),
            valid_until=min(ends, default=None),
        )

    def broken_at(self, moment: datetime) -> bool:
        """Whether a reading acquired at `moment` rests on a broken chain."""
        if not self.checked:
            return False
        if self.broken:
            return True
        if self.valid_from is not None and moment < self.valid_from:
            return True
        return self.valid_until is not None and moment > self.valid_until


def _covered_range(result: ChainResult, unit: str | None) -> tuple[float, float] | None:
    """The intersection of the ranges that links of `result` state in `unit`, or None.

    An empty intersection is kept as (low, high) with low > high: nothing is covered.
    """
    spans = [
        link.certificate.calibrated_range
        for link in result.links
        if link.certificate is not None
        and link.certificate.calibrated_range is not None
        and link.certificate.calibrated_range.unit == unit
    ]
    if unit is None or not spans:
        return None
    return max(span.minimum for span in spans), min(span.maximum for span in spans)


@dataclass(frozen=True, slots=True, kw_only=True)
class Factor:
    """A constant factor of a composite channel, e.g. a CT's ratio, with its uncertainty.

    Attributes:
        result: the factor as a 0-d result (value, terms) to multiply the reading by.
        certificate_ids: the certificates it rests on, for the readings' ``chain``.
    """

    result: MeasurementResult
    certificate_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelModel:
    """What corrects a channel: its certificate, the factors, the certificates they rest on.

    Attributes:
        certificate: the channel's certificate model, or None.
        factors: instrument transformer ratios to multiply by (empty: a plain channel).
        dated: further certificates whose validity the readings depend on (the factors').
    """

    certificate: Certificate | VerificationCertificate | None
    factors: tuple[Factor, ...] = ()
    dated: tuple[Certificate | VerificationCertificate, ...] = ()


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
        chain: the channel's calibration chain as resolved from the register, or None when
            not resolved (then the chain is the certificate alone, unchecked).
        factors: CT and VT ratios the value is multiplied by (empty: a plain channel).
        dated: the factors' certificates, whose validity the readings' flags also check.
        chain_ids: the ``chain`` member of this channel's readings (derived).
        scale: the product of the factors' values (1 for a plain channel; derived).
        window: (from, until) in which every certificate applied is valid (derived).
    """

    instrument: str
    channel: str
    quantity: str
    unit: str
    resolution: float
    certificate_id: str | None
    certificate: Certificate | VerificationCertificate | None
    coverage_factor: float = 2.0
    chain: ChannelChain | None = None
    factors: tuple[Factor, ...] = ()
    dated: tuple[Certificate | VerificationCertificate, ...] = ()
    chain_ids: tuple[str, ...] = field(init=False)
    scale: float = field(init=False)
    window: tuple[datetime, datetime] | None = field(init=False)

    def __post_init__(self) -> None:
        # Derived once here: measure() reads them for every reading.
        own: tuple[str, ...] = (self.certificate_id,) if self.certificate_id else ()
        if self.chain is not None:
            own = self.chain.certificate_ids
        factor_ids = (i for factor in self.factors for i in factor.certificate_ids)
        object.__setattr__(self, "chain_ids", tuple(dict.fromkeys((*own, *factor_ids))))
        scale = math.prod(float(factor.result.value) for factor in self.factors)
        object.__setattr__(self, "scale", scale)
        applied = [*([self.certificate] if self.certificate else []), *self.dated]
        window = (
            (max(c.valid_from for c in applied), min(c.valid_until for c in applied))
            if applied
            else None
        )
        object.__setattr__(self, "window", window)


class Acquired(NamedTuple):
    """A raw indication as received, with the channel it belongs to and its UTC time.

    A named tuple for the hot path (see `gateway.stamp.Measured`).
    """

    spec: ChannelSpec
    indication: float
    unit: str
    stable: bool
    time: datetime
    clock_back: bool = False


def rfc3339(moment: datetime) -> str:
    """Format an aware UTC datetime as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def measure(batch: Sequence[Acquired]) -> list[Measured]:
    """Correct a batch channel by channel and flag what is not traceable, keeping order.

    Flags: ``UNSTABLE`` (the instrument said so), ``UNIT_MISMATCH`` (the instrument reported
    another unit than the channel's: not corrected), ``NO_CERTIFICATE``,
    ``CERT_NOT_YET_VALID`` / ``CERT_EXPIRED`` (corrected, but not traceable; every
    certificate applied counts, a CT's or VT's too), ``OUT_OF_CALIBRATED_RANGE`` (outside the
    certificate's points or the verified range: never extrapolated, no uncertainty),
    ``CHAIN_BROKEN`` (the register's chain of the channel is not valid at the reading's time),
    ``OUT_OF_CHAIN_RANGE`` (the indication lies outside the range a link up the chain covers).
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
                item = batch[i]
                value = item.indication * spec.scale
                results[i] = _uncorrected(item, ("NO_CERTIFICATE",), times, value=value)
        elif usable:
            _correct_group(batch, usable, spec, results=results, times=times)
    return [result for result in results if result is not None]


class _TimeText(dict[datetime, str]):
    """RFC 3339 text of acquisition times; the readings of one poll share one time."""

    def __missing__(self, moment: datetime) -> str:
        text = self[moment] = rfc3339(moment)
        return text


class _Evaluated(NamedTuple):
    """One group's results as Python lists (the stamper wants floats, not numpy scalars)."""

    value: list[float]
    u: list[float]
    expanded: list[float]
    in_range: list[bool]


def channel_result(spec: ChannelSpec, indication: npt.ArrayLike) -> MeasurementResult:
    """The channel's results with every uncertainty term, for a budget or a composite.

    A calibration certificate corrects (`correct_piecewise`); a verification certificate
    bounds (`verify`: value = indication, u = MPE/√3); each factor multiplies
    (`calibration.composite.product`, GUM 5.1.2, terms of one source correlated).

    Raises:
        ValueError: the channel has no certificate.
    """
    certificate = spec.certificate
    quantity = "meter" if spec.factors else spec.quantity
    if certificate is None:
        raise ValueError(f"channel {spec.instrument}/{spec.channel} has no certificate")
    if isinstance(certificate, VerificationCertificate):
        reading = verify(
            indication,
            certificate.mpe,
            unit=spec.unit,
            certificate_id=certificate.certificate_id,
            resolution=spec.resolution,
            coverage_factor=spec.coverage_factor,
            quantity=quantity,
        )
    else:
        reading = correct_piecewise(
            indication,
            certificate,
            spec.resolution,
            coverage_factor=spec.coverage_factor,
            quantity=quantity,
        )
    if not spec.factors:
        return reading
    return product(
        [reading, *(factor.result for factor in spec.factors)],
        quantity=spec.quantity,
        unit=spec.unit,
        coverage_factor=spec.coverage_factor,
    )


def _evaluate(spec: ChannelSpec, indication: npt.NDArray[np.float64]) -> _Evaluated:
    """Vectorised over one channel's readings; the plain calibration path stays the fastest."""
    if isinstance(spec.certificate, Certificate) and not spec.factors:
        corrected = correct(
            indication,
            spec.certificate,
            resolution=spec.resolution,
            coverage_factor=spec.coverage_factor,
        )
        return _Evaluated(
            corrected.value.tolist(),
            corrected.standard_uncertainty.tolist(),
            corrected.expanded_uncertainty.tolist(),
            corrected.in_range.tolist(),
        )
    result = channel_result(spec, indication)
    return _Evaluated(
        result.value.tolist(),
        result.standard_uncertainty.tolist(),
        result.expanded_uncertainty.tolist(),
        result.in_range.tolist(),
    )


def _beyond_chain(chain: ChannelChain | None, indication: npt.NDArray[np.float64]) -> list[bool]:
    """Per reading: the indication lies outside the range the chain covers (all False if none).

    The indication, not the corrected value, is compared: a channel's certificate covers
    indications, and up the chain a standard's range is in reference values, which differ
    from the indication by the correction only.
    """
    if chain is None or chain.covered_range is None:
        return [False] * indication.size
    low, high = chain.covered_range
    beyond: list[bool] = ((indication < low) | (indication > high)).tolist()
    return beyond


def _correct_group(
    batch: Sequence[Acquired],
    indexes: list[int],
    spec: ChannelSpec,
    *,
    results: list[Measured | None],
    times: _TimeText,
) -> None:
    indication = np.fromiter(
        (batch[i].indication for i in indexes), dtype=np.float64, count=len(indexes)
    )
    values, u, expanded, in_range = _evaluate(spec, indication)
    beyond = _beyond_chain(spec.chain, indication)
    k = float(spec.coverage_factor)
    chain_ids = spec.chain_ids
    validity: dict[datetime, tuple[str, ...]] = {}
    for position, i in enumerate(indexes):
        item = batch[i]
        flags = validity.get(item.time)
        if flags is None:
            flags = validity[item.time] = _validity_flags(item.time, spec)
        if not in_range[position]:
            results[i] = _uncorrected(
                item,
                (*flags, "OUT_OF_CALIBRATED_RANGE"),
                times,
                certificate=spec.certificate_id,
                value=values[position],
            )
            continue
        if beyond[position] or not item.stable:
            extra = ("OUT_OF_CHAIN_RANGE",) if beyond[position] else ()
            flags = tuple(sorted((*flags, *extra, *(() if item.stable else ("UNSTABLE",)))))
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
            chain=chain_ids,
            time=times[item.time],
            flags=flags,
        )


def _validity_flags(moment: datetime, spec: ChannelSpec) -> tuple[str, ...]:
    """The certificates' and the chain's flags at `moment`, sorted."""
    flags: tuple[str, ...] = ()
    if spec.chain is not None and spec.chain.broken_at(moment):
        flags = ("CHAIN_BROKEN",)
    if spec.window is None:
        return flags
    valid_from, valid_until = spec.window
    if moment < valid_from:
        return ("CERT_NOT_YET_VALID", *flags)
    if moment > valid_until:
        return ("CERT_EXPIRED", *flags)
    return flags


def _uncorrected(
    item: Acquired,
    flags: tuple[str, ...],
    times: _TimeText,
    *,
    certificate: str | None = None,
    value: float | None = None,
) -> Measured:
    """A reading without uncertainty: `value` (default: the indication as it is)."""
    spec = item.spec
    all_flags = set(flags)
    if not item.stable:
        all_flags.add("UNSTABLE")
    return Measured(
        instrument=spec.instrument,
        channel=spec.channel,
        quantity=spec.quantity,
        indication=item.indication,
        value=item.indication if value is None else value,
        unit=item.unit,
        u=None,
        expanded_u=None,
        k=None,
        certificate=certificate or spec.certificate_id,
        chain=spec.chain_ids,
        time=times[item.time],
        flags=tuple(sorted(all_flags)),
    )


def _flag_clock(batch: Sequence[Acquired], measured: list[Measured]) -> list[Measured]:
    """Add ``CLOCK_STEPPED_BACK`` to the readings acquired while the clock was behind."""
    for index, item in enumerate(batch):
        if item.clock_back:
            flags = measured[index].flags
            measured[index] = measured[index]._replace(
                flags=tuple(sorted({*flags, "CLOCK_STEPPED_BACK"}))
            )
    return measured


class Pipeline:
    """Owns the acquisition queue and the path from it into the store.

    A commit the store refuses (a full disk, a database server gone) pauses acquisition
    instead of stopping the station: the stamped batch is kept and offered again every
    ``retry_min``..``retry_max`` seconds (doubling), ``alarm`` says why, and the bus workers
    wait on the full queue (their polls are skipped and counted). Nothing acquired is
    dropped and nothing committed is touched. When the store takes the batch again,
    acquisition resumes by itself. Only a stop while paused gives up, after
    ``give_up_after`` seconds, with a `StoreError` naming how many readings were not
    committed.
    """

    def __init__(
        self,
        store: AsyncStore,
        stamper: Stamper,
        *,
        batch_max: int = 5000,
        batch_latency: float = 0.05,
        on_commit: Callable[[Sequence[Stamped]], None] = lambda _stamped: None,
        retry_min: float = 0.5,
        retry_max: float = 10.0,
        give_up_after: float = 10.0,
    ) -> None:
        self._store = store
        self._stamper = stamper
        self._batch_max = batch_max
        self._batch_latency = batch_latency
        self._on_commit = on_commit
        self._retry = (retry_min, retry_max)
        self._give_up_after = give_up_after
        self._queue: asyncio.Queue[Acquired | None] = asyncio.Queue(maxsize=4 * batch_max)
        self._closing: float | None = None  # loop time of `close`
        self.committed = 0
        self.alarm: str | None = None
        self.paused_since: datetime | None = None
        self.pauses = 0

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
        """Ask `run` to commit what is queued and return (acquisition has stopped).

        Never waits for room in the queue: a full queue (a paused store) is drained by `run`,
        which then sees that the pipeline is closing.
        """
        self._closing = asyncio.get_running_loop().time()
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def run(self) -> None:
        """Commit batches until `close`; a `StoreError` propagates (acquisition stops)."""
        while True:
            if self._closing is not None and self._queue.empty():
                break
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
        """Correct, stamp and durably store `batch`; return what was committed.

        Waits (paused) while the store refuses the batch; see the class docstring.
        """
        if not batch:
            return []
        stamped = self._stamper.stamp(_flag_clock(batch, measure(batch)))
        if stamped:
            await self._append(stamped)
        self._stamper.advance(stamped)
        self.committed += len(stamped)
        if stamped:
            self._on_commit(stamped)
        return stamped

    async def _append(self, stamped: Sequence[Stamped]) -> None:
        """Store `stamped`, offering it again while the store refuses it."""
        loop = asyncio.get_running_loop()
        delay = self._retry[0]
        while True:
            try:
                await self._store.call(self._store.store.append, stamped)
            except StoreError as exc:
                if await self._landed(stamped):
                    break
                if self._closing is not None and (
                    loop.time() - self._closing >= self._give_up_after
                ):
                    lost = len(stamped) + self._queue.qsize()
                    msg = f"{exc}; stopping with {lost} acquired readings not committed"
                    raise StoreError(msg) from exc
                self._pause(str(exc))
                await asyncio.sleep(delay if self._closing is None else min(delay, 1.0))
                delay = min(delay * 2, self._retry[1])
            else:
                break
        self._resume()

    async def _landed(self, stamped: Sequence[Stamped]) -> bool:
        """Whether a commit reported as failed did land (a connection lost during COMMIT)."""
        try:
            head = await self._store.call(self._store.store.head)
        except StoreError:
            return False
        return head == (stamped[-1].seq, stamped[-1].hash)

    def _pause(self, reason: str) -> None:
        if self.alarm is None:
            self.pauses += 1
            self.paused_since = datetime.now(UTC)
            log.error(
                "ALARM: acquisition paused: %s; every committed reading is safe and the "
                "%d readings acquired since are held in memory; retrying until the store "
                "takes them (free space in the data directory)",
                reason,
                self._queue.qsize(),
            )
        self.alarm = f"acquisition paused: {reason}"

    def _resume(self) -> None:
        if self.alarm is None:
            return
        since = self.paused_since
        paused_for = (datetime.now(UTC) - since).total_seconds() if since else 0.0
        log.warning(
            "acquisition resumed: the store takes readings again after %.1f s paused", paused_for
        )
        self.alarm, self.paused_since = None, None
