# SPDX-License-Identifier: Apache-2.0
"""Modbus register values: 16-bit registers to numbers and back, and the read planner.

Reference: Modbus Application Protocol Specification V1.1b3 (registers are 16 bits, sent
high byte first; at most 125 registers per FC 03/04 request) and the vendors' register maps
(e.g. Eastron SDM630 Modbus protocol: IEEE-754 float32, high word first). Types wider than
one register have no standard byte order, so the order is data: ABCD (big-endian), CDAB
(words swapped), BADC (bytes swapped within each word), DCBA (little-endian).

Pure: lists of ints in, numbers or `ProtocolError` out; no asyncio, sockets or pymodbus.
"""

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from drivers.errors import ProtocolError

__all__ = [
    "MAX_READ_REGISTERS",
    "BlockSlice",
    "ReadBlock",
    "ReadPlan",
    "RegisterSpan",
    "RegisterTable",
    "RegisterType",
    "WordOrder",
    "encode_registers",
    "parse_registers",
    "plan_reads",
    "register_count",
]

#: The protocol's limit for one FC 03/04 read (Modbus Application Protocol V1.1b3, 6.3/6.4).
MAX_READ_REGISTERS: Final = 125


class RegisterType(StrEnum):
    """How a value is stored in one or more consecutive registers."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class WordOrder(StrEnum):
    """Byte order of a value across its registers, named by the big-endian bytes A B C D.

    ``ABCD``: registers in big-endian order (high word first). ``CDAB``: register order
    reversed (low word first), bytes within a register big-endian. ``BADC``: high word first,
    bytes swapped within each register. ``DCBA``: fully little-endian. For 64-bit types the
    same two operations (reverse the registers, swap bytes in each) are applied to all four
    registers; for 16-bit types only the byte swap (``BADC``, ``DCBA``) has an effect.
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class RegisterTable(StrEnum):
    """The register table a value is read from."""

    INPUT = "input"  # FC 04, read-only
    HOLDING = "holding"  # FC 03


# struct format (big-endian) and register count of each type.
_FORMATS: Final[dict[RegisterType, tuple[str, int]]] = {
    RegisterType.INT16: (">h", 1),
    RegisterType.UINT16: (">H", 1),
    RegisterType.INT32: (">i", 2),
    RegisterType.UINT32: (">I", 2),
    RegisterType.FLOAT32: (">f", 2),
    RegisterType.FLOAT64: (">d", 4),
}
_FLOAT_TYPES: Final = frozenset({RegisterType.FLOAT32, RegisterType.FLOAT64})
_WORD_SWAPPED: Final = frozenset({WordOrder.CDAB, WordOrder.DCBA})
_BYTE_SWAPPED: Final = frozenset({WordOrder.BADC, WordOrder.DCBA})
_REGISTER_MAX: Final = 0xFFFF
_ADDRESS_SPACE: Final = 0x10000


def register_count(register_type: RegisterType) -> int:
    """Return how many 16-bit registers a value of `register_type` occupies."""
    return _FORMATS[register_type][1]


def _reorder(registers: Sequence[int], word_order: WordOrder) -> list[int]:
    # Both operations are involutions, so the same function converts wire order to
    # big-endian order and back.
    ordered = list(reversed(registers)) if word_order in _WORD_SWAPPED else list(registers)
    if word_order in _BYTE_SWAPPED:
        ordered = [((word & 0xFF) << 8) | (word >> 8) for word in ordered]
    return ordered


def _check_scale(scale: float) -> None:
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be finite and non-zero, not {scale!r}")


def parse_registers(
    registers: Sequence[int],
    register_type: RegisterType,
    word_order: WordOrder = WordOrder.ABCD,
    *,
    scale: float = 1.0,
) -> float:
    """Decode one value from the registers that hold it.

    Args:
        registers: the raw register values (each 0..65535) in the order they were read.
        register_type: how the value is stored.
        word_order: byte order across the registers (see `WordOrder`).
        scale: multiplier from the stored number to the value in the map's unit, e.g. 0.01
            for a current stored in units of 10 mA and declared in A.

    Returns:
        The stored number times `scale`, in the unit the register map declares; finite.

    Raises:
        ProtocolError: wrong number of registers, a register outside 0..65535, or a float
            register holding NaN or infinity (how meters say "no value").
        ValueError: `scale` is zero or not finite (a register-map bug, not a reply's).
    """
    _check_scale(scale)
    fmt, count = _FORMATS[register_type]
    if len(registers) != count:
        raise ProtocolError(
            f"{register_type} needs {count} register(s), got {len(registers)}: {list(registers)}"
        )
    if any(not 0 <= word <= _REGISTER_MAX for word in registers):
        raise ProtocolError(f"register value outside 0..65535 in {list(registers)}")
    raw_bytes = b"".join(word.to_bytes(2, "big") for word in _reorder(registers, word_order))
    (stored,) = struct.unpack(fmt, raw_bytes)
    value = float(stored) * scale
    if not math.isfinite(value):
        # NaN/inf come from the meter ("no value"); a finite float64 times a large scale can
        # also overflow, which is no more a usable indication.
        raise ProtocolError(
            f"{register_type} {word_order} registers {[f'{w:04X}' for w in registers]} "
            f"hold no finite value ({float(stored)!r} x scale {scale!r})"
        )
    return value


