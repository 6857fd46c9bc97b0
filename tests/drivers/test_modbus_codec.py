# SPDX-License-Identifier: Apache-2.0
"""Register codec and read planner of `drivers.modbus.codec`, pinned to published vectors."""

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.errors import ProtocolError
from drivers.modbus.codec import (
    MAX_READ_REGISTERS,
    BlockSlice,
    ReadBlock,
    RegisterSpan,
    RegisterTable,
    RegisterType,
    WordOrder,
    encode_registers,
    parse_registers,
    plan_reads,
    register_count,
)

INPUT = RegisterTable.INPUT
HOLDING = RegisterTable.HOLDING
F32 = RegisterType.FLOAT32
ABCD, CDAB, BADC, DCBA = WordOrder.ABCD, WordOrder.CDAB, WordOrder.BADC, WordOrder.DCBA


def _crc16_modbus(frame: bytes) -> int:
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _float32(value: float) -> float:
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


def test_sdm630_rtu_example_is_230_1_volts() -> None:
    # DOMAIN.md section 3: request 01 04 00 00 00 02 71 CB -> reply 01 04 04 43 66 19 9A 85 E4.
    request = bytes.fromhex("01 04 00 00 00 02 71 CB")
    reply = bytes.fromhex("01 04 04 43 66 19 9A 85 E4")
    assert _crc16_modbus(request[:-2]).to_bytes(2, "little") == request[-2:]
    assert _crc16_modbus(reply[:-2]).to_bytes(2, "little") == reply[-2:]
    data = reply[3 : 3 + reply[2]]
    registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    assert registers == [0x4366, 0x199A]

    voltage_v = parse_registers(registers, F32, ABCD)

    assert voltage_v == _float32(230.1)
    assert voltage_v == pytest.approx(230.1, abs=1e-4)
    assert encode_registers(230.1, F32, ABCD) == [0x4366, 0x199A]


# Big-endian bytes of 230.1 as float32: 43 66 19 9A; of 0x12345678: 12 34 56 78;
# of 1.0 as float64: 3F F0 00 00 00 00 00 00.
KNOWN_VECTORS = [
    (RegisterType.FLOAT32, ABCD, [0x4366, 0x199A], _float32(230.1)),
    (RegisterType.FLOAT32, CDAB, [0x199A, 0x4366], _float32(230.1)),
    (RegisterType.FLOAT32, BADC, [0x6643, 0x9A19], _float32(230.1)),
    (RegisterType.FLOAT32, DCBA, [0x9A19, 0x6643], _float32(230.1)),
    (RegisterType.FLOAT32, CDAB, [0x0000, 0x4148], 12.5),  # a CDAB flowmeter's 12.5 m3/h
    (RegisterType.INT32, ABCD, [0x1234, 0x5678], 0x12345678),
    (RegisterType.INT32, CDAB, [0x5678, 0x1234], 0x12345678),
    (RegisterType.INT32, BADC, [0x3412, 0x7856], 0x12345678),
    (RegisterType.INT32, DCBA, [0x7856, 0x3412], 0x12345678),
    (RegisterType.INT32, ABCD, [0xFFFF, 0xFFFE], -2),
    (RegisterType.INT32, CDAB, [0xFFFE, 0xFFFF], -2),
    (RegisterType.UINT32, ABCD, [0xFFFF, 0xFFFE], 0xFFFFFFFE),
    (RegisterType.UINT32, CDAB, [0x0001, 0x0000], 1),
    (RegisterType.INT16, ABCD, [0xFFFE], -2),
    (RegisterType.INT16, CDAB, [0xFFFE], -2),
    (RegisterType.INT16, BADC, [0xFEFF], -2),
    (RegisterType.INT16, DCBA, [0xFEFF], -2),
    (RegisterType.UINT16, ABCD, [0xABCD], 0xABCD),
    (RegisterType.UINT16, BADC, [0xCDAB], 0xABCD),
    (RegisterType.FLOAT64, ABCD, [0x3FF0, 0, 0, 0], 1.0),
    (RegisterType.FLOAT64, CDAB, [0, 0, 0, 0x3FF0], 1.0),
    (RegisterType.FLOAT64, BADC, [0xF03F, 0, 0, 0], 1.0),
    (RegisterType.FLOAT64, DCBA, [0, 0, 0, 0xF03F], 1.0),
]


