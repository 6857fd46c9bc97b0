# SPDX-License-Identifier: Apache-2.0
"""`RegisterBus`es over Modbus TCP and Modbus RTU, built on pymodbus' async clients.

Reference: Modbus Application Protocol V1.1b3 (FC 03/04, exception responses, section 7),
Modbus Messaging on TCP/IP Implementation Guide V1.0b (MBAP header, unit id), Modbus over
Serial Line V1.02 (RTU frames, CRC, device ids 1..247, the 3.5-character silence between
frames, section 2.5.1.1); pymodbus 3.16 client API (``read_input_registers(address,
count=..., device_id=...)``). This is one of the few modules that map foreign exceptions to
the drivers' error tree; pymodbus' own retries and automatic reconnects are disabled, because
the scheduler owns retry policy.
"""

import asyncio
import termios
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import ClassVar, Final, Protocol, Self

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import ModbusPDU

from drivers.errors import (
    DriverError,
    InstrumentError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)

__all__ = ["ModbusRtuBus", "ModbusTcpBus", "open_modbus_rtu", "open_modbus_tcp"]

# Exception codes, Modbus Application Protocol V1.1b3 section 7.
_EXCEPTION_CODES: Final = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
_MAX_READ: Final = 125  # registers per FC 03/04 request, V1.1b3 sections 6.3 and 6.4
_ADDRESS_SPACE: Final = 0x10000
_UNLIMITED: Final = 2**62
# Modbus over Serial Line V1.02, 2.5.1.1: frames are separated by 3.5 character times of
# silence; above 19200 baud a fixed 1.75 ms is recommended instead.
_SILENT_CHARACTERS: Final = 3.5
_FIXED_TIMING_ABOVE_BAUD: Final = 19200
_FIXED_SILENCE: Final = 1.75e-3
_PARITIES: Final = frozenset({"N", "E", "O"})
_MIN_FRAME: Final = 4  # device id, function code, two CRC bytes


async def _connect(client: ModbusBaseClient, failure: str) -> None:
    """Open the client's connection or port.

    Raises:
        TransportError: it cannot be opened; the message starts with `failure`.
    """
    try:
        opened = await client.connect()
    except termios.error as exc:
        # pyserial lets a setting the port refuses (parity on some ptys) escape as
        # termios.error, which is no OSError, so pymodbus does not catch it.
        client.close()
        raise TransportError(f"{failure}: the port refuses the line settings: {exc}") from exc
    if not opened:
        client.close()
        raise TransportError(failure)


class _ReadRegisters(Protocol):
    """A pymodbus client's ``read_holding_registers`` or ``read_input_registers``."""

    def __call__(self, address: int, *, count: int, device_id: int) -> Awaitable[ModbusPDU]: ...


