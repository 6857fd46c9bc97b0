# SPDX-License-Identifier: Apache-2.0
"""A simulated RS-485 line of Modbus RTU devices: a real pymodbus serial server on ptys.

Reference: Modbus over Serial Line V1.02 (RTU frames with CRC-16; a device that is not
addressed, and any device on a broadcast, stays silent); Modbus Application Protocol V1.1b3
(exception responses). Each device serves the registers of its register map
(``drivers/modbus/maps``), encoded with the codec the driver decodes with. Built on the
pymodbus 3.16 `ModbusSerialServer` and `pymodbus.simulator.SimDevice`. For tests, benchmarks
and the demo only; nothing at run time imports `drivers.sim`.

Why two pty pairs: pymodbus' serial server opens its port itself, by name, through pyserial,
and the master side of a pty has no name (opening ``/dev/ptmx``, or ``/proc/self/fd/N`` of a
master, allocates a new pair). So the server cannot sit on the master side of the client's
pty. Instead the simulator opens two pairs, runs the server on the slave side of one, hands
the slave side of the other to the client (`ModbusLineSimulator.port`) and copies bytes
between the two master sides, as a cable would. Both ends are pymodbus' own serial code, and
every byte in between is a real RTU frame with its CRC. The copy is where the line's speed
is simulated (``baudrate``): each chunk is delivered after its wire time at 10 bits per byte
(8N1), one chunk at a time, as on a half-duplex line.

Fault injection per device (`ModbusLineSimulator.fault`):

- ``None``: normal replies.
- ``"exception"``: every request gets exception response 4 (server device failure).
- ``"silent"``: requests are served but no reply is sent, so the master times out.
- ``"bad_crc"``: the reply's last CRC byte is inverted, so the master must reject it.

A request for a device id that is not on the line, or a broadcast (id 0), gets no reply.
"""

import asyncio
import math
import os
import tty
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from functools import partial
from types import TracebackType
from typing import Final, Literal, Self, get_args

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.errors import ProtocolError
from drivers.modbus.codec import RegisterTable, encode_registers, parse_registers
from drivers.modbus.registermap import RegisterMap, load_builtin_map

__all__ = ["LineFault", "LineFaults", "ModbusLineSimulator"]

LineFault = Literal["exception", "silent", "bad_crc"]

_TABLES: Final = {3: RegisterTable.HOLDING, 4: RegisterTable.INPUT}
_DEVICE_IDS: Final = range(1, 248)  # Modbus over Serial Line V1.02, 2.2
_ADDRESS_SPACE: Final = 0x10000
_BITS_PER_CHARACTER: Final = 10  # start, 8 data, stop: the only framing ptys here accept
_CHUNK: Final = 4096


class LineFaults(MutableMapping[int, LineFault | None]):
    """The fault injected for each device id on the line; every device starts with None.

    ``faults[2] = "silent"`` sets one, ``faults[2] = None`` (or ``del faults[2]``) clears it.
    """

    def __init__(self, device_ids: Sequence[int]) -> None:
        self._faults: dict[int, LineFault | None] = dict.fromkeys(device_ids)

    def __getitem__(self, device_id: int) -> LineFault | None:
        return self._faults[device_id]

    def __setitem__(self, device_id: int, fault: LineFault | None) -> None:
        if device_id not in self._faults:
            raise KeyError(f"no device {device_id} on the line; devices: {list(self._faults)}")
        if fault is not None and fault not in get_args(LineFault):
            raise ValueError(f"fault must be None or one of {get_args(LineFault)}, not {fault!r}")
        self._faults[device_id] = fault

    def __delitem__(self, device_id: int) -> None:
        self[device_id] = None

    def __iter__(self) -> Iterator[int]:
        return iter(self._faults)

    def __len__(self) -> int:
        return len(self._faults)


