# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the poll cycle of an RS-485 line against the wire time of its frames.

Run:  .venv/bin/python bench/rs485_bench.py [--protocol dlt645|modbus-rtu] [--devices 4]
      [--baud B] [--cycles 10] [--loop epoll|select]

N simulated devices share one line: DL/T 645-2007 meters (default 2400 baud, 8E1) or
Eastron SDM630s on Modbus RTU (default 9600 baud, 8N1). The simulator delivers every frame
after its wire time at the baud rate (its ``baudrate=``). A `BusWorker` built as the daemon
builds it (`link_opener`, `make_driver`, `channel_specs`) polls them with a 1 ms poll interval,
so the bus is never idle and a cycle is the time to poll every device once. Each poll is timed
on the monotonic clock as its readings are submitted; a cycle is the interval between two
polls of the same device (the worker goes round robin, so every other device was polled once
in between). The first poll of each device (opening the port) is left out.

The bound is the wire time of every request and reply of a cycle, a character being 1 start
bit + data bits + parity bit + stop bits (8E1: 11 bits, 8N1: 10 bits), plus for Modbus RTU
the 3.5-character silence before each request (Modbus over Serial Line V1.02, 2.5.1.1;
1.75 ms above 19200 baud). It holds no device turnaround: the simulators answer the moment
the request has crossed the wire, where a real meter takes its time (DL/T 645-2007 allows
20..500 ms; a Modbus device keeps at least the 3.5-character silence before replying). Frame
sizes come from the codecs: the driver's `encode_read` and the item table for DL/T 645 (4 FE
bytes before the request and before the reply), pymodbus' RTU framer applied to the driver's
own read plan for Modbus.

The simulator runs in a thread of its own, on a ``select()`` event loop: it paces frames with
loop timers, and those of asyncio's default (epoll) loop on CPython 3.11 overshoot by up to
2 ms. `selectors.EpollSelector` rounds a timeout up to whole ms and passes on a float
(``math.ceil(t * 1e3) * 1e-3``, e.g. 0.009000000000000001) that ``epoll.poll`` rounds up once
more, so an 8.3 ms sleep lasts 10 ms: on the gateway's loop that error of the test rig would
count as the gateway's (Modbus at 9600 baud: 1.09 instead of 1.05). The gateway runs on the
default loop, as the daemon does; ``--loop select`` runs it on a ``select()`` loop too, which
shows what the rounding costs its own sleeps (the Modbus RTU silence).
"""

import argparse
import asyncio
import itertools
import math
import selectors
import termios
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from drivers.errors import TransportError
from drivers.meters.dlt645 import ITEMS, Function, encode_frame, encode_read
from drivers.modbus.codec import RegisterTable
from drivers.modbus.instrument import ModbusInstrument
from drivers.reading import Instrument as Driver
from drivers.sim.dlt645 import Dlt645Simulator
from drivers.sim.modbus_line import ModbusLineSimulator
from gateway.config import Instrument, ModbusRtuBus, SerialBus, StationConfig
from gateway.instruments import Link, channel_specs, link_opener, make_driver
from gateway.pipeline import Acquired
from gateway.scheduler import BusWorker, InstrumentHealth

PROTOCOLS = ("dlt645", "modbus-rtu")
DEFAULT_BAUD = {"dlt645": 2400, "modbus-rtu": 9600}
GOAL = 1.10  # measured cycle / bound
POLL_INTERVAL = 0.001  # s: far below a cycle, so that the bus is always busy
REPLY_TIMEOUT = 1.0  # s: the link's reply timeout, as in a station file
RUN_LIMIT = 60.0  # s: give up on a run that has not collected its polls by then
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "epoll": asyncio.new_event_loop,  # asyncio's default on Linux, as the daemon runs
    "select": lambda: asyncio.SelectorEventLoop(selectors.SelectSelector()),
}
_T = TypeVar("_T")
_Sim = TypeVar("_Sim", Dlt645Simulator, ModbusLineSimulator)
STATION = StationConfig.model_validate({"station": {"id": "bench"}})

DLT645_SOURCES = ("import_active_energy", "voltage_a")
DLT645_PREAMBLE = 4  # FE bytes before a frame: what masters send and the simulator replies
DLT645_REPLY = 0x80  # control byte bit D7: the frame is a slave's reply
DLT645_DI_LENGTH = 4  # a read reply's DATA starts with the 4-byte data identifier
SDM630_SOURCES = ("voltage_l1", "current_l1", "total_power", "frequency", "import_energy")
# Modbus over Serial Line V1.02, 2.5.1.1.
SILENT_CHARACTERS = 3.5
FIXED_TIMING_ABOVE_BAUD = 19200
FIXED_SILENCE = 1.75e-3


@dataclass(frozen=True, slots=True)
class Wire:
    """What one cycle puts on the line: each request's frame sizes, and the character format."""

    bits_per_character: int
    frames: tuple[tuple[int, int], ...]  # (request bytes, reply bytes), one per request
    silence: float  # s of line silence kept before each request (0 for DL/T 645)

    def bound(self, baud: int) -> float:
        """Seconds the line needs for one cycle at `baud`, with no turnaround."""
        characters = sum(request + reply for request, reply in self.frames)
        return characters * self.bits_per_character / baud + len(self.frames) * self.silence