class _ModbusBus:
    """What the TCP and RTU buses share: one request at a time, and the error mapping."""

    _KIND: ClassVar[str]
    _CANNOT_CONNECT: ClassVar[str] = "cannot connect to"
    # Modbus device ids: 0 is broadcast (no reply) on a serial line but a valid unit id over
    # TCP, and 248..255 are reserved yet used by TCP devices (255 = "this device").
    _DEVICE_IDS: ClassVar[range] = range(256)

    def __init__(self, client: ModbusBaseClient, *, name: str) -> None:
        self._client = client
        self._name = name
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        """The peer as ``host:port`` (TCP), or the serial port's name (RTU)."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once `aclose` was called."""
        return self._closed

    async def read_holding(self, address: int, count: int, *, device_id: int) -> list[int]:
        """Read `count` holding registers (FC 03) from 0-based `address`.

        Args:
            address: 0-based protocol address of the first register.
            count: number of registers, 1..125.
            device_id: the Modbus device (unit) id: 0..255 over TCP, 1..247 over RTU.

        Returns:
            The register values (0..65535), `count` of them.

        Raises:
            InstrumentError: the device answered with a Modbus exception response.
            TransportTimeoutError: no answer within the bus's timeout.
            TransportError: the bus is closed or the link cannot be (re)established.
            ProtocolError: the answer is garbled (RTU: bytes that fail the CRC check), or
                holds a different function code or number of registers.
            ValueError: an argument is out of range.
        """
        return await self._read(self._client.read_holding_registers, 3, address, count, device_id)

    async def read_input(self, address: int, count: int, *, device_id: int) -> list[int]:
        """Read `count` input registers (FC 04) from 0-based `address`.

        Args:
            address: 0-based protocol address of the first register.
            count: number of registers, 1..125.
            device_id: the Modbus device (unit) id: 0..255 over TCP, 1..247 over RTU.

        Returns:
            The register values (0..65535), `count` of them.

        Raises:
            InstrumentError: the device answered with a Modbus exception response.
            TransportTimeoutError: no answer within the bus's timeout.
            TransportError: the bus is closed or the link cannot be (re)established.
            ProtocolError: the answer is garbled (RTU: bytes that fail the CRC check), or
                holds a different function code or number of registers.
            ValueError: an argument is out of range.
        """
        return await self._read(self._client.read_input_registers, 4, address, count, device_id)

    async def aclose(self) -> None:
        """Close the connection or port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client.close()
        # Let the event loop run the transport's connection_lost callback, which closes the
        # socket, before a caller can close the loop (else: ResourceWarning, unclosed socket).
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _before_request(self) -> None:
        """Wait until the link may carry the next request (RTU: the inter-frame silence)."""

    def _no_reply(
        self,
        what: str,
        device_id: int,  # noqa: ARG002 - the RTU bus needs it
        exc: ModbusIOException,
    ) -> DriverError:
        """Return the error for a request to `device_id` that got no valid reply in time."""
        return TransportTimeoutError(f"{what}: no reply: {exc}")

    async def _read(
        self, request: _ReadRegisters, function_code: int, address: int, count: int, device_id: int
    ) -> list[int]:
        if not 1 <= count <= _MAX_READ:
            raise ValueError(f"count must be 1..{_MAX_READ}, not {count}")
        if address < 0 or address + count > _ADDRESS_SPACE:
            raise ValueError(f"registers {address}..{address + count - 1} are outside 0..65535")
        if device_id not in self._DEVICE_IDS:
            ids = self._DEVICE_IDS
            raise ValueError(f"device id must be {ids.start}..{ids.stop - 1}, not {device_id}")
        what = (
            f"{self._KIND} {self.name} device {device_id}: FC {function_code:02d} read of"
            f" {count} registers at {address:#06x}"
        )
        async with self._lock:
            if self._closed:
                raise TransportError(f"{what}: bus is closed")
            if not self._client.connected:
                await _connect(self._client, f"{what}: {self._CANNOT_CONNECT} {self.name}")
            await self._before_request()
            try:
                response = await request(address, count=count, device_id=device_id)
            except ConnectionException as exc:
                raise TransportError(f"{what}: connection lost: {exc}") from exc
            except ModbusIOException as exc:
                # pymodbus raises this when no (matching) reply came within the timeout; it
                # keeps waiting when the peer closes or resets the connection meanwhile, so
                # tell the two apart afterwards: a lost connection is not a slow device.
                if not self._client.connected:
                    raise TransportError(f"{what}: connection lost: {exc}") from exc
                raise self._no_reply(what, device_id, exc) from exc
        if response.isError():
            code = response.exception_code
            meaning = _EXCEPTION_CODES.get(code, "unknown exception code")
            raise InstrumentError(f"{what}: Modbus exception code {code} ({meaning})")
        if response.function_code != function_code:
            raise ProtocolError(f"{what}: reply has function code {response.function_code}")
        registers = list(response.registers)
        if len(registers) != count:
            raise ProtocolError(f"{what}: asked for {count} registers, got {len(registers)}")
        return registers


class ModbusTcpBus(_ModbusBus):
    """An open Modbus TCP connection to a meter or a TCP-to-RTU gateway.

    Use `open_modbus_tcp` to create one. Several drivers (device ids) may share the bus, each
    from its own task; requests go out strictly one at a time, because a gateway forwards
    them to a half-duplex RS-485 line and many TCP meters serve one request at a time. The
    `asyncio.Lock` here guarantees that, covering the reconnect step too, instead of relying
    on pymodbus' internal transaction lock.

    After the connection drops, the next request reconnects once (no loop, no delay): the
    scheduler's poll period is the retry policy.

    Args:
        client: a connected pymodbus client made with ``retries=0, reconnect_delay=0``.
        host: the peer's host name or address, for messages.
        port: the peer's TCP port, for messages.
    """

    _KIND = "Modbus TCP"

    def __init__(self, client: AsyncModbusTcpClient, *, host: str, port: int) -> None:
        super().__init__(client, name=f"{host}:{port}")


class _RtuLine:
    """What the RTU bus sees of its line: when it was last busy, and the bytes of a reply.

    pymodbus calls `trace_packet` with every request it sends and with its receive buffer
    each time bytes arrive; nothing else in pymodbus exposes the raw bytes or their timing.
    """

    def __init__(self, *, baudrate: int, bytesize: int, parity: str, stopbits: int) -> None:
        bits = 1 + bytesize + (parity != "N") + stopbits  # start, data, parity, stop
        self.character_time = bits / baudrate
        self.silence = (
            _FIXED_SILENCE
            if baudrate > _FIXED_TIMING_ABOVE_BAUD
            else _SILENT_CHARACTERS * self.character_time
        )
        self._quiet_from = 0.0  # time.monotonic() from which the next frame may start
        self._received = b""  # pymodbus' receive buffer as last seen since the last request

    def trace_packet(self, sending: bool, packet: bytes) -> bytes:  # noqa: FBT001 - pymodbus hook
        """Note a frame sent or bytes received; return `packet` unchanged (pymodbus hook)."""
        now = time.monotonic()
        if sending:
            # The request occupies the line for its own wire time after it is written.
            self._quiet_from = now + len(packet) * self.character_time + self.silence
            self._received = b""
        else:
            self._quiet_from = now + self.silence
            self._received = packet
        return packet

    async def wait_for_silence(self) -> None:
        """Return once the line has been silent for 3.5 character times."""
        delay = self._quiet_from - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def garbled(self, device_id: int) -> bytes | None:
        """Return what arrived since the last request if pymodbus could not use it.

        Call after pymodbus gave up waiting for a reply from `device_id`. Returns None if
        nothing arrived, or only a sound frame of another device (a late reply, which
        pymodbus skips): then `device_id` did not answer at all.
        """
        received = self._received
        if not received:
            return None
        stray = (
            len(received) >= _MIN_FRAME
            and received[0] != device_id
            and FramerRTU.check_CRC(received[:-2], int.from_bytes(received[-2:], "big"))
        )
        return None if stray else received


class ModbusRtuBus(_ModbusBus):
    """An open Modbus RTU master on a serial line, usually RS-485 with several devices.

    Use `open_modbus_rtu` to create one. Several drivers (device ids 1..247, any models) may
    share the line, each from its own task; requests go out strictly one at a time, as the
    line is half duplex and only the master may start a transaction.

    Inter-frame silence: pymodbus 3.16 does not keep it (its RTU framer finds frames by
    length and CRC, and its serial transport writes a request as soon as it is made), so the
    bus waits, before each request, until the line has been quiet for 3.5 character times
    (1.75 ms above 19200 baud) since the last byte it sent or received.

    A reply that fails its CRC check is dropped by pymodbus, which keeps waiting; so a
    garbled reply costs the reply timeout like a missing one, and is then reported as a
    `ProtocolError` (bytes came, but no frame) rather than a `TransportTimeoutError`.

    After the port fails (adapter unplugged), the next request reopens it once.

    Args:
        client: a connected pymodbus RTU client made with ``retries=0, reconnect_delay=0``
            and ``trace_packet=line.trace_packet``.
        line: the line monitor that `client` reports to.
        port: the serial port's name, for messages.
    """

    _KIND = "Modbus RTU"
    _CANNOT_CONNECT = "cannot open"
    _DEVICE_IDS = range(1, 248)  # 0 is broadcast, which no device answers; 248..255 reserved

    def __init__(self, client: AsyncModbusSerialClient, line: _RtuLine, *, port: str) -> None:
        super().__init__(client, name=port)
        self._line = line

    @property
    def silence(self) -> float:
        """Seconds of silence kept on the line between frames."""
        return self._line.silence

    async def _before_request(self) -> None:
        await self._line.wait_for_silence()

    def _no_reply(self, what: str, device_id: int, exc: ModbusIOException) -> DriverError:
        if (garbled := self._line.garbled(device_id)) is not None:
            return ProtocolError(
                f"{what}: garbled reply (bad CRC or cut short): {garbled.hex(' ')}"
            )
        return super()._no_reply(what, device_id, exc)


async def open_modbus_tcp(
    host: str,
    port: int = 502,
    *,
    # The reply timeout belongs to the link, set once when it is opened (STYLE.md §5); it is
    # also the connect timeout, and not a deadline for the call, which the caller bounds.
    timeout: float = 1.0,  # noqa: ASYNC109
) -> ModbusTcpBus:
    """Connect to a Modbus TCP server (a meter, or a gateway to an RS-485 line).

    Args:
        host: host name or IP address.
        port: TCP port; 502 is the registered Modbus port.
        timeout: seconds to wait for the connection and, afterwards, for each reply.

    Returns:
        The open bus; close it with `aclose` (or use it as ``async with``).

    Raises:
        TransportError: the connection could not be made within `timeout`.
        ValueError: `timeout` is not positive.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 s, not {timeout!r}")
    client = AsyncModbusTcpClient(
        host,
        port=port,
        timeout=timeout,
        retries=0,  # the scheduler owns retry policy
        reconnect_delay=0,  # no background reconnect task; `_read` reconnects on demand
    )
    # pymodbus drops the connection after a few unanswered requests in a row; behind a
    # TCP-to-RS-485 gateway that would let one dead meter cut off every other device on
    # the bus, so only a connection that is really lost (reset or closed) ends it.
    client.set_max_no_responses(_UNLIMITED)
    await _connect(client, f"Modbus TCP {host}:{port}: cannot connect within {timeout} s")
    return ModbusTcpBus(client, host=host, port=port)


