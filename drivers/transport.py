# SPDX-License-Identifier: Apache-2.0
"""The seams between drivers and transports: small `typing.Protocol`s, no code.

A link's reply timeout is set when it is opened (as in VISA); drivers never sleep, retry or
lock. Implementations live in `drivers.transports`.
"""

from typing import Protocol


class ByteStream(Protocol):
    """A full-duplex byte stream: a serial line, a TCP socket."""

    async def write(self, data: bytes) -> None:
        """Send all of `data`; raise `TransportError` if the link is gone."""
        ...

    async def read_until(self, separator: bytes = b"\r\n") -> bytes:
        """Return bytes up to and including `separator`.

        Raises:
            TransportTimeoutError: the separator did not arrive within the reply timeout.
            TransportError: the link is gone.
        """
        ...

    async def clear_input(self) -> None:
        """Discard whatever has arrived and not been read (a late reply, line noise)."""
        ...

    async def aclose(self) -> None:
        """Release the link; idempotent."""
        ...


class RegisterBus(Protocol):
    """A Modbus master on one line or connection; serves several device ids in turn."""

    async def read_holding(self, address: int, count: int, *, device_id: int) -> list[int]:
        """Read `count` holding registers (FC 03) from 0-based `address`."""
        ...

    async def read_input(self, address: int, count: int, *, device_id: int) -> list[int]:
        """Read `count` input registers (FC 04) from 0-based `address`."""
        ...

    async def aclose(self) -> None:
        """Release the bus; idempotent."""
        ...


class MessageLink(Protocol):
    """A message-based instrument session (VISA): whole text messages in and out.

    The link adds the write terminator and strips the read terminator; messages are ASCII.
    """

    async def write(self, message: str) -> None:
        """Send one program message (a command, no reply expected).

        Raises:
            TransportTimeoutError: the instrument did not accept it within the timeout.
            TransportError: the link is gone.
        """
        ...

    async def query(self, message: str) -> str:
        """Send one program message and return the instrument's reply, terminator stripped.

        Raises:
            TransportTimeoutError: no (complete) reply within the link's reply timeout.
            TransportError: the link is gone.
            ProtocolError: the reply is not ASCII text.
        """
        ...

    async def aclose(self) -> None:
        """Release the link; idempotent."""
        ...
