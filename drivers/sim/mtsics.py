# SPDX-License-Identifier: Apache-2.0
"""A simulated MT-SICS balance on the master side of a pty pair, for tests and the demo.

Reference: MT-SICS Interface Command Reference, level 0 (S, SI, @, I4, Z, T; ES for anything
else). It speaks the real bytes, so the driver under test goes through the real
`drivers.transports.serial.SerialStream` opened on `MtSicsSimulator.port`. It runs inside the
caller's event loop (``loop.add_reader`` on the master fd), so it needs no thread.
"""

from collections import Counter
from types import TracebackType
from typing import Final, Literal, Self

import numpy as np

from drivers.sim.pty import PtyLine

__all__ = ["Fault", "MtSicsSimulator"]

Fault = Literal[
    "unstable",
    "overload",
    "underload",
    "not_executable",
    "syntax",
    "transmission",
    "logical",
    "silent",
    "garbage",
    "truncated",
]
"""What the simulated balance does wrong; see `MtSicsSimulator.fault`."""

_CRLF: Final = b"\r\n"
_MAX_LINE: Final = 256  # a host that never sends CR LF must not grow the buffer forever
# Status of a command-specific error reply ("S I", "Z +", ...) per fault.
_COMMAND_FAULTS: Final[dict[Fault | None, str]] = {
    "not_executable": "I",
    "overload": "+",
    "underload": "-",
}
_GENERAL_FAULTS: Final[dict[Fault | None, bytes]] = {
    "syntax": b"ES",
    "transmission": b"ET",
    "logical": b"EL",
}


class MtSicsSimulator:
    """A balance answering MT-SICS level 0 commands on a pty; use as ``async with``.

    The displayed (net) weight is ``weight_g - zero - tare`` plus optional gaussian noise,
    rounded to 0.01 g; Z zeroes and T tares the current load.

    Args:
        weight_g: the load on the pan in g.
        noise_g: standard deviation of gaussian noise added to each reply, in g.
        seed: seed of the noise (and garbage) generator, for reproducible runs.
        serial_number: what I4 and @ report.
        powerup_banner: send an unsolicited ``I4 A "<serial_number>"`` line just before the
            first reply, as a balance finishing its power-up while the host polls. (Sent at
            open it would be discarded by the host's own input flush.)

    Attributes:
        weight_g: the load on the pan in g; settable at any time.
        fault: None for a healthy balance, otherwise the misbehaviour for every command
            until reset: ``"unstable"`` (SI gives ``S D``, S gives ``S I``),
            ``"overload"``/``"underload"``/``"not_executable"`` (``S +``/``S -``/``S I``),
            ``"syntax"``/``"transmission"``/``"logical"`` (ES/ET/EL), ``"silent"`` (no reply),
            ``"garbage"`` (non-ASCII bytes then CR LF), ``"truncated"`` (half a reply, no CR
            LF). I4 and @ only suffer the last six.
        served: every weight reply actually sent: (value in `unit` as formatted, unit,
            stable).
        counts: commands received, by command name (``"S"``, ``"SI"``, ...).
    """

    def __init__(
        self,
        *,
        weight_g: float = 1000.0,
        noise_g: float = 0.0,
        seed: int = 0,
        serial_number: str = "B021002593",
        powerup_banner: bool = False,
    ) -> None:
        self.weight_g = weight_g
        self.noise_g = noise_g
        self.serial_number = serial_number
        self.fault: Fault | None = None
        self.served: list[tuple[float, str, bool]] = []
        self.counts: Counter[str] = Counter()
        self._rng = np.random.default_rng(seed)
        self._zero_g = 0.0
        self._tare_g = 0.0
        self._pending = self._identity() + _CRLF if powerup_banner else b""
        self._buffer = b""
        self._pty = PtyLine(self._on_data)

    @property
    def port(self) -> str:
        """The pty slave path to open as a serial port, e.g. ``/dev/pts/7``."""
        return self._pty.port

    def inject(self, raw: bytes) -> None:
        """Send `raw` (e.g. an unsolicited line) just before the next reply."""
        self._pending += raw

    async def __aenter__(self) -> Self:
        self._pty.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._pty.close()

    def _on_data(self, data: bytes) -> None:
        self._buffer += data
        while _CRLF in self._buffer:
            line, self._buffer = self._buffer.split(_CRLF, 1)
            self._answer(line.decode("ascii", errors="replace"))
        self._buffer = self._buffer[-_MAX_LINE:]

    def _answer(self, command: str) -> None:
        self.counts[command] += 1
        match self.fault:
            case "silent":  # switched off, or the line is cut: nothing is executed
                return
            case "syntax" | "transmission" | "logical":  # rejected before execution
                self._send(self._pending + _GENERAL_FAULTS[self.fault] + _CRLF)
                return
        reply, weight = self._reply(command)
        terminator = _CRLF
        if self.fault == "garbage":  # bytes >= 0x80 never form an MT-SICS line, nor CR or LF
            reply = self._rng.integers(0x80, 0x100, size=8, dtype=np.uint8).tobytes()
            weight = None
        elif self.fault == "truncated":
            reply, weight, terminator = reply[: len(reply) // 2], None, b""
        if self._send(self._pending + reply + terminator) and weight is not None:
            self.served.append(weight)

    def _reply(self, command: str) -> tuple[bytes, tuple[float, str, bool] | None]:
        match command:
            case "@" | "I4":
                return self._identity(), None
            case "S" | "SI" | "Z" | "T" if self.fault in _COMMAND_FAULTS:
                return f"{command[0]} {_COMMAND_FAULTS[self.fault]}".encode(), None
            case "S" | "SI":
                return self._weigh(immediate=command == "SI")
            case "Z":
                self._zero_g, self._tare_g = self.weight_g, 0.0
                return b"Z A", None
            case "T":
                self._tare_g += self._net_g()
                return f"T S {self._format(self._tare_g)} g".encode(), None
            case _:
                return b"ES", None

    def _weigh(self, *, immediate: bool) -> tuple[bytes, tuple[float, str, bool] | None]:
        if self.fault == "unstable" and not immediate:
            return b"S I", None  # S waits for stability, which never comes: not executable
        status = "D" if self.fault == "unstable" else "S"
        text = self._format(self._net_g() + self._noise_g())
        return f"S {status} {text} g".encode(), (float(text), "g", status == "S")

    def _send(self, data: bytes) -> bool:
        if not self._pty.write(data):  # the host stopped reading and the pty is full
            return False
        self._pending = b""
        return True

    def _identity(self) -> bytes:
        return f'I4 A "{self.serial_number}"'.encode("ascii")

    def _net_g(self) -> float:
        return self.weight_g - self._zero_g - self._tare_g

    def _noise_g(self) -> float:
        return float(self._rng.normal(0.0, self.noise_g)) if self.noise_g > 0 else 0.0

    @staticmethod
    def _format(value_g: float) -> str:
        # A balance prints a 10-character right-aligned field with its display's decimals;
        # adding 0.0 turns a rounded -0.0 into 0.0, which a balance never prints as "-0.00".
        return f"{round(value_g, 2) + 0.0:>10.2f}"
