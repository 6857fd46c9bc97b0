# SPDX-License-Identifier: Apache-2.0
"""Mettler Toledo balances speaking MT-SICS level 0 (commands S, SI and I4).

Reference: MT-SICS Interface Command Reference, level 0 (ASCII lines ending CR LF; weight
replies ``S S|D <value> <unit>``; command errors ``S I|+|-|L``; general errors ES, ET, EL).
The codec (`encode`, `parse_*`, `is_unsolicited`) is pure and never imports asyncio, serial
or socket; `MtSicsBalance` only awaits its injected `ByteStream`.
"""

import math
import re
from dataclasses import dataclass
from typing import Final

from drivers.errors import InstrumentError, ProtocolError
from drivers.reading import RawReading
from drivers.transport import ByteStream

__all__ = [
    "TERMINATOR",
    "MtSicsBalance",
    "WeightReply",
    "encode",
    "is_unsolicited",
    "parse_identity",
    "parse_weight",
]

TERMINATOR: Final = b"\r\n"

# A balance prints the weight right-aligned with an optional leading minus and a fixed number
# of decimals; exponents, "nan", "inf" or digit separators ("1_0", which float() accepts) are
# never sent, so they are rejected rather than guessed at.
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# Units: g, kg, mg, ug, ct, lb, oz, ozt, dwt, GN, tl..., PCS, %, custom units C1/C2.
_UNIT: Final = re.compile(r"[A-Za-z%][A-Za-z0-9%]{0,7}")
_IDENTITY: Final = re.compile(r'I4 A "([ !#-~]+)"')
_COMMAND: Final = re.compile(r"[ -~]+")
_WEIGHT_COMMANDS: Final = ("S", "SI")
# A balance may emit its power-up banner while a poll is in flight; more than this many
# unsolicited lines before a reply means the line is not talking MT-SICS to us.
_MAX_UNSOLICITED: Final = 2