class ModbusLineSimulator:
    """Several simulated Modbus RTU devices on one line, served in the caller's event loop.

    Use as ``async with ModbusLineSimulator({1: "sdm630", 2: "mfe600h"}) as sim:`` and open
    `port` with `drivers.transports.modbus.open_modbus_rtu` (8N1; any baud rate is accepted).
    Every register of a device reads 0 until set by name with `set`.
    """

    def __init__(
        self, devices: Mapping[int, str | RegisterMap], *, baudrate: int | None = None
    ) -> None:
        """Prepare the line; the server starts in ``__aenter__``.

        Args:
            devices: the register map of each device id (1..247): a map, or the name of a
                map shipped with metrogate, e.g. ``"sdm630"``.
            baudrate: simulate the wire time of every frame at this speed; None copies
                frames as fast as the ptys go.

        Raises:
            ValueError: no devices, a device id outside 1..247, or `baudrate` not positive.
            RegisterMapError: no built-in map of a given name.
        """
        if not devices:
            raise ValueError("a line needs at least one device")
        if invalid := [device_id for device_id in devices if device_id not in _DEVICE_IDS]:
            raise ValueError(f"device ids must be 1..247, not {invalid}")
        if baudrate is not None and not baudrate > 0:
            raise ValueError(f"baudrate must be > 0, not {baudrate!r}")
        self._baudrate = baudrate
        self._maps: dict[int, RegisterMap] = {
            device_id: load_builtin_map(spec) if isinstance(spec, str) else spec
            for device_id, spec in devices.items()
        }
        self._faults = LineFaults(list(self._maps))
        self._reported: dict[int, dict[str, float]] = {device_id: {} for device_id in self._maps}
        self._images: dict[int, dict[RegisterTable, dict[int, int]]] = {
            device_id: {table: {} for table in RegisterTable} for device_id in self._maps
        }
        for device_id, register_map in self._maps.items():
            for name in register_map.entries:
                self.set(device_id, name, 0.0)
        self._fds: list[int] = []
        self._port: str | None = None
        self._server: ModbusSerialServer | None = None
        self._wire: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._pacer: asyncio.Task[None] | None = None

    @property
    def port(self) -> str:
        """The client's end of the line, a pty path such as ``/dev/pts/3``.

        Raises:
            RuntimeError: the simulator is not running.
        """
        if self._port is None:
            raise RuntimeError("ModbusLineSimulator is not running; use `async with`")
        return self._port

    @property
    def device_ids(self) -> tuple[int, ...]:
        """The devices on the line."""
        return tuple(self._maps)

    @property
    def fault(self) -> LineFaults:
        """The fault injected per device id: ``sim.fault[2] = "silent"``."""
        return self._faults

    def register_map(self, device_id: int) -> RegisterMap:
        """Return the register map device `device_id` serves.

        Raises:
            KeyError: no such device on the line.
        """
        return self._maps[device_id]

    def set(self, device_id: int, name: str, value: float) -> None:
        """Set a register entry of a device, in its map's unit.

        Args:
            device_id: the device.
            name: a register entry of its map (a combined entry is set through its parts).
            value: the value; NaN or infinity is sent as such by float types ("no value").

        Raises:
            KeyError: no such device, or no such register entry (the message lists them).
            ValueError: the value does not fit the entry's register type.
        """
        entry = self._maps[device_id].entry(name)
        registers = encode_registers(
            value, entry.register_type, entry.word_order, scale=entry.scale
        )
        try:
            reported = parse_registers(
                registers, entry.register_type, entry.word_order, scale=entry.scale
            )
        except ProtocolError:
            reported = value  # NaN or infinity: what was set is what is sent
        self._reported[device_id][name] = reported
        image = self._images[device_id][entry.table]
        for offset, word in enumerate(registers):
            image[entry.address + offset] = word

    def values(self, device_id: int) -> dict[str, float]:
        """Return every value of a device by name as the driver should read it.

        Register entries as encoded (e.g. rounded to float32), combined entries as the sum
        of their parts.

        Raises:
            KeyError: no such device on the line.
        """
        reported = dict(self._reported[device_id])
        for name, combined in self._maps[device_id].combined.items():
            reported[name] = math.fsum(reported[part] for part in combined.parts)
        return reported

    async def __aenter__(self) -> Self:
        try:
            server_end, server_port = self._open_pty()
            client_end, client_port = self._open_pty()
            loop = asyncio.get_running_loop()
            loop.add_reader(client_end, self._carry, client_end, server_end)
            loop.add_reader(server_end, self._carry, server_end, client_end)
            if self._baudrate is not None:
                self._pacer = asyncio.create_task(self._pace(self._baudrate), name="line-pace")
            server = ModbusSerialServer(
                [*(self._device(device_id) for device_id in self._maps), self._absent_device()],
                port=server_port,
                baudrate=self._baudrate or 9600,
                trace_packet=self._trace_packet,
            )
            await server.serve_forever(background=True)
            self._server = server
            self._port = client_port
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()

    def _open_pty(self) -> tuple[int, str]:
        """Open a raw pty pair, keep both ends open; return the master and the slave's path."""
        master, slave = os.openpty()
        self._fds += [master, slave]
        # Raw, so that the line discipline neither echoes nor translates a byte. Holding the
        # slave open too means the master never reads EIO while the client reopens its end.
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, os.ttyname(slave)

    async def _close(self) -> None:
        self._port = None
        pacer, self._pacer = self._pacer, None
        if pacer is not None:
            pacer.cancel()
            await asyncio.wait([pacer])
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus: unannotated
        loop = asyncio.get_running_loop()
        fds, self._fds = self._fds, []
        for fd in fds:
            loop.remove_reader(fd)  # only the masters have one; False for the others
            os.close(fd)

    def _carry(self, source: int, target: int) -> None:
        """Move the bytes that arrived at one master to the other (a loop reader callback)."""
        try:
            chunk = os.read(source, _CHUNK)
        except BlockingIOError:
            return
        if self._baudrate is None:
            _write(target, chunk)
        else:
            self._wire.put_nowait((target, chunk))

    async def _pace(self, baudrate: int) -> None:
        """Deliver the queued chunks one after another, each after its wire time."""
        loop = asyncio.get_running_loop()
        line_free_at = loop.time()
        while True:
            target, chunk = await self._wire.get()
            line_free_at = max(line_free_at, loop.time())
            line_free_at += len(chunk) * _BITS_PER_CHARACTER / baudrate
            await asyncio.sleep(line_free_at - loop.time())
            _write(target, chunk)

    def _device(self, device_id: int) -> SimDevice:
        return SimDevice(
            id=device_id,
            # Separate tables, as on meters: (coils, discrete inputs, holding, input).
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                self._table_data(device_id, RegisterTable.HOLDING),
                self._table_data(device_id, RegisterTable.INPUT),
            ),
            action=partial(self._serve, device_id),
        )

    def _absent_device(self) -> SimDevice:
        # Device id 0 stands for every id not on the line; it needs the whole address space
        # so that no address check answers before `_trace_packet` silences the reply.
        return SimDevice(
            id=0,
            simdata=[SimData(0, count=_ADDRESS_SPACE, values=0, datatype=DataType.REGISTERS)],
            action=self._absent,
        )

    def _table_data(self, device_id: int, table: RegisterTable) -> list[SimData]:
        entries = [
            entry for entry in self._maps[device_id].entries.values() if entry.table is table
        ]
        if not entries:
            return [SimData(0, count=1, datatype=DataType.INVALID)]
        # From the first to the last listed register: unlisted ones in between read 0, as the
        # planner may read across them; a read outside gets exception 2.
        start = min(entry.address for entry in entries)
        end = max(entry.address + entry.count for entry in entries)
        return [
            SimData(start, count=end - start, values=0, datatype=DataType.REGISTERS, readonly=True)
        ]

    async def _serve(  # noqa: PLR0917 - pymodbus' SimAction, after the bound device id
        self,
        device_id: int,
        function_code: int,
        start_address: int,
        address: int,  # noqa: ARG002 - the whole image is copied in, whatever the range
        count: int,  # noqa: ARG002
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Answer one request (pymodbus SimDevice action): fault, or refresh the registers."""
        if self._faults[device_id] == "exception":
            return ExcCodes.DEVICE_FAILURE
        table = _TABLES.get(function_code)
        if table is None or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        for register_address, word in self._images[device_id][table].items():
            registers[register_address - start_address] = word
        return None

    async def _absent(self, *_request: object) -> ExcCodes | None:
        return ExcCodes.GATEWAY_NO_RESPONSE  # never sent: `_trace_packet` drops it

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:  # noqa: FBT001 - pymodbus hook
        # pymodbus writes whatever this returns, so an empty reply is no reply. An RTU reply
        # starts with the id of the device that sends it.
        if not sending or not packet:
            return packet
        device_id = packet[0]
        fault = self._faults.get(device_id, "silent")  # not on the line: silent
        if fault == "silent":
            return b""
        if fault == "bad_crc":
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])
        return packet


def _write(target: int, chunk: bytes) -> None:
    """Write all of `chunk` to a non-blocking master; drop what does not fit (an overrun)."""
    while chunk:
        try:
            written = os.write(target, chunk)
        except BlockingIOError:
            return
        chunk = chunk[written:]
