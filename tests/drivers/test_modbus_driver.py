# SPDX-License-Identifier: Apache-2.0
"""`ModbusInstrument` over the real `ModbusTcpBus` against the SDM630 simulator on loopback."""

import asyncio
import math
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest

from drivers.errors import (
    DriverError,
    InstrumentError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)
from drivers.modbus.codec import ReadBlock, RegisterTable
from drivers.modbus.instrument import ModbusInstrument
from drivers.modbus.registermap import RegisterMap, load_builtin_map
from drivers.sim.sdm630 import Fault, Sdm630Simulator
from drivers.transport import RegisterBus
from drivers.transports.modbus import ModbusTcpBus, open_modbus_tcp

TIMEOUT = 0.3  # s; loopback answers in about a millisecond


def _float32(value: float) -> float:
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RecordingBus:
    """A real bus that also records each request (a spy on the seam, not a mock)."""

    def __init__(self, bus: RegisterBus) -> None:
        self.bus = bus
        self.requests: list[ReadBlock] = []

    async def read_holding(self, address: int, count: int, *, device_id: int) -> list[int]:
        self.requests.append(ReadBlock(RegisterTable.HOLDING, address, count))
        return await self.bus.read_holding(address, count, device_id=device_id)

    async def read_input(self, address: int, count: int, *, device_id: int) -> list[int]:
        self.requests.append(ReadBlock(RegisterTable.INPUT, address, count))
        return await self.bus.read_input(address, count, device_id=device_id)

    async def aclose(self) -> None:
        await self.bus.aclose()


@pytest.fixture
def sdm630() -> RegisterMap:
    return load_builtin_map("sdm630")


@pytest.fixture
async def sim() -> AsyncIterator[Sdm630Simulator]:
    async with Sdm630Simulator(host="127.0.0.1", port=0, device_id=1) as simulator:
        yield simulator


@pytest.fixture
async def bus(sim: Sdm630Simulator) -> AsyncIterator[ModbusTcpBus]:
    async with await open_modbus_tcp("127.0.0.1", sim.port, timeout=TIMEOUT) as opened:
        yield opened


@pytest.fixture
def meter(bus: ModbusTcpBus, sdm630: RegisterMap) -> ModbusInstrument:
    return ModbusInstrument(bus, sdm630, device_id=1, sources=list(sdm630.names))


async def test_values_set_in_the_simulator_come_back_exactly(
    sim: Sdm630Simulator, meter: ModbusInstrument, sdm630: RegisterMap
) -> None:
    wanted = {
        "voltage_l1": 230.1,
        "voltage_l2": 231.7,
        "voltage_l3": 228.9,
        "current_l1": 12.345,
        "total_power": -1500.25,  # exporting
        "frequency": 49.98,
        "import_energy": 98765.432,
        "total_energy": 1.0e6,
    }
    for name, value in wanted.items():
        sim.set(name, value)

    readings = await meter.read()

    assert [reading.source for reading in readings] == list(sdm630.names)
    by_source = {reading.source: reading for reading in readings}
    for name, value in wanted.items():
        assert by_source[name].indication == _float32(value)
    for reading in readings:
        assert reading.indication == sim.values[reading.source]
        assert reading.unit == sdm630.entry(reading.source).unit
        assert reading.stable


async def test_readings_follow_the_given_source_order(
    bus: ModbusTcpBus, sdm630: RegisterMap
) -> None:
    meter = ModbusInstrument(bus, sdm630, device_id=1, sources=["total_energy", "voltage_l2"])
    readings = await meter.read()
    assert [(r.source, r.unit) for r in readings] == [("total_energy", "kWh"), ("voltage_l2", "V")]


async def test_all_sdm630_values_take_three_requests(
    bus: ModbusTcpBus, sdm630: RegisterMap
) -> None:
    recording = RecordingBus(bus)
    meter = ModbusInstrument(recording, sdm630, device_id=1, sources=list(sdm630.names))

    await meter.read()

    assert recording.requests == list(meter.blocks)
    assert len(recording.requests) == 3
    assert all(block.count <= sdm630.max_registers for block in recording.requests)


async def test_unknown_source_is_rejected_with_the_valid_names(
    bus: ModbusTcpBus, sdm630: RegisterMap
) -> None:
    with pytest.raises(ValueError, match=r"'voltage_l4'.*valid: voltage_l1, .*total_energy"):
        ModbusInstrument(bus, sdm630, device_id=1, sources=["voltage_l1", "voltage_l4"])
    with pytest.raises(ValueError, match="no sources"):
        ModbusInstrument(bus, sdm630, device_id=1, sources=[])
    with pytest.raises(ValueError, match="repeated"):
        ModbusInstrument(bus, sdm630, device_id=1, sources=["frequency", "frequency"])
    with pytest.raises(ValueError, match="device id"):
        ModbusInstrument(bus, sdm630, device_id=256, sources=["frequency"])


async def test_exception_fault_is_an_instrument_error(
    sim: Sdm630Simulator, meter: ModbusInstrument
) -> None:
    sim.fault = "exception"
    with pytest.raises(
        InstrumentError, match=r"device 1.*exception code 4 \(server device failure\)"
    ):
        await meter.read()


async def test_silent_fault_is_a_transport_timeout(
    sim: Sdm630Simulator, meter: ModbusInstrument
) -> None:
    sim.fault = "silent"
    started = time.monotonic()
    with pytest.raises(TransportTimeoutError, match="no reply"):
        await meter.read()
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT * 3