_COMMAND_ERRORS: Final = {
    "I": "command not executable (busy, or no stable weight within the balance's timeout)",
    "+": "overload: load above the weighing range",
    "-": "underload: load below the weighing range (pan missing?)",
    "L": "logical error: command parameter not allowed",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightReply:
    """One raw weight reading as the balance sent it; no correction applied.

    Attributes:
        value: the indication, in `unit`; always finite.
        unit: the unit the balance reported, e.g. ``"g"``, ``"kg"`` or ``"mg"``.
        stable: False for a dynamic (``S D``) reading.
    """

    value: float
    unit: str
    stable: bool


def encode(command: str) -> bytes:
    """Frame one MT-SICS command: append CR LF, e.g. ``"SI"`` -> ``SI<CR><LF>``.

    Args:
        command: the command and its parameters, printable ASCII (MT-SICS is case-sensitive).

    Returns:
        The bytes to write to the link.

    Raises:
        ValueError: `command` is empty or holds non-printable or non-ASCII characters.
    """
    if not _COMMAND.fullmatch(command):
        raise ValueError(f"MT-SICS command must be printable ASCII, got {command!r}")
    return command.encode("ascii") + TERMINATOR


def parse_weight(frame: bytes) -> WeightReply:
    """Decode the reply to S or SI. Pure: bytes in, a value or a `DriverError` out.

    Args:
        frame: one line including its CR LF terminator.

    Returns:
        The weight; `stable` is False for ``S D``.

    Raises:
        InstrumentError: a valid reply reporting a fault (``S I``, ``S +``, ``S -``, ``S L``,
            ``ES``, ``EL``).
        ProtocolError: the frame does not parse, or the balance reports a corrupted
            transmission (``ET``).
    """
    match _fields(frame):
        case ["S", ("S" | "D") as status, number, unit]:
            if not _UNIT.fullmatch(unit):
                raise ProtocolError(f"MT-SICS balance sent invalid unit {unit!r} in {frame!r}")
            return WeightReply(value=_finite_float(number, frame), unit=unit, stable=status == "S")
        case fields:
            raise _reply_error("S", fields, frame)


def parse_identity(frame: bytes) -> str:
    """Decode the reply to I4 (or @): ``I4 A "B021002593"`` -> ``"B021002593"``.

    Args:
        frame: one line including its CR LF terminator.

    Returns:
        The balance's serial number.

    Raises:
        InstrumentError: the balance reports a fault (``I4 I``, ``ES``, ``EL``).
        ProtocolError: the frame does not parse, or ``ET``.
    """
    body = _body(frame)
    if match := _IDENTITY.fullmatch(body):
        return match.group(1)
    raise _reply_error("I4", body.split(), frame)


def is_unsolicited(frame: bytes) -> bool:
    """Tell whether `frame` is the ``I4 A "..."`` banner a balance sends at power-up.

    Args:
        frame: one line including its CR LF terminator.

    Returns:
        True for a well-formed identity line, False for anything else (never raises).
    """
    try:
        parse_identity(frame)
    except (InstrumentError, ProtocolError):
        return False
    return True


class MtSicsBalance:
    """A balance on any `ByteStream`; owned by one scheduler task at a time.

    Args:
        link: an open link whose reply timeout covers the balance's stabilisation time
            (S waits for a stable weight, typically a few seconds).
        command: ``"S"`` for the next stable weight, ``"SI"`` for the immediate one.

    Raises:
        ValueError: `command` is neither ``"S"`` nor ``"SI"``.
    """

    def __init__(self, link: ByteStream, *, command: str = "S") -> None:
        if command not in _WEIGHT_COMMANDS:
            raise ValueError(f"MT-SICS weight command must be S or SI, got {command!r}")
        self._link = link
        self._command = command

    async def read(self) -> list[RawReading]:
        """Poll the balance once.

        Returns:
            One reading with source ``"weight"`` in the unit the balance reported.

        Raises:
            DriverError: the link failed, the reply did not parse or reported a fault.
        """
        reply = parse_weight(await self._query(self._command, skip_unsolicited=True))
        return [
            RawReading(
                source="weight", indication=reply.value, unit=reply.unit, stable=reply.stable
            )
        ]

    async def serial_number(self) -> str:
        """Ask the balance for its serial number (I4).

        Raises:
            DriverError: the link failed, the reply did not parse or reported a fault.
        """
        return parse_identity(await self._query("I4", skip_unsolicited=False))

    async def _query(self, command: str, *, skip_unsolicited: bool) -> bytes:
        await self._link.clear_input()
        await self._link.write(encode(command))
        frame = await self._link.read_until(TERMINATOR)
        for _ in range(_MAX_UNSOLICITED):
            if not (skip_unsolicited and is_unsolicited(frame)):
                break
            frame = await self._link.read_until(TERMINATOR)
        return frame


def _body(frame: bytes) -> str:
    if not frame.endswith(TERMINATOR):
        raise ProtocolError(f"unterminated MT-SICS frame {frame!r}")
    try:
        body = frame[: -len(TERMINATOR)].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"non-ASCII MT-SICS frame {frame!r}") from exc
    # Control characters inside a line (a stray CR or LF, a tab) mean two frames ran together
    # or the line is corrupt; str.isprintable also rejects them.
    if not body.isprintable():
        raise ProtocolError(f"control characters in MT-SICS frame {frame!r}")
    return body


def _fields(frame: bytes) -> list[str]:
    return _body(frame).split()


def _finite_float(number: str, frame: bytes) -> float:
    if not _NUMBER.fullmatch(number):
        raise ProtocolError(f"MT-SICS balance sent invalid number {number!r} in {frame!r}")
    value = float(number)
    if not math.isfinite(value):  # e.g. 400 digits overflow to inf
        raise ProtocolError(f"MT-SICS balance sent out-of-range number {number!r} in {frame!r}")
    return value


def _reply_error(
    command_id: str, fields: list[str], frame: bytes
) -> InstrumentError | ProtocolError:
    match fields:
        case [reply_id, status] if reply_id == command_id and status in _COMMAND_ERRORS:
            return InstrumentError(f"MT-SICS balance, {command_id}: {_COMMAND_ERRORS[status]}")
        case ["ES"]:
            return InstrumentError(f"MT-SICS balance did not recognise command {command_id}: ES")
        case ["EL"]:
            return InstrumentError(f"MT-SICS balance cannot execute {command_id} now: EL")
        case ["ET"]:
            return ProtocolError(f"MT-SICS balance received a corrupted command {command_id}: ET")
        case _:
            return ProtocolError(f"unexpected MT-SICS reply to {command_id}: {frame!r}")