@dataclass(slots=True)
class Timeline:
    """Stands where the pipeline stands: notes when each instrument's readings arrive."""

    expected: Mapping[tuple[str, str], float]  # (instrument, channel) -> indication
    polls: int
    times: dict[str, list[float]] = field(default_factory=dict)
    wrong: list[tuple[str, str, float]] = field(default_factory=list)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, batch: Sequence[Acquired]) -> None:
        moment = time.monotonic()
        instrument = batch[0].spec.instrument  # a batch is one poll of one instrument
        self.times.setdefault(instrument, []).append(moment)
        for item in batch:
            want = self.expected[item.spec.instrument, item.spec.channel]
            if not math.isclose(item.indication, want, rel_tol=1e-12):
                self.wrong.append((item.spec.instrument, item.spec.channel, item.indication))
        if min(len(self.times.get(name, ())) for name, _channel in self.expected) >= self.polls:
            self.complete.set()


@dataclass(frozen=True, slots=True)
class Line:
    """A simulated line, ready to be polled."""

    bus: SerialBus | ModbusRtuBus
    instruments: tuple[Instrument, ...]
    expected: Mapping[tuple[str, str], float]  # (instrument, channel) -> indication
    wire: Callable[[Mapping[str, Driver]], Wire]  # from the drivers the worker made


@dataclass(frozen=True, slots=True)
class Result:
    """The figures of one run."""

    protocol: str
    devices: int
    baud: int
    wire: Wire
    cycles: list[float]  # s
    health: dict[str, InstrumentHealth]
    wrong: int
    notes: list[str]

    @property
    def bound(self) -> float:
        return self.wire.bound(self.baud)

    @property
    def mean(self) -> float:
        return float(np.mean(self.cycles))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.cycles, 95))


@asynccontextmanager
async def _in_own_thread(simulator: _Sim) -> AsyncIterator[_Sim]:
    """Run `simulator` in a thread on an event loop of its own, with select() timers.

    The simulator then paces frames to a few tenths of a ms, like a wire, whatever loop the
    gateway runs on, and its work does not queue behind the gateway's on one loop.
    """
    loop = LOOPS["select"]()
    thread = threading.Thread(target=loop.run_forever, name="simulated line", daemon=True)
    thread.start()

    async def call(coroutine: Coroutine[object, object, _T]) -> _T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    try:
        entered = await call(simulator.__aenter__())
        try:
            yield entered
        finally:
            await call(simulator.__aexit__(None, None, None))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()


def _instrument(
    identifier: str, channels: Sequence[tuple[str, str, str]], **settings: object
) -> Instrument:
    return Instrument.model_validate(
        {
            "id": identifier,
            "bus": "rs485-1",
            "poll_interval": POLL_INTERVAL,
            "channel": [
                {"id": source, "source": source, "quantity": quantity, "unit": unit,
                 "resolution": 0.001}
                for source, quantity, unit in channels
            ],
            **settings,
        }
    )  # fmt: skip


def _bits(bus: SerialBus | ModbusRtuBus) -> int:
    return 1 + bus.bytesize + (bus.parity != "N") + bus.stopbits


