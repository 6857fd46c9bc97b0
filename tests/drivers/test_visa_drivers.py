# SPDX-License-Identifier: Apache-2.0
"""The SCPI drivers through the real VisaLink against pyvisa-sim (drivers/sim/visa)."""

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from drivers.errors import InstrumentError, TransportError, TransportTimeoutError
from drivers.reading import Instrument, RawReading
from drivers.scpi.calibrator import Calibrator
from drivers.scpi.dmm import MAX_QUEUED_ERRORS, ScpiDmm, check_error_queue
from drivers.scpi.power_analyzer import PowerAnalyzer
from drivers.sim.visa import (
    CALIBRATOR_RESOURCE,
    CALIBRATOR_SERIAL_RESOURCE,
    DMM_RESOURCE,
    DMM_SERIAL_RESOURCE,
    POWER_ANALYZER_RESOURCE,
    instruments_yaml,
    sim_library,
)
from drivers.transports import visa
from drivers.transports.visa import VisaLink, open_visa

if TYPE_CHECKING:
    from drivers.transport import MessageLink

# Short enough to keep the timeout cases fast; pyvisa-sim answers within milliseconds.
TIMEOUT = 0.3


@pytest.fixture
def library(tmp_path: Path) -> str:
    # A copy per test: pyvisa-sim keeps one simulator state per definitions file.
    return sim_library(Path(shutil.copy(instruments_yaml(), tmp_path / "instruments.yaml")))


@pytest.fixture
async def dmm_link(library: str) -> AsyncIterator[VisaLink]:
    async with await open_visa(DMM_RESOURCE, library=library, timeout=TIMEOUT) as link:
        yield link


@pytest.fixture
async def analyzer_link(library: str) -> AsyncIterator[VisaLink]:
    async with await open_visa(POWER_ANALYZER_RESOURCE, library=library, timeout=TIMEOUT) as link:
        yield link


# --- DMM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", [DMM_RESOURCE, DMM_SERIAL_RESOURCE])
async def test_dmm_configures_and_reads_the_simulated_value(library: str, resource: str) -> None:
    async with await open_visa(resource, library=library, timeout=TIMEOUT) as link:
        dmm = ScpiDmm(link, function="VOLT:DC", range=10, resolution=1e-5, nplc=10)
        await dmm.configure()
        assert await dmm.read() == [RawReading(source="reading", indication=1.23456789, unit="V")]
        assert await link.query("VOLT:DC:NPLC?") == "+1.00000000E+01"


async def test_dmm_reading_follows_the_simulator(dmm_link: VisaLink) -> None:
    dmm: Instrument = ScpiDmm(dmm_link, function="RES")
    await dmm_link.write("SIM:READ 1234.5")
    assert await dmm.read() == [RawReading(source="reading", indication=1234.5, unit="Ohm")]


async def test_dmm_overload_is_an_instrument_error(dmm_link: VisaLink) -> None:
    await dmm_link.write("SIM:READ 9.9E37")
    with pytest.raises(InstrumentError, match="overload"):
        await ScpiDmm(dmm_link).read()


async def test_unsupported_function_is_caught_by_the_error_queue(dmm_link: VisaLink) -> None:
    # The simulated 34465A knows no CONF:CAP: it queues an error and answers nothing.
    with pytest.raises(InstrumentError, match=r'after CONF:CAP: -100,"Command error"$'):
        await ScpiDmm(dmm_link, function="CAP").configure()
    await ScpiDmm(dmm_link, function="FRES", range=100, nplc=1).configure()  # queue drained


@pytest.mark.parametrize(
    ("function", "nplc"),
    [
        ("VOLT:DC", 1000.0),  # out of range
        ("VOLT:AC", 10.0),  # AC has no NPLC
    ],
)
async def test_rejected_setting_is_caught_by_the_error_queue(
    dmm_link: VisaLink, function: str, nplc: float
) -> None:
    with pytest.raises(InstrumentError, match=f"{function}:NPLC"):
        await ScpiDmm(dmm_link, function=function, nplc=nplc).configure()


