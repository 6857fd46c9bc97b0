# SPDX-License-Identifier: Apache-2.0
"""Polling: one asyncio task per physical bus, instruments on it strictly one at a time.

An RS-485 line or a Modbus TCP connection carries several devices and must serialise them,
so a bus task owns its link and polls its instruments in order of their next due time. A
failing instrument is marked degraded, then down, and polled again after an exponential
backoff (never more often than its poll interval); a link that breaks is closed and
re-opened with backoff, while every other bus keeps its own schedule. Polls that come due
while the bus is busy are skipped and counted, never queued. State changes are logged once
each, not every failed poll.
"""

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from drivers.errors import (
    DriverError,
    InstrumentError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)
from drivers.reading import Instrument as Driver
from gateway.clock import StationClock
from gateway.config import Instrument
from gateway.instruments import Link
from gateway.pipeline import Acquired, ChannelSpec, rfc3339

log = logging.getLogger(__name__)

State = Literal["starting", "ok", "degraded", "down"]
DOWN_AFTER = 3
MAX_BACKOFF = 30.0


@dataclass(slots=True)
class InstrumentHealth:
    """What the station knows of one instrument's recent behaviour."""

    state: State = "starting"
    polls: int = 0
    good: int = 0
    skipped: int = 0
    consecutive_failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_good: str | None = None
    last_error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy, for the status topic and `metrogate status`."""
        return {
            "state": self.state,
            "polls": self.polls,
            "good": self.good,
            "skipped": self.skipped,
            "consecutive_failures": self.consecutive_failures,
            "errors": dict(self.errors),
            "last_good": self.last_good,
            "last_error": self.last_error,
        }


def _honour_cancellation() -> None:
    """Re-raise a cancellation that a library turned into a timeout or I/O error.

    On Python 3.11, `asyncio.wait_for` (used inside pymodbus) raises TimeoutError instead of
    CancelledError when the cancellation and its own timeout meet; the driver then reports
    a failed poll, and a worker that retried would never stop. Seen as a station that
    ignored SIGTERM.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def error_kind(exc: BaseException) -> str:
    """Classify a poll failure for the error counters."""
    if isinstance(exc, TransportTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, TransportError):
        return "transport"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, InstrumentError):
        return "instrument"
    return "driver"


@dataclass(slots=True)
class _Slot:
    config: Instrument
    specs: dict[str, list[ChannelSpec]]
    health: InstrumentHealth
    due: float = 0.0
    driver: Driver | None = None
    configured: bool = False


