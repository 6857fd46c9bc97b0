# SPDX-License-Identifier: Apache-2.0
"""Chinese multi-function energy meters speaking DL/T 645-2007 on RS-485.

Reference: DL/T 645-2007 "Multi-function watt-hour meter communication protocol": frames
``[FE...] 68 A0..A5 68 C L DATA CS 16``, a 12-digit BCD address sent low byte first, DATA
bytes sent +0x33, CS the sum mod 256 from the first 68 to the end of DATA; functions 11H
(read data) and 13H (read address); values packed BCD, low byte first, per the data
identifiers of Appendix A, which live in the data file ``dlt645_items.toml``.
The codec (`encode_*`, `parse_*`, `find_frame`) is pure and never imports asyncio, serial or
socket; `Dlt645Meter` and `read_address` only await an injected `ByteStream`.
"""

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from types import MappingProxyType
from typing import Final, TypeVar

from drivers.errors import InstrumentError, ProtocolError, TransportTimeoutError
from drivers.reading import RawReading
from drivers.transport import ByteStream

__all__ = [
    "BROADCAST",
    "ITEMS",
    "ITEMS_BY_DI",
    "PREAMBLE",
    "WILDCARD",
    "DataItem",
    "Dlt645Meter",
    "Frame",
    "Function",
    "encode_frame",
    "encode_read",
    "encode_read_address",
    "find_frame",
    "parse_address_reply",
    "parse_frame",
    "parse_read_reply",
    "read_address",
]

PREAMBLE: Final = b"\xfe"
BROADCAST: Final = "999999999999"
"""Every meter executes it (time sync, freeze) and none replies."""
WILDCARD: Final = "AAAAAAAAAAAA"
"""Any meter answers, with its own address: for a line with a single meter only."""

_START: Final = 0x68
_END: Final = b"\x16"
_OFFSET: Final = 0x33
_HEADER: Final = 10  # 68 A0..A5 68 C L
_OVERHEAD: Final = 12  # the header, CS and 16
_MAX_PREAMBLE: Final = 4
_DI_LENGTH: Final = 4
_DI_MAX: Final = 0xFFFFFFFF
_BYTE_MAX: Final = 0xFF
_ADDRESS_LENGTH: Final = 6
_SCRAMBLE: Final = bytes((byte + _OFFSET) % 256 for byte in range(256))
_UNSCRAMBLE: Final = bytes((byte - _OFFSET) % 256 for byte in range(256))
_DIGITS: Final = re.compile(r"[0-9]{12}")  # not \d, which also matches non-ASCII digits
# More than a preamble, the longest frame and as much again of line noise without a frame:
# the line is not talking DL/T 645 to us.
_MAX_REPLY: Final = 2 * (_MAX_PREAMBLE + _OVERHEAD + 255)

# Control byte C: direction, exception and follow-up flags above a 5-bit function code.
_REPLY: Final = 0x80
_EXCEPTION: Final = 0x40
_FOLLOWS: Final = 0x20
_FUNCTION: Final = 0x1F

# Bits of the ERR byte of an exception reply. DOMAIN.md lists bits 1 and 2; the others are
# the standard's too and read alike in independent public implementations.
_ERRORS: Final = {
    0x01: "other error",
    0x02: "no such data",
    0x04: "password error or not authorised",
    0x08: "baud rate cannot be changed",
    0x10: "too many annual time zones",
    0x20: "too many daily time periods",
    0x40: "too many tariffs",
}


