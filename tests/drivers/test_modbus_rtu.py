# SPDX-License-Identifier: Apache-2.0
"""Modbus RTU through the real `ModbusRtuBus`: a simulated line of three models, and raw ptys.

The line simulator is pymodbus' own RTU server; the raw-pty tests play the device byte by
byte, to pin published frames and to send what no well-behaved server sends.
"""

import asyncio
import os
import struct
import time
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.errors import InstrumentError, ProtocolError, TransportError, TransportTimeoutError
from drivers.modbus.codec import ReadBlock, RegisterTable
from drivers.modbus.instrument import ModbusInstrument
from drivers.sim.modbus_line import ModbusLineSimulator
from drivers.transport import RegisterBus
from drivers.transports.modbus import ModbusRtuBus, open_modbus_rtu

TIMEOUT = 0.25  # s; a pty answers within a millisecond
LINE = {1: "sdm630", 2: "mfe600h", 3: "tuf2000m"}

# Distinct values per device, so that an answer from the wrong device shows.
VALUES: dict[int, dict[str, float]] = {
    1: {"voltage_l1": 230.1, "current_l2": 4.9, "frequency": 49.98, "total_energy": 12345.6},
    2: {
        "flow": 12.5,
        "velocity": 1.25,
        "totalizer_int": 123456,
        "totalizer_frac": 0.375,
        "flow_unit_code": 5,
        "totalizer_unit_code": 1,
    },
    3: {
        "flow": 3.75,
        "velocity": 0.8,
        "positive_int": 987654,
        "positive_frac": 0.5,
        "negative_int": 12,
        "negative_frac": 0.25,
    },
}


