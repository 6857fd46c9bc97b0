# SPDX-License-Identifier: Apache-2.0
"""SbiBalance through the real SerialStream against the simulator on a real pty pair."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest

from drivers.balances.sbi import SbiBalance
from drivers.errors import DriverError, InstrumentError, ProtocolError, TransportTimeoutError
from drivers.reading import Instrument, RawReading
from drivers.sim.sbi import Fault, SbiSimulator
from drivers.transports.serial import SerialStream, open_serial

# Short enough to keep the timeout cases fast, long enough for a loaded CI machine: the
# simulator answers within a millisecond.
TIMEOUT = 0.3
# Auto-print period: fast enough for quick tests, slow enough that the host keeps up.
PERIOD = 0.02

Form = Literal[16, 22]


@asynccontextmanager
async def _connected(
    *,
    weight_g: float = 100.0,
    noise_g: float = 0.0,
    form: Form = 16,
    stream_period: float | None = None,
    stable: bool = True,
    fault: Fault | None = None,
) -> AsyncIterator[tuple[SbiSimulator, SerialStream]]:
    """A simulator and a link to it; `stable` and `fault` hold from the first line printed."""
    async with SbiSimulator(
        weight_g=weight_g, noise_g=noise_g, form=form, stream_period=stream_period
    ) as sim:
        sim.stable = stable
        sim.fault = fault
        async with await open_serial(sim.port, timeout=TIMEOUT) as link:
            yield sim, link


async def _settle() -> None:
    # A pty hands written bytes to the reader asynchronously (a kernel work queue); let lines
    # already printed arrive before the test flushes or counts on them.
    await asyncio.sleep(0.05)


def _open_fds() -> set[Path]:
    return set(Path("/proc/self/fd").iterdir())


def _printed(readings: list[RawReading]) -> list[tuple[float, str, bool]]:
    return [(r.indication, r.unit, r.stable) for r in readings]


@pytest.mark.parametrize("form", [16, 22])
async def test_stable_and_unstable_readings_equal_what_was_served(form: Form) -> None:
    async with _connected(weight_g=1234.56, form=form) as (sim, link):
        balance: Instrument = SbiBalance(link)
        assert await balance.read() == [
            RawReading(source="weight", indication=1234.56, unit="g", stable=True)
        ]
        sim.stable = False
        sim.weight_g = -0.5
        # The balance blanks the unit while unstable; the configured unit stands in.
        assert await balance.read() == [
            RawReading(source="weight", indication=-0.5, unit="g", stable=False)
        ]
        assert sim.served == [(1234.56, "g", True), (-0.5, "", False)]
        assert sim.counts == {"P": 2}


async def test_noisy_readings_equal_what_was_served() -> None:
    async with _connected(noise_g=0.5) as (sim, link):
        balance = SbiBalance(link)
        readings = [(await balance.read())[0] for _ in range(5)]
        assert _printed(readings) == sim.served
        assert len({r.indication for r in readings}) > 1


@pytest.mark.parametrize("form", [16, 22])
@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("high", InstrumentError, "overload"),
        ("low", InstrumentError, "underload"),
        ("error", InstrumentError, "270"),
        ("dashes", InstrumentError, "no value displayed"),
        ("garbage", ProtocolError, "non-ASCII"),
        ("silent", TransportTimeoutError, r"received b''"),
    ],
)
async def test_fault_raises_its_error_and_the_next_poll_recovers(
    form: Form, fault: Fault, error: type[DriverError], message: str
) -> None:
    async with _connected(form=form) as (sim, link):
        balance = SbiBalance(link)
        sim.fault = fault
        with pytest.raises(error, match=message):
            await balance.read()
        assert sim.served == []
        sim.fault = None
        sim.weight_g = 42.0
        assert await balance.read() == [RawReading(source="weight", indication=42.0, unit="g")]
        assert sim.served == [(42.0, "g", True)]
        assert sim.counts == {"P": 2}


@pytest.mark.parametrize("form", [16, 22])
async def test_shifted_columns_are_parsed_by_tokens(form: Form) -> None:
    async with _connected(weight_g=-12.34, form=form) as (sim, link):
        balance = SbiBalance(link)
        sim.fault = "shifted"
        sim.stable = False
        assert _printed(await balance.read()) == [(-12.34, "g", False)]
        sim.stable = True
        assert _printed(await balance.read()) == [(-12.34, "g", True)]
        assert sim.served == [(-12.34, "", False), (-12.34, "g", True)]


async def test_other_unit_than_configured_is_an_instrument_error() -> None:
    async with _connected() as (sim, link):
        balance = SbiBalance(link, unit="kg")
        with pytest.raises(InstrumentError, match=r"displays 'g' but is configured for 'kg'"):
            await balance.read()
        assert sim.served == [(100.0, "g", True)]


async def test_request_mode_discards_a_line_printed_before_the_poll() -> None:
    async with _connected(weight_g=999.0) as (sim, link):
        sim.press_print()  # the operator pressed PRINT
        await _settle()  # so that the driver's input flush is what drops the line
        sim.weight_g = 1.0
        assert _printed(await SbiBalance(link).read()) == [(1.0, "g", True)]
        assert sim.served == [(999.0, "g", True), (1.0, "g", True)]


async def test_stream_mode_returns_successive_printed_lines_and_sends_nothing() -> None:
    async with _connected(noise_g=0.5, stream_period=PERIOD) as (sim, link):
        balance = SbiBalance(link, mode="stream")
        readings = [(await balance.read())[0] for _ in range(5)]
        printed = _printed(readings)
        assert any(sim.served[k : k + 5] == printed for k in range(len(sim.served)))
        assert len({r.indication for r in readings}) > 1
        assert sim.counts == {}


async def test_stream_mode_unstable_lines_use_the_configured_unit() -> None:
    async with _connected(weight_g=0.25, stream_period=PERIOD, stable=False) as (sim, link):
        balance = SbiBalance(link, unit="g", mode="stream")
        assert await balance.read() == [
            RawReading(source="weight", indication=0.25, unit="g", stable=False)
        ]
        assert (0.25, "", False) in sim.served


async def test_stream_mode_recovers_after_the_balance_fell_silent() -> None:
    async with _connected(stream_period=PERIOD, form=22) as (sim, link):
        balance = SbiBalance(link, mode="stream")
        assert (await balance.read())[0].indication == 100.0
        sim.fault = "silent"
        await _settle()
        await link.clear_input()  # lines printed before the fault
        with pytest.raises(TransportTimeoutError):
            await balance.read()
        sim.fault = None
        sim.weight_g = 7.5
        assert await balance.read() == [RawReading(source="weight", indication=7.5, unit="g")]
        assert sim.counts == {}


async def test_stream_mode_reports_special_lines_until_they_clear() -> None:
    async with _connected(stream_period=PERIOD, fault="high") as (sim, link):
        balance = SbiBalance(link, mode="stream")
        with pytest.raises(InstrumentError, match="overload"):
            await balance.read()
        sim.fault = None
        # Lines printed before the overload cleared are still queued and say High; as the
        # scheduler does, poll again: a few polls must bring the weight back.
        outcomes: list[float | str] = []
        while 100.0 not in outcomes and len(outcomes) < 10:
            try:
                outcomes.append((await balance.read())[0].indication)
            except InstrumentError as exc:
                outcomes.append(str(exc))
        assert outcomes[-1] == 100.0
        assert all("overload" in str(outcome) for outcome in outcomes[:-1])


@pytest.mark.parametrize(
    ("unit", "mode", "message"),
    [("", "request", "unit"), ("gram", "request", "unit"), ("g", "auto", "mode")],
)
async def test_balance_rejects_bad_settings(unit: str, mode: str, message: str) -> None:
    async with await open_serial("loop://", timeout=TIMEOUT) as link:
        with pytest.raises(ValueError, match=message):
            SbiBalance(link, unit=unit, mode=mode)  # type: ignore[arg-type]  # bad on purpose


# --- the simulator itself ---


async def test_simulator_accepts_esc_p_with_or_without_crlf_and_ignores_other_commands() -> None:
    async with _connected(weight_g=5.0) as (sim, link):
        for request in (b"\x1bP", b"\x1bP\r\n", b"\x1bT\x1bP"):
            await link.write(request)
            assert await link.read_until() == b"+     5.00 g  \r\n"
        await link.write(b"\x1b")  # a command split across writes
        await link.write(b"P\r\n")
        assert await link.read_until() == b"+     5.00 g  \r\n"
        assert sim.counts == {"P": 4, "T": 1}


@pytest.mark.parametrize(
    ("form", "fault", "line"),
    [
        (16, None, b"+   100.00 g  "),
        (22, None, b"N     +   100.00 g  "),
        (16, "shifted", b"+    100.00 g  "),
        (16, "high", b"      High    "),
        (22, "low", b"Stat         Low    "),
        (16, "error", b"Err 270       "),
        (22, "error", b"Stat     ERR 270    "),
        (16, "dashes", b"    ------    "),
    ],
)
async def test_simulator_prints_the_documented_line_forms(
    form: Form, fault: Fault | None, line: bytes
) -> None:
    async with _connected(form=form) as (sim, link):
        sim.fault = fault
        await link.write(b"\x1bP\r\n")
        assert await link.read_until() == line + b"\r\n"


async def test_simulator_rejects_bad_settings_and_releases_its_fds() -> None:
    with pytest.raises(ValueError, match="16 or 22"):
        SbiSimulator(form=20)  # type: ignore[arg-type]  # bad on purpose
    with pytest.raises(ValueError, match="positive"):
        SbiSimulator(stream_period=0.0)
    sim = SbiSimulator(stream_period=PERIOD)
    with pytest.raises(RuntimeError, match="async with"):
        _ = sim.port
    fds = _open_fds()
    async with sim:
        assert sim.port.startswith("/dev/pts/")
    assert _open_fds() == fds