@pytest.mark.parametrize(("register_type", "word_order", "registers", "value"), KNOWN_VECTORS)
def test_known_vectors_decode(
    register_type: RegisterType, word_order: WordOrder, registers: list[int], value: float
) -> None:
    assert parse_registers(registers, register_type, word_order) == value


@pytest.mark.parametrize(("register_type", "word_order", "registers", "value"), KNOWN_VECTORS)
def test_known_vectors_encode(
    register_type: RegisterType, word_order: WordOrder, registers: list[int], value: float
) -> None:
    assert encode_registers(value, register_type, word_order) == registers


@pytest.mark.parametrize(
    ("register_type", "registers", "scale", "value"),
    [
        (RegisterType.INT16, [0x0929], 0.1, 234.5),  # 2345 x 0.1 V
        (RegisterType.INT16, [0xFF9C], 0.01, -1.0),  # -100 x 0.01 A
        (RegisterType.UINT16, [5000], 0.01, 50.0),  # 5000 x 0.01 Hz
        (RegisterType.UINT32, [0x0001, 0xE240], 0.01, 1234.56),  # 123456 x 0.01 kWh
        (RegisterType.INT32, [0xFFFF, 0xFFFF], 1000.0, -1000.0),
        (RegisterType.FLOAT32, [0x4366, 0x199A], 0.001, _float32(230.1) * 0.001),  # V -> kV
    ],
)
def test_scale_multiplies_the_stored_number(
    register_type: RegisterType, registers: list[int], scale: float, value: float
) -> None:
    assert parse_registers(registers, register_type, scale=scale) == pytest.approx(value)
    assert encode_registers(value, register_type, scale=scale) == registers


@pytest.mark.parametrize(
    ("register_type", "registers"),
    [
        (RegisterType.FLOAT32, [0x7FC0, 0x0000]),  # quiet NaN
        (RegisterType.FLOAT32, [0xFFFF, 0xFFFF]),  # all ones: a NaN, common "no value"
        (RegisterType.FLOAT32, [0x7F80, 0x0000]),  # +inf
        (RegisterType.FLOAT32, [0xFF80, 0x0000]),  # -inf
        (RegisterType.FLOAT64, [0x7FF8, 0, 0, 0]),  # NaN
        (RegisterType.FLOAT64, [0x7FF0, 0, 0, 0]),  # +inf
    ],
)
def test_nan_and_infinity_are_protocol_errors(
    register_type: RegisterType, registers: list[int]
) -> None:
    with pytest.raises(ProtocolError, match="no finite value"):
        parse_registers(registers, register_type)


def test_overflow_by_scale_is_a_protocol_error() -> None:
    largest = encode_registers(1.7e308, RegisterType.FLOAT64)
    with pytest.raises(ProtocolError):
        parse_registers(largest, RegisterType.FLOAT64, scale=10.0)


@pytest.mark.parametrize(
    ("register_type", "registers"),
    [
        (RegisterType.FLOAT32, [0x4366]),
        (RegisterType.FLOAT32, [0x4366, 0x199A, 0x0000]),
        (RegisterType.INT16, []),
        (RegisterType.FLOAT64, [0, 0]),
        (RegisterType.UINT32, [0x10000, 0]),
        (RegisterType.INT16, [-1]),
    ],
)
def test_wrong_registers_are_protocol_errors(
    register_type: RegisterType, registers: list[int]
) -> None:
    with pytest.raises(ProtocolError):
        parse_registers(registers, register_type)


@pytest.mark.parametrize("scale", [0.0, math.nan, math.inf])
def test_bad_scale_is_a_plain_value_error(scale: float) -> None:
    with pytest.raises(ValueError, match="scale") as caught:
        parse_registers([0, 0], F32, scale=scale)
    assert not isinstance(caught.value, ProtocolError)
    with pytest.raises(ValueError, match="scale"):
        encode_registers(1.0, F32, scale=scale)


@pytest.mark.parametrize(
    ("value", "register_type"),
    [
        (40000, RegisterType.INT16),
        (-1, RegisterType.UINT16),
        (2**32, RegisterType.UINT32),
        (-(2**31) - 1, RegisterType.INT32),
        (1e39, RegisterType.FLOAT32),
        (math.nan, RegisterType.INT32),
        (math.inf, RegisterType.UINT16),
    ],
)
def test_encode_rejects_values_that_do_not_fit(value: float, register_type: RegisterType) -> None:
    with pytest.raises(ValueError, match=str(register_type)):
        encode_registers(value, register_type)