@asynccontextmanager
async def _dlt645_line(devices: int, baud: int) -> AsyncIterator[Line]:
    meters = {
        f"{number:012d}": {"import_active_energy": 1206.42 + number, "voltage_a": 230.1}
        for number in range(1, devices + 1)
    }
    async with _in_own_thread(Dlt645Simulator(meters, baudrate=baud)) as sim:
        bus = SerialBus(
            id="rs485-1", kind="serial", port=sim.port, baudrate=baud, parity="E",
            timeout=REPLY_TIMEOUT,
        )  # fmt: skip
        channels = [(name, ITEMS[name].quantity, ITEMS[name].unit) for name in DLT645_SOURCES]
        instruments = tuple(
            _instrument(f"meter-{address}", channels, driver="dlt645", address=address)
            for address in meters
        )
        expected = {
            (f"meter-{address}", name): round(value, ITEMS[name].decimals)
            for address, values in meters.items()
            for name, value in values.items()
        }

        def wire(_drivers: Mapping[str, Driver]) -> Wire:
            frames = tuple(
                (
                    len(encode_read(address, ITEMS[name].di, preamble=DLT645_PREAMBLE)),
                    len(
                        encode_frame(
                            address,
                            DLT645_REPLY | Function.READ,
                            bytes(DLT645_DI_LENGTH + ITEMS[name].length),
                            preamble=DLT645_PREAMBLE,
                        )
                    ),
                )
                for address in meters
                for name in DLT645_SOURCES
            )
            return Wire(bits_per_character=_bits(bus), frames=frames, silence=0.0)

        yield Line(bus, instruments, expected, wire)


def _rtu_frames(driver: ModbusInstrument, device_id: int) -> list[tuple[int, int]]:
    """(request, reply) bytes of each read the driver makes in a poll, framed by pymodbus."""
    framer = FramerRTU(DecodePDU(is_server=False))
    frames = []
    for block in driver.blocks:
        kinds: tuple[type[ModbusPDU], type[ModbusPDU]] = (
            (ReadInputRegistersRequest, ReadInputRegistersResponse)
            if block.table is RegisterTable.INPUT
            else (ReadHoldingRegistersRequest, ReadHoldingRegistersResponse)
        )
        request = kinds[0](dev_id=device_id, address=block.address, count=block.count)
        reply = kinds[1](dev_id=device_id, registers=[0] * block.count)
        frames.append((len(framer.buildFrame(request)), len(framer.buildFrame(reply))))
    return frames


@asynccontextmanager
async def _modbus_line(devices: int, baud: int) -> AsyncIterator[Line]:
    device_ids = range(1, devices + 1)
    sim = ModbusLineSimulator(dict.fromkeys(device_ids, "sdm630"), baudrate=baud)
    for device_id in device_ids:
        for number, name in enumerate(SDM630_SOURCES):
            sim.set(device_id, name, 100.0 * device_id + number + 0.25)
    async with _in_own_thread(sim):
        bus = ModbusRtuBus(
            id="rs485-1", kind="modbus-rtu", port=sim.port, baudrate=baud, timeout=REPLY_TIMEOUT
        )
        register_map = sim.register_map(1)
        channels = [
            (name, register_map.value(name).quantity, register_map.value(name).unit)
            for name in SDM630_SOURCES
        ]
        instruments = tuple(
            _instrument(
                f"sdm630-{device_id}", channels, driver="modbus", register_map="sdm630",
                unit_id=device_id,
            )
            for device_id in device_ids
        )  # fmt: skip
        expected = {
            (f"sdm630-{device_id}", name): sim.values(device_id)[name]
            for device_id in device_ids
            for name in SDM630_SOURCES
        }
        silence = (
            FIXED_SILENCE
            if baud > FIXED_TIMING_ABOVE_BAUD
            else SILENT_CHARACTERS * _bits(bus) / baud
        )

        def wire(drivers: Mapping[str, Driver]) -> Wire:
            frames: list[tuple[int, int]] = []
            for instrument in instruments:
                driver = drivers[instrument.id]
                if not isinstance(driver, ModbusInstrument):
                    raise TypeError(f"{instrument.id}: a {type(driver).__name__}, not Modbus")
                frames += _rtu_frames(driver, instrument.unit_id)
            return Wire(bits_per_character=_bits(bus), frames=tuple(frames), silence=silence)

        yield Line(bus, instruments, expected, wire)


def _opener(bus: SerialBus | ModbusRtuBus, notes: list[str]) -> Callable[[], Awaitable[Link]]:
    """The daemon's opener, falling back to no parity on a pty that refuses even parity.

    A pty has no wire: the parity bit only counts in the bound, which the simulator's pacing
    follows whatever the pty was set to. This kernel's ptys refuse PARENB when a port is
    opened a second time (EINVAL), which pyserial lets through as `termios.error`.
    """
    opener = link_opener(bus)
    plain = link_opener(bus.model_copy(update={"parity": "N"}))

    async def open_link() -> Link:
        if bus.parity == "N":
            return await opener()
        try:
            return await opener()
        except (TransportError, termios.error) as exc:
            notes.append(f"the pty refused parity {bus.parity} ({exc!r}); opened as 8N1")
            return await plain()

    return open_link


