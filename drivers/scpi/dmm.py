# SPDX-License-Identifier: Apache-2.0
"""SCPI digital multimeters (Keysight 34465A, Fluke 8846A kind) and shared SCPI basics.

The basics (numeric replies, the error queue) serve the other modules of this package too.

Reference: IEEE 488.2 (NR1/NR2/NR3 numeric response data); SCPI-99 vol. 1 (9.9E+37 stands
for +INFinity, 9.91E+37 for NaN) and vol. 2 (SYSTem:ERRor?: ``<code>,"<message>"``, code 0
when the queue is empty); Keysight 34465A Programming Guide (CONFigure, <function>:NPLC,
READ?; an overload reads ±9.9E+37). Not checked on hardware.
The codec (`encode_*`, `parse_*`, `unit_of`) is pure; `ScpiDmm` only awaits its injected
`MessageLink`.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from drivers.errors import InstrumentError, ProtocolError
from drivers.reading import RawReading
from drivers.transport import MessageLink

__all__ = [
    "FUNCTION_UNITS",
    "MAX_QUEUED_ERRORS",
    "ErrorQueueEntry",
    "ScpiDmm",
    "check_error_queue",
    "encode_configure",
    "encode_nplc",
    "parse_error_reply",
    "parse_scpi_number",
    "unit_of",
]

# NR1/NR2/NR3 of IEEE 488.2, ASCII digits only: "nan", "inf", "1_0" or non-ASCII digits
# (which float() takes) never come from an instrument, so they are rejected, not guessed at.
_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ERROR_REPLY: Final = re.compile(r'([+-]?[0-9]{1,6}),"((?:[^"]|"")*)"')
_BLANKS: Final = " \t\r\n"
_INFINITY: Final = 9.9e37
_NOT_A_NUMBER: Final = 9.91e37

#: SCPI measurement functions (short form) and the ASCII unit of their indications: "Ohm"
#: as in UCUM, since "Ω" is not ASCII. Frequency and period measure the input's fundamental.
FUNCTION_UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "VOLT:DC": "V",
        "VOLT:AC": "V",
        "CURR:DC": "A",
        "CURR:AC": "A",
        "RES": "Ohm",
        "FRES": "Ohm",
        "FREQ": "Hz",
        "PER": "s",
        "CAP": "F",
    }
)

#: Most entries read from an error queue after one configuration (a 34465A holds 20).
MAX_QUEUED_ERRORS: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorQueueEntry:
    """One entry of an instrument's error queue.

    Attributes:
        code: 0 for no error; negative codes are SCPI's, positive ones the instrument's own.
        message: the text the instrument sent, doubled quotes undone.
    """

    code: int
    message: str


def parse_scpi_number(text: str) -> float:
    """Decode one numeric reply: ``"+1.23456789E+00"`` -> 1.23456789.

    Args:
        text: an NR1, NR2 or NR3 number; blanks and CR/LF around it are ignored.

    Returns:
        The finite value.

    Raises:
        InstrumentError: the instrument reports an overload (±9.9E+37) or no valid value
            (9.91E+37, SCPI's NaN).
        ProtocolError: `text` is not a decimal number, or it overflows a float.
    """
    number = text.strip(_BLANKS)
    if not _NUMBER.fullmatch(number):
        raise ProtocolError(f"SCPI instrument sent {text!r}, not a number")
    value = float(number)
    if not math.isfinite(value):  # e.g. 1E999
        raise ProtocolError(f"SCPI instrument sent out-of-range number {text!r}")
    if math.isclose(abs(value), _NOT_A_NUMBER, rel_tol=1e-9):
        raise InstrumentError(f"SCPI instrument reports no valid value ({number}, NaN)")
    if abs(value) >= _INFINITY:
        raise InstrumentError(f"SCPI instrument reports an overload ({number})")
    return value


def parse_error_reply(reply: str) -> ErrorQueueEntry:
    """Decode the reply to SYST:ERR? (or ERR?, :STAT:ERR?): ``+0,"No error"`` -> code 0.

    Args:
        reply: one reply, ``<code>,"<message>"``; blanks and CR/LF around it are ignored.

    Returns:
        The entry; `ErrorQueueEntry.code` is 0 when the queue was empty.

    Raises:
        ProtocolError: `reply` is not of that form, or the message is not printable.
    """
    match = _ERROR_REPLY.fullmatch(reply.strip(_BLANKS))
    if match is None:
        raise ProtocolError(f"SCPI instrument sent {reply!r}, not an error-queue entry")
    message = match.group(2).replace('""', '"')
    if not (message.isascii() and message.isprintable()):
        raise ProtocolError(f"SCPI instrument sent a non-printable message in {reply!r}")
    return ErrorQueueEntry(code=int(match.group(1)), message=message)


async def check_error_queue(
    link: MessageLink, query: str, *, instrument: str, context: str
) -> None:
    """Read the error queue until it is empty; raise if it held any error.

    Reads at most `MAX_QUEUED_ERRORS` entries so that an instrument that never reports an
    empty queue cannot hold the caller.

    Args:
        link: the instrument's link.
        query: the instrument's error query, e.g. ``"SYST:ERR?"``.
        instrument: names the instrument in the error, e.g. ``"SCPI DMM"``.
        context: what was just sent, e.g. ``"CONF:VOLT:DC 10"``.

    Raises:
        InstrumentError: the queue held errors; the message lists each code and text.
        DriverError: the link failed or a reply did not parse.
    """
    errors: list[ErrorQueueEntry] = []
    more = ""
    for _ in range(MAX_QUEUED_ERRORS):
        entry = parse_error_reply(await link.query(query))
        if entry.code == 0:
            break
        errors.append(entry)
    else:
        more = "; more may be queued"
    if errors:
        listed = "; ".join(f'{entry.code},"{entry.message}"' for entry in errors)
        raise InstrumentError(f"{instrument} reports errors after {context}: {listed}{more}")


def unit_of(function: str) -> str:
    """Return the unit of indications of `function`, e.g. ``"VOLT:DC"`` -> ``"V"``.

    Raises:
        ValueError: `function` is not in `FUNCTION_UNITS`.
    """
    try:
        return FUNCTION_UNITS[function]
    except KeyError:
        known = ", ".join(FUNCTION_UNITS)
        raise ValueError(f"SCPI function must be one of {known}, got {function!r}") from None


def encode_configure(
    function: str,
    *,
    range: float | None = None,  # noqa: A002 -- SCPI's name; in the unit of `function`
    resolution: float | None = None,
) -> str:
    """Build CONFigure for `function`: ``CONF:VOLT:DC 10,1E-05``.

    An omitted range is sent as DEF, the default range, which is autorange on these DMMs
    (the AUTO keyword is not documented for every model); with neither, all defaults apply.

    Args:
        function: a key of `FUNCTION_UNITS`.
        range: the measurement range in the unit of `function`; None for autorange.
        resolution: the resolution in the unit of `function`; None for the default.

    Raises:
        ValueError: an unknown function, or a range or resolution that is not positive.
    """
    unit_of(function)
    if range is None and resolution is None:
        return f"CONF:{function}"
    arguments = "DEF" if range is None else _format_positive(range, "range")
    if resolution is not None:
        arguments += "," + _format_positive(resolution, "resolution")
    return f"CONF:{function} {arguments}"


def encode_nplc(function: str, nplc: float) -> str:
    """Build the integration-time setting: ``VOLT:DC:NPLC 10`` (in power-line cycles).

    Raises:
        ValueError: an unknown function or a value that is not positive.
    """
    unit_of(function)
    return f"{function}:NPLC {_format_positive(nplc, 'nplc')}"


class ScpiDmm:
    """A SCPI multimeter on any `MessageLink`; owned by one scheduler task at a time.

    Args:
        link: an open link whose reply timeout covers one measurement (NPLC 100 at 50 Hz
            takes 2 s, autoranging longer).
        function: a key of `FUNCTION_UNITS`, e.g. ``"VOLT:DC"``.
        range: the measurement range in the unit of `function`; None for autorange.
        resolution: in the unit of `function`; None for the instrument's default.
        nplc: integration time in power-line cycles; None to leave it unchanged.

    Raises:
        ValueError: an unknown function, or a setting that is not a positive number.
    """

    def __init__(
        self,
        link: MessageLink,
        *,
        function: str = "VOLT:DC",
        range: float | None = None,  # noqa: A002 -- SCPI's name; in the unit of `function`
        resolution: float | None = None,
        nplc: float | None = None,
    ) -> None:
        self._link = link
        self._unit = unit_of(function)
        self._settings = [encode_configure(function, range=range, resolution=resolution)]
        if nplc is not None:
            self._settings.append(encode_nplc(function, nplc))

    async def configure(self) -> None:
        """Clear the status (``*CLS``), send the configuration and check the error queue.

        Raises:
            InstrumentError: the DMM rejected a setting (listed with its error codes).
            DriverError: the link failed or a reply did not parse.
        """
        await self._link.write("*CLS")
        for setting in self._settings:
            await self._link.write(setting)
        await check_error_queue(
            self._link, "SYST:ERR?", instrument="SCPI DMM", context="; ".join(self._settings)
        )

    async def read(self) -> list[RawReading]:
        """Trigger and read one measurement (READ?).

        Returns:
            One reading with source ``"reading"`` in the unit of the configured function.

        Raises:
            InstrumentError: overload or no valid value.
            DriverError: the link failed or the reply did not parse.
        """
        indication = parse_scpi_number(await self._link.query("READ?"))
        return [RawReading(source="reading", indication=indication, unit=self._unit)]


def _format_positive(value: float, name: str) -> str:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"SCPI DMM {name} must be a positive number, got {value!r}")
    # 15 significant digits: what float carries and more than any DMM setting resolves.
    return f"{value:.15G}"