class BusWorker:
    """Polls the instruments of one bus; see the module docstring."""

    def __init__(
        self,
        bus_id: str,
        instruments: Sequence[tuple[Instrument, dict[str, list[ChannelSpec]]]],
        *,
        open_link: Callable[[], Awaitable[Link]],
        make_driver: Callable[[Instrument, Link], Driver],
        submit: Callable[[Sequence[Acquired]], Awaitable[None]],
        health: dict[str, InstrumentHealth],
        clock: Callable[[], tuple[datetime, bool]] | None = None,
    ) -> None:
        self.bus_id = bus_id
        self._clock = clock or StationClock().now
        self._open_link = open_link
        self._make_driver = make_driver
        self._submit = submit
        self._slots = []
        for config, specs in instruments:
            health[config.id] = health.get(config.id) or InstrumentHealth()
            self._slots.append(_Slot(config, specs, health[config.id]))
        self._link: Link | None = None
        self._link_failures = 0
        self._stopping = asyncio.Event()

    @property
    def instruments(self) -> list[str]:
        """The ids of the instruments this worker polls."""
        return [slot.config.id for slot in self._slots]

    def stop(self) -> None:
        """Ask `run` to return after the poll in progress (its readings are submitted)."""
        self._stopping.set()

    async def run(self) -> None:
        """Poll until `stop` (or cancelled); always closes the link on the way out."""
        loop = asyncio.get_running_loop()
        for slot in self._slots:
            slot.due = loop.time()
        try:
            while not self._stopping.is_set():
                # Also after a poll that succeeded: on 3.11, wait_for returns the reply when it
                # arrived just before the cancellation (CPython gh-86296), swallowing it.
                _honour_cancellation()
                if self._link is None and not await self._connect():
                    continue
                slot = min(self._slots, key=lambda s: s.due)
                delay = slot.due - loop.time()
                if delay > 0:
                    await self._idle(delay)
                    continue
                await self._poll(slot, loop)
        finally:
            await self._close_link()

    async def _idle(self, seconds: float) -> None:
        """Wait `seconds`, or less if `stop` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _connect(self) -> bool:
        try:
            link = await self._open_link()
        except DriverError as exc:
            _honour_cancellation()
            self._link_failures += 1
            for slot in self._slots:
                self._failed(slot, exc)
            delay = min(MAX_BACKOFF, 0.5 * 2 ** min(self._link_failures - 1, 8))
            await self._idle(delay)
            return False
        self._link = link
        self._link_failures = 0
        for slot in self._slots:
            slot.driver = self._make_driver(slot.config, link)
            slot.configured = False
        return True

    async def _close_link(self) -> None:
        link, self._link = self._link, None
        for slot in self._slots:
            slot.driver = None
        if link is not None:
            try:
                await link.aclose()
            except DriverError as exc:
                log.debug("bus %s: closing the link failed: %s", self.bus_id, exc)

    async def _poll(self, slot: _Slot, loop: asyncio.AbstractEventLoop) -> None:
        driver = slot.driver
        if driver is None:
            return
        slot.health.polls += 1
        try:
            if not slot.configured:
                # Instruments that must be set up after every (re)connection (a DMM's
                # function and range) expose `configure`; a failure there is a failed poll.
                configure = getattr(driver, "configure", None)
                if configure is not None:
                    await configure()
                slot.configured = True
            raws = await driver.read()
        except (DriverError, TimeoutError) as exc:
            _honour_cancellation()
            self._failed(slot, exc)
            if isinstance(exc, TransportError) and not isinstance(exc, TransportTimeoutError):
                await self._close_link()
            backoff = min(
                MAX_BACKOFF,
                slot.config.poll_interval * 2 ** min(slot.health.consecutive_failures - 1, 8),
            )
            self._reschedule(slot, loop, max(backoff, slot.config.poll_interval))
            return
        moment, clock_back = self._clock()
        acquired = [
            Acquired(
                spec=spec,
                indication=raw.indication,
                unit=raw.unit,
                stable=raw.stable,
                time=moment,
                clock_back=clock_back,
            )
            for raw in raws
            for spec in slot.specs.get(raw.source, ())
        ]
        self._succeeded(slot, moment)
        self._reschedule(slot, loop, slot.config.poll_interval)
        await self._submit(acquired)

    @staticmethod
    def _reschedule(slot: _Slot, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        now = loop.time()
        due = slot.due + interval
        if due <= now:
            missed = math.floor((now - due) / interval) + 1
            slot.health.skipped += missed
            due += missed * interval
        slot.due = due

    def _succeeded(self, slot: _Slot, moment: datetime) -> None:
        health = slot.health
        if health.state != "ok":
            if health.state != "starting":
                log.info(
                    "instrument %s recovered after %d failed polls",
                    slot.config.id,
                    health.consecutive_failures,
                )
            health.state = "ok"
        health.good += 1
        health.consecutive_failures = 0
        health.last_good = rfc3339(moment)

    def _failed(self, slot: _Slot, exc: BaseException) -> None:
        health = slot.health
        health.consecutive_failures += 1
        health.errors[error_kind(exc)] += 1
        health.last_error = f"{error_kind(exc)}: {exc}"
        new_state: State = "down" if health.consecutive_failures >= DOWN_AFTER else "degraded"
        if new_state != health.state:
            log.warning("instrument %s %s: %s", slot.config.id, new_state, exc)
            health.state = new_state
