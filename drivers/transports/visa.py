# SPDX-License-Identifier: Apache-2.0
"""A `MessageLink` over VISA: pyvisa with pyvisa-py (``@py``) or pyvisa-sim (``file.yaml@sim``).

Reference: PyVISA 1.14+ API (``ResourceManager``, ``MessageBasedResource``) and VPP-4.3 (VISA
library specification: viOpen, viRead, viWrite, viClear, status codes). pyvisa blocks, so each
`VisaLink` owns one worker thread that makes every call on its resource, in submission order.
This is one of the few modules that catch `OSError`.

pyvisa keeps a single ``ResourceManager`` per VISA library, shared by every caller, and closing
it closes every resource opened through it; so links on the same library share one manager,
counted here, which the last link to close closes.
"""

import asyncio
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Final, Self, TypeVar

import pyvisa
from pyvisa.constants import StatusCode
from pyvisa.errors import Error as VisaError
from pyvisa.errors import VisaIOError
from pyvisa.resources import MessageBasedResource
from pyvisa.rname import parse_resource_name

from drivers.errors import ProtocolError, TransportError, TransportTimeoutError

__all__ = ["VisaLink", "open_visa"]

_T = TypeVar("_T")

# VI_NULL: the session handle of a failed viOpen. pyvisa-sim 0.7 reports a resource it does not
# define this way, with an error status but no exception (pyvisa-py and NI-VISA raise).
_VI_NULL: Final = 0
_PRINTABLE_ASCII: Final = frozenset(range(0x20, 0x7F))


class _SharedManagers:
    """One reference-counted pyvisa ``ResourceManager`` per VISA library string."""

    def __init__(self) -> None:
        # Opened and closed from the links' worker threads, hence a thread lock. It is held
        # while a manager is closed, so that no link can be handed one that is closing.
        self._lock = threading.Lock()
        self._managers: dict[str, tuple[pyvisa.ResourceManager, int]] = {}

    def acquire(self, library: str) -> pyvisa.ResourceManager:
        with self._lock:
            manager, users = self._managers.get(library, (None, 0))
            if manager is None:
                try:
                    manager = pyvisa.ResourceManager(library)
                except (ValueError, OSError) as exc:
                    # A backend that is not installed ("Wrapper not found"), a missing
                    # pyvisa-sim file or a VISA shared library that does not load: the
                    # station's set-up, reported like a link that cannot be opened.
                    msg = f"cannot load the VISA library {library!r}: {exc}"
                    raise TransportError(msg) from exc
            self._managers[library] = (manager, users + 1)
            return manager

    def release(self, library: str) -> None:
        with self._lock:
            manager, users = self._managers.pop(library)
            if users > 1:
                self._managers[library] = (manager, users - 1)
            else:
                manager.close()


_MANAGERS: Final = _SharedManagers()


