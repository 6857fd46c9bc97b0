# SPDX-License-Identifier: Apache-2.0
"""A simulated Eastron SDM630 energy meter: a real Modbus TCP server on loopback.

Reference: Eastron SDM630 Modbus protocol (input registers, FC 04, float32 ABCD) via the
shipped register map ``drivers/modbus/maps/sdm630.toml``, encoded with the same codec the
driver decodes with; Modbus Application Protocol V1.1b3 for exception responses. Built on the
pymodbus 3.16 server with `pymodbus.simulator.SimDevice` (the datastore classes are
deprecated). For tests and the demo only; nothing at run time imports `drivers.sim`.

What it serves: the map's input registers from 0x0000 to its last entry (unlisted registers
read 0, as the planner may read across them); holding registers and coils are absent (FC 03
gets exception 2, FC 01/02 exception 1). A request for another device id gets exception 0x0B
(gateway target device failed to respond), as from a TCP-to-RS-485 gateway.

Fault injection (`Sdm630Simulator.fault`):

- ``None``: normal replies.
- ``"exception"``: every request gets a Modbus exception response, code 4 (server device
  failure).
- ``"silent"``: requests are processed but no reply is sent, so the client times out.

Setting a float value to NaN (``sim.set("frequency", math.nan)``) sends the meter's
"no value", which the driver rejects as a `ProtocolError`.
"""

import asyncio
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Literal, Self, get_args

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.errors import ProtocolError
from drivers.modbus.codec import RegisterTable, encode_registers, parse_registers
from drivers.modbus.registermap import RegisterMap, load_builtin_map

__all__ = ["Fault", "Sdm630Simulator"]

Fault = Literal["exception", "silent"]

_TABLES: Final = {3: RegisterTable.HOLDING, 4: RegisterTable.INPUT}
_ADDRESS_SPACE: Final = 0x10000
_PHASES: Final = ("l1", "l2", "l3")
_NOMINAL_VOLTAGE_V: Final = 230.0
_NOMINAL_FREQUENCY_HZ: Final = 50.0
_BASE_CURRENT_A: Final = (5.20, 4.90, 5.05)
_POWER_FACTOR: Final = 0.95
_INITIAL: Final = {
    "voltage_l1": 230.1,
    "voltage_l2": 229.8,
    "voltage_l3": 230.4,
    "current_l1": 5.20,
    "current_l2": 4.90,
    "current_l3": 5.05,
    "frequency": 50.0,
    "import_energy": 12345.6,
    "export_energy": 0.0,
    "total_energy": 12345.6,
}
_SECONDS_PER_HOUR: Final = 3600.0
_W_PER_KW: Final = 1000.0


def _wave(t: float, period: float, phase: float = 0.0) -> float:
    """A unit sine of `period` seconds at time `t` seconds."""
    return math.sin(2 * math.pi * t / period + phase)


