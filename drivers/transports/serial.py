# SPDX-License-Identifier: Apache-2.0
"""A `ByteStream` over a serial line (RS-232/RS-485 adapter, pty, ``socket://``, ``loop://``).

Reference: pyserial 3.5 API (``serial.serial_for_url``). pyserial-asyncio is unmaintained, so
plain pyserial runs in one dedicated worker thread per port: blocking reads never block the
event loop, and as the single worker runs calls in submission order they never interleave.
This is one of the few modules that catch `OSError` (`serial.SerialException` is one).
"""

import asyncio
import termios
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Self, TypeVar

import serial

from drivers.errors import TransportError, TransportTimeoutError

# pyserial raises termios.error (not an OSError) from tcflush/tcsetattr on a port whose device
# vanished (an unplugged USB adapter: EIO) or that refuses a setting (EINVAL).
_PORT_ERRORS = (OSError, termios.error)

__all__ = ["SerialStream", "open_serial"]

_T = TypeVar("_T")


class SerialStream:
    """An open serial port owned by one worker thread; use `open_serial` to create one.

    A call cancelled by its caller (``asyncio.timeout``) still finishes in the worker, within
    the reply timeout, before the next call starts; the next poll's `clear_input` drops
    whatever its reply left behind.

    Args:
        port: the open pyserial port (pyserial is untyped: mypy sees `Any`).
        executor: the single-thread executor that owns `port`; shut down by `aclose`.
        name: the port name or URL, for error messages.
        timeout: the reply timeout in seconds that `port` was opened with.
    """

    def __init__(
        self, port: serial.SerialBase, executor: ThreadPoolExecutor, *, name: str, timeout: float
    ) -> None:
        self._port = port
        self._executor = executor
        self._name = name
        self._timeout = timeout
        self._closed = False

    @property
    def name(self) -> str:
        """The port name or URL as opened, e.g. ``/dev/ttyUSB0``."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once `aclose` was called."""
        return self._closed

    async def write(self, data: bytes) -> None:
        """Send all of `data`.

        Raises:
            TransportTimeoutError: the line did not accept the bytes within the timeout
                (e.g. held off by XOFF or CTS).
            TransportError: the port is closed or gone.
        """
        await self._call(self._port.write, data)

    async def read_until(self, separator: bytes = b"\r\n") -> bytes:
        """Return bytes up to and including `separator`, waiting at most the reply timeout.

        Raises:
            TransportTimeoutError: `separator` did not arrive in time; the message holds the
                partial bytes received (they are consumed).
            TransportError: the port is closed or gone.
            ValueError: `separator` is empty.
        """
        if not separator:
            raise ValueError("separator must not be empty")
        frame: bytes = await self._call(self._port.read_until, separator)
        if not frame.endswith(separator):
            raise TransportTimeoutError(
                f"serial port {self._name}: no {separator!r} within {self._timeout} s,"
                f" received {frame!r}"
            )
        return frame

    async def clear_input(self) -> None:
        """Discard whatever has arrived and not been read (a late reply, line noise).

        Raises:
            TransportError: the port is closed or gone.
        """
        await self._call(self._port.reset_input_buffer)

    async def aclose(self) -> None:
        """Close the port and stop its worker thread; idempotent.

        Waits for a call still running in the worker (at most the reply timeout); closing a
        ``socket://`` port takes a further 0.3 s, which pyserial sleeps in the worker.

        Raises:
            TransportError: closing the port failed (it is released anyway).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._port.close)
        except _PORT_ERRORS as exc:
            raise TransportError(f"serial port {self._name}: close failed: {exc}") from exc
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise TransportError(f"serial port {self._name} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, *args)
        except serial.SerialTimeoutException as exc:  # write_timeout expired
            raise TransportTimeoutError(f"serial port {self._name}: {exc}") from exc
        except _PORT_ERRORS as exc:
            raise TransportError(f"serial port {self._name}: {exc}") from exc


async def open_serial(
    port: str,
    *,
    baudrate: int = 9600,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: float = 1,
    xonxoff: bool = False,
    # The reply timeout belongs to the link, set once when it is opened (STYLE.md §5); it is
    # not a deadline for open_serial itself, which the caller bounds with asyncio.timeout.
    timeout: float = 1.0,  # noqa: ASYNC109
) -> SerialStream:
    """Open a serial port in its own worker thread.

    Args:
        port: a device path (``/dev/ttyUSB0``, a pty slave such as ``/dev/pts/7``) or a
            pyserial URL (``socket://host:port``, ``loop://``).
        baudrate: line speed in bit/s.
        bytesize: data bits per character (5 to 8).
        parity: ``"N"``, ``"E"``, ``"O"``, ``"M"`` or ``"S"``.
        stopbits: 1, 1.5 or 2.
        xonxoff: software flow control.
        timeout: reply timeout in seconds for a whole `SerialStream.read_until` (and for
            a write to be accepted by the line).

    Returns:
        The open stream; close it with `SerialStream.aclose` or ``async with``.

    Raises:
        TransportError: the port does not exist, is busy (locked by another owner) or
            rejects the settings (a pty rejects parity).
        ValueError: a setting or URL scheme pyserial does not know.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"serial {port}")

    def _open() -> serial.SerialBase:
        return serial.serial_for_url(
            port,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            xonxoff=xonxoff,
            timeout=timeout,
            write_timeout=timeout,
            # flock() on device paths: one owner per port, as the worker thread assumes.
            exclusive=True,
        )

    opening = executor.submit(_open)
    try:
        handle = await asyncio.wrap_future(opening)
    except _PORT_ERRORS as exc:
        executor.shutdown(wait=False)
        raise TransportError(f"cannot open serial port {port}: {exc}") from exc
    except BaseException:
        # Cancelled (or a ValueError): close the port should the worker still open it.
        opening.add_done_callback(_close_opened)
        executor.shutdown(wait=False)
        raise
    return SerialStream(handle, executor, name=port, timeout=timeout)


def _close_opened(opening: Future[serial.SerialBase]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