def _crc(frame: bytes) -> bytes:
    """Modbus CRC-16 (polynomial 0xA001, initial 0xFFFF), low byte first as on the wire."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def _float32(value: float) -> float:
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


class RecordingBus:
    """A real bus that also records each request (a spy on the seam, not a mock)."""

    def __init__(self, bus: RegisterBus) -> None:
        self.bus = bus
        self.requests: list[tuple[int, ReadBlock]] = []

    async def read_holding(self, address: int, count: int, *, device_id: int) -> list[int]:
        self.requests.append((device_id, ReadBlock(RegisterTable.HOLDING, address, count)))
        return await self.bus.read_holding(address, count, device_id=device_id)

    async def read_input(self, address: int, count: int, *, device_id: int) -> list[int]:
        self.requests.append((device_id, ReadBlock(RegisterTable.INPUT, address, count)))
        return await self.bus.read_input(address, count, device_id=device_id)

    async def aclose(self) -> None:
        await self.bus.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[ModbusLineSimulator]:
    async with ModbusLineSimulator(LINE) as simulator:
        for device_id, values in VALUES.items():
            for name, value in values.items():
                simulator.set(device_id, name, value)
        yield simulator


@pytest.fixture
async def bus(sim: ModbusLineSimulator) -> AsyncIterator[ModbusRtuBus]:
    async with await open_modbus_rtu(sim.port, timeout=TIMEOUT) as opened:
        yield opened


def _meter(bus: RegisterBus, sim: ModbusLineSimulator, device_id: int) -> ModbusInstrument:
    register_map = sim.register_map(device_id)
    return ModbusInstrument(bus, register_map, device_id=device_id, sources=register_map.names)


async def _check_reads_right(bus: RegisterBus, sim: ModbusLineSimulator, device_id: int) -> None:
    readings = await _meter(bus, sim, device_id).read()
    expected = sim.values(device_id)
    assert {reading.source: reading.indication for reading in readings} == expected


async def test_three_models_on_one_line_each_return_their_own_values(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    for device_id in LINE:
        readings = await _meter(bus, sim, device_id).read()
        by_source = {reading.source: reading for reading in readings}
        register_map = sim.register_map(device_id)
        assert list(by_source) == list(register_map.names)
        for name, value in VALUES[device_id].items():
            assert by_source[name].indication == _float32(value)
        for reading in readings:
            assert reading.indication == sim.values(device_id)[reading.source]
            assert reading.unit == register_map.value(reading.source).unit
            assert reading.stable
    meters = {device_id: _meter(bus, sim, device_id) for device_id in LINE}
    mfe600h = {r.source: r for r in await meters[2].read()}
    assert mfe600h["totalizer"].indication == 123456.375
    assert mfe600h["totalizer"].unit == "m3"
    assert mfe600h["flow_unit_code"].indication == 5  # m3/h, as the map expects
    tuf2000m = {r.source: r for r in await meters[3].read()}
    assert tuf2000m["positive_totalizer"].indication == 987654.5
    assert tuf2000m["negative_totalizer"].indication == 12.25
    assert tuf2000m["net_totalizer"].indication == 0.0


async def test_each_poll_issues_the_planned_requests(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    recording = RecordingBus(bus)
    for device_id in LINE:
        await _meter(recording, sim, device_id).read()
    assert recording.requests == [
        (1, ReadBlock(RegisterTable.INPUT, 0x0000, 12)),
        (1, ReadBlock(RegisterTable.INPUT, 0x0034, 0x18)),
        (1, ReadBlock(RegisterTable.INPUT, 0x0156, 2)),
        (2, ReadBlock(RegisterTable.HOLDING, 0x1010, 18)),
        (3, ReadBlock(RegisterTable.HOLDING, 0, 28)),
    ]


async def test_a_combined_source_reads_its_parts_only_to_add_them(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    register_map = sim.register_map(3)
    recording = RecordingBus(bus)
    meter = ModbusInstrument(
        recording, register_map, device_id=3, sources=["net_totalizer", "positive_totalizer"]
    )
    sim.set(3, "net_int", -5)
    sim.set(3, "net_frac", -0.25)

    readings = await meter.read()

    assert [(r.source, r.indication, r.unit) for r in readings] == [
        ("net_totalizer", -5.25, "m3"),
        ("positive_totalizer", 987654.5, "m3"),
    ]
    # Only the parts: REG 9-12 and REG 25-28, too far apart (12 registers) to join.
    assert recording.requests == [
        (3, ReadBlock(RegisterTable.HOLDING, 8, 4)),
        (3, ReadBlock(RegisterTable.HOLDING, 24, 4)),
    ]
    sim.set(3, "positive_frac", float("nan"))
    with pytest.raises(ProtocolError, match=r"TUF-2000M .* device 3 positive_frac: .*no finite"):
        await meter.read()


async def test_a_silent_device_times_out_and_the_others_answer_right_after(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    sim.fault[2] = "silent"
    started = time.monotonic()
    with pytest.raises(TransportTimeoutError, match=r"Modbus RTU .* device 2: .*no reply"):
        await _meter(bus, sim, 2).read()
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT * 3
    for device_id in (1, 3, 1):
        started = time.monotonic()
        await _check_reads_right(bus, sim, device_id)
        assert time.monotonic() - started < TIMEOUT  # no leftover wait from the silent one
    sim.fault[2] = None
    await _check_reads_right(bus, sim, 2)


async def test_many_silent_requests_never_cost_the_line(
    sim: ModbusLineSimulator,
) -> None:
    # pymodbus by default gives up on a link after a few unanswered requests in a row.
    async with await open_modbus_rtu(sim.port, timeout=0.03) as bus:
        sim.fault[3] = "silent"
        for _ in range(7):
            with pytest.raises(TransportTimeoutError):
                await bus.read_holding(0, 2, device_id=3)
        assert await bus.read_holding(0x1010, 2, device_id=2) == [0x0000, 0x4148]  # 12.5


async def test_exception_fault_is_an_instrument_error(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    sim.fault[3] = "exception"
    with pytest.raises(InstrumentError, match=r"device 3: FC 03 .*code 4 \(server device failure"):
        await _meter(bus, sim, 3).read()
    await _check_reads_right(bus, sim, 2)


async def test_bad_crc_is_a_protocol_error_and_the_line_recovers(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    sim.fault[1] = "bad_crc"
    with pytest.raises(ProtocolError, match=r"device 1: FC 04 .*garbled reply .*: 01 04 18 43 66"):
        await _meter(bus, sim, 1).read()
    await _check_reads_right(bus, sim, 3)
    sim.fault[1] = None
    await _check_reads_right(bus, sim, 1)


async def test_missing_registers_and_tables_get_exception_2(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    with pytest.raises(InstrumentError, match=r"code 2 \(illegal data address\)"):
        await bus.read_input(0x1010, 2, device_id=2)  # the MFE600H has no input registers
    with pytest.raises(InstrumentError, match=r"code 2 \(illegal data address\)"):
        await bus.read_holding(0x100E, 2, device_id=2)  # before its first register
    assert sim.fault[2] is None


async def test_a_device_not_on_the_line_stays_silent(bus: ModbusRtuBus) -> None:
    with pytest.raises(TransportTimeoutError, match="device 9"):
        await bus.read_holding(0, 2, device_id=9)
    with pytest.raises(ValueError, match=r"device id must be 1\.\.247, not 0"):
        await bus.read_holding(0, 2, device_id=0)  # broadcast: nobody would answer
    with pytest.raises(ValueError, match="not 248"):
        await bus.read_holding(0, 2, device_id=248)


async def test_concurrent_drivers_share_the_line_one_request_at_a_time(
    bus: ModbusRtuBus, sim: ModbusLineSimulator
) -> None:
    meters = [_meter(bus, sim, device_id) for device_id in LINE for _ in range(4)]
    results = await asyncio.gather(*(meter.read() for meter in meters))
    for meter_results, device_id in zip(results, [d for d in LINE for _ in range(4)], strict=True):
        got = {reading.source: reading.indication for reading in meter_results}
        assert got == sim.values(device_id)


async def test_pacing_adds_the_wire_time_of_each_frame() -> None:
    baudrate = 9600
    async with ModbusLineSimulator({2: "mfe600h"}, baudrate=baudrate) as sim:
        sim.set(2, "flow", 7.5)
        async with await open_modbus_rtu(sim.port, baudrate=baudrate, timeout=1.0) as bus:
            meter = _meter(bus, sim, 2)
            started = time.monotonic()
            readings = await meter.read()
            elapsed = time.monotonic() - started
    # One request (8 bytes) and its reply (5 + 2 x 18 bytes), 10 bits each.
    assert elapsed >= (8 + 41) * 10 / baudrate
    assert readings[0].indication == 7.5


async def test_the_port_going_away_is_a_transport_error() -> None:
    async with ModbusLineSimulator({1: "sdm630"}) as sim:
        bus = await open_modbus_rtu(sim.port, timeout=TIMEOUT)
        assert await bus.read_input(0, 2, device_id=1) == [0, 0]
    try:
        with pytest.raises(TransportError, match=r"connection lost|cannot open") as caught:
            await bus.read_input(0, 2, device_id=1)
        assert not isinstance(caught.value, TransportTimeoutError)
        with pytest.raises(TransportError, match="cannot open"):
            await bus.read_input(0, 2, device_id=1)
    finally:
        await bus.aclose()


async def test_opening_a_missing_port_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="/dev/metrogate-no-such-port"):
        await open_modbus_rtu("/dev/metrogate-no-such-port", timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ({"bytesize": 7}, "8 data bits"),
        ({"parity": "M"}, "parity"),
        ({"stopbits": 3}, "stopbits"),
        ({"baudrate": 0}, "baudrate"),
        ({"timeout": 0.0}, "timeout"),
    ],
)
async def test_impossible_line_settings_are_rejected(
    setting: dict[str, int | str | float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        await open_modbus_rtu("/dev/null", **setting)  # type: ignore[arg-type]  # the point


async def test_aclose_is_idempotent_and_final(bus: ModbusRtuBus) -> None:
    await bus.aclose()
    await bus.aclose()
    assert bus.closed
    with pytest.raises(TransportError, match="closed"):
        await bus.read_holding(0, 2, device_id=3)


async def test_simulator_rejects_bad_faults_devices_and_names() -> None:
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ModbusLineSimulator({0: "sdm630"})
    with pytest.raises(ValueError, match="at least one"):
        ModbusLineSimulator({})
    sim = ModbusLineSimulator({2: "mfe600h"})
    with pytest.raises(ValueError, match="fault"):
        sim.fault[2] = "loud"  # type: ignore[assignment]  # the point of the test
    with pytest.raises(KeyError, match="no device 5"):
        sim.fault[5] = "silent"
    with pytest.raises(KeyError, match="totalizer"):
        sim.set(2, "totalizer", 1.0)  # combined: set its parts
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.port
    sim.fault[2] = "silent"
    del sim.fault[2]
    assert dict(sim.fault) == {2: None}


async def test_simulator_stops_cleanly() -> None:
    async with ModbusLineSimulator(LINE, baudrate=19200) as sim:
        port = Path(sim.port)
        assert port.exists()  # noqa: ASYNC240 - a stat of a device node
    assert not port.exists()  # noqa: ASYNC240
    assert len(asyncio.all_tasks()) == 1  # only this test's task: the pacer is gone


# ---- raw pty: the test plays the device, byte by byte ------------------------------------


class RawDevice:
    """The far end of a pty: records the frames the master sends, writes given replies."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.frames: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)

    def _on_readable(self) -> None:
        self.frames.put_nowait((time.monotonic(), os.read(self._master, 1024)))

    def reply(self, frame: bytes) -> float:
        os.write(self._master, frame)
        return time.monotonic()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        os.close(self._slave)


