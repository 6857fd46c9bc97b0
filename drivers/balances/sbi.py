# SPDX-License-Identifier: Apache-2.0
"""Sartorius balances speaking SBI: the print command ``ESC P`` and the printed line.

Reference: Sartorius operating instructions, chapter "Data interface" (e.g. Cubis MSE, Entris
II, LE, CP, FB series): ``ESC P`` (CR LF optional) asks for one print line of 16 characters
(sign, value right-aligned in positions 3-10, unit in 12-14 and blank while the weight is not
stable, CR LF), or of 22 with a 6-character ID code (``N``, ``G#``, ``T``, ...) in front;
special lines ``High``/``H``/``HH``, ``Low``/``L``/``LL``, ``C``/``Cal.Ext.``, ``Err ###``,
dashes and blank or ``Stat`` status lines. Models shift the columns by one, so lines are
parsed by tokens. The codec (`encode_print`, `parse_reply`) is pure and never imports asyncio,
serial or socket; `SbiBalance` only awaits its injected `ByteStream`.
"""

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

from drivers.errors import DriverError, InstrumentError, ProtocolError
from drivers.reading import RawReading
from drivers.transport import ByteStream

__all__ = ["REQUEST", "TERMINATOR", "SbiBalance", "SbiReply", "encode_print", "parse_reply"]

REQUEST: Final = b"\x1bP\r\n"
TERMINATOR: Final = b"\r\n"

# The value as a balance prints it: an optional sign, digits and a decimal point. Exponents,
# "nan", "inf", digit separators ("1_0", which float() accepts) and the decimal comma are never
# seen in SBI output; a comma could as well be a thousands separator, so it is rejected rather
# than guessed at.
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# In "printer" rather than "SBI" mode a verified balance brackets its non-verified digits
# (e != d): "123.5[6]" indicates 123.56.
_BRACKETED: Final = re.compile(r"([+-]?[\d.]*)\[(\d+)\]")
# Units fill positions 12-14: g kg mg ct lb oz ozt GN dwt tlh tls tlt tlc mom K tol bat MS
# pcs, % and /lb (parts per pound).
_UNIT: Final = re.compile(r"%|/?[A-Za-z]{1,3}")
# ID codes are left-aligned in positions 1-6 and start with a letter: N, G#, T, N1, T2, Qnt,
# Prc, nRef, x-Net, Avg., Tot.cp, ... A 6-character code abuts the sign in position 7.
_IDENTIFIER: Final = re.compile(r"[A-Za-z][!-~]{0,5}")
_IDENTIFIER_AND_SIGN: Final = re.compile(r"([A-Za-z][!-~]{5})([+-][!-~]*)")
_DASHES: Final = re.compile(r"-+")
_ERROR_NUMBER: Final = re.compile(r"\d{1,3}")
_STATUS_CODE: Final = re.compile(r"[0-9A-Za-z]{1,2}")
_SUBSYSTEM_ERROR: Final = re.compile(r"(app|dis|prt)\.?err?")
_SUBSYSTEMS: Final = {"app": "application", "dis": "display", "prt": "printer"}
_NO_VALUE: Final = "no value displayed"
# Special lines, keyed by their casefolded word; "HH"/"LL" are the checkweighing variants.
_SPECIAL_WORDS: Final = {
    "high": "overload: load above the weighing range",
    "h": "overload: load above the weighing range",
    "hh": "overload: load above the weighing range",
    "low": "underload: load below the weighing range (pan missing?)",
    "l": "underload: load below the weighing range (pan missing?)",
    "ll": "underload: load below the weighing range (pan missing?)",
    "c": "calibration/adjustment in progress",
    "cal.ext.": "external calibration in progress",
    "calext": "external calibration in progress",
}
_MODES: Final = ("request", "stream")


@dataclass(frozen=True, slots=True, kw_only=True)
class SbiReply:
    """One printed line carrying a value, as the balance sent it; no correction applied.

    Attributes:
        value: the indication, in `unit`; always finite.
        unit: the unit the balance printed, e.g. ``"g"``; ``""`` when the weight is not
            stable, because SBI blanks the unit then (the unit is then unknown to the codec).
        stable: True when the balance printed a unit.
        identifier: the ID code of a 22-character line (``"N"``, ``"G#"``, ``"T"``, ...), or
            None for a 16-character line.
    """

    value: float
    unit: str
    stable: bool
    identifier: str | None


