# SPDX-License-Identifier: Apache-2.0
"""Simulated DL/T 645-2007 energy meters sharing one line (a pty pair), for tests and demos.

Reference: DL/T 645-2007 (read 11H, read address 13H, exception replies carrying an ERR
byte) with the data identifiers of ``drivers/meters/dlt645_items.toml``. Unlike the PyPI
package ``dlt645`` it behaves as real meters do: the address goes low byte first on the
wire, a meter stays silent for other addresses and for the broadcast address, and every
reply carries the meter's own address. Values are packed here, independently of the
driver's decoder, so that a round trip tests both. It runs inside the caller's event loop
(``loop.add_reader`` on the pty master), so it needs no thread; for tests, demos and
benchmarks only, never imported at run time.
"""

import math
import re
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self

import numpy as np

from drivers.errors import ProtocolError
from drivers.meters.dlt645 import (
    BROADCAST,
    ITEMS,
    ITEMS_BY_DI,
    WILDCARD,
    DataItem,
    Frame,
    Function,
    encode_frame,
    find_frame,
    parse_frame,
)
from drivers.sim.pty import PtyLine

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "Dlt645Simulator",
    "Fault",
    "encode_exception_reply",
    "encode_read_reply",
    "encode_value",
]

Fault = Literal["silent", "garbage", "bad_checksum", "exception"]
"""What a simulated meter does wrong; see `Dlt645Simulator.fault`."""

_REPLY: Final = 0x80
_EXCEPTION: Final = 0x40
_SIGN: Final = 0x80
_ERR_OTHER: Final = 0x01
_ERR_NO_DATA: Final = 0x02
_ERR_PASSWORD: Final = 0x04
_PREAMBLE: Final = 4  # FE bytes before every reply, as real meters send
_DI_LENGTH: Final = 4
_BITS_PER_BYTE: Final = 11  # 8E1: start bit, 8 data bits, parity, stop bit
_MAX_BUFFER: Final = 1024  # a host sending noise without frames must not grow it forever
_ADDRESS: Final = re.compile(r"[0-9]{12}")


def encode_value(item: DataItem, value: float) -> bytes:
    """Pack `value` as a meter does: BCD, low byte first, sign in bit 7 of the top byte.

    Args:
        item: the data item, giving the length, decimals and signedness.
        value: in the item's unit; rounded to the item's decimals.

    Returns:
        ``item.length`` bytes, without the +0x33 wire offset.

    Raises:
        ValueError: `value` is not finite, negative for an unsigned item, or too large for
            the item's format (a signed item's top digit is 0..7).
    """
    if not math.isfinite(value):
        raise ValueError(f"{item.name}: cannot send {value}")
    count = round(value * 10**item.decimals)
    digits = 2 * item.length
    limit = 8 * 10 ** (digits - 1) if item.signed else 10**digits
    if abs(count) >= limit or (count < 0 and not item.signed):
        raise ValueError(f"{item.name}: {value} does not fit its format")
    packed = bytearray.fromhex(f"{abs(count):0{digits}d}")
    if count < 0:
        packed[0] |= _SIGN
    return bytes(packed[::-1])


def encode_read_reply(address: str, item: DataItem, value: float) -> bytes:
    """Encode a meter's normal reply (91H) to a read of `item`, with 4 FE bytes first.

    Raises:
        ValueError: as `encode_value`, or an invalid address.
    """
    data = item.di.to_bytes(_DI_LENGTH, "little") + encode_value(item, value)
    return encode_frame(address, _REPLY | Function.READ, data, preamble=_PREAMBLE)


def encode_exception_reply(address: str, function: int, error: int) -> bytes:
    """Encode a meter's exception reply (e.g. D1H) carrying one ERR byte, 4 FE bytes first.

    Raises:
        ValueError: an invalid address, function (0..31) or ERR byte.
    """
    return encode_frame(
        address, _REPLY | _EXCEPTION | function, bytes([error]), preamble=_PREAMBLE
    )


