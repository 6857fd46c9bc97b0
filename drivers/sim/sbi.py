# SPDX-License-Identifier: Apache-2.0
"""A simulated Sartorius SBI balance on the master side of a pty pair, for tests and the demo.

Reference: Sartorius operating instructions, chapter "Data interface": ``ESC P`` prints one
line of 16 characters (22 with an ID code), the unit blank while not stable; auto print
sends such lines unasked. It speaks the real bytes, so the driver under test goes through the
real `drivers.transports.serial.SerialStream` opened on `SbiSimulator.port`. It runs inside
the caller's event loop (``loop.add_reader`` on the master fd, ``loop.call_at`` for auto
print), so it needs no thread or task.
"""

import asyncio
from collections import Counter
from types import TracebackType
from typing import Final, Literal, Self

import numpy as np

from drivers.sim.pty import PtyLine

__all__ = ["Fault", "SbiSimulator"]

Fault = Literal["high", "low", "error", "dashes", "silent", "garbage", "shifted"]
"""What the simulated balance does wrong; see `SbiSimulator.fault`."""

_ESC: Final = b"\x1b"
_CRLF: Final = b"\r\n"
_ERROR_NUMBER: Final = 270
_NET_ID: Final = "N"
_ID_FORM: Final = 22  # the line length with an ID code
# The text a balance prints for a special line, in the 16-character form's value field.
_SPECIAL: Final[dict[Fault, str]] = {"high": "High", "low": "Low", "dashes": "------"}


class SbiSimulator:
    """A balance printing SBI lines on a pty; use as ``async with``.

    The printed weight is ``weight_g`` plus optional gaussian noise, rounded to 0.01 g.
    ``ESC P`` (the CR LF after it is optional, as on a real balance) prints one line; other
    commands are counted and ignored.

    Args:
        weight_g: the load on the pan in g.
        noise_g: standard deviation of gaussian noise added to each line, in g.
        seed: seed of the noise (and garbage) generator, for reproducible runs.
        form: 16 for plain lines, 22 for lines with the ID code ``N`` (net) in front.
        stream_period: with a period in seconds, print a line every period unasked (auto
            print), from entering the context on; None prints only on request.

    Raises:
        ValueError: `form` is neither 16 nor 22, or `stream_period` is not positive.

    Attributes:
        weight_g: the load on the pan in g; settable at any time.
        stable: False to print unstable lines (unit blank); settable at any time.
        fault: None for a healthy balance, otherwise what every following line is:
            ``"high"``/``"low"`` (overload/underload), ``"error"`` (``Err 270``), ``"dashes"``
            (no value displayed), ``"silent"`` (nothing printed), ``"garbage"`` (non-ASCII
            bytes then CR LF), ``"shifted"`` (a valid line with every column after the sign
            shifted right by one).
        served: every value line written: (value as printed, unit as printed, stable).
        counts: commands received, by command character (``"P"``, ...).
    """

    def __init__(
        self,
        *,
        weight_g: float = 500.0,
        noise_g: float = 0.0,
        seed: int = 0,
        form: Literal[16, 22] = 16,
        stream_period: float | None = None,
    ) -> None:
        if form not in (16, 22):
            raise ValueError(f"SBI line form must be 16 or 22 characters, got {form!r}")
        if stream_period is not None and not stream_period > 0:
            raise ValueError(f"SBI stream period must be positive, got {stream_period!r}")
        self.weight_g = weight_g
        self.noise_g = noise_g
        self.form = form
        self.stream_period = stream_period
        self.stable = True
        self.fault: Fault | None = None
        self.served: list[tuple[float, str, bool]] = []
        self.counts: Counter[str] = Counter()
        self._rng = np.random.default_rng(seed)
        self._buffer = b""
        self._pty = PtyLine(self._on_data)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_print = 0.0

    @property
    def port(self) -> str:
        """The pty slave path to open as a serial port, e.g. ``/dev/pts/7``."""
        return self._pty.port

    def press_print(self) -> None:
        """Print one line now, unasked, as the balance's PRINT key does."""
        self._print()

    async def __aenter__(self) -> Self:
        self._loop = self._pty.open()
        if self.stream_period is not None:
            self._next_print = self._loop.time()
            self._schedule_print(self._loop, self.stream_period)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self._pty.close()

    def _schedule_print(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        # A fixed cadence, but after a stall (a busy loop) resume from now instead of
        # printing the missed lines in a burst.
        self._next_print = max(self._next_print + period, loop.time())
        self._timer = loop.call_at(self._next_print, self._auto_print, loop, period)

    def _auto_print(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self._print()
        self._schedule_print(loop, period)

    def _on_data(self, data: bytes) -> None:
        self._buffer += data
        # Commands are ESC and a character (ESC P) with an optional CR LF; anything between
        # commands (that CR LF, line noise) is skipped.
        while (start := self._buffer.find(_ESC)) >= 0 and len(self._buffer) > start + 1:
            command = self._buffer[start + 1 : start + 2]
            self._buffer = self._buffer[start + 2 :]
            self.counts[command.decode("ascii", errors="replace")] += 1
            if command == b"P":
                self._print()
        self._buffer = self._buffer[self._buffer.find(_ESC) :] if _ESC in self._buffer else b""

    def _print(self) -> None:
        if self.fault == "silent":  # switched off, or the line is cut
            return
        line, printed = self._line()
        if self._send(line + _CRLF) and printed is not None:
            self.served.append(printed)

    def _line(self) -> tuple[bytes, tuple[float, str, bool] | None]:
        match self.fault:
            case "high" | "low" | "dashes":
                return self._special(f"  {_SPECIAL[self.fault]:>8}    "), None
            case "error":
                if self.form == _ID_FORM:
                    return f"Stat     ERR {_ERROR_NUMBER:03d}    ".encode(), None
                return f"Err {_ERROR_NUMBER:03d}       ".encode(), None
            case "garbage":  # bytes >= 0x80 never form an SBI line, nor CR or LF
                return self._rng.integers(0x80, 0x100, size=14, dtype=np.uint8).tobytes(), None
        # adding 0.0 turns a rounded -0.0 into 0.0, which a balance prints as "+ 0.00"
        value_g = round(self.weight_g + self._noise_g(), 2) + 0.0
        sign = "-" if value_g < 0 else "+"
        digits = f"{abs(value_g):.2f}"
        unit = "g" if self.stable else ""
        gap = "  " if self.fault == "shifted" else " "
        body = f"{sign}{gap}{digits:>8} {unit:<3}"
        if self.form == _ID_FORM:
            body = f"{_NET_ID:<6}{body}"
        return body.encode("ascii"), (float(sign + digits), unit, self.stable)

    def _special(self, body16: str) -> bytes:
        # In the 22-character form special lines carry "Stat" in place of the ID code.
        return (f"{'Stat':<6}{body16}" if self.form == _ID_FORM else body16).encode("ascii")

    def _send(self, data: bytes) -> bool:
        return self._pty.write(data)  # False: the host stopped reading and the pty is full

    def _noise_g(self) -> float:
        return float(self._rng.normal(0.0, self.noise_g)) if self.noise_g > 0 else 0.0