async def _run(protocol: str, devices: int, baud: int, cycles: int) -> Result:
    build = _dlt645_line if protocol == "dlt645" else _modbus_line
    async with build(devices, baud) as line:
        # The first poll of each device opens the port and warms up: left out.
        timeline = Timeline(line.expected, polls=cycles + 2)
        drivers: dict[str, Driver] = {}
        health: dict[str, InstrumentHealth] = {}
        notes: list[str] = []

        def make(config: Instrument, link: Link) -> Driver:
            drivers[config.id] = make_driver(config, link, Path())
            return drivers[config.id]

        worker = BusWorker(
            line.bus.id,
            [(instrument, channel_specs(STATION, instrument)) for instrument in line.instruments],
            open_link=_opener(line.bus, notes),
            make_driver=make,
            submit=timeline.submit,
            health=health,
        )
        task = asyncio.create_task(worker.run(), name=f"bus {line.bus.id}")
        waiter = asyncio.create_task(timeline.complete.wait())
        try:
            await asyncio.wait(
                [task, waiter], timeout=RUN_LIMIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            task.cancel()
            await asyncio.wait([task, waiter])
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise RuntimeError(f"{protocol}: the bus worker crashed") from exc
        if not timeline.complete.is_set():
            raise RuntimeError(f"{protocol}: too few polls in {RUN_LIMIT} s: {_health(health)}")
        wire = line.wire(drivers)
    samples = [
        later - earlier
        for times in timeline.times.values()
        for earlier, later in itertools.pairwise(times[1 : cycles + 2])
    ]
    return Result(protocol, devices, baud, wire, samples, health, len(timeline.wrong), notes)


def _health(health: Mapping[str, InstrumentHealth]) -> str:
    return ", ".join(f"{name}: {value.snapshot()}" for name, value in health.items())


def _report(results: Sequence[Result]) -> None:
    header = (
        f"{'protocol':<11}{'devices':>8}{'baud':>7}{'req/cycle':>10}{'bound ms':>10}"
        f"{'mean ms':>10}{'p95 ms':>9}{'ratio':>7}  goal (ratio <= {GOAL:.2f})"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        ratio = result.mean / result.bound
        print(
            f"{result.protocol:<11}{result.devices:>8}{result.baud:>7}"
            f"{len(result.wire.frames):>10}{1e3 * result.bound:>10.1f}{1e3 * result.mean:>10.1f}"
            f"{1e3 * result.p95:>9.1f}{ratio:>7.3f}  {'met' if ratio <= GOAL else 'MISSED'}"
        )
    print()
    for result in results:
        wire = result.wire
        sizes = ", ".join(f"{request}+{reply}" for request, reply in sorted(set(wire.frames)))
        silence = f" + {1e3 * wire.silence:.2f} ms silence before each" if wire.silence else ""
        overhead = (result.mean - result.bound) / len(wire.frames)
        print(
            f"{result.protocol}: {wire.bits_per_character}-bit characters; request+reply bytes"
            f" {sizes}{silence}; no turnaround. {len(result.cycles)} cycles"
            f" ({len(result.cycles) // result.devices} per device); above the bound:"
            f" {1e3 * overhead:.2f} ms a request."
        )
        errors = sum(health.errors.total() for health in result.health.values())
        if errors or result.wrong:
            print(
                f"  {errors} failed polls, {result.wrong} wrong readings: {_health(result.health)}"
            )
        for note in dict.fromkeys(result.notes):
            print(f"  note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, help="default: both")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--baud", type=int, help="default: 2400 for dlt645, 9600 for modbus-rtu")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="epoll",
        help="event loop: epoll (asyncio's default, as the daemon runs) or select (finer timers)",
    )
    args = parser.parse_args()
    if args.devices < 1 or args.cycles < 1 or (args.baud is not None and args.baud < 1):
        parser.error("--devices, --cycles and --baud must be positive")
    protocols = [args.protocol] if args.protocol else list(PROTOCOLS)
    print(
        f"metrogate RS-485 benchmark: poll cycle against the wire-time bound,"
        f" {args.cycles} cycles, {args.loop} event loop"
    )
    results = []
    for protocol in protocols:
        with asyncio.Runner(loop_factory=LOOPS[args.loop]) as runner:
            baud = args.baud or DEFAULT_BAUD[protocol]
            results.append(runner.run(_run(protocol, args.devices, baud, args.cycles)))
    _report(results)


if __name__ == "__main__":
    main()