class Sdm630Simulator:
    """A simulated SDM630 serving its register map over Modbus TCP in the caller's loop.

    Use as ``async with Sdm630Simulator(port=0) as sim:``; `port` is then the bound port.
    Values are set by register-map name with `set`, or drift on their own with
    ``animate=True`` (voltages 230 V +- 0.9 V, frequency 50 Hz +- 0.04 Hz, currents slowly
    varying, total power = sum of V*I*0.95, import and total energy integrating the power).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        device_id: int = 1,
        animate: bool = False,
        period: float = 0.5,
    ) -> None:
        """Prepare the meter; the server starts in ``__aenter__``.

        Args:
            host: address to listen on.
            port: TCP port; 0 picks a free one (read it from `port` once started).
            device_id: the meter's Modbus device id, 1..247.
            animate: drift the values in a background task.
            period: seconds between animation steps.

        Raises:
            ValueError: `device_id` outside 1..247 or `period` not positive.
        """
        if not 1 <= device_id <= 247:  # noqa: PLR2004 - the Modbus serial address range
            raise ValueError(f"device_id must be 1..247, not {device_id}")
        if not period > 0:
            raise ValueError(f"period must be > 0 s, not {period!r}")
        self._host = host
        self._requested_port = port
        self._device_id = device_id
        self._animate = animate
        self._period = period
        self._map: RegisterMap = load_builtin_map("sdm630")
        self._fault: Fault | None = None
        self._values: dict[str, float] = {}
        self._reported: dict[str, float] = {}
        self._image: dict[RegisterTable, dict[int, int]] = {table: {} for table in RegisterTable}
        self._server: ModbusTcpServer | None = None
        self._port: int | None = None
        self._animation: asyncio.Task[None] | None = None
        for name, value in _INITIAL.items():
            self.set(name, value)
        self.set("total_power", self._total_power_w())

    @property
    def register_map(self) -> RegisterMap:
        """The register map served (the shipped ``sdm630`` map)."""
        return self._map

    @property
    def port(self) -> int:
        """The TCP port the server is bound to.

        Raises:
            RuntimeError: the simulator is not running.
        """
        if self._port is None:
            raise RuntimeError("Sdm630Simulator is not running; use `async with`")
        return self._port

    @property
    def values(self) -> dict[str, float]:
        """A copy of every value by name, as the meter reports it (rounded to float32)."""
        return dict(self._reported)

    @property
    def fault(self) -> Fault | None:
        """The injected fault: None, ``"exception"`` (code 4) or ``"silent"`` (no reply)."""
        return self._fault

    @fault.setter
    def fault(self, fault: Fault | None) -> None:
        if fault is not None and fault not in get_args(Fault):
            raise ValueError(f"fault must be None or one of {get_args(Fault)}, not {fault!r}")
        self._fault = fault

    def set(self, name: str, value: float) -> None:
        """Set a value by register-map name, in the map's unit (e.g. V, A, W, Hz, kWh).

        Args:
            name: a register-map entry, e.g. ``"voltage_l1"``.
            value: the value; NaN or infinity is sent as such (the meter's "no value").

        Raises:
            KeyError: no such entry (the message lists the valid names).
            ValueError: the value does not fit the entry's register type.
        """
        entry = self._map.entry(name)
        registers = encode_registers(
            value, entry.register_type, entry.word_order, scale=entry.scale
        )
        try:
            reported = parse_registers(
                registers, entry.register_type, entry.word_order, scale=entry.scale
            )
        except ProtocolError:
            reported = value  # NaN or infinity: what was set is what is sent
        self._values[name] = value
        self._reported[name] = reported
        table = self._image[entry.table]
        for offset, word in enumerate(registers):
            table[entry.address + offset] = word

    async def __aenter__(self) -> Self:
        meter = SimDevice(
            id=self._device_id,
            # Separate tables, as on the meter: (coils, discrete inputs, holding, input).
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                self._table_data(RegisterTable.HOLDING),
                self._table_data(RegisterTable.INPUT),
            ),
            action=self._serve,
        )
        # Device id 0 stands for every other id; it needs the whole address space so that
        # its action, not an address check, answers.
        others = SimDevice(
            id=0,
            simdata=[SimData(0, count=_ADDRESS_SPACE, values=0, datatype=DataType.REGISTERS)],
            action=self._absent,
        )
        server = ModbusTcpServer(
            [meter, others],
            address=(self._host, self._requested_port),
            trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        listener = server.transport
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus: unannotated
            raise RuntimeError(f"pymodbus did not report the port bound on {self._host}")
        self._server = server
        self._port = int(listener.sockets[0].getsockname()[1])
        if self._animate:
            self._step(0.0, 0.0)  # start where the animation's curves start
            self._animation = asyncio.create_task(self._run_animation(), name="sdm630-animate")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        animation, self._animation = self._animation, None
        if animation is not None:
            animation.cancel()
            # wait() does not raise the task's CancelledError, yet lets ours propagate.
            await asyncio.wait([animation])
        server, self._server = self._server, None
        self._port = None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus: unannotated
            # Let the transports run their connection_lost callbacks, which close the sockets.
            await asyncio.sleep(0)
        if animation is not None and not animation.cancelled() and animation.exception():
            raise RuntimeError("the SDM630 animation failed") from animation.exception()

    def _table_data(self, table: RegisterTable) -> list[SimData]:
        entries = [entry for entry in self._map.entries.values() if entry.table is table]
        if not entries:
            return [SimData(0, count=1, datatype=DataType.INVALID)]
        end = max(entry.address + entry.count for entry in entries)
        return [
            SimData(0, count=end, values=0, datatype=DataType.REGISTERS, readonly=True),
        ]

    async def _serve(  # noqa: PLR0917 - the signature of pymodbus' SimAction
        self,
        function_code: int,
        start_address: int,
        address: int,  # noqa: ARG002 - the whole image is copied in, whatever the range
        count: int,  # noqa: ARG002
        registers: list[int],
        set_values: Sequence[int] | Sequence[bool] | None,
    ) -> ExcCodes | None:
        """Answer one request (pymodbus SimDevice action): fault, or refresh the registers."""
        if self._fault == "exception":
            return ExcCodes.DEVICE_FAILURE
        table = _TABLES.get(function_code)
        if table is None or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        for register_address, word in self._image[table].items():
            registers[register_address - start_address] = word
        return None

    async def _absent(self, *_request: object) -> ExcCodes | None:
        """Answer a request for any other device id, as a gateway without that device."""
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:  # noqa: FBT001 - pymodbus hook
        # pymodbus writes whatever this returns: an empty reply is no reply.
        return b"" if sending and self._fault == "silent" else packet

    def _total_power_w(self) -> float:
        return _POWER_FACTOR * sum(
            self._values[f"voltage_{phase}"] * self._values[f"current_{phase}"]
            for phase in _PHASES
        )

    async def _run_animation(self) -> None:
        start = last = time.monotonic()
        while True:
            await asyncio.sleep(self._period)
            now = time.monotonic()
            self._step(now - start, now - last)
            last = now

    def _step(self, elapsed: float, interval: float) -> None:
        """Advance the animation to `elapsed` seconds, `interval` seconds after the last step."""
        # Sums of slow sines with unrelated periods look like a grid, and are reproducible.
        for index, phase in enumerate(_PHASES):
            voltage_v = (
                _NOMINAL_VOLTAGE_V
                + 0.6 * _wave(elapsed, 41.0, 2.1 * index)
                + 0.3 * _wave(elapsed, 6.7, index)
            )
            current_a = _BASE_CURRENT_A[index] * (
                1 + 0.15 * _wave(elapsed, 97.0, 1.3 * index) + 0.05 * _wave(elapsed, 11.0, index)
            )
            self.set(f"voltage_{phase}", voltage_v)
            self.set(f"current_{phase}", current_a)
        self.set(
            "frequency",
            _NOMINAL_FREQUENCY_HZ + 0.03 * _wave(elapsed, 61.0) + 0.01 * _wave(elapsed, 13.0),
        )
        power_w = self._total_power_w()
        self.set("total_power", power_w)
        # The accumulators stay in double precision: one step adds less than a float32 ulp.
        import_kwh = (
            self._values["import_energy"] + power_w * interval / _SECONDS_PER_HOUR / _W_PER_KW
        )
        self.set("import_energy", import_kwh)
        self.set("total_energy", import_kwh + self._values["export_energy"])