async def test_every_queued_error_is_reported(dmm_link: VisaLink) -> None:
    for command in ("BAD1", "BAD2", "BAD3"):
        await dmm_link.write(command)
    with pytest.raises(InstrumentError) as caught:
        await check_error_queue(dmm_link, "SYST:ERR?", instrument="DMM", context="BAD1-3")
    assert str(caught.value).count('-100,"Command error"') == 3
    await check_error_queue(dmm_link, "SYST:ERR?", instrument="DMM", context="nothing")


async def test_error_queue_drain_is_bounded(dmm_link: VisaLink) -> None:
    for number in range(MAX_QUEUED_ERRORS + 5):
        await dmm_link.write(f"BAD{number}")
    with pytest.raises(InstrumentError, match="more may be queued") as caught:
        await check_error_queue(dmm_link, "SYST:ERR?", instrument="DMM", context="BAD")
    assert str(caught.value).count("Command error") == MAX_QUEUED_ERRORS


# --- the link -------------------------------------------------------------------------------


async def test_unknown_query_times_out_and_the_link_recovers(dmm_link: VisaLink) -> None:
    with pytest.raises(TransportTimeoutError, match="FOO"):
        await dmm_link.query("FOO?")
    assert (await dmm_link.query("*IDN?")).startswith("Keysight Technologies,34465A,")


async def test_blocking_calls_do_not_block_the_event_loop(dmm_link: VisaLink) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(tick())
        started = time.monotonic()
        with pytest.raises(TransportTimeoutError):
            await dmm_link.query("FOO?")
        elapsed = time.monotonic() - started
        ticker.cancel()
    assert elapsed >= TIMEOUT * 0.9  # the query really was in flight that long
    assert ticks >= 10  # about 30 if nothing blocks the loop; none if VISA blocked it


async def test_cancelled_query_leaves_no_reply_behind(dmm_link: VisaLink) -> None:
    # The worker finishes the cancelled exchange, reply included, before the next one.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await dmm_link.query("READ?")
    assert (await dmm_link.query("*IDN?")).startswith("Keysight Technologies,")


@pytest.mark.parametrize("message", ["", "READ?\n", "READ?;\r", "caf\u00e9?", "\x00"])
async def test_messages_must_be_printable_ascii(dmm_link: VisaLink, message: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        await dmm_link.write(message)
    with pytest.raises(ValueError, match="printable ASCII"):
        await dmm_link.query(message)


async def test_closed_link_raises_transport_error(library: str) -> None:
    link: MessageLink = await open_visa(DMM_RESOURCE, library=library, timeout=TIMEOUT)
    await link.aclose()
    await link.aclose()  # idempotent
    with pytest.raises(TransportError, match="closed"):
        await link.query("*IDN?")
    with pytest.raises(TransportError, match="closed"):
        await link.write("*CLS")


@pytest.mark.parametrize(
    "resource", ["GPIB0::9::INSTR", "TCPIP0::10.0.0.1::INSTR", "ASRL9::INSTR"]
)
async def test_missing_resource_is_a_transport_error(library: str, resource: str) -> None:
    with pytest.raises(TransportError, match=resource):
        await open_visa(resource, library=library, timeout=TIMEOUT)
    assert library not in visa._MANAGERS._managers  # the manager was released


async def test_missing_definitions_file_is_a_transport_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match=r"cannot load the VISA library .*none\.yaml@sim"):
        await open_visa(DMM_RESOURCE, library=f"{tmp_path / 'none.yaml'}@sim")