def encode_print() -> bytes:
    """Return the SBI print command ``ESC P`` framed with CR LF (``1B 50 0D 0A``)."""
    return REQUEST


def parse_reply(frame: bytes) -> SbiReply:
    """Decode one printed line. Pure: bytes in, a value or a `DriverError` out.

    Args:
        frame: one line including its CR LF terminator.

    Returns:
        The value; `SbiReply.unit` is ``""`` and `SbiReply.stable` False while not stable.

    Raises:
        InstrumentError: a special line: overload (``High``, ``H``, ``HH``), underload
            (``Low``, ``L``, ``LL``), calibration in progress (``C``, ``Cal.Ext.``), an error
            number (``Err 270``, ``Stat ERR 270``, ``APP.ERR``), or no value displayed
            (dashes, a blank or ``Stat`` status line).
        ProtocolError: the frame does not parse.
    """
    body = _body(frame)
    tokens = body.split()
    if not tokens:  # a status line: the display shows no value
        raise InstrumentError(f"Sartorius balance: {_NO_VALUE} (blank status line {frame!r})")
    identifier = None
    if not _is_special_word(tokens[0]):
        if _IDENTIFIER.fullmatch(tokens[0]):
            identifier, *tokens = tokens
        elif split := _IDENTIFIER_AND_SIGN.fullmatch(tokens[0]):
            identifier, tokens = split[1], [split[2], *tokens[1:]]
    if tokens and (error := _special_line_error(tokens, frame)) is not None:
        raise error
    return _weight(tokens, identifier, frame)


class SbiBalance:
    """A Sartorius balance on any `ByteStream`; owned by one scheduler task at a time.

    SBI blanks the unit while the weight is not stable, so an unstable reading carries the
    configured `unit`; that is why a stable reply in another unit raises `InstrumentError`
    rather than pass: otherwise unstable readings would be silently mislabelled.

    In ``"request"`` mode each poll flushes input, sends ``ESC P`` and reads one line; auto
    print must be off (a printed line and the reply look alike). Whether the balance answers
    at once or only once stable is a menu setting; in the latter case the link's reply
    timeout must cover the settling time.

    In ``"stream"`` mode (auto print) the balance prints by itself; `read` sends nothing and
    returns the next printed line, not the latest: a `ByteStream` cannot tell whether more
    lines are waiting without waiting a full reply timeout, so poll at least as often as the
    balance prints, or lines queue up. The first line after the link opened, or after a read
    that failed part-way, may be the tail of a line (``"3.45 g"`` of ``"+ 123.45 g"``, a
    wrong but valid-looking value), so it is read and discarded.

    Args:
        link: an open link; for 1200 baud 7O1 models (old defaults) open it with those
            settings.
        unit: the unit the balance displays, e.g. ``"g"``.
        mode: ``"request"`` to send ``ESC P`` per poll, ``"stream"`` for auto print.

    Raises:
        ValueError: `unit` is not a unit symbol or `mode` is unknown.
    """

    def __init__(
        self,
        link: ByteStream,
        *,
        unit: str = "g",
        mode: Literal["request", "stream"] = "request",
    ) -> None:
        if not _UNIT.fullmatch(unit):
            raise ValueError(f"SBI unit must be a unit symbol such as 'g', got {unit!r}")
        if mode not in _MODES:
            raise ValueError(f"SBI mode must be 'request' or 'stream', got {mode!r}")
        self._link = link
        self._unit = unit
        self._mode = mode
        self._at_line_start = False

    async def read(self) -> list[RawReading]:
        """Poll the balance once.

        Returns:
            One reading with source ``"weight"``.

        Raises:
            DriverError: the link failed, the line did not parse or reported a fault, or the
                balance displays another unit than configured.
        """
        if self._mode == "request":
            frame = await self._request()
        else:
            frame = await self._next_printed_line()
        reply = parse_reply(frame)
        if reply.unit and reply.unit != self._unit:
            raise InstrumentError(
                f"Sartorius balance displays {reply.unit!r} but is configured for"
                f" {self._unit!r}: {frame!r}"
            )
        return [
            RawReading(
                source="weight",
                indication=reply.value,
                unit=reply.unit or self._unit,
                stable=reply.stable,
            )
        ]

    async def _request(self) -> bytes:
        await self._link.clear_input()
        await self._link.write(encode_print())
        return await self._link.read_until(TERMINATOR)

    async def _next_printed_line(self) -> bytes:
        if not self._at_line_start:
            await self._link.read_until(TERMINATOR)  # possibly the tail of a line
        # Cleared until a whole line has been read: a timeout or cancellation may strike
        # mid-line, and the next poll must then resynchronise.
        self._at_line_start = False
        frame = await self._link.read_until(TERMINATOR)
        self._at_line_start = True
        return frame