@pytest.fixture
async def device() -> AsyncIterator[RawDevice]:
    raw = RawDevice()
    yield raw
    raw.close()


async def test_published_sdm630_frame_is_230_1_volts(device: RawDevice) -> None:
    # DOMAIN.md section 3: 01 04 00 00 00 02 71 CB -> 01 04 04 43 66 19 9A 85 E4 (230.1 V).
    async with await open_modbus_rtu(device.port, timeout=TIMEOUT) as bus:
        read = asyncio.create_task(bus.read_input(0, 2, device_id=1))
        _, request = await device.frames.get()
        assert request == bytes.fromhex("01 04 00 00 00 02 71 CB")
        device.reply(bytes.fromhex("01 04 04 43 66 19 9A 85 E4"))
        assert await read == [0x4366, 0x199A]


async def test_published_tuf2000_request_reads_reg_0001_to_0010(device: RawDevice) -> None:
    # TUF-2000F user manual 5.1: REG0001..REG0010 of unit 1 is 01 03 00 00 00 0A C5 CD.
    async with await open_modbus_rtu(device.port, timeout=TIMEOUT) as bus:
        read = asyncio.create_task(bus.read_holding(0, 10, device_id=1))
        _, request = await device.frames.get()
        assert request == bytes.fromhex("01 03 00 00 00 0A C5 CD")
        body = bytes.fromhex("01 03 14") + bytes(range(20))
        device.reply(body + _crc(body))
        assert await read == [int.from_bytes(bytes([i, i + 1]), "big") for i in range(0, 20, 2)]


