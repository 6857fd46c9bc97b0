# SPDX-License-Identifier: Apache-2.0
"""The shipped flowmeter maps (MFE600H, TUF-2000M): addresses, types and decoded vectors.

Addresses are pinned to the vendors' tables as summarised in DOMAIN.md section 3: the
MFE600H manual lists protocol addresses (0x1010...), the TUF-2000M manual 1-based register
numbers (REG n is address n - 1). Both send float32 and int32 low word first (CDAB).
"""

import struct

import pytest

from drivers.modbus.codec import (
    RegisterTable,
    RegisterType,
    WordOrder,
    encode_registers,
    parse_registers,
    plan_reads,
)
from drivers.modbus.registermap import CombinedEntry, RegisterEntry, RegisterMap, load_builtin_map

F32, I32, U16 = RegisterType.FLOAT32, RegisterType.INT32, RegisterType.UINT16


@pytest.fixture(scope="module")
def mfe600h() -> RegisterMap:
    return load_builtin_map("mfe600h")


@pytest.fixture(scope="module")
def tuf2000m() -> RegisterMap:
    return load_builtin_map("tuf2000m")


@pytest.mark.parametrize(
    ("name", "address", "register_type", "unit"),
    [
        ("flow", 0x1010, F32, "m3/h"),
        ("velocity", 0x1012, F32, "m/s"),
        ("totalizer_int", 0x1018, I32, "m3"),
        ("totalizer_frac", 0x101A, F32, "m3"),
        ("flow_unit_code", 0x101E, U16, ""),
        ("totalizer_unit_code", 0x1021, U16, ""),
    ],
)
def test_mfe600h_registers(
    mfe600h: RegisterMap, name: str, address: int, register_type: RegisterType, unit: str
) -> None:
    entry = mfe600h.entry(name)
    assert (entry.table, entry.address, entry.register_type) == (
        RegisterTable.HOLDING,
        address,
        register_type,
    )
    assert (entry.word_order, entry.scale, entry.unit) == (WordOrder.CDAB, 1.0, unit)


@pytest.mark.parametrize(
    ("name", "first_reg", "register_type", "unit"),
    [
        ("flow", 1, F32, "m3/h"),  # REG 0001-0002
        ("velocity", 5, F32, "m/s"),
        ("sound_speed", 7, F32, "m/s"),
        ("positive_int", 9, I32, "m3"),  # REG 0009-0010, LONG
        ("positive_frac", 11, F32, "m3"),  # REG 0011-0012, REAL4
        ("negative_int", 13, I32, "m3"),
        ("negative_frac", 15, F32, "m3"),
        ("net_int", 25, I32, "m3"),
        ("net_frac", 27, F32, "m3"),
    ],
)
def test_tuf2000m_register_numbers_are_one_based(
    tuf2000m: RegisterMap, name: str, first_reg: int, register_type: RegisterType, unit: str
) -> None:
    entry = tuf2000m.entry(name)
    assert entry.address == first_reg - 1
    assert (entry.table, entry.register_type, entry.word_order, entry.unit) == (
        RegisterTable.HOLDING,
        register_type,
        WordOrder.CDAB,
        unit,
    )


@pytest.mark.parametrize(
    ("map_name", "name", "parts"),
    [
        ("mfe600h", "totalizer", ("totalizer_int", "totalizer_frac")),
        ("tuf2000m", "positive_totalizer", ("positive_int", "positive_frac")),
        ("tuf2000m", "negative_totalizer", ("negative_int", "negative_frac")),
        ("tuf2000m", "net_totalizer", ("net_int", "net_frac")),
    ],
)
def test_totalizers_are_integer_part_plus_fraction(
    map_name: str, name: str, parts: tuple[str, ...]
) -> None:
    register_map = load_builtin_map(map_name)
    totalizer = register_map.combined[name]
    assert totalizer.parts == parts
    assert (totalizer.unit, totalizer.quantity) == ("m3", "volume")
    integer, fraction = (register_map.entry(part) for part in parts)
    assert (integer.register_type, fraction.register_type) == (I32, F32)
    assert register_map.value(name) is totalizer
    assert name in register_map.names


def test_every_value_is_read_in_one_request(mfe600h: RegisterMap, tuf2000m: RegisterMap) -> None:
    for register_map, first, count in [(mfe600h, 0x1010, 18), (tuf2000m, 0, 28)]:
        spans = [entry.span for entry in register_map.entries.values()]
        plan = plan_reads(
            spans, max_count=register_map.max_registers, max_gap=register_map.max_gap
        )
        assert [(block.address, block.count) for block in plan.blocks] == [(first, count)]


# ---- decoded vectors ---------------------------------------------------------------------


def _float32(value: float) -> float:
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


def _decode(entry: RegisterEntry, registers: list[int]) -> float:
    return parse_registers(registers, entry.register_type, entry.word_order, scale=entry.scale)


def _sum(register_map: RegisterMap, combined: CombinedEntry, words: dict[str, list[int]]) -> float:
    return sum(_decode(register_map.entry(part), words[part]) for part in combined.parts)


# Big-endian float32: 12.5 = 41 48 00 00, 0.375 = 3E C0 00 00, 1.25 = 3F A0 00 00;
# int32 123456 = 00 01 E2 40. CDAB sends the low word first.
def test_mfe600h_vectors(mfe600h: RegisterMap) -> None:
    assert _decode(mfe600h.entry("flow"), [0x0000, 0x4148]) == 12.5
    assert _decode(mfe600h.entry("velocity"), [0x0000, 0x3FA0]) == 1.25
    words = {"totalizer_int": [0xE240, 0x0001], "totalizer_frac": [0x0000, 0x3EC0]}
    assert _sum(mfe600h, mfe600h.combined["totalizer"], words) == 123456.375
    assert _decode(mfe600h.entry("flow_unit_code"), [0x0005]) == 5  # m3/h


def test_tuf2000m_vectors(tuf2000m: RegisterMap) -> None:
    # A flow of 36.625 as a TUF-2000M sends it: low word 80 00 first, then 42 12.
    assert _decode(tuf2000m.entry("flow"), [0x8000, 0x4212]) == 36.625
    words = {"positive_int": [0xFFFF, 0x7FFF], "positive_frac": [0x0000, 0x3F00]}
    assert _sum(tuf2000m, tuf2000m.combined["positive_totalizer"], words) == 2**31 - 1 + 0.5
    words = {"negative_int": [0xFFF6, 0xFFFF], "negative_frac": [0x0000, 0x0000]}
    assert _sum(tuf2000m, tuf2000m.combined["negative_totalizer"], words) == -10


@pytest.mark.parametrize("map_name", ["mfe600h", "tuf2000m"])
def test_every_entry_round_trips_its_encoding(map_name: str) -> None:
    register_map = load_builtin_map(map_name)
    for entry in register_map.entries.values():
        value = {U16: 5.0, I32: -1234.0}.get(entry.register_type, -1234.5)
        registers = encode_registers(
            value, entry.register_type, entry.word_order, scale=entry.scale
        )
        assert len(registers) == entry.count
        assert _decode(entry, registers) == value


def test_unit_code_tables_are_documented(mfe600h: RegisterMap) -> None:
    codes = mfe600h.entry("flow_unit_code").description
    for code in ("0 L/s", "1 L/min", "2 L/h", "3 m3/s", "4 m3/min", "5 m3/h"):
        assert code in codes
    assert "1 m3" in mfe600h.entry("totalizer_unit_code").description