class Function(IntEnum):
    """Function codes of the control byte (its low 5 bits)."""

    TIME_SYNC = 0x08
    READ = 0x11
    READ_ADDRESS = 0x13
    WRITE = 0x14


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One well-formed DL/T 645 frame (header, length, checksum and end byte checked).

    Attributes:
        address: the 12 address digits as on the nameplate, most significant first, or
            `WILDCARD`.
        control: the control byte C.
        data: DATA with the +0x33 wire offset removed.
    """

    address: str
    control: int
    data: bytes

    @property
    def function(self) -> int:
        """The function code, e.g. ``0x11`` for a read or its reply."""
        return self.control & _FUNCTION

    @property
    def is_reply(self) -> bool:
        """True for a frame sent by a meter (direction bit 7 set)."""
        return bool(self.control & _REPLY)

    @property
    def is_exception(self) -> bool:
        """True for an exception reply (bit 6), whose DATA is one ERR byte."""
        return bool(self.control & _EXCEPTION)

    @property
    def has_follow_up(self) -> bool:
        """True if more frames follow (bit 5)."""
        return bool(self.control & _FOLLOWS)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataItem:
    """One data identifier of the item table ``dlt645_items.toml``.

    Attributes:
        name: the reading's source name, e.g. ``"import_active_energy"``.
        di: the identifier as the standard writes it (DI3 DI2 DI1 DI0), e.g. ``0x00010000``.
        decimals: BCD digits after the decimal point.
        length: bytes of the value on the wire; it holds ``2 * length`` BCD digits.
        signed: bit 7 of the most significant byte is the sign.
        unit: unit of the decoded value, e.g. ``"kWh"``; ``""`` for a pure number.
        quantity: what is measured, e.g. ``"active_energy"``.
        description: free text from the table.
    """

    name: str
    di: int
    decimals: int
    length: int
    signed: bool
    unit: str
    quantity: str
    description: str = ""


def encode_frame(address: str, control: int, data: bytes = b"", *, preamble: int = 0) -> bytes:
    """Frame `data` (plain, without the +0x33 offset) for the meter at `address`.

    Args:
        address: 12 digits as on the nameplate, `BROADCAST` or `WILDCARD`.
        control: the control byte C (0..255).
        data: at most 255 bytes; the +0x33 offset is added here.
        preamble: how many FE wake-up bytes to send first (0..4).

    Returns:
        The bytes to write to the line.

    Raises:
        ValueError: an invalid address, control byte, preamble count, or too much data.
    """
    _check_address(address)
    if not 0 <= control <= _BYTE_MAX:
        raise ValueError(f"DL/T 645 control byte must be 0..255, not {control}")
    if len(data) > _BYTE_MAX:
        raise ValueError(f"DL/T 645 DATA holds at most 255 bytes, not {len(data)}")
    if not 0 <= preamble <= _MAX_PREAMBLE:
        raise ValueError(f"DL/T 645 preamble is 0..{_MAX_PREAMBLE} FE bytes, not {preamble}")
    head = bytes([_START, *bytes.fromhex(address)[::-1], _START, control, len(data)])
    body = head + data.translate(_SCRAMBLE)
    return PREAMBLE * preamble + body + bytes([sum(body) % 256]) + _END


def encode_read(address: str, di: int | bytes, *, preamble: int = 4) -> bytes:
    """Encode a read request (11H) for one data identifier.

    Args:
        address: the meter's 12 digits as on the nameplate, or `WILDCARD`.
        di: the identifier as the standard writes it: ``0x00010000`` or
            ``bytes.fromhex("00010000")`` (DI3 first; the wire carries DI0 first).
        preamble: how many FE bytes to send first; real masters send 4.

    Returns:
        The request, e.g. ``68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16``.

    Raises:
        ValueError: a broadcast or invalid address, or an invalid `di` or `preamble`.
    """
    if address == BROADCAST:
        raise ValueError("DL/T 645 meters do not reply to a broadcast read; give an address")
    return encode_frame(
        address, Function.READ, _di_value(di).to_bytes(_DI_LENGTH, "little"), preamble=preamble
    )


def encode_read_address(*, preamble: int = 4) -> bytes:
    """Encode a read-address request (13H) to `WILDCARD`, for a line with one meter.

    Raises:
        ValueError: `preamble` is not 0..4.
    """
    return encode_frame(WILDCARD, Function.READ_ADDRESS, preamble=preamble)


def find_frame(buffer: bytes) -> tuple[bytes | None, bytes]:
    """Find the first complete frame in bytes received so far. Pure and total.

    Bytes before a frame start ``68 A0..A5 68`` (preamble, line noise) are skipped; the
    length byte L then tells where the frame ends. The frame is not checked: a corrupted
    one is still cut out, so that `parse_frame` reports it at once.

    Args:
        buffer: the bytes received, in order.

    Returns:
        ``(frame, rest)``: the frame's bytes (from its first 68 to its last byte) and the
        bytes after it; or ``(None, rest)`` where `rest` is what may still begin a frame,
        to which later bytes are to be appended.
    """
    start = buffer.find(_START)
    while start >= 0:
        if len(buffer) < start + _HEADER:
            return None, buffer[start:]
        if buffer[start + 7] == _START:
            end = start + _OVERHEAD + buffer[start + 9]
            if len(buffer) < end:
                return None, buffer[start:]
            return buffer[start:end], buffer[end:]
        start = buffer.find(_START, start + 1)
    return None, b""


def parse_frame(data: bytes) -> Frame:
    """Check and decode one frame. Pure: bytes in, a `Frame` or a `ProtocolError` out.

    Args:
        data: one whole frame, optionally preceded by any number of FE bytes.

    Returns:
        The frame with its address in nameplate order and DATA without the +0x33 offset.

    Raises:
        ProtocolError: wrong start bytes or length, missing 16, bad checksum, or an
            address that is neither BCD nor the wildcard.
    """
    body = data.lstrip(PREAMBLE)
    if len(body) < _OVERHEAD:
        raise ProtocolError(f"DL/T 645 frame {_hex(data)} is shorter than 12 bytes")
    if body[0] != _START or body[7] != _START:
        raise ProtocolError(f"DL/T 645 frame {_hex(data)} does not start 68 A0..A5 68")
    if len(body) != _OVERHEAD + body[9]:
        raise ProtocolError(
            f"DL/T 645 frame {_hex(data)} has the wrong length: L={body[9]} means"
            f" {_OVERHEAD + body[9]} bytes from 68 to 16, got {len(body)}"
        )
    if body[-1:] != _END:
        raise ProtocolError(f"DL/T 645 frame {_hex(data)} does not end with 16")
    if (checksum := sum(body[:-2]) % 256) != body[-2]:
        raise ProtocolError(
            f"DL/T 645 frame {_hex(data)} has a bad checksum {body[-2]:02X},"
            f" expected {checksum:02X}"
        )
    return Frame(
        address=_parse_address(body[1:7], data),
        control=body[8],
        data=body[_HEADER:-2].translate(_UNSCRAMBLE),
    )


def parse_read_reply(frame: Frame, di: int | bytes, *, address: str | None = None) -> float:
    """Decode the reply to a read (11H) of `di`, a data identifier of `ITEMS`.

    Args:
        frame: the reply, from `parse_frame`.
        di: the identifier that was read (as in `encode_read`).
        address: the address the request went to; the reply must come from it (any meter
            answers `WILDCARD`). None skips the check.

    Returns:
        The value in the item's unit; negative only for signed items.

    Raises:
        InstrumentError: an exception reply (D1H), e.g. no such data or a password error.
        ProtocolError: not a read reply, from another meter, for another identifier, of
            the wrong length, with follow-up frames, or with a value that is not BCD.
        ValueError: `di` is not in the item table (the caller's mistake).
    """
    item = _item(di)
    _check_reply(frame, Function.READ, address, f"{item.name} (DI {item.di:08X})")
    if len(frame.data) != _DI_LENGTH + item.length:
        raise ProtocolError(
            f"DL/T 645 meter {frame.address}, {item.name}: expected {_DI_LENGTH}+{item.length}"
            f" DATA bytes, got {len(frame.data)}: {_hex(frame.data)}"
        )
    if (reply_di := int.from_bytes(frame.data[:_DI_LENGTH], "little")) != item.di:
        raise ProtocolError(
            f"DL/T 645 meter {frame.address} answered DI {reply_di:08X}, not {item.di:08X}"
        )
    return _parse_value(frame.data[_DI_LENGTH:], item, frame.address)


def parse_address_reply(frame: Frame) -> str:
    """Decode the reply to a read-address request (13H): the meter's 12 digits.

    Raises:
        InstrumentError: an exception reply.
        ProtocolError: not a read-address reply, or an address that is not BCD or differs
            from the frame's header.
    """
    _check_reply(frame, Function.READ_ADDRESS, None, "its address")
    if len(frame.data) != _ADDRESS_LENGTH:
        raise ProtocolError(f"DL/T 645 address reply with DATA {_hex(frame.data)}, not 6 bytes")
    if (address := _parse_address(frame.data, frame.data)) != frame.address:
        raise ProtocolError(f"DL/T 645 meter {frame.address} replied address {address}")
    return address


class Dlt645Meter:
    """A DL/T 645-2007 meter on a `ByteStream` (an RS-485 line, possibly shared).

    One `read` sends one read request per source, strictly one after the other, each
    answered before the next is sent. Owned by one scheduler task at a time, which also
    serialises the meters of one line; no retries, sleeps or locks.

    Args:
        link: the line, opened with the meter's settings (usually 2400 baud 8E1) and a reply
            timeout of about 1 s.
        address: the meter's 12 digits as on the nameplate, or `WILDCARD` if it is alone on
            the line.
        sources: names of `ITEMS` to read, in the order readings are returned.

    Raises:
        ValueError: an invalid or broadcast address, or no, unknown (the message lists the
            valid names) or repeated sources.
    """

    def __init__(self, link: ByteStream, *, address: str, sources: Sequence[str]) -> None:
        _check_address(address)
        if address == BROADCAST:
            raise ValueError("DL/T 645 meters do not reply to the broadcast address")
        if not sources:
            raise ValueError(f"DL/T 645 meter {address}: no sources; valid: {', '.join(ITEMS)}")
        if unknown := [name for name in sources if name not in ITEMS]:
            raise ValueError(
                f"DL/T 645 meter {address}: no data item {', '.join(map(repr, unknown))};"
                f" valid: {', '.join(ITEMS)}"
            )
        if len(set(sources)) != len(sources):
            raise ValueError(f"DL/T 645 meter {address}: repeated source in {list(sources)}")
        self._link = link
        self._address = address
        self._requests = tuple(
            (ITEMS[name], encode_read(address, ITEMS[name].di)) for name in sources
        )

    @property
    def address(self) -> str:
        """The meter's address as configured."""
        return self._address

    async def read(self) -> list[RawReading]:
        """Read every source once.

        Returns:
            One reading per source, in the order given, in the item's unit.

        Raises:
            TransportTimeoutError: no reply within the link's timeout.
            ProtocolError: a garbled reply (it is reported once the timeout has passed, as
                the meter may still be talking), or one that does not parse.
            InstrumentError: the meter answered with an exception (e.g. no such data).
            TransportError: the link is gone.
        """
        readings: list[RawReading] = []
        for item, request in self._requests:
            frame = await _transact(self._link, request, f"DL/T 645 meter {self._address}")
            indication = parse_read_reply(frame, item.di, address=self._address)
            readings.append(RawReading(source=item.name, indication=indication, unit=item.unit))
        return readings


async def read_address(link: ByteStream) -> str:
    """Ask the only meter on `link` for its address (13H to `WILDCARD`), to commission it.

    Raises:
        DriverError: as `Dlt645Meter.read`; with several meters the replies collide.
    """
    frame = await _transact(link, encode_read_address(), "DL/T 645 meter at the wildcard")
    return parse_address_reply(frame)


async def _transact(link: ByteStream, request: bytes, who: str) -> Frame:
    await link.clear_input()
    await link.write(request)
    # 16 ends every frame but may also occur inside one: read up to each 16 until the
    # length byte says a whole frame has arrived.
    received = b""
    while len(received) <= _MAX_REPLY:
        try:
            received += await link.read_until(_END)
        except TransportTimeoutError as exc:
            if received.strip(PREAMBLE):
                raise ProtocolError(f"{who}: garbled reply {_hex(received)}") from exc
            raise TransportTimeoutError(f"{who}: no reply: {exc}") from exc
        frame, _ = find_frame(received)
        if frame is not None:
            try:
                return parse_frame(frame)
            except ProtocolError as exc:
                raise ProtocolError(f"{who}: {str(exc).removeprefix('DL/T 645 ')}") from exc
    raise ProtocolError(f"{who}: {len(received)} bytes without a frame: {_hex(received)}")


def _check_address(address: str) -> None:
    if address != WILDCARD and not _DIGITS.fullmatch(address):
        raise ValueError(f"DL/T 645 address must be 12 digits or {WILDCARD}, not {address!r}")


def _parse_address(raw: bytes, frame: bytes) -> str:
    address = raw[::-1].hex().upper()
    if address != WILDCARD and not address.isdigit():
        raise ProtocolError(f"DL/T 645 frame {_hex(frame)}: address {address} is not BCD")
    return address


def _di_value(di: int | bytes) -> int:
    if isinstance(di, bytes):
        if len(di) != _DI_LENGTH:
            raise ValueError(f"a DL/T 645 data identifier has 4 bytes, not {_hex(di)}")
        return int.from_bytes(di, "big")
    if not 0 <= di <= _DI_MAX:
        raise ValueError(f"a DL/T 645 data identifier is 0..FFFFFFFF, not {di:X}")
    return di


def _item(di: int | bytes) -> DataItem:
    value = _di_value(di)
    if (item := ITEMS_BY_DI.get(value)) is None:
        raise ValueError(f"DI {value:08X} is not in the DL/T 645 item table")
    return item


def _check_reply(frame: Frame, function: Function, address: str | None, what: str) -> None:
    if not frame.is_reply:
        raise ProtocolError(
            f"DL/T 645 frame to {frame.address} is a request (C={frame.control:02X}),"
            " not a reply (is the adapter echoing?)"
        )
    if frame.function != function:
        raise ProtocolError(
            f"DL/T 645 meter {frame.address} replied to function {frame.function:02X},"
            f" not {function:02X} (C={frame.control:02X})"
        )
    if frame.address == WILDCARD:  # a meter replies with its own address, also to AA...AA
        raise ProtocolError(f"DL/T 645 reply from the wildcard address {WILDCARD}")
    if address not in (None, WILDCARD, frame.address):
        raise ProtocolError(f"DL/T 645 reply from meter {frame.address}, not {address}")
    if frame.is_exception:
        if len(frame.data) != 1:
            raise ProtocolError(
                f"DL/T 645 meter {frame.address}: exception reply with DATA"
                f" {_hex(frame.data)}, not one ERR byte"
            )
        error = frame.data[0]
        meanings = [text for bit, text in _ERRORS.items() if error & bit] or ["no reason"]
        raise InstrumentError(
            f"DL/T 645 meter {frame.address} refused to read {what}:"
            f" {'; '.join(meanings)} (ERR={error:02X})"
        )
    if frame.has_follow_up:
        raise ProtocolError(
            f"DL/T 645 meter {frame.address} announced follow-up frames (C={frame.control:02X})"
            f" for {what}, which fits in one"
        )


def _parse_value(raw: bytes, item: DataItem, address: str) -> float:
    digits = bytearray(raw[::-1])  # most significant byte first
    negative = item.signed and (digits[0] & 0x80) != 0
    if item.signed:
        digits[0] &= 0x7F
    if not (text := digits.hex()).isdigit():
        raise ProtocolError(
            f"DL/T 645 meter {address}, {item.name}: value {_hex(raw[::-1])} is not BCD"
        )
    magnitude, scale = int(text), int(10**item.decimals)
    # int / int is correctly rounded: 120642 / 100 is the float nearest to 1206.42.
    return (-magnitude if negative else magnitude) / scale


def _hex(data: bytes) -> str:
    return data.hex(" ").upper() or "(none)"


# --- the item table: data identifiers as a data file --------------------------------------

_T = TypeVar("_T")
_TABLE_VERSION: Final = 1
_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_FORMAT: Final = re.compile(r"X+(?:\.(X+))?")
_ITEM_KEYS: Final = frozenset({"di", "format", "bytes", "signed", "unit", "quantity"})
_MAX_VALUE_LENGTH: Final = 8  # 16 digits: still exact in a float


def _field(table: Mapping[str, object], key: str, kind: type[_T], where: str) -> _T:
    value = table.get(key)
    # bool is an int in Python, but `bytes = true` is a typo, not a length.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {key} must be {kind.__name__}, not {value!r}")
    return value


def _parse_item(name: str, entry: object, where: str) -> DataItem:
    if not _NAME.fullmatch(name) or not isinstance(entry, dict):
        raise ValueError(f"{where}: entries are [items.<lower_case_name>] tables")
    if unknown := sorted(set(entry) - _ITEM_KEYS - {"description"}):
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    di = _field(entry, "di", int, where)
    text = _field(entry, "format", str, where)
    length = _field(entry, "bytes", int, where)
    if not 0 <= di <= _DI_MAX:
        raise ValueError(f"{where}: di {di:#x} is not 4 bytes")
    if not (form := _FORMAT.fullmatch(text)) or text.count("X") != 2 * length:
        raise ValueError(f"{where}: format {text!r} must have 2 * bytes X digits, one '.'")
    if not 1 <= length <= _MAX_VALUE_LENGTH:
        raise ValueError(f"{where}: bytes must be 1..{_MAX_VALUE_LENGTH}, not {length}")
    return DataItem(
        name=name,
        di=di,
        decimals=len(form.group(1) or ""),
        length=length,
        signed=_field(entry, "signed", bool, where),
        unit=_field(entry, "unit", str, where),
        quantity=_field(entry, "quantity", str, where),
        description=_field({"description": ""} | entry, "description", str, where),
    )


def _parse_items(text: str, *, source: str) -> Mapping[str, DataItem]:
    """Parse an item table (format: see the header of ``dlt645_items.toml``)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"DL/T 645 item table {source}: not valid TOML: {exc}") from exc
    header, entries = document.get("table"), document.get("items")
    if (
        not isinstance(header, dict)
        or header.get("version") != _TABLE_VERSION
        or not isinstance(header.get("standard"), str)
        or not isinstance(header.get("reference", ""), str)
        or set(header) - {"version", "standard", "reference"}
    ):
        raise ValueError(
            f"DL/T 645 item table {source}: needs [table] version = {_TABLE_VERSION}, standard"
            " and an optional reference"
        )
    if not isinstance(entries, dict) or not entries or set(document) - {"table", "items"}:
        raise ValueError(f"DL/T 645 item table {source}: needs [items.<name>] tables only")
    items = {
        name: _parse_item(name, entry, f"DL/T 645 item table {source}, {name}")
        for name, entry in entries.items()
    }
    if len({item.di for item in items.values()}) != len(items):
        raise ValueError(f"DL/T 645 item table {source}: a data identifier is listed twice")
    return MappingProxyType(items)


# Package data read once at import; a broken shipped table must fail loudly and early.
ITEMS: Final = _parse_items(
    (resources.files("drivers.meters") / "dlt645_items.toml").read_text(encoding="utf-8"),
    source="drivers/meters/dlt645_items.toml",
)
"""The data items metrogate reads, by name (a read-only mapping, in file order)."""
ITEMS_BY_DI: Final[Mapping[int, DataItem]] = MappingProxyType(
    {item.di: item for item in ITEMS.values()}
)
"""The same items by data identifier, e.g. ``ITEMS_BY_DI[0x00010000]``."""