async def open_modbus_rtu(
    port: str,
    *,
    baudrate: int = 9600,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: int = 1,
    timeout: float = 1.0,  # noqa: ASYNC109 - the link's reply timeout, as for TCP
) -> ModbusRtuBus:
    """Open a serial port as the Modbus RTU master of its line.

    Args:
        port: the port's name or pyserial URL, e.g. ``/dev/ttyUSB0``.
        baudrate: bits per second, as set on every device of the line.
        bytesize: data bits; RTU sends 8-bit bytes, so 8 (7 is Modbus ASCII).
        parity: ``"N"``, ``"E"`` or ``"O"``; the standard's default is ``"E"``, yet most
            meters ship with ``"N"``.
        stopbits: 1 or 2.
        timeout: seconds to wait for the port to open and, afterwards, for each reply.

    Returns:
        The open bus; close it with `aclose` (or use it as ``async with``).

    Raises:
        TransportError: the port could not be opened (missing, busy, no permission).
        ValueError: a line setting is out of range.
    """
    if not baudrate > 0:
        raise ValueError(f"baudrate must be > 0, not {baudrate!r}")
    if bytesize != 8:  # noqa: PLR2004 - Modbus over Serial Line V1.02, 2.5.1
        raise ValueError(f"Modbus RTU sends 8 data bits, not {bytesize!r}")
    if parity not in _PARITIES:
        raise ValueError(f"parity must be one of N, E, O, not {parity!r}")
    if stopbits not in {1, 2}:
        raise ValueError(f"stopbits must be 1 or 2, not {stopbits!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 s, not {timeout!r}")
    line = _RtuLine(baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits)
    client = AsyncModbusSerialClient(
        port,
        framer=FramerType.RTU,
        baudrate=baudrate,
        bytesize=bytesize,
        parity=parity,
        stopbits=stopbits,
        timeout=timeout,
        retries=0,  # the scheduler owns retry policy
        reconnect_delay=0,  # no background reconnect task; `_read` reopens on demand
        trace_packet=line.trace_packet,
    )
    # pymodbus counts unanswered requests; one dead device must not cost the whole line.
    client.set_max_no_responses(_UNLIMITED)
    await _connect(client, f"Modbus RTU {port}: cannot open the port")
    return ModbusRtuBus(client, line, port=port)
