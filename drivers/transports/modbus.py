# SPDX-License-Identifier: Apache-2.0
"""A `RegisterBus` over Modbus TCP, built on pymodbus' `AsyncModbusTcpClient`.

Reference: Modbus Application Protocol V1.1b3 (FC 03/04, exception responses, section 7)
and Modbus Messaging on TCP/IP Implementation Guide V1.0b (MBAP header, unit id); pymodbus
3.16 client API (``read_input_registers(address, count=..., device_id=...)``). This is one
of the few modules that map foreign exceptions to the drivers' error tree; pymodbus' own
retries and automatic reconnects are disabled, because the scheduler owns retry policy.
"""

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import Final, Protocol, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.errors import InstrumentError, ProtocolError, TransportError, TransportTimeoutError

__all__ = ["ModbusTcpBus", "open_modbus_tcp"]

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
_MAX_DEVICE_ID: Final = 255
_UNLIMITED: Final = 2**62


class _ReadRegisters(Protocol):
    """`AsyncModbusTcpClient.read_holding_registers` or `.read_input_registers`."""

    def __call__(self, address: int, *, count: int, device_id: int) -> Awaitable[ModbusPDU]: ...


class ModbusTcpBus:
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

    def __init__(self, client: AsyncModbusTcpClient, *, host: str, port: int) -> None:
        self._client = client
        self._host = host
        self._port = port
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        """The peer as ``host:port``."""
        return f"{self._host}:{self._port}"

    @property
    def closed(self) -> bool:
        """True once `aclose` was called."""
        return self._closed

    async def read_holding(self, address: int, count: int, *, device_id: int) -> list[int]:
        """Read `count` holding registers (FC 03) from 0-based `address`.

        Args:
            address: 0-based protocol address of the first register.
            count: number of registers, 1..125.
            device_id: the Modbus device (unit) id, 0..255.

        Returns:
            The register values (0..65535), `count` of them.

        Raises:
            InstrumentError: the device answered with a Modbus exception response.
            TransportTimeoutError: no answer within the bus's timeout.
            TransportError: the bus is closed or the connection cannot be (re)established.
            ProtocolError: the answer holds a different number of registers.
            ValueError: an argument is out of range.
        """
        return await self._read(self._client.read_holding_registers, 3, address, count, device_id)

    async def read_input(self, address: int, count: int, *, device_id: int) -> list[int]:
        """Read `count` input registers (FC 04) from 0-based `address`.

        Args:
            address: 0-based protocol address of the first register.
            count: number of registers, 1..125.
            device_id: the Modbus device (unit) id, 0..255.

        Returns:
            The register values (0..65535), `count` of them.

        Raises:
            InstrumentError: the device answered with a Modbus exception response.
            TransportTimeoutError: no answer within the bus's timeout.
            TransportError: the bus is closed or the connection cannot be (re)established.
            ProtocolError: the answer holds a different number of registers.
            ValueError: an argument is out of range.
        """
        return await self._read(self._client.read_input_registers, 4, address, count, device_id)

    async def aclose(self) -> None:
        """Close the connection; idempotent."""
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

    async def _read(
        self, request: _ReadRegisters, function_code: int, address: int, count: int, device_id: int
    ) -> list[int]:
        if not 1 <= count <= _MAX_READ:
            raise ValueError(f"count must be 1..{_MAX_READ}, not {count}")
        if address < 0 or address + count > _ADDRESS_SPACE:
            raise ValueError(f"registers {address}..{address + count - 1} are outside 0..65535")
        if not 0 <= device_id <= _MAX_DEVICE_ID:
            raise ValueError(f"device id must be 0..{_MAX_DEVICE_ID}, not {device_id}")
        what = (
            f"Modbus TCP {self.name} device {device_id}: FC {function_code:02d} read of"
            f" {count} registers at {address:#06x}"
        )
        async with self._lock:
            if self._closed:
                raise TransportError(f"{what}: bus is closed")
            if not self._client.connected and not await self._client.connect():
                raise TransportError(f"{what}: cannot connect to {self.name}")
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
                raise TransportTimeoutError(f"{what}: no reply: {exc}") from exc
        if response.isError():
            code = response.exception_code
            meaning = _EXCEPTION_CODES.get(code, "unknown exception code")
            raise InstrumentError(f"{what}: Modbus exception code {code} ({meaning})")
        registers = list(response.registers)
        if len(registers) != count:
            raise ProtocolError(f"{what}: asked for {count} registers, got {len(registers)}")
        return registers


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
    if not await client.connect():
        client.close()
        raise TransportError(f"Modbus TCP {host}:{port}: cannot connect within {timeout} s")
    return ModbusTcpBus(client, host=host, port=port)
