# SPDX-License-Identifier: Apache-2.0
"""Bus workers run as the daemon runs them, against real simulators: the shared harness of
the scheduler tests (a sink standing for the pipeline, a bench starting and stopping workers
and keeping every link they opened). The `transitions` fixture is in conftest.py."""

import asyncio
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from drivers.transports.modbus import ModbusTcpBus as ModbusTcpLink
from drivers.transports.serial import SerialStream
from gateway.config import Instrument, ModbusTcpBus, SerialBus, StationConfig
from gateway.instruments import Link, channel_specs, link_opener, make_driver
from gateway.pipeline import Acquired
from gateway.scheduler import BusWorker, InstrumentHealth

STOP = 2.0  # s a cancelled worker may take: at most one reply timeout to close its link
# Only the certificates of a station matter to `channel_specs`: none here.
STATION = StationConfig.model_validate({"station": {"id": "bench"}})


def float32(value: float) -> float:
    """What an SDM630 float32 register holds for `value`."""
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


def closed(link: Link) -> bool:
    """Whether a serial or Modbus TCP link was closed."""
    assert isinstance(link, SerialStream | ModbusTcpLink)
    return link.closed


class Sink:
    """Stands where the pipeline stands: keeps each poll's `Acquired` batch and its time.

    Setting `hold` to an event makes the next submit wait for it, as a full pipeline queue
    would (backpressure); `holding` is set while it waits.
    """

    def __init__(self) -> None:
        self.batches: list[list[Acquired]] = []
        self.times: list[float] = []
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()

    @property
    def items(self) -> list[Acquired]:
        return [item for batch in self.batches for item in batch]

    async def submit(self, items: Sequence[Acquired]) -> None:
        self.batches.append(list(items))
        self.times.append(asyncio.get_running_loop().time())
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.holding.set()
            await hold.wait()


class Bench:
    """Runs bus workers as the daemon does, sharing one health dict, and stops them.

    It also keeps every link the workers opened (through the real `link_opener`), so that
    `stop` can check each was closed.
    """

    def __init__(self) -> None:
        self.health: dict[str, InstrumentHealth] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.links_by_bus: dict[str, list[Link]] = {}

    def start(self, bus: SerialBus | ModbusTcpBus, instrument: Instrument, sink: Sink) -> None:
        opener = link_opener(bus)
        opened = self.links_by_bus.setdefault(bus.id, [])

        async def open_link() -> Link:
            link = await opener()
            opened.append(link)
            return link

        worker = BusWorker(
            bus.id,
            [(instrument, channel_specs(STATION, instrument))],
            open_link=open_link,
            make_driver=lambda config, link: make_driver(config, link, Path()),
            submit=sink.submit,
            health=self.health,
        )
        self.tasks[bus.id] = asyncio.create_task(worker.run(), name=f"bus {bus.id}")

    @property
    def links(self) -> list[Link]:
        """Every link the workers opened, in the order they were opened per bus."""
        return [link for links in self.links_by_bus.values() for link in links]

    @property
    def running(self) -> bool:
        """True while every worker started is still running (none crashed or returned)."""
        return all(not task.done() for task in self.tasks.values())

    async def until(self, condition: Callable[[], bool], what: str, *, timeout: float) -> None:
        """Wait for `condition`; fail naming `what` after `timeout` s or if a worker died."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self.check_running()
                    await asyncio.sleep(0.005)
        except TimeoutError:
            health = {key: value.snapshot() for key, value in self.health.items()}
            pytest.fail(f"not within {timeout} s: {what}; health: {health}")

    async def stop(self) -> None:
        """Cancel every worker; each must end at once, having closed every link it opened."""
        tasks = list(self.tasks.values())
        self.tasks.clear()
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        # A worker needs at most one reply timeout to close its link.
        _done, pending = await asyncio.wait(tasks, timeout=STOP)
        for _ in range(20):  # a worker that ignored its cancellation: insist, then fail
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.1)
        for task in tasks:
            if not task.cancelled():
                pytest.fail(f"{task.get_name()} did not stop when cancelled, or crashed: {task}")
        assert [link for link in self.links if not closed(link)] == []

    def check_running(self) -> None:
        """Fail if a worker ended: a worker never returns, so whatever ended it is a bug."""
        for task in self.tasks.values():
            if task.done():
                # A worker never returns: whatever ended it is a bug that must fail loudly.
                raise AssertionError(f"{task.get_name()} ended") from (
                    None if task.cancelled() else task.exception()
                )
