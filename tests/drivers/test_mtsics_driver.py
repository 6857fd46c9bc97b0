# SPDX-License-Identifier: Apache-2.0
"""MtSicsBalance through the real SerialStream against the simulator on a real pty pair."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.balances.mtsics import MtSicsBalance
from drivers.errors import (
    DriverError,
    InstrumentError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)
from drivers.reading import Instrument, RawReading
from drivers.sim.mtsics import Fault, MtSicsSimulator
from drivers.transports.serial import SerialStream, open_serial

# Short enough to keep the timeout cases fast, long enough for a loaded CI machine: the
# simulator answers within a millisecond.
TIMEOUT = 0.3
BANNER = b'I4 A "B021002593"\r\n'


@pytest.fixture
async def sim() -> AsyncIterator[MtSicsSimulator]:
    async with MtSicsSimulator(weight_g=100.0) as simulator:
        yield simulator


@pytest.fixture
async def link(sim: MtSicsSimulator) -> AsyncIterator[SerialStream]:
    async with await open_serial(sim.port, timeout=TIMEOUT) as stream:
        yield stream


@pytest.fixture
def balance(link: SerialStream) -> MtSicsBalance:
    return MtSicsBalance(link)


async def test_stable_reading_equals_the_served_value(
    sim: MtSicsSimulator, balance: MtSicsBalance
) -> None:
    sim.weight_g = 1234.56
    assert await balance.read() == [
        RawReading(source="weight", indication=1234.56, unit="g", stable=True)
    ]
    assert sim.served == [(1234.56, "g", True)]
    assert sim.counts == {"S": 1}


async def test_noisy_readings_equal_what_was_served(
    sim: MtSicsSimulator, link: SerialStream
) -> None:
    sim.noise_g = 0.5
    balance: Instrument = MtSicsBalance(link)
    readings = [(await balance.read())[0] for _ in range(5)]
    assert [(r.indication, r.unit, r.stable) for r in readings] == sim.served
    assert len({r.indication for r in readings}) > 1


async def test_negative_net_weight_after_tare(sim: MtSicsSimulator, link: SerialStream) -> None:
    await link.write(b"T\r\n")
    assert await link.read_until() == b"T S     100.00 g\r\n"
    sim.weight_g = 99.5
    assert (await MtSicsBalance(link).read())[0].indication == -0.5


async def test_immediate_reading_reports_dynamic_weight(
    sim: MtSicsSimulator, link: SerialStream
) -> None:
    balance = MtSicsBalance(link, command="SI")
    assert (await balance.read())[0].stable
    sim.fault = "unstable"
    [reading] = await balance.read()
    assert reading == RawReading(source="weight", indication=100.0, unit="g", stable=False)
    assert sim.served == [(100.0, "g", True), (100.0, "g", False)]
    assert sim.counts == {"SI": 2}


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("unstable", InstrumentError, "not executable"),
        ("not_executable", InstrumentError, "not executable"),
        ("overload", InstrumentError, "overload"),
        ("underload", InstrumentError, "underload"),
        ("syntax", InstrumentError, "ES"),
        ("logical", InstrumentError, "EL"),
        ("transmission", ProtocolError, "ET"),
        ("garbage", ProtocolError, "non-ASCII"),
        ("silent", TransportTimeoutError, r"received b''"),
        ("truncated", TransportTimeoutError, r"received b'S S     '"),
    ],
)
async def test_fault_raises_its_error_and_the_next_poll_recovers(
    sim: MtSicsSimulator,
    balance: MtSicsBalance,
    fault: Fault,
    error: type[DriverError],
    message: str,
) -> None:
    sim.fault = fault
    with pytest.raises(error, match=message):
        await balance.read()
    assert sim.served == []
    sim.fault = None
    sim.weight_g = 42.0
    assert await balance.read() == [RawReading(source="weight", indication=42.0, unit="g")]
    assert sim.served == [(42.0, "g", True)]
    assert sim.counts == {"S": 2}


async def test_powerup_banner_is_skipped() -> None:
    async with (
        MtSicsSimulator(weight_g=5.0, powerup_banner=True) as sim,
        await open_serial(sim.port, timeout=TIMEOUT) as link,
    ):
        balance = MtSicsBalance(link)
        assert await balance.read() == [RawReading(source="weight", indication=5.0, unit="g")]
        sim.inject(BANNER * 2)
        assert (await balance.read())[0].indication == 5.0
        assert sim.counts == {"S": 2}


async def test_more_unsolicited_lines_than_a_powerup_is_a_protocol_error(
    sim: MtSicsSimulator, balance: MtSicsBalance
) -> None:
    sim.inject(BANNER * 3)
    with pytest.raises(ProtocolError, match="I4 A"):
        await balance.read()
    assert (await balance.read())[0].indication == 100.0  # the late reply was discarded


async def test_serial_number(sim: MtSicsSimulator, balance: MtSicsBalance) -> None:
    assert await balance.serial_number() == "B021002593"
    sim.fault = "syntax"
    with pytest.raises(InstrumentError):
        await balance.serial_number()


async def test_simulator_zero_reset_and_unknown_commands(
    sim: MtSicsSimulator, link: SerialStream
) -> None:
    for command, reply in [
        (b"Z", b"Z A"),
        (b"SI", b"S S       0.00 g"),
        (b"@", b'I4 A "B021002593"'),
        (b"XYZ", b"ES"),
    ]:
        await link.write(command + b"\r\n")
        assert await link.read_until(b"\r\n") == reply + b"\r\n"
    sim.fault = "overload"
    await link.write(b"Z\r\n")
    assert await link.read_until() == b"Z +\r\n"
    assert sim.counts == {"Z": 2, "SI": 1, "@": 1, "XYZ": 1}


def test_balance_rejects_other_commands(link: SerialStream) -> None:
    with pytest.raises(ValueError, match="S or SI"):
        MtSicsBalance(link, command="SIR")


# --- the serial transport itself ---


async def test_missing_port_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="/dev/does-not-exist"):
        await open_serial("/dev/does-not-exist")


async def test_port_has_one_owner(sim: MtSicsSimulator, link: SerialStream) -> None:
    with pytest.raises(TransportError, match="lock"):
        await open_serial(sim.port)
    assert link.name == sim.port


async def test_closed_stream_is_a_transport_error(sim: MtSicsSimulator) -> None:
    link = await open_serial(sim.port, timeout=TIMEOUT)
    await link.aclose()
    await link.aclose()  # idempotent
    assert link.closed
    with pytest.raises(TransportError, match="closed"):
        await MtSicsBalance(link).read()


async def test_vanished_line_is_a_transport_error() -> None:
    async with MtSicsSimulator() as sim:
        port = sim.port
        link = await open_serial(port, timeout=TIMEOUT)
    try:
        with pytest.raises(TransportError, match=port) as caught:
            await link.read_until()
        assert not isinstance(caught.value, TransportTimeoutError)
    finally:
        await link.aclose()


async def test_clear_input_discards_a_late_reply() -> None:
    async with await open_serial("loop://", timeout=TIMEOUT) as link:
        await link.write(b"late\r\nS S 1.00 g\r\n")
        assert await link.read_until() == b"late\r\n"
        await link.clear_input()
        await link.write(b"S S 2.00 g\r\n")
        assert await link.read_until() == b"S S 2.00 g\r\n"


async def test_balance_over_a_serial_to_tcp_bridge() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n"):
                writer.write(b"S S      -3.21 kg\r\n")
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, await open_serial(f"socket://127.0.0.1:{port}", timeout=TIMEOUT) as link:
        assert await MtSicsBalance(link).read() == [
            RawReading(source="weight", indication=-3.21, unit="kg")
        ]