def _body(frame: bytes) -> str:
    if not frame.endswith(TERMINATOR):
        raise ProtocolError(f"unterminated SBI line {frame!r}")
    try:
        body = frame[: -len(TERMINATOR)].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"non-ASCII SBI line {frame!r}") from exc
    # A control character (stray CR or LF, ESC, tab) means two lines ran together or the
    # line is corrupt; str.isprintable also rejects them.
    if not body.isprintable():
        raise ProtocolError(f"control characters in SBI line {frame!r}")
    if not body:
        raise ProtocolError(f"empty SBI line {frame!r}")
    # Position 1 holds the sign, a space or an ID letter; a digit there is the tail of a line.
    if body[0].isdigit() or body[0] in ".[":
        raise ProtocolError(f"SBI line starts inside its value field: {frame!r}")
    return body


def _is_special_word(token: str) -> bool:
    word = token.casefold()
    return word in ("stat", "err") or _special_meaning(word) is not None


def _special_meaning(word: str) -> str | None:
    if subsystem := _SUBSYSTEM_ERROR.fullmatch(word):
        return f"{_SUBSYSTEMS[subsystem[1]]} error"
    return _SPECIAL_WORDS.get(word)


def _special_line_error(tokens: list[str], frame: bytes) -> DriverError | None:
    head, *rest = tokens
    word = head.casefold()
    error: DriverError | None = None
    if word == "stat":  # 22-character special lines: "Stat" then the code
        error = _status_line_error(rest, frame)
    elif word == "err":
        if len(rest) == 1 and _ERROR_NUMBER.fullmatch(rest[0]):
            error = InstrumentError(f"Sartorius balance reports error {head} {rest[0]}")
        else:
            error = ProtocolError(f"unexpected SBI error line {frame!r}")
    elif (meaning := _special_meaning(word)) is not None:
        if rest:
            error = ProtocolError(f"unexpected SBI special line {frame!r}")
        else:
            error = InstrumentError(f"Sartorius balance: {meaning} ({head})")
    elif all(_DASHES.fullmatch(token) for token in tokens) and len("".join(tokens)) > 1:
        error = InstrumentError(f"Sartorius balance: {_NO_VALUE} ({frame!r})")
    return error


def _status_line_error(codes: list[str], frame: bytes) -> DriverError:
    if not codes:
        return InstrumentError(f"Sartorius balance: {_NO_VALUE} (status line {frame!r})")
    if (error := _special_line_error(codes, frame)) is not None:
        return error
    if len(codes) == 1 and _STATUS_CODE.fullmatch(codes[0]):
        return InstrumentError(f"Sartorius balance reports status {codes[0]}: {frame!r}")
    return ProtocolError(f"unexpected SBI status line {frame!r}")


def _weight(tokens: list[str], identifier: str | None, frame: bytes) -> SbiReply:
    sign = ""
    if tokens and tokens[0] in ("+", "-"):
        sign, *tokens = tokens
    match tokens:
        case [number]:
            unit = ""
        case [number, unit] if _UNIT.fullmatch(unit):
            pass
        case _:
            raise ProtocolError(f"unexpected SBI line {frame!r}")
    if sign and number.startswith(("+", "-")):
        raise ProtocolError(f"SBI line has two signs: {frame!r}")
    value = _finite_float(sign + number, frame)
    return SbiReply(value=value, unit=unit, stable=bool(unit), identifier=identifier)


def _finite_float(number: str, frame: bytes) -> float:
    digits = number
    if bracketed := _BRACKETED.fullmatch(number):
        digits = bracketed[1] + bracketed[2]
    if not _NUMBER.fullmatch(digits):
        raise ProtocolError(f"Sartorius balance sent invalid number {number!r} in {frame!r}")
    value = float(digits)
    if not math.isfinite(value):  # e.g. 400 digits overflow to inf
        raise ProtocolError(f"Sartorius balance sent out-of-range number {number!r} in {frame!r}")
    return value
