# SPDX-License-Identifier: Apache-2.0
"""Dlt645Meter through the real SerialStream against simulated meters sharing one pty line."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.errors import (
    DriverError,
    InstrumentError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)
from drivers.meters.dlt645 import (
    WILDCARD,
    Dlt645Meter,
    encode_frame,
    encode_read,
    read_address,
)
from drivers.reading import Instrument, RawReading
from drivers.sim.dlt645 import Dlt645Simulator, Fault
from drivers.transports.serial import SerialStream, open_serial

# Short enough to keep the timeout cases fast, long enough for a loaded CI machine: the
# simulator answers within a millisecond.
TIMEOUT = 0.3
METER_A = "000102030425"  # the nameplate example of DOMAIN.md
METER_B = "000000000161"
VALUES_A = {
    "import_active_energy": 1206.42,
    "voltage_a": 230.1,
    "current_a": -1.234,
    "total_active_power": -0.2839,
    "power_factor": -0.5,
    "frequency": 50.0,
}
VALUES_B = {"import_active_energy": 3.5, "voltage_a": 100.1}


async def open_line(port: str) -> SerialStream:
    """Open `port` as a DL/T 645 line is set up: 2400 baud 8E1, where the pty takes parity."""
    try:
        return await open_serial(port, baudrate=2400, parity="E", timeout=TIMEOUT)
    except TransportError:  # some kernels' ptys reject parity (EINVAL)
        return await open_serial(port, baudrate=2400, timeout=TIMEOUT)


@pytest.fixture
async def sim() -> AsyncIterator[Dlt645Simulator]:
    async with Dlt645Simulator({METER_A: VALUES_A, METER_B: VALUES_B}) as simulator:
        yield simulator


@pytest.fixture
async def link(sim: Dlt645Simulator) -> AsyncIterator[SerialStream]:
    async with await open_line(sim.port) as stream:
        yield stream


async def test_two_meters_on_one_line_answer_with_their_own_values(
    sim: Dlt645Simulator, link: SerialStream
) -> None:
    meter_a: Instrument = Dlt645Meter(link, address=METER_A, sources=list(VALUES_A))
    meter_b: Instrument = Dlt645Meter(
        link, address=METER_B, sources=["voltage_a", "import_active_energy"]
    )
    assert await meter_a.read() == [
        RawReading(source="import_active_energy", indication=1206.42, unit="kWh"),
        RawReading(source="voltage_a", indication=230.1, unit="V"),
        RawReading(source="current_a", indication=-1.234, unit="A"),
        RawReading(source="total_active_power", indication=-0.2839, unit="kW"),
        RawReading(source="power_factor", indication=-0.5, unit=""),
        RawReading(source="frequency", indication=50.0, unit="Hz"),
    ]
    assert await meter_b.read() == [
        RawReading(source="voltage_a", indication=100.1, unit="V"),
        RawReading(source="import_active_energy", indication=3.5, unit="kWh"),
    ]
    assert sim.served == [
        *((METER_A, name, value) for name, value in VALUES_A.items()),
        (METER_B, "voltage_a", 100.1),
        (METER_B, "import_active_energy", 3.5),
    ]
    assert sim.requests == {METER_A: 6, METER_B: 2}


async def test_changed_values_are_read_rounded_to_the_item_format(
    sim: Dlt645Simulator, link: SerialStream
) -> None:
    meter = Dlt645Meter(link, address=METER_B, sources=["voltage_a"])
    sim.set(METER_B, "voltage_a", 229.96)
    assert await meter.read() == [RawReading(source="voltage_a", indication=230.0, unit="V")]
    assert sim.served == [(METER_B, "voltage_a", 230.0)]


async def test_silent_meter_times_out_and_the_other_still_answers(
    sim: Dlt645Simulator, link: SerialStream
) -> None:
    meter_a = Dlt645Meter(link, address=METER_A, sources=["voltage_a"])
    meter_b = Dlt645Meter(link, address=METER_B, sources=["voltage_a"])
    sim.fault[METER_A] = "silent"
    with pytest.raises(TransportTimeoutError, match=f"meter {METER_A}: no reply"):
        await meter_a.read()
    assert (await meter_b.read())[0].indication == 100.1
    sim.fault[METER_A] = None
    assert (await meter_a.read())[0].indication == 230.1
    assert sim.requests == {METER_A: 2, METER_B: 1}


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("garbage", ProtocolError, f"meter {METER_A}: garbled reply"),
        ("bad_checksum", ProtocolError, f"meter {METER_A}: .* bad checksum"),
        ("exception", InstrumentError, "password error"),
    ],
)
async def test_fault_raises_its_error_and_the_next_poll_recovers(
    sim: Dlt645Simulator,
    link: SerialStream,
    fault: Fault,
    error: type[DriverError],
    message: str,
) -> None:
    meter = Dlt645Meter(link, address=METER_A, sources=["import_active_energy"])
    sim.fault[METER_A] = fault
    with pytest.raises(error, match=message):
        await meter.read()
    assert sim.served == []
    sim.fault[METER_A] = None
    sim.set(METER_A, "import_active_energy", 1206.43)
    assert await meter.read() == [
        RawReading(source="import_active_energy", indication=1206.43, unit="kWh")
    ]
    assert sim.requests == {METER_A: 2}


async def test_item_the_meter_does_not_have_is_an_instrument_error(link: SerialStream) -> None:
    meter = Dlt645Meter(link, address=METER_B, sources=["voltage_a", "frequency"])
    with pytest.raises(InstrumentError, match=f"meter {METER_B} .* frequency .* no such data"):
        await meter.read()


async def test_reply_with_16_inside_is_read_whole() -> None:
    # BCD address bytes go plain on the wire, so a 16 ends read_until early.
    address = "161616161616"
    async with (
        Dlt645Simulator({address: {"frequency": 49.98}}) as sim,
        await open_line(sim.port) as link,
    ):
        meter = Dlt645Meter(link, address=address, sources=["frequency"])
        assert await meter.read() == [RawReading(source="frequency", indication=49.98, unit="Hz")]


async def test_wildcard_reads_the_only_meter_on_the_line() -> None:
    async with (
        Dlt645Simulator({METER_B: VALUES_B}) as sim,
        await open_line(sim.port) as link,
    ):
        assert await read_address(link) == METER_B
        meter = Dlt645Meter(link, address=WILDCARD, sources=["voltage_a"])
        assert await meter.read() == [RawReading(source="voltage_a", indication=100.1, unit="V")]
        assert sim.requests == {WILDCARD: 2}


async def test_wildcard_gets_no_reply_from_several_meters(link: SerialStream) -> None:
    with pytest.raises(TransportTimeoutError, match="wildcard"):
        await read_address(link)


async def test_broadcast_and_other_addresses_get_no_reply(
    sim: Dlt645Simulator, link: SerialStream
) -> None:
    for request in [
        encode_frame("999999999999", 0x08, bytes(6), preamble=4),  # broadcast time sync
        encode_read("123456789012", 0x02010100),
    ]:
        await link.write(request)
    with pytest.raises(TransportTimeoutError):
        await link.read_until(b"\x16")
    assert sim.requests == {"999999999999": 1, "123456789012": 1}
    assert sim.served == []


async def test_simulator_paces_replies_to_the_wire_time() -> None:
    async with (
        Dlt645Simulator({METER_B: VALUES_B}, baudrate=9600) as sim,
        await open_line(sim.port) as link,
    ):
        meter = Dlt645Meter(link, address=METER_B, sources=["voltage_a"])
        request, reply = 4 + 16, 4 + 18  # FE preambles, then the frames of DOMAIN.md
        wire_time = (request + reply) * 11 / 9600
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await meter.read())[0].indication == 100.1
        assert loop.time() - start >= wire_time


@pytest.mark.parametrize(
    ("address", "sources", "message"),
    [
        (METER_A, ["voltage"], "no data item 'voltage'; valid: combined_active_energy, "),
        (METER_A, [], "valid: combined_active_energy"),
        (METER_A, ["voltage_a", "voltage_a"], "repeated"),
        ("999999999999", ["voltage_a"], "broadcast"),
        ("00010203042", ["voltage_a"], "12 digits"),
    ],
)
def test_meter_rejects_bad_configuration(
    link: SerialStream, address: str, sources: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Dlt645Meter(link, address=address, sources=sources)


def test_simulator_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="at least one meter"):
        Dlt645Simulator({})
    with pytest.raises(ValueError, match="12 digits"):
        Dlt645Simulator({WILDCARD: {}})
    with pytest.raises(ValueError, match="no DL/T 645 item 'power'"):
        Dlt645Simulator({METER_A: {"power": 1.0}})
    with pytest.raises(ValueError, match="does not fit"):
        Dlt645Simulator({METER_A: {"voltage_a": -1.0}})
    sim = Dlt645Simulator({METER_A: {}})
    with pytest.raises(ValueError, match="no simulated meter"):
        sim.set(METER_B, "voltage_a", 1.0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.port