@pytest.mark.parametrize(
    ("baudrate", "stopbits", "silence"),
    [
        (1200, 1, 3.5 * 10 / 1200),  # 29.2 ms
        (9600, 1, 3.5 * 10 / 9600),  # 3.65 ms
        # The standard's 11-bit character (8N2 or 8E1; ptys here take no parity).
        (9600, 2, 3.5 * 11 / 9600),
        (38400, 1, 1.75e-3),  # fixed above 19200 baud
    ],
)
async def test_inter_frame_silence_is_kept(
    device: RawDevice, baudrate: int, stopbits: int, silence: float
) -> None:
    bus = await open_modbus_rtu(device.port, baudrate=baudrate, stopbits=stopbits, timeout=1.0)
    async with bus:
        assert bus.silence == pytest.approx(silence)
        reply = bytes.fromhex("07 03 02 12 34")
        for _ in range(3):
            read = asyncio.create_task(bus.read_holding(0, 1, device_id=7))
            await device.frames.get()
            replied_at = device.reply(reply + _crc(reply))
            assert await read == [0x1234]
            follow_up = asyncio.create_task(bus.read_holding(0, 1, device_id=7))
            requested_at, _ = await device.frames.get()
            assert requested_at - replied_at >= silence
            device.reply(reply + _crc(reply))
            await follow_up


@pytest.mark.parametrize(
    "reply",
    [
        bytes.fromhex("07 03 02 12 34 00 00"),  # wrong CRC
        bytes.fromhex("07 03 02 12"),  # cut short
        bytes.fromhex("07 03 04 12 34") + _crc(bytes.fromhex("07 03 04 12 34")),  # too short
    ],
)
async def test_garbled_replies_are_protocol_errors(device: RawDevice, reply: bytes) -> None:
    async with await open_modbus_rtu(device.port, timeout=TIMEOUT) as bus:
        read = asyncio.create_task(bus.read_holding(0, 1, device_id=7))
        await device.frames.get()
        device.reply(reply)
        with pytest.raises(ProtocolError, match=f"garbled reply .*: {reply.hex(' ')}$"):
            await read


async def test_a_stray_frame_of_another_device_is_no_reply(device: RawDevice) -> None:
    async with await open_modbus_rtu(device.port, timeout=TIMEOUT) as bus:
        read = asyncio.create_task(bus.read_holding(0, 1, device_id=7))
        await device.frames.get()
        stray = bytes.fromhex("08 03 02 12 34")
        device.reply(stray + _crc(stray))  # a late reply of device 8: ignored
        with pytest.raises(TransportTimeoutError, match="device 7"):
            await read


async def test_a_reply_with_another_function_code_is_a_protocol_error(
    device: RawDevice,
) -> None:
    async with await open_modbus_rtu(device.port, timeout=TIMEOUT) as bus:
        read = asyncio.create_task(bus.read_input(0, 1, device_id=7))
        await device.frames.get()
        holding = bytes.fromhex("07 03 02 12 34")  # FC 03 answering an FC 04 request
        device.reply(holding + _crc(holding))
        with pytest.raises(ProtocolError, match="function code 3"):
            await read


async def test_line_settings_a_port_refuses_are_a_transport_error(device: RawDevice) -> None:
    # pyserial raises termios.error (no OSError) when the port refuses a setting; ptys here
    # refuse even parity, other kernels take it. Either way no foreign exception escapes.
    refused: Exception | None = None
    try:
        bus = await open_modbus_rtu(device.port, parity="E", timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the test is that only TransportError comes
        refused = exc
    else:
        await bus.aclose()
    if refused is not None:
        assert isinstance(refused, TransportError)
        assert "refuses the line settings" in str(refused)