def encode_registers(
    value: float,
    register_type: RegisterType,
    word_order: WordOrder = WordOrder.ABCD,
    *,
    scale: float = 1.0,
) -> list[int]:
    """Encode `value` (in the map's unit) into registers, as a meter would send it.

    Integer types store ``round(value / scale)``; float types store ``value / scale``, and may
    be NaN or infinite so that simulators can send a meter's "no value".

    Args:
        value: the value in the unit the register map declares.
        register_type: how the value is stored.
        word_order: byte order across the registers (see `WordOrder`).
        scale: multiplier from the stored number to the value (see `parse_registers`).

    Returns:
        The register values (each 0..65535) in wire order.

    Raises:
        ValueError: the value does not fit the type (integer range, float32 range), an
            integer type is given a non-finite value, or `scale` is zero or not finite.
    """
    _check_scale(scale)
    fmt, _ = _FORMATS[register_type]
    stored: float = value / scale if math.isfinite(value) else value
    if register_type not in _FLOAT_TYPES:
        if not math.isfinite(stored):
            raise ValueError(f"{register_type} cannot hold {value!r}")
        stored = round(stored)
    try:
        raw_bytes = struct.pack(fmt, stored)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} (scale {scale!r}) does not fit {register_type}") from exc
    words = [int.from_bytes(raw_bytes[i : i + 2], "big") for i in range(0, len(raw_bytes), 2)]
    return _reorder(words, word_order)


@dataclass(frozen=True, slots=True)
class RegisterSpan:
    """The registers one value needs.

    Attributes:
        table: the register table.
        address: 0-based address of the first register (protocol address, not 3xxxx/4xxxx).
        count: number of registers.
    """

    table: RegisterTable
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` registers of `table` from 0-based `address`."""

    table: RegisterTable
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class BlockSlice:
    """Where a span's registers are in the reply to a block: ``replies[block][start:stop]``."""

    block: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Few reads covering many spans.

    Attributes:
        blocks: the reads to issue, in order.
        slices: for each requested span, in the order given, where to find its registers.
    """

    blocks: tuple[ReadBlock, ...]
    slices: tuple[BlockSlice, ...]


def _check_span(span: RegisterSpan, max_count: int) -> None:
    if not 1 <= span.count <= max_count:
        raise ValueError(f"{span} needs 1..{max_count} registers")
    if span.address < 0 or span.address + span.count > _ADDRESS_SPACE:
        raise ValueError(f"{span} lies outside the 0..65535 address space")


def plan_reads(spans: Sequence[RegisterSpan], *, max_count: int, max_gap: int = 0) -> ReadPlan:
    """Merge the spans into few reads, greedily in address order.

    Spans of one table are merged while the merged block stays within
    `max_count` registers and no more than `max_gap` unneeded registers lie between
    neighbours (reading a few spare registers costs less than another request). Overlapping
    and repeated spans share registers.

    Args:
        spans: the registers each value needs.
        max_count: most registers one request may ask for (a per-device limit, <= 125).
        max_gap: most unneeded registers that may be read to join two spans.

    Returns:
        The blocks, and for each span the slice of its block that holds it.

    Raises:
        ValueError: a limit is out of range, or a span is empty, longer than `max_count`
            or outside the address space.
    """
    if not 1 <= max_count <= MAX_READ_REGISTERS:
        raise ValueError(f"max_count must be 1..{MAX_READ_REGISTERS}, not {max_count}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, not {max_gap}")
    for span in spans:
        _check_span(span, max_count)
    ordered = sorted(set(spans), key=lambda span: (span.table, span.address, span.count))
    blocks: list[ReadBlock] = []
    for span in ordered:
        last = blocks[-1] if blocks else None
        if last is not None and last.table == span.table:
            last_stop = last.address + last.count
            stop = max(last_stop, span.address + span.count)
            if span.address - last_stop <= max_gap and stop - last.address <= max_count:
                blocks[-1] = ReadBlock(last.table, last.address, stop - last.address)
                continue
        blocks.append(ReadBlock(span.table, span.address, span.count))
    slices: list[BlockSlice] = []
    for span in spans:
        index = next(
            i
            for i, block in enumerate(blocks)
            if block.table == span.table
            and block.address <= span.address
            and span.address + span.count <= block.address + block.count
        )
        start = span.address - blocks[index].address
        slices.append(BlockSlice(index, start, start + span.count))
    return ReadPlan(tuple(blocks), tuple(slices))
