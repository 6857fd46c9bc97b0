# SPDX-License-Identifier: Apache-2.0
"""The instrument's end of a simulated serial cable: the master side of a pty pair.

The host (the gateway, a test) opens `PtyLine.port`, the slave path, as a serial port with
pyserial; the simulator reads what the host sends and writes replies through the master
side, inside the caller's event loop. Shared by the serial simulators (MT-SICS, SBI,
DL/T 645) so each holds only its protocol.
"""

import asyncio
import os
import tty
from collections.abc import Callable

__all__ = ["PtyLine"]

_CHUNK = 4096


class PtyLine:
    """A pty pair in raw mode whose master side calls `on_data` with every chunk received."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self._master = -1
        self._slave = -1
        self._port = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> str:
        """The slave path to open as a serial port, e.g. ``/dev/pts/7``."""
        if not self._port:
            raise RuntimeError("the simulator is not running; use it as `async with`")
        return self._port

    @property
    def is_open(self) -> bool:
        """Whether the line is open."""
        return self._master >= 0

    def open(self) -> asyncio.AbstractEventLoop:
        """Open the pair and start listening in the running loop; return that loop."""
        self._master, self._slave = os.openpty()
        # Raw mode so that every byte passes unchanged (CR LF; 0x11/0x13 would be XON/XOFF in
        # cooked mode). A pty has no baud rate; it takes whatever the host configures.
        tty.setraw(self._master)
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)  # a host that never reads must not stall us
        # Keeping our slave fd open means the master never sees a hang-up (EIO, endless
        # readiness) while the host closes and reopens the port.
        self._port = os.ttyname(self._slave)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._readable)
        return self._loop

    def write(self, data: bytes) -> bool:
        """Send `data` to the host; False when the host stopped reading and the pty is full."""
        if self._master < 0:
            return False
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            return False
        return written == len(data)

    def close(self) -> None:
        """Stop listening and close both sides; idempotent."""
        if self._loop is not None:
            self._loop.remove_reader(self._master)
            self._loop = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self._port = ""

    def _readable(self) -> None:
        try:
            data = os.read(self._master, _CHUNK)
        except BlockingIOError:
            return
        self._on_data(data)
