# SPDX-License-Identifier: Apache-2.0
"""Multifunction calibrators of the Fluke 5520A kind: a settable source for test rigs.

Reference: Fluke 5520A Operators Manual, chapter 6 (OUT, OUT?, OPER, STBY, ERR?; numeric
parameters up to 15 significant digits; units V, A, OHM, F, CEL, FAR, DBM; ``, 0 HZ`` selects
DC, as 55xx/57xx drivers send it). OUT? lists the primary amplitude and unit, the secondary
amplitude (and unit) and the frequency; both the five-field form of the manual and the
four-field form quoted in DOMAIN.md are accepted. Not checked on hardware.
The codec (`encode_output`, `parse_output`) is pure; `Calibrator` only awaits its injected
`MessageLink`. A calibrator is not polled: it is no `Instrument`.
"""

import math
import re
from typing import Final

from drivers.errors import ProtocolError
from drivers.scpi.dmm import check_error_queue, parse_scpi_number
from drivers.transport import MessageLink

__all__ = ["AC_UNITS", "OUTPUT_UNITS", "Calibrator", "encode_output", "parse_output"]

#: Units `Calibrator.set_output` accepts, as the 5520A spells them: volts, amperes, ohms,
#: farads, degrees Celsius and Fahrenheit (thermocouple/RTD simulation), dBm. Prefixes
#: (``MV``, ``UA``) are not taken: scale the value instead.
OUTPUT_UNITS: Final = frozenset({"V", "A", "OHM", "F", "CEL", "FAR", "DBM"})
#: Units that may carry a frequency; DBM is an AC level only.
AC_UNITS: Final = frozenset({"V", "A", "DBM"})
_DC_SELECTABLE: Final = frozenset({"V", "A"})
_REPLY_UNIT: Final = re.compile(r"[A-Z]{1,4}")
_NO_UNIT: Final = "0"  # OUT? with no secondary output
_NAME: Final = "5520A calibrator"


def encode_output(value: float, unit: str, *, frequency: float | None = None) -> str:
    """Build the OUT command: ``OUT 1.5 V, 0 HZ`` (DC) or ``OUT 1.5 V, 60 HZ`` (AC).

    For V and A without a frequency, ``0 HZ`` is sent: the 5520A otherwise keeps the
    frequency of a previous AC output, and a rig asking for DC must get DC.

    Args:
        value: the amplitude in `unit` (RMS for AC).
        unit: one of `OUTPUT_UNITS`.
        frequency: in hertz, for an AC output; None for DC (and for OHM, F, CEL, FAR).

    Raises:
        ValueError: an unknown unit, a value that is not finite, a frequency that is not
            positive, a frequency for a unit that has none, or DBM without a frequency.
    """
    if unit not in OUTPUT_UNITS:
        known = ", ".join(sorted(OUTPUT_UNITS))
        raise ValueError(f"{_NAME}: unit must be one of {known}, got {unit!r}")
    if not math.isfinite(value):
        raise ValueError(f"{_NAME}: output value must be finite, got {value!r}")
    command = f"OUT {_format(value)} {unit}"
    if frequency is not None:
        if unit not in AC_UNITS:
            raise ValueError(f"{_NAME}: {unit} output takes no frequency, got {frequency!r}")
        if not (math.isfinite(frequency) and frequency > 0):
            raise ValueError(f"{_NAME}: frequency must be positive, got {frequency!r}")
        return f"{command}, {_format(frequency)} HZ"
    if unit == "DBM":
        raise ValueError(f"{_NAME}: a DBM output needs a frequency")
    if unit in _DC_SELECTABLE:
        return f"{command}, 0 HZ"
    return command


def parse_output(reply: str) -> tuple[float, str]:
    """Decode the reply to OUT?: ``1.500000E+00,V,0.00E+00,0,0.00E+00`` -> (1.5, "V").

    Args:
        reply: ``<amplitude>,<unit>,<secondary amplitude>,[<secondary unit>,]<frequency>``;
            blanks and CR/LF around it are ignored.

    Returns:
        The primary amplitude and its unit as the calibrator spells it.

    Raises:
        ProtocolError: the reply does not have that form.
        InstrumentError: a field holds SCPI's overload or NaN value.
    """
    match reply.strip(" \t\r\n").split(","):
        case [amplitude, unit, secondary, frequency]:
            secondary_unit = _NO_UNIT
        case [amplitude, unit, secondary, secondary_unit, frequency]:
            pass
        case _:
            raise ProtocolError(f"{_NAME} sent {reply!r}, not a reply to OUT?")
    if not _REPLY_UNIT.fullmatch(unit) or not (
        secondary_unit == _NO_UNIT or _REPLY_UNIT.fullmatch(secondary_unit)
    ):
        raise ProtocolError(f"{_NAME} sent invalid units in {reply!r}")
    parse_scpi_number(secondary)
    parse_scpi_number(frequency)
    return parse_scpi_number(amplitude), unit


class Calibrator:
    """A 5520A-kind calibrator on any `MessageLink`; owned by one test-rig task.

    Every setting is followed by ERR?, so a setting the calibrator refused (a value out of
    range, a unit its present mode does not allow) fails there and then.

    Args:
        link: an open link (GPIB or RS-232).
    """

    def __init__(self, link: MessageLink) -> None:
        self._link = link

    async def set_output(self, value: float, unit: str, *, frequency: float | None = None) -> None:
        """Set the primary output (it stays in standby until `operate`).

        Args:
            value: the amplitude in `unit` (RMS for AC).
            unit: one of `OUTPUT_UNITS`.
            frequency: in hertz for an AC output; None for DC.

        Raises:
            ValueError: see `encode_output`.
            InstrumentError: the calibrator refused the setting.
            DriverError: the link failed or a reply did not parse.
        """
        await self._set(encode_output(value, unit, frequency=frequency))

    async def operate(self) -> None:
        """Connect the output to the terminals (OPER).

        Raises:
            InstrumentError: the calibrator refused.
            DriverError: the link failed or a reply did not parse.
        """
        await self._set("OPER")

    async def standby(self) -> None:
        """Disconnect the output from the terminals (STBY).

        Raises:
            InstrumentError: the calibrator refused.
            DriverError: the link failed or a reply did not parse.
        """
        await self._set("STBY")

    async def output(self) -> tuple[float, str]:
        """Return the primary output setting (OUT?) as (amplitude, unit).

        Raises:
            DriverError: the link failed or the reply did not parse.
        """
        return parse_output(await self._link.query("OUT?"))

    async def _set(self, command: str) -> None:
        await self._link.write(command)
        await check_error_queue(self._link, "ERR?", instrument=_NAME, context=command)


def _format(value: float) -> str:
    # 15 significant digits, the most the 5520A accepts (and about what a float carries).
    return f"{value:.15G}"