class VisaLink:
    """An open VISA message-based resource owned by one worker thread; see `open_visa`.

    A call cancelled by its caller (``asyncio.timeout``) still finishes in the worker, within
    the reply timeout, before the next call starts. After a reply timeout the link asks for a
    device clear (viClear) where the interface supports it (GPIB, VXI-11, HiSLIP, sockets), so
    that a late reply is not taken for the answer to the next query.

    Args:
        resource: the open pyvisa resource.
        executor: the single-thread executor that owns `resource`; shut down by `aclose`.
        name: the VISA resource name, for error messages.
        library: the VISA library string the resource was opened with.
        timeout: the reply timeout in seconds the resource was opened with.
        read_termination: the read terminator the resource was opened with.
    """

    def __init__(
        self,
        resource: MessageBasedResource,
        executor: ThreadPoolExecutor,
        *,
        name: str,
        library: str,
        timeout: float,
        read_termination: str,
    ) -> None:
        self._resource = resource
        self._executor = executor
        self._name = name
        self._library = library
        self._timeout = timeout
        self._read_termination = read_termination
        self._closed = False

    @property
    def name(self) -> str:
        """The VISA resource name as opened, e.g. ``TCPIP0::192.168.0.10::INSTR``."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once `aclose` was called."""
        return self._closed

    async def write(self, message: str) -> None:
        """Send one program message; the link appends the write terminator.

        Raises:
            TransportTimeoutError: the instrument did not accept it within the timeout.
            TransportError: the resource is closed or gone.
            ValueError: `message` is empty or not printable ASCII.
        """
        _check_message(message)
        await self._call(self._write, message, action=f"writing {message!r}")

    async def query(self, message: str) -> str:
        """Send one program message and return the reply without its read terminator.

        Raises:
            TransportTimeoutError: no complete reply within the reply timeout.
            TransportError: the resource is closed or gone.
            ProtocolError: the reply is not ASCII.
            ValueError: `message` is empty or not printable ASCII.
        """
        _check_message(message)
        raw = await self._call(self._exchange, message, action=f"querying {message!r}")
        try:
            reply = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"VISA resource {self._name}: non-ASCII reply to {message!r}: {raw!r}"
            ) from exc
        # A reply ended by END (EOI) alone carries no terminator; both forms are complete.
        termination = self._read_termination
        if termination and reply.endswith(termination):
            return reply[: -len(termination)]
        return reply

    async def aclose(self) -> None:
        """Close the resource (and the library's manager if no other link uses it); idempotent.

        Waits for a call still running in the worker (at most the reply timeout).

        Raises:
            TransportError: closing failed (the resource is released anyway).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        except (VisaError, OSError) as exc:
            raise TransportError(f"VISA resource {self._name}: close failed: {exc}") from exc
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

    # --- run in the worker thread ---

    def _write(self, message: str) -> None:
        self._resource.write(message)

    def _exchange(self, message: str) -> bytes:
        # read_raw rather than read: pyvisa's read warns (an error under pytest) on a reply
        # ended by END without the terminator, and raises a bare UnicodeDecodeError.
        self._resource.write(message)
        try:
            return self._resource.read_raw()
        except VisaIOError as exc:
            if exc.error_code == StatusCode.error_timeout:
                self._clear_device()
            raise

    def _clear_device(self) -> None:
        # Best effort: pyvisa-py serial sessions and pyvisa-sim do not implement viClear;
        # a link that is really gone fails the next call anyway.
        try:
            self._resource.clear()
        except (NotImplementedError, VisaError, OSError):
            return

    def _close(self) -> None:
        try:
            self._resource.close()
        finally:
            _MANAGERS.release(self._library)

    # --- error mapping ---

    async def _call(self, function: Callable[[str], _T], message: str, *, action: str) -> _T:
        if self._closed:
            raise TransportError(f"VISA resource {self._name} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, message)
        except VisaIOError as exc:
            if exc.error_code == StatusCode.error_timeout:
                raise TransportTimeoutError(
                    f"VISA resource {self._name}: no reply within {self._timeout} s {action}"
                ) from exc
            raise TransportError(f"VISA resource {self._name}: {action}: {exc}") from exc
        except TimeoutError as exc:  # a socket timeout below pyvisa-py
            raise TransportTimeoutError(
                f"VISA resource {self._name}: timed out {action}: {exc}"
            ) from exc
        except (VisaError, OSError) as exc:  # InvalidSession, LibraryError, ...
            raise TransportError(f"VISA resource {self._name}: {action}: {exc}") from exc


async def open_visa(
    resource: str,
    *,
    library: str = "@py",
    # The reply timeout belongs to the link, set once when it is opened (STYLE.md §5); it is
    # not a deadline for open_visa itself, which the caller bounds with asyncio.timeout.
    timeout: float = 2.0,  # noqa: ASYNC109
    read_termination: str = "\n",
    write_termination: str = "\n",
) -> VisaLink:
    """Open a VISA message-based resource in its own worker thread.

    Args:
        resource: a VISA resource name, e.g. ``TCPIP0::192.168.0.10::INSTR``,
            ``TCPIP0::192.168.0.10::5025::SOCKET``, ``GPIB0::22::INSTR`` or ``ASRL1::INSTR``
            (pyvisa-sim knows serial resources only under this ``ASRL<n>::INSTR`` form).
        library: the VISA library: ``"@py"`` (pyvisa-py) for instruments,
            ``"path/to/file.yaml@sim"`` for pyvisa-sim, ``""`` for an installed IVI VISA.
        timeout: reply timeout in seconds for each write and each reply.
        read_termination: stripped from replies; ``""`` to rely on END (EOI) alone.
        write_termination: appended to every message.

    Returns:
        The open link; close it with `VisaLink.aclose` or ``async with``.

    Raises:
        TransportError: the resource does not exist or does not answer to opening, or the
            library cannot be loaded (e.g. a missing pyvisa-sim file).
        ValueError: a malformed resource name, an unknown library backend, or a timeout that
            is not a positive number.
        TypeError: the resource is not message-based (e.g. ``GPIB0::INTFC``).
    """
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"VISA timeout must be a positive number of seconds, got {timeout!r}")
    parse_resource_name(resource)  # raises InvalidResourceName, a ValueError
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"visa {resource}")

    def _open() -> MessageBasedResource:
        manager = _MANAGERS.acquire(library)
        try:
            opened = manager.open_resource(
                resource,
                timeout=round(timeout * 1000),  # pyvisa counts milliseconds
                read_termination=read_termination,
                write_termination=write_termination,
            )
        except BaseException:
            _MANAGERS.release(library)
            raise
        found = opened.session != _VI_NULL
        if found and isinstance(opened, MessageBasedResource):
            return opened
        try:
            opened.close()
        finally:
            _MANAGERS.release(library)
        if not found:
            raise TransportError(f"VISA resource {resource} not found in {library!r}")
        raise TypeError(f"VISA resource {resource} is not message-based")

    opening = executor.submit(_open)
    try:
        handle = await asyncio.wrap_future(opening)
    except VisaIOError as exc:
        executor.shutdown(wait=False)
        if exc.error_code == StatusCode.error_timeout:
            raise TransportTimeoutError(f"cannot open VISA resource {resource}: {exc}") from exc
        raise TransportError(f"cannot open VISA resource {resource}: {exc}") from exc
    except TransportError:
        executor.shutdown(wait=False)
        raise
    except (VisaError, OSError) as exc:
        executor.shutdown(wait=False)
        raise TransportError(f"cannot open VISA resource {resource}: {exc}") from exc
    except BaseException:
        # Cancelled (or a ValueError): close the resource should the worker still open it.
        opening.add_done_callback(_close_opened(library))
        executor.shutdown(wait=False)
        raise
    return VisaLink(
        handle,
        executor,
        name=resource,
        library=library,
        timeout=timeout,
        read_termination=read_termination,
    )


def _close_opened(library: str) -> Callable[[Future[MessageBasedResource]], None]:
    def close(opening: Future[MessageBasedResource]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            try:
                opening.result().close()
            finally:
                _MANAGERS.release(library)

    return close


def _check_message(message: str) -> None:
    # Terminators and other control characters belong to the link, not to the message.
    if not message or not all(ord(character) in _PRINTABLE_ASCII for character in message):
        raise ValueError(f"VISA message must be printable ASCII, got {message!r}")
