# SPDX-License-Identifier: Apache-2.0
"""Power analyzers of the Yokogawa WT310 kind: voltage, current, power and energy of one element.

Reference: Yokogawa WT310/WT310HC/WT330 Communication Interface User's Manual (:NUMeric
group: NORMal:NUMber, NORMal:ITEM<x> <function>,<element>, NORMal:VALue?; :NUMeric:FORMat;
:COMMunicate:HEADer; :STATus:ERRor?). In ASCII format a value the analyzer cannot give is
``NAN`` (no data, e.g. integration not started) and an over-range one ``INF``. Not checked on
hardware. The codec (`encode_settings`, `parse_values`) is pure; `PowerAnalyzer` only awaits
its injected `MessageLink`.
"""

from typing import Final

from drivers.errors import InstrumentError, ProtocolError
from drivers.reading import RawReading
from drivers.scpi.dmm import check_error_queue, parse_scpi_number
from drivers.transport import MessageLink

__all__ = ["ITEMS", "PowerAnalyzer", "encode_settings", "parse_values"]

#: The numeric items read, in order: (reading source, WT310 function, unit). WH is the
#: integrated active energy (watt-hours) of the integrator, which the operator starts.
ITEMS: Final = (
    ("voltage", "U", "V"),
    ("current", "I", "A"),
    ("power", "P", "W"),
    ("energy", "WH", "Wh"),
)
# WT310: 1 element; WT332: 2; WT333: 3.
_MAX_ELEMENT: Final = 3
_NAME: Final = "WT310 power analyzer"


def encode_settings(element: int) -> list[str]:
    """Build the commands that select the four items of `ITEMS` for `element`, in order.

    Headers off and ASCII numbers make the replies parseable; ``:NUM:NORM:NUMB 4`` limits
    ``:NUM:NORM:VAL?`` to items 1 to 4.

    Args:
        element: the input element, 1 to 3 (a WT310 has only element 1).

    Raises:
        ValueError: `element` is out of range.
    """
    if isinstance(element, bool) or not 1 <= element <= _MAX_ELEMENT:
        raise ValueError(f"{_NAME}: element must be 1 to {_MAX_ELEMENT}, got {element!r}")
    return [
        ":COMM:HEAD OFF",
        ":NUM:FORM ASCII",
        f":NUM:NORM:NUMB {len(ITEMS)}",
        *(
            f":NUM:NORM:ITEM{number} {function},{element}"
            for number, (_, function, _) in enumerate(ITEMS, start=1)
        ),
    ]


def parse_values(reply: str) -> list[RawReading]:
    """Decode the reply to ``:NUM:NORM:VAL?`` for the items of `ITEMS`.

    Example: ``229.87E+00,1.0123E+00,232.10E+00,12.345E+00`` -> 229.87 V, 1.0123 A,
    232.10 W, 12.345 Wh.

    Args:
        reply: comma-separated values, one per item; blanks and CR/LF around it are ignored.

    Returns:
        One reading per item, sources ``voltage``, ``current``, ``power`` and ``energy``.

    Raises:
        InstrumentError: an item is ``NAN`` (no data) or ``INF`` (over range), or its
            numeric equivalent; no reading is invented for it, so the whole poll fails.
        ProtocolError: the reply does not hold exactly one number per item.
    """
    fields = reply.strip(" \t\r\n").split(",")
    if len(fields) != len(ITEMS):
        raise ProtocolError(f"{_NAME} sent {len(fields)} values, expected {len(ITEMS)}: {reply!r}")
    return [
        RawReading(source=source, indication=_item_value(field, source), unit=unit)
        for field, (source, _, unit) in zip(fields, ITEMS, strict=True)
    ]


class PowerAnalyzer:
    """A WT310-kind power analyzer on any `MessageLink`; owned by one scheduler task.

    Args:
        link: an open link (GPIB, USB-TMC, Ethernet or RS-232).
        element: the input element measured, 1 for a WT310.

    Raises:
        ValueError: `element` is out of range.
    """

    def __init__(self, link: MessageLink, *, element: int = 1) -> None:
        self._link = link
        self._settings = encode_settings(element)

    async def configure(self) -> None:
        """Clear the status (``*CLS``), select the numeric items and check the error queue.

        Raises:
            InstrumentError: the analyzer rejected a setting (listed with its error codes).
            DriverError: the link failed or a reply did not parse.
        """
        await self._link.write("*CLS")
        for setting in self._settings:
            await self._link.write(setting)
        await check_error_queue(
            self._link, ":STAT:ERR?", instrument=_NAME, context="; ".join(self._settings)
        )

    async def read(self) -> list[RawReading]:
        """Read the latest values of the four items (``:NUM:NORM:VAL?``).

        Returns:
            Readings ``voltage`` (V), ``current`` (A), ``power`` (W) and ``energy`` (Wh).

        Raises:
            DriverError: the link failed, the reply did not parse or an item had no value.
        """
        return parse_values(await self._link.query(":NUM:NORM:VAL?"))


def _item_value(field: str, source: str) -> float:
    text = field.strip(" ")
    if text == "NAN":
        raise InstrumentError(f"{_NAME} has no data for {source} (NAN)")
    if text in {"INF", "+INF", "-INF"}:
        raise InstrumentError(f"{_NAME}: {source} is over range ({text})")
    try:
        return parse_scpi_number(text)
    except InstrumentError as exc:
        raise InstrumentError(f"{_NAME}, {source}: {exc}") from exc
    except ProtocolError as exc:
        raise ProtocolError(f"{_NAME}, {source}: {exc}") from exc