def test_encode_sends_nan_for_float_types() -> None:
    registers = encode_registers(math.nan, F32, CDAB)
    with pytest.raises(ProtocolError):
        parse_registers(registers, F32, CDAB)


@pytest.mark.parametrize(
    ("register_type", "count"),
    [
        (RegisterType.INT16, 1),
        (RegisterType.UINT16, 1),
        (RegisterType.INT32, 2),
        (RegisterType.UINT32, 2),
        (RegisterType.FLOAT32, 2),
        (RegisterType.FLOAT64, 4),
    ],
)
def test_register_count(register_type: RegisterType, count: int) -> None:
    assert register_count(register_type) == count


_SAMPLES: dict[RegisterType, list[float]] = {
    RegisterType.INT16: [-32768, -1, 0, 1, 32767],
    RegisterType.UINT16: [0, 1, 0x1234, 65535],
    RegisterType.INT32: [-(2**31), -1, 0, 0x12345678, 2**31 - 1],
    RegisterType.UINT32: [0, 1, 0xDEADBEEF, 2**32 - 1],
    RegisterType.FLOAT32: [0.0, -0.0, _float32(230.1), -_float32(1e-30), _float32(3.4e38)],
    RegisterType.FLOAT64: [0.0, 230.1, -1e-300, 1.7976931348623157e308],
}


@pytest.mark.parametrize("word_order", list(WordOrder))
@pytest.mark.parametrize("register_type", list(RegisterType))
def test_every_type_round_trips_in_every_word_order(
    register_type: RegisterType, word_order: WordOrder
) -> None:
    for value in _SAMPLES[register_type]:
        registers = encode_registers(value, register_type, word_order)
        assert len(registers) == register_count(register_type)
        assert all(0 <= word <= 0xFFFF for word in registers)
        decoded = parse_registers(registers, register_type, word_order)
        assert decoded == value
        assert math.copysign(1.0, decoded) == math.copysign(1.0, value)


@given(
    registers=st.lists(st.integers(0, 0xFFFF), max_size=6),
    register_type=st.sampled_from(RegisterType),
    word_order=st.sampled_from(WordOrder),
    scale=st.sampled_from([1.0, 0.1, 0.001, 1000.0, -0.01, 1e300]),
)
def test_parse_is_total(
    registers: list[int], register_type: RegisterType, word_order: WordOrder, scale: float
) -> None:
    try:
        value = parse_registers(registers, register_type, word_order, scale=scale)
    except ProtocolError:
        return
    assert isinstance(value, float)
    assert math.isfinite(value)


_VALUES: dict[RegisterType, st.SearchStrategy[float]] = {
    RegisterType.INT16: st.integers(-(2**15), 2**15 - 1),
    RegisterType.UINT16: st.integers(0, 2**16 - 1),
    RegisterType.INT32: st.integers(-(2**31), 2**31 - 1),
    RegisterType.UINT32: st.integers(0, 2**32 - 1),
    RegisterType.FLOAT32: st.floats(width=32, allow_nan=False, allow_infinity=False),
    RegisterType.FLOAT64: st.floats(allow_nan=False, allow_infinity=False),
}


def _typed_values() -> st.SearchStrategy[tuple[RegisterType, float]]:
    return st.sampled_from(RegisterType).flatmap(
        lambda register_type: st.tuples(st.just(register_type), _VALUES[register_type])
    )


@given(typed=_typed_values(), word_order=st.sampled_from(WordOrder))
def test_encode_then_parse_round_trips(
    typed: tuple[RegisterType, float], word_order: WordOrder
) -> None:
    register_type, value = typed
    assert (
        parse_registers(
            encode_registers(value, register_type, word_order), register_type, word_order
        )
        == value
    )


@given(
    registers=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
    word_order=st.sampled_from(WordOrder),
)
def test_parse_then_encode_round_trips_int32(registers: list[int], word_order: WordOrder) -> None:
    value = parse_registers(registers, RegisterType.INT32, word_order)
    assert encode_registers(value, RegisterType.INT32, word_order) == registers


# ---- read planner ------------------------------------------------------------------------

SDM630_SPANS = [
    RegisterSpan(INPUT, address, 2)
    for address in (0x00, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x34, 0x46, 0x48, 0x4A, 0x156)
]


def test_adjacent_registers_merge_into_one_read() -> None:
    plan = plan_reads(SDM630_SPANS[:6], max_count=80)
    assert plan.blocks == (ReadBlock(INPUT, 0, 12),)
    assert plan.slices == tuple(BlockSlice(0, 2 * i, 2 * i + 2) for i in range(6))


