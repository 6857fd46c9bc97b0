# SPDX-License-Identifier: Apache-2.0
"""Modbus meters whose register map is data: one driver for every model with a map file.

Reference: Modbus Application Protocol V1.1b3 (FC 03 read holding registers, FC 04 read
input registers); the addresses, types and units come from the model's register map (e.g.
the Eastron SDM630 Modbus protocol, ``maps/sdm630.toml``). Decoding and request planning are
the pure `drivers.modbus.codec`; `ModbusInstrument` only awaits its injected `RegisterBus`.
"""

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from drivers.errors import ProtocolError
from drivers.modbus.codec import ReadBlock, RegisterTable, parse_registers, plan_reads
from drivers.modbus.registermap import CombinedEntry
from drivers.reading import RawReading

if TYPE_CHECKING:
    from drivers.modbus.registermap import RegisterEntry, RegisterMap
    from drivers.transport import RegisterBus

__all__ = ["ModbusInstrument"]

# Modbus device ids: 0 is broadcast (no reply) on a serial line but a valid unit id over
# TCP, 248..255 are reserved yet used by TCP devices (255 = "this device"); all are allowed.
_MAX_DEVICE_ID: Final = 255


class ModbusInstrument:
    """A Modbus meter on any `RegisterBus`, read through its register map.

    Each `read` issues the few block reads planned at construction (neighbouring registers
    merged up to the map's `max_registers` and `max_gap`) and decodes every configured
    source; a combined source (``sum_of`` in the map) is the sum of its decoded parts, which
    are read whether or not they are sources too. Owned by one scheduler task at a time; no
    retries, sleeps or locks.
    """

    def __init__(
        self,
        bus: "RegisterBus",
        register_map: "RegisterMap",
        *,
        device_id: int,
        sources: Sequence[str],
    ) -> None:
        """Bind a meter on `bus` to the values of `register_map` to read.

        Args:
            bus: the Modbus master the meter is reached through (shared with other meters).
            register_map: the meter model's register map.
            device_id: the meter's Modbus device id (unit id, 0..255).
            sources: the map's values to read (register or combined entries), in the order
                readings are returned.

        Raises:
            ValueError: an unknown or repeated source name (the message lists the valid
                names), no sources, or a device id outside 0..255.
        """
        if not 0 <= device_id <= _MAX_DEVICE_ID:
            raise ValueError(f"Modbus device id must be 0..{_MAX_DEVICE_ID}, not {device_id}")
        if not sources:
            raise ValueError(f"no sources to read; valid: {', '.join(register_map.names)}")
        if unknown := [name for name in sources if name not in register_map.names]:
            raise ValueError(
                f"{register_map.model} ({register_map.source}) has no register "
                f"{', '.join(map(repr, unknown))}; valid: {', '.join(register_map.names)}"
            )
        if len(set(sources)) != len(sources):
            raise ValueError(f"repeated source in {list(sources)}")
        self._bus = bus
        self._map = register_map
        self._device_id = device_id
        self._sources = tuple(register_map.value(name) for name in sources)
        # Each register entry is read and decoded once, however many sources need it.
        needed = dict.fromkeys(
            part
            for source in self._sources
            for part in (source.parts if isinstance(source, CombinedEntry) else (source.name,))
        )
        self._entries: tuple[RegisterEntry, ...] = tuple(
            register_map.entry(name) for name in needed
        )
        self._plan = plan_reads(
            [entry.span for entry in self._entries],
            max_count=register_map.max_registers,
            max_gap=register_map.max_gap,
        )

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        """The read requests one poll issues, in order."""
        return self._plan.blocks

    async def read(self) -> list[RawReading]:
        """Read every source once.

        Returns:
            One stable reading per source, in the order given, with the map's unit.

        Raises:
            ProtocolError: a reply of the wrong length, a value that does not decode (a
                float register holding NaN or infinity), or a sum that overflows.
            InstrumentError: the meter answered with a Modbus exception.
            TransportError: the bus is down or the meter did not answer in time.
        """
        replies = [await self._read_block(block) for block in self._plan.blocks]
        decoded: dict[str, float] = {}
        for entry, where in zip(self._entries, self._plan.slices, strict=True):
            registers = replies[where.block][where.start : where.stop]
            try:
                decoded[entry.name] = parse_registers(
                    registers, entry.register_type, entry.word_order, scale=entry.scale
                )
            except ProtocolError as exc:
                raise ProtocolError(f"{self._name()} {entry.name}: {exc}") from exc
        readings: list[RawReading] = []
        for source in self._sources:
            if isinstance(source, CombinedEntry):
                # fsum rounds once, however many parts; finite parts give a finite sum or
                # OverflowError (two float64 parts near their maximum).
                try:
                    indication = math.fsum(decoded[part] for part in source.parts)
                except OverflowError as exc:
                    raise ProtocolError(
                        f"{self._name()} {source.name}: sum of {', '.join(source.parts)} overflows"
                    ) from exc
            else:
                indication = decoded[source.name]
            readings.append(
                RawReading(
                    source=source.name, indication=indication, unit=source.unit, stable=True
                )
            )
        return readings

    async def _read_block(self, block: ReadBlock) -> list[int]:
        if block.table is RegisterTable.INPUT:
            registers = await self._bus.read_input(
                block.address, block.count, device_id=self._device_id
            )
        else:
            registers = await self._bus.read_holding(
                block.address, block.count, device_id=self._device_id
            )
        if len(registers) != block.count:
            raise ProtocolError(
                f"{self._name()}: asked for {block.count} {block.table} registers at "
                f"{block.address:#06x}, got {len(registers)}"
            )
        return registers

    def _name(self) -> str:
        return f"{self._map.model} device {self._device_id}"