@pytest.mark.parametrize(
    ("resource", "library", "timeout"),
    [
        ("not a resource", "@sim", 1.0),
        (DMM_RESOURCE, "@sim", 0.0),
        (DMM_RESOURCE, "@sim", float("nan")),
    ],
)
async def test_bad_arguments_are_value_errors(resource: str, library: str, timeout: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- pyvisa's messages vary by version
        await open_visa(resource, library=library, timeout=timeout)


async def test_links_on_one_library_share_its_resource_manager(library: str) -> None:
    async with asyncio.TaskGroup() as group:
        openings = [
            group.create_task(open_visa(resource, library=library, timeout=TIMEOUT))
            for resource in (DMM_RESOURCE, POWER_ANALYZER_RESOURCE, CALIBRATOR_RESOURCE)
        ]
    dmm, analyzer, calibrator = (opening.result() for opening in openings)
    assert visa._MANAGERS._managers[library][1] == 3
    await dmm.aclose()  # must not close the manager under the other two links
    assert (await analyzer.query("*IDN?")).startswith("YOKOGAWA,WT310,")
    await analyzer.aclose()
    assert (await calibrator.query("*IDN?")).startswith("FLUKE,5520A,")
    await calibrator.aclose()
    assert library not in visa._MANAGERS._managers


# --- power analyzer -------------------------------------------------------------------------


async def test_power_analyzer_reads_voltage_current_power_and_energy(
    analyzer_link: VisaLink,
) -> None:
    analyzer: Instrument = PowerAnalyzer(analyzer_link)
    await PowerAnalyzer(analyzer_link).configure()
    assert await analyzer.read() == [
        RawReading(source="voltage", indication=229.87, unit="V"),
        RawReading(source="current", indication=1.0123, unit="A"),
        RawReading(source="power", indication=232.10, unit="W"),
        RawReading(source="energy", indication=12.345, unit="Wh"),
    ]
    assert await analyzer_link.query(":NUM:NORM:ITEM4?") == "WH,1"
    assert await analyzer_link.query(":NUM:NORM:NUMB?") == "4"


async def test_power_analyzer_refuses_an_element_it_lacks(analyzer_link: VisaLink) -> None:
    with pytest.raises(InstrumentError, match=r'ITEM1 U,2.*113,"Undefined header"'):
        await PowerAnalyzer(analyzer_link, element=2).configure()


# --- calibrator -----------------------------------------------------------------------------


@pytest.mark.parametrize("resource", [CALIBRATOR_RESOURCE, CALIBRATOR_SERIAL_RESOURCE])
async def test_calibrator_sets_operates_and_reads_back(library: str, resource: str) -> None:
    async with await open_visa(resource, library=library, timeout=TIMEOUT) as link:
        calibrator = Calibrator(link)
        assert await calibrator.output() == (0.0, "V")
        await calibrator.set_output(1.5, "V")
        await calibrator.operate()
        assert await calibrator.output() == (1.5, "V")
        await calibrator.set_output(0.25, "A", frequency=60)
        assert await calibrator.output() == (0.25, "A")
        await calibrator.standby()


async def test_calibrator_refusal_is_an_instrument_error(library: str) -> None:
    async with await open_visa(CALIBRATOR_RESOURCE, library=library, timeout=TIMEOUT) as link:
        await link.write("OUT 1.5")  # a command the simulator does not know, queued as error
        with pytest.raises(InstrumentError, match=r'after OPER: -113,"Undefined header"'):
            await Calibrator(link).operate()


async def test_calibrator_validates_the_unit_before_sending(library: str) -> None:
    async with await open_visa(CALIBRATOR_RESOURCE, library=library, timeout=TIMEOUT) as link:
        calibrator = Calibrator(link)
        with pytest.raises(ValueError, match="unit"):
            await calibrator.set_output(1.0, "W")
        await calibrator.standby()  # nothing was sent, so the error queue is empty


async def test_a_backend_that_is_not_installed_is_a_transport_error() -> None:
    # The station keeps polling its other instruments and reports this one down.
    with pytest.raises(TransportError, match="cannot load the VISA library"):
        await open_visa("GPIB0::1::INSTR", library="@nosuchbackend", timeout=0.3)