class Dlt645Simulator:
    """Several DL/T 645 meters on one simulated RS-485 line; use as ``async with``.

    A meter answers a frame sent to its address, or to `WILDCARD` when it is the only meter
    (several meters would collide, so the simulator stays silent then). Nobody answers the
    broadcast address, other addresses, replies or corrupted frames. A read of an item the
    meter has no value for gets an exception reply with ERR bit 1 (no such data); other
    functions get ERR bit 0 (other error).

    Args:
        meters: meter address (12 digits) -> item name (see `ITEMS`) -> value in the
            item's unit.
        baudrate: if given, each reply is written once the request and the reply would have
            taken their time on a real line (11 bits a byte, as for 8E1), so that benchmarks
            can be measured against that bound; if None, replies are written at once.
        seed: seed of the garbage generator, for reproducible runs.

    Raises:
        ValueError: no meters, an invalid meter address, an unknown item or a value that does
            not fit its item's format.

    Attributes:
        fault: meter address -> None for a healthy meter, or what it does for every request
            until reset: ``"silent"`` (no reply), ``"garbage"`` (bytes that hold no frame,
            ending in 16), ``"bad_checksum"`` (the right reply with CS off by one) or
            ``"exception"`` (reads answered D1H with ERR bit 2, password error).
        served: (address, item name, value) of every normal read reply actually written,
            the value rounded as sent.
        requests: well-formed request frames received, by the address they were sent to
            (any address, including the broadcast and the wildcard).
    """

    def __init__(
        self,
        meters: Mapping[str, Mapping[str, float]],
        *,
        baudrate: int | None = None,
        seed: int = 0,
    ) -> None:
        if not meters:
            raise ValueError("Dlt645Simulator needs at least one meter")
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baudrate must be positive, not {baudrate}")
        self._meters: dict[str, dict[str, float]] = {}
        for address, values in meters.items():
            if not _ADDRESS.fullmatch(address) or address == BROADCAST:
                raise ValueError(f"a meter address is 12 digits, not broadcast: {address!r}")
            self._meters[address] = {}
            for name, value in values.items():
                self.set(address, name, value)
        self.baudrate = baudrate
        self.fault: dict[str, Fault | None] = dict.fromkeys(self._meters)
        self.served: list[tuple[str, str, float]] = []
        self.requests: Counter[str] = Counter()
        self._rng = np.random.default_rng(seed)
        self._buffer = b""
        self._timers: set[asyncio.TimerHandle] = set()
        self._pty = PtyLine(self._on_data)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> str:
        """The pty slave path to open as a serial port, e.g. ``/dev/pts/7``."""
        return self._pty.port

    def set(self, address: str, name: str, value: float) -> None:
        """Set the value meter `address` reports for item `name`, in the item's unit.

        Raises:
            ValueError: an unknown meter or item, or a value that does not fit the item.
        """
        if address not in self._meters:
            raise ValueError(f"no simulated meter {address!r}; meters: {', '.join(self._meters)}")
        if (item := ITEMS.get(name)) is None:
            raise ValueError(f"no DL/T 645 item {name!r}; valid: {', '.join(ITEMS)}")
        encode_value(item, value)
        self._meters[address][name] = float(value)

    async def __aenter__(self) -> Self:
        self._loop = self._pty.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._loop = None
        self._pty.close()

    def _on_data(self, data: bytes) -> None:
        self._buffer += data
        while True:
            frame, rest = find_frame(self._buffer)
            if frame is None:
                self._buffer = rest[-_MAX_BUFFER:]
                return
            # Bytes on the wire for this request, counting its preamble and any noise.
            wire_bytes = len(self._buffer) - len(rest)
            self._buffer = rest
            self._answer(frame, wire_bytes)

    def _answer(self, raw: bytes, wire_bytes: int) -> None:
        try:
            request = parse_frame(raw)
        except ProtocolError:
            return  # a meter ignores a frame it cannot read
        if request.is_reply:
            return  # another meter's reply on the shared line
        self.requests[request.address] += 1
        address = self._addressee(request.address)
        if address is None or self.fault[address] == "silent":
            return
        reply, served = self._reply(address, request)
        if self.fault[address] == "garbage":
            # 0x20..0x5F holds neither 68 nor 16 nor FE, so no frame can be found in it.
            noise = self._rng.integers(0x20, 0x60, size=12, dtype=np.uint8).tobytes()
            reply, served = noise + b"\x16", None
        elif self.fault[address] == "bad_checksum":
            reply, served = reply[:-2] + bytes([(reply[-2] + 1) % 256]) + reply[-1:], None
        if self.baudrate is None or self._loop is None:
            self._send(reply, served)
            return
        delay = (wire_bytes + len(reply)) * _BITS_PER_BYTE / self.baudrate

        def send() -> None:
            self._timers.discard(timer)
            self._send(reply, served)

        timer = self._loop.call_later(delay, send)
        self._timers.add(timer)

    def _addressee(self, address: str) -> str | None:
        if address in self._meters:
            return address
        if address == WILDCARD and len(self._meters) == 1:
            return next(iter(self._meters))
        return None  # another meter's, the broadcast address, or a wildcard that would collide

    def _reply(self, address: str, request: Frame) -> tuple[bytes, tuple[str, str, float] | None]:
        match request.function:
            case Function.READ if len(request.data) == _DI_LENGTH:
                if self.fault[address] == "exception":
                    return encode_exception_reply(address, Function.READ, _ERR_PASSWORD), None
                item = ITEMS_BY_DI.get(int.from_bytes(request.data, "little"))
                values = self._meters[address]
                if item is None or item.name not in values:
                    return encode_exception_reply(address, Function.READ, _ERR_NO_DATA), None
                value = values[item.name]
                scale = 10**item.decimals
                sent = round(value * scale) / scale  # what the driver will decode
                return encode_read_reply(address, item, value), (address, item.name, sent)
            case Function.READ_ADDRESS:
                data = bytes.fromhex(address)[::-1]
                control = _REPLY | Function.READ_ADDRESS
                return encode_frame(address, control, data, preamble=_PREAMBLE), None
            case _:
                return encode_exception_reply(address, request.function, _ERR_OTHER), None

    def _send(self, data: bytes, served: tuple[str, str, float] | None) -> None:
        if not self._pty.write(data):  # closed, or the host stopped reading: dropped
            return
        if served is not None:
            self.served.append(served)