async def test_recovery_after_faults(sim: Sdm630Simulator, meter: ModbusInstrument) -> None:
    faults: list[tuple[Fault, type[DriverError]]] = [
        ("exception", InstrumentError),
        ("silent", TransportTimeoutError),
        ("exception", InstrumentError),
    ]
    for fault, error in faults:
        sim.fault = fault
        with pytest.raises(error):
            await meter.read()
        sim.fault = None
        sim.set("frequency", 50.01)
        readings = await meter.read()
        assert readings[7].source == "frequency"
        assert readings[7].indication == _float32(50.01)


async def test_a_silent_device_never_costs_the_connection(sim: Sdm630Simulator) -> None:
    # pymodbus by default drops the connection after 5 unanswered requests in a row.
    async with await open_modbus_tcp("127.0.0.1", sim.port, timeout=0.05) as bus:
        sim.fault = "silent"
        for _ in range(7):
            with pytest.raises(TransportTimeoutError):
                await bus.read_input(0, 2, device_id=1)
        sim.fault = None
        assert await bus.read_input(0, 2, device_id=1) == [0x4366, 0x199A]


async def test_nan_value_is_a_protocol_error_naming_the_source(
    sim: Sdm630Simulator, meter: ModbusInstrument
) -> None:
    sim.set("export_energy", math.nan)
    with pytest.raises(ProtocolError, match=r"Eastron SDM630 device 1 export_energy: .*no finite"):
        await meter.read()


async def test_other_device_id_gets_a_gateway_exception(
    bus: ModbusTcpBus, sdm630: RegisterMap
) -> None:
    meter = ModbusInstrument(bus, sdm630, device_id=2, sources=["frequency"])
    with pytest.raises(InstrumentError, match=r"device 2.*exception code 11"):
        await meter.read()


async def test_holding_registers_are_a_separate_table(bus: ModbusTcpBus) -> None:
    with pytest.raises(InstrumentError, match=r"FC 03.*exception code 2 \(illegal data address\)"):
        await bus.read_holding(0, 2, device_id=1)
    assert len(await bus.read_input(0, 80, device_id=1)) == 80


async def test_connecting_to_a_closed_port_is_a_transport_error() -> None:
    port = _free_port()
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        await open_modbus_tcp("127.0.0.1", port, timeout=TIMEOUT)


async def test_bus_reconnects_after_the_meter_restarts(sdm630: RegisterMap) -> None:
    async with Sdm630Simulator(port=0) as first:
        port = first.port
        bus = await open_modbus_tcp("127.0.0.1", port, timeout=TIMEOUT)
        meter = ModbusInstrument(bus, sdm630, device_id=1, sources=["voltage_l1"])
        assert (await meter.read())[0].indication == first.values["voltage_l1"]
    try:
        with pytest.raises(TransportError, match=r"connection lost|cannot connect") as caught:
            await meter.read()
        assert not isinstance(caught.value, TransportTimeoutError)
        async with Sdm630Simulator(port=port) as second:
            second.set("voltage_l1", 225.5)
            assert (await meter.read())[0].indication == _float32(225.5)
    finally:
        await bus.aclose()


async def test_concurrent_requests_on_one_bus_are_serialised(
    bus: ModbusTcpBus, sdm630: RegisterMap
) -> None:
    meters = [ModbusInstrument(bus, sdm630, device_id=1, sources=[name]) for name in sdm630.names]
    results = await asyncio.gather(*(meter.read() for meter in meters))
    assert [result[0].source for result in results] == list(sdm630.names)


async def test_aclose_is_idempotent_and_final(bus: ModbusTcpBus) -> None:
    await bus.aclose()
    await bus.aclose()
    assert bus.closed
    with pytest.raises(TransportError, match="closed"):
        await bus.read_input(0, 2, device_id=1)


async def test_bus_rejects_impossible_requests(bus: ModbusTcpBus) -> None:
    with pytest.raises(ValueError, match="count"):
        await bus.read_input(0, 126, device_id=1)
    with pytest.raises(ValueError, match="outside"):
        await bus.read_input(0xFFFF, 2, device_id=1)
    with pytest.raises(ValueError, match="device id"):
        await bus.read_input(0, 2, device_id=300)


def test_simulator_rejects_unknown_faults_and_names() -> None:
    sim = Sdm630Simulator()
    with pytest.raises(ValueError, match="fault"):
        sim.fault = "loud"  # type: ignore[assignment]  # the point of the test
    with pytest.raises(KeyError, match="voltage_l4"):
        sim.set("voltage_l4", 1.0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.port


def test_animation_step_integrates_power_into_energy() -> None:
    sim = Sdm630Simulator(animate=True)
    before = sim._values["import_energy"]

    sim._step(elapsed=10.0, interval=3600.0)  # one hour at the new power

    power_w = sim._values["total_power"]
    assert 3000.0 < power_w < 4500.0
    assert sim._values["import_energy"] == pytest.approx(before + power_w / 1000.0)
    assert sim._values["total_energy"] == sim._values["import_energy"]
    for phase in ("l1", "l2", "l3"):
        assert abs(sim.values[f"voltage_{phase}"] - 230.0) <= 1.0
    assert abs(sim.values["frequency"] - 50.0) <= 0.05


async def test_animated_simulator_drifts_and_stops_cleanly(sdm630: RegisterMap) -> None:
    sources = ["voltage_l1", "frequency"]
    async with Sdm630Simulator(animate=True, period=0.01) as sim:
        bus = await open_modbus_tcp("127.0.0.1", sim.port, timeout=TIMEOUT)
        async with bus:
            meter = ModbusInstrument(bus, sdm630, device_id=1, sources=sources)
            first = await meter.read()
            await asyncio.sleep(0.05)
            second = await meter.read()
    assert first[0].indication != second[0].indication
    for reading in (*first, *second):
        nominal = 230.0 if reading.unit == "V" else 50.0
        assert abs(reading.indication - nominal) <= 1.0
    assert len(asyncio.all_tasks()) == 1  # only this test's task: the animation is gone