def test_sdm630_channels_need_three_reads_with_gap_16() -> None:
    plan = plan_reads(SDM630_SPANS, max_count=80, max_gap=16)
    assert plan.blocks == (
        ReadBlock(INPUT, 0x00, 12),
        ReadBlock(INPUT, 0x34, 0x4C - 0x34),
        ReadBlock(INPUT, 0x156, 2),
    )
    assert plan.slices[6] == BlockSlice(1, 0, 2)  # total power
    assert plan.slices[7] == BlockSlice(1, 0x46 - 0x34, 0x48 - 0x34)  # frequency
    assert plan.slices[10] == BlockSlice(2, 0, 2)


def test_gaps_larger_than_allowed_split_reads() -> None:
    spans = [RegisterSpan(INPUT, 0, 2), RegisterSpan(INPUT, 5, 2)]
    assert len(plan_reads(spans, max_count=80, max_gap=2).blocks) == 2
    assert plan_reads(spans, max_count=80, max_gap=3).blocks == (ReadBlock(INPUT, 0, 7),)


def test_max_count_is_respected() -> None:
    spans = [RegisterSpan(INPUT, address, 2) for address in range(0, 200, 2)]
    plan = plan_reads(spans, max_count=80, max_gap=0)
    assert [block.count for block in plan.blocks] == [80, 80, 40]
    assert [block.address for block in plan.blocks] == [0, 80, 160]


def test_tables_are_never_merged() -> None:
    spans = [RegisterSpan(INPUT, 0, 2), RegisterSpan(HOLDING, 2, 2), RegisterSpan(INPUT, 2, 2)]
    plan = plan_reads(spans, max_count=125)
    assert set(plan.blocks) == {ReadBlock(INPUT, 0, 4), ReadBlock(HOLDING, 2, 2)}
    assert plan.blocks[plan.slices[1].block].table is HOLDING


def test_repeated_and_overlapping_spans_share_registers() -> None:
    spans = [RegisterSpan(INPUT, 0, 4), RegisterSpan(INPUT, 2, 2), RegisterSpan(INPUT, 0, 4)]
    plan = plan_reads(spans, max_count=10)
    assert plan.blocks == (ReadBlock(INPUT, 0, 4),)
    assert plan.slices == (BlockSlice(0, 0, 4), BlockSlice(0, 2, 4), BlockSlice(0, 0, 4))


@pytest.mark.parametrize(
    ("spans", "max_count", "max_gap"),
    [
        ([RegisterSpan(INPUT, 0, 4)], 2, 0),  # span longer than a request
        ([RegisterSpan(INPUT, 0, 0)], 10, 0),  # empty span
        ([RegisterSpan(INPUT, 0xFFFF, 2)], 10, 0),  # beyond the address space
        ([RegisterSpan(INPUT, -1, 2)], 10, 0),
        ([RegisterSpan(INPUT, 0, 2)], MAX_READ_REGISTERS + 1, 0),
        ([RegisterSpan(INPUT, 0, 2)], 0, 0),
        ([RegisterSpan(INPUT, 0, 2)], 10, -1),
    ],
)
def test_planner_rejects_impossible_requests(
    spans: list[RegisterSpan], max_count: int, max_gap: int
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - messages vary per limit
        plan_reads(spans, max_count=max_count, max_gap=max_gap)


@given(
    spans=st.lists(
        st.builds(
            RegisterSpan,
            st.sampled_from(RegisterTable),
            st.integers(0, 400),
            st.sampled_from([1, 2, 4]),
        ),
        min_size=1,
        max_size=30,
    ),
    max_count=st.integers(4, MAX_READ_REGISTERS),
    max_gap=st.integers(0, 20),
)
def test_plan_covers_every_span_within_limits(
    spans: list[RegisterSpan], max_count: int, max_gap: int
) -> None:
    plan = plan_reads(spans, max_count=max_count, max_gap=max_gap)
    assert len(plan.slices) == len(spans)
    assert len(plan.blocks) <= len(set(spans))
    for block in plan.blocks:
        assert 1 <= block.count <= max_count
    for span, where in zip(spans, plan.slices, strict=True):
        block = plan.blocks[where.block]
        assert block.table == span.table
        assert block.address + where.start == span.address
        assert where.stop - where.start == span.count
        assert where.stop <= block.count
