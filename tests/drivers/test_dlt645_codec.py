# SPDX-License-Identifier: Apache-2.0
"""The pure DL/T 645-2007 codec: published frames byte for byte, round trips, totality."""

import contextlib
import math
from collections.abc import Callable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DriverError, InstrumentError, ProtocolError
from drivers.meters.dlt645 import (
    ITEMS,
    ITEMS_BY_DI,
    WILDCARD,
    DataItem,
    Frame,
    _parse_items,
    encode_frame,
    encode_read,
    encode_read_address,
    find_frame,
    parse_address_reply,
    parse_frame,
    parse_read_reply,
)
from drivers.sim.dlt645 import encode_exception_reply, encode_read_reply, encode_value


def frame(text: str) -> bytes:
    return bytes.fromhex(text)


# --- the verified vectors of shared/DOMAIN.md §3, byte for byte ---

IMPORT_REQUEST = frame("68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16")
IMPORT_REPLY = frame("68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16")
VOLTAGE_REQUEST = frame("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 34 34 35 17 16")
VOLTAGE_REPLY = frame("68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16")
ADDRESS_REQUEST = frame("68 AA AA AA AA AA AA 68 13 00 DF 16")
ADDRESS_REPLY = frame("68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16")


@pytest.mark.parametrize(
    ("address", "di", "preamble", "expected"),
    [
        ("000102030425", 0x00010000, 0, IMPORT_REQUEST),
        ("000102030425", bytes.fromhex("00010000"), 0, IMPORT_REQUEST),
        ("000000000161", 0x02010100, 4, VOLTAGE_REQUEST),
        ("000000000161", bytes.fromhex("02010100"), 4, VOLTAGE_REQUEST),
    ],
)
def test_encode_read_matches_the_published_requests(
    address: str, di: int | bytes, preamble: int, expected: bytes
) -> None:
    assert encode_read(address, di, preamble=preamble) == expected


def test_encode_read_sends_four_fe_by_default() -> None:
    assert encode_read("000000000161", 0x02010100) == VOLTAGE_REQUEST
    assert encode_read("000102030425", 0x00010000) == b"\xfe" * 4 + IMPORT_REQUEST


def test_encode_read_address_matches_the_published_request() -> None:
    assert encode_read_address(preamble=0) == ADDRESS_REQUEST
    assert encode_read_address() == b"\xfe" * 4 + ADDRESS_REQUEST


@pytest.mark.parametrize(
    ("reply", "address", "di", "expected"),
    [
        (IMPORT_REPLY, "000102030425", 0x00010000, 1206.42),
        (VOLTAGE_REPLY, "000000000161", 0x02010100, 100.1),
        (VOLTAGE_REPLY, WILDCARD, bytes.fromhex("02010100"), 100.1),
    ],
)
@pytest.mark.parametrize("preamble", [0, 1, 4, 7])
def test_parse_read_reply_decodes_the_published_replies(
    reply: bytes, address: str, di: int | bytes, expected: float, preamble: int
) -> None:
    parsed = parse_frame(b"\xfe" * preamble + reply)
    assert parse_read_reply(parsed, di, address=address) == expected


def test_parse_frame_gives_address_control_and_plain_data() -> None:
    assert parse_frame(IMPORT_REPLY) == Frame(
        address="000102030425", control=0x91, data=bytes.fromhex("00 00 01 00 42 06 12 00")
    )
    request = parse_frame(ADDRESS_REQUEST)
    assert request == Frame(address=WILDCARD, control=0x13, data=b"")
    assert (request.function, request.is_reply, request.is_exception) == (0x13, False, False)


def test_parse_address_reply_decodes_the_published_reply() -> None:
    assert parse_address_reply(parse_frame(ADDRESS_REPLY)) == "000000000001"


def test_requests_parse_back() -> None:
    for request, address, data in [
        (IMPORT_REQUEST, "000102030425", "00 00 01 00"),
        (VOLTAGE_REQUEST, "000000000161", "00 01 01 02"),
    ]:
        assert parse_frame(request) == Frame(
            address=address, control=0x11, data=bytes.fromhex(data)
        )


# --- every item of the table round-trips through the simulator's independent encoder ---

ITEM_VALUES = {
    "combined_active_energy": [0.0, 1206.42, 999999.99],
    "import_active_energy": [0.0, 1206.42, 12345.67, 999999.99],
    "export_active_energy": [0.0, 0.01, 42.5],
    "voltage_a": [0.0, 100.1, 230.0, 999.9],
    "voltage_b": [229.8],
    "voltage_c": [230.4],
    "current_a": [0.0, 1.234, -1.234, 799.999, -799.999, -0.001],
    "current_b": [5.2, -5.2],
    "current_c": [0.05],
    "total_active_power": [0.0, 12.3456, -0.2839, 79.9999, -79.9999],
    "power_factor": [1.0, 0.5, -0.5, -1.0, 0.001, 7.999],
    "frequency": [50.0, 49.98, 60.02, 99.99],
}


def test_every_item_has_round_trip_values() -> None:
    assert set(ITEM_VALUES) == set(ITEMS)


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, values in ITEM_VALUES.items() for value in values]
)
def test_every_item_round_trips(name: str, value: float) -> None:
    item = ITEMS[name]
    reply = parse_frame(encode_read_reply("123456789012", item, value))
    assert parse_read_reply(reply, item.di, address="123456789012") == value


@pytest.mark.parametrize(
    ("name", "unit", "decimals", "length", "signed"),
    [
        ("combined_active_energy", "kWh", 2, 4, False),
        ("import_active_energy", "kWh", 2, 4, False),
        ("export_active_energy", "kWh", 2, 4, False),
        ("voltage_a", "V", 1, 2, False),
        ("current_c", "A", 3, 3, True),
        ("total_active_power", "kW", 4, 3, True),
        ("power_factor", "", 3, 2, True),
        ("frequency", "Hz", 2, 2, False),
    ],
)
def test_item_table_formats(
    name: str, unit: str, decimals: int, length: int, *, signed: bool
) -> None:
    item = ITEMS[name]
    assert (item.unit, item.decimals, item.length, item.signed) == (unit, decimals, length, signed)
    assert ITEMS_BY_DI[item.di] is item


def test_item_table_identifiers() -> None:
    assert {name: f"{item.di:08X}" for name, item in ITEMS.items()} == {
        "combined_active_energy": "00000000",
        "import_active_energy": "00010000",
        "export_active_energy": "00020000",
        "voltage_a": "02010100",
        "voltage_b": "02010200",
        "voltage_c": "02010300",
        "current_a": "02020100",
        "current_b": "02020200",
        "current_c": "02020300",
        "total_active_power": "02030000",
        "power_factor": "02060000",
        "frequency": "02800002",
    }


def test_sign_bit_is_bit_7_of_the_most_significant_byte() -> None:
    current = ITEMS["current_a"]
    assert encode_value(current, -1.234) == bytes.fromhex("34 12 80")
    assert encode_value(current, 1.234) == bytes.fromhex("34 12 00")
    assert encode_value(ITEMS["voltage_a"], 100.1) == bytes.fromhex("01 10")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("voltage_a", -1.0),  # unsigned
        ("voltage_a", 1000.0),
        ("current_a", 800.0),  # the sign bit leaves 0..7 for the top digit
        ("frequency", math.nan),
        ("power_factor", math.inf),
    ],
)
def test_simulator_encoder_refuses_values_outside_the_format(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        encode_value(ITEMS[name], value)


# --- malformed frames and replies ---


def with_checksum(body: bytes) -> bytes:
    """Re-frame `body` (68 .. DATA, wire bytes) with a correct CS and 16."""
    return body + bytes([sum(body) % 256, 0x16])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than 12 bytes"),
        (b"\xfe\xfe\xfe\xfe", "shorter than 12 bytes"),
        (IMPORT_REPLY[:11], "shorter than 12 bytes"),
        (b"\x00" + IMPORT_REPLY, "does not start"),  # noise is find_frame's job, not ours
        (IMPORT_REPLY.replace(b"\x68", b"\x69", 1), "does not start"),
        (IMPORT_REPLY[:7] + b"\x00" + IMPORT_REPLY[8:], "does not start"),
        (IMPORT_REPLY[:-3] + IMPORT_REPLY[-2:], "wrong length"),  # a DATA byte lost
        (IMPORT_REPLY + b"\x16", "wrong length"),
        (IMPORT_REPLY + IMPORT_REPLY, "wrong length"),  # two frames joined
        (IMPORT_REPLY[:-1] + b"\x17", "does not end with 16"),
        (IMPORT_REPLY[:-2] + b"\x8c\x16", "bad checksum 8C, expected 8B"),
        (IMPORT_REQUEST[:-2] + b"\x00\x16", "bad checksum 00, expected E1"),
        (with_checksum(frame("68 1A 00 00 00 00 00 68 91 00")), "address 00000000001A is not BCD"),
        (with_checksum(frame("68 AA AA AA AA AA 00 68 91 00")), "is not BCD"),  # half wildcard
    ],
)
def test_parse_frame_rejects_malformed_frames(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_frame(data)


def reply(control: int, data: str, address: str = "000102030425") -> Frame:
    return parse_frame(encode_frame(address, control, bytes.fromhex(data)))


@pytest.mark.parametrize(
    ("parsed", "di", "address", "message"),
    [
        (parse_frame(IMPORT_REPLY), 0x00010000, "000102030426", "from meter 000102030425, not"),
        (parse_frame(IMPORT_REPLY), 0x00020000, None, "answered DI 00010000, not 00020000"),
        (parse_frame(IMPORT_REQUEST), 0x00010000, None, "a request"),
        (parse_frame(ADDRESS_REPLY), 0x00010000, None, "function 13, not 11"),
        (reply(0x91, "00 00 01 00 42 06 12"), 0x00010000, None, "expected 4\\+4 DATA bytes"),
        (reply(0x91, "00 00 01 00 42 06 12 00 00"), 0x00010000, None, "DATA bytes"),
        (reply(0x91, "00 00 01 00"), 0x00010000, None, "DATA bytes"),
        (reply(0x91, "00 00"), 0x00010000, None, "DATA bytes"),
        (reply(0x91, "00 00 01 00 4A 06 12 00"), 0x00010000, None, "00 12 06 4A is not BCD"),
        (reply(0x91, "00 00 01 00 FF FF FF FF"), 0x00010000, None, "is not BCD"),
        (reply(0x91, "00 01 01 02 01 A0"), 0x02010100, None, "is not BCD"),  # sign bit unsigned
        (reply(0x91, "00 01 02 02 01 02 8A"), 0x02020100, None, "is not BCD"),
        (reply(0xB1, "00 00 01 00 42 06 12 00"), 0x00010000, None, "follow-up"),
        (reply(0x91, "00 00 01 00 42 06 12 00", WILDCARD), 0x00010000, None, "wildcard"),
        (reply(0xD1, ""), 0x00010000, None, "not one ERR byte"),
        (reply(0xD1, "02 02"), 0x00010000, None, "not one ERR byte"),
    ],
)
def test_parse_read_reply_rejects_wrong_replies(
    parsed: Frame, di: int, address: str | None, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_read_reply(parsed, di, address=address)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (0x02, r"refused to read import_active_energy \(DI 00010000\): no such data \(ERR=02\)"),
        (0x04, "password error"),
        (0x06, "no such data; password error"),
        (0x01, "other error"),
        (0x00, "no reason"),
    ],
)
def test_exception_reply_is_an_instrument_error(error: int, message: str) -> None:
    parsed = parse_frame(encode_exception_reply("000102030425", 0x11, error))
    assert parsed.control == 0xD1
    assert parsed.is_exception
    with pytest.raises(InstrumentError, match=message):
        parse_read_reply(parsed, 0x00010000, address="000102030425")


@pytest.mark.parametrize(
    ("parsed", "message"),
    [
        (reply(0x93, "34 33 33 33 33"), "not 6 bytes"),
        (reply(0x93, "25 04 03 02 01 01"), "replied address 010102030425"),
        (reply(0x93, "25 04 03 02 01 0F"), "is not BCD"),
        (parse_frame(IMPORT_REPLY), "function 11, not 13"),
        (parse_frame(ADDRESS_REQUEST), "a request"),
    ],
)
def test_parse_address_reply_rejects_wrong_replies(parsed: Frame, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_address_reply(parsed)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode_read("999999999999", 0x00010000), "broadcast"),
        (lambda: encode_read("00010203042", 0x00010000), "12 digits"),
        (lambda: encode_read("0001020304255", 0x00010000), "12 digits"),
        (lambda: encode_read("00010203042X", 0x00010000), "12 digits"),
        (lambda: encode_read("00010203042\u0665", 0x00010000), "12 digits"),  # Arabic-Indic 5
        (lambda: encode_read("aaaaaaaaaaaa", 0x00010000), "12 digits"),
        (lambda: encode_read("000102030425", 0x1_0000_0000), "0..FFFFFFFF"),
        (lambda: encode_read("000102030425", -1), "0..FFFFFFFF"),
        (lambda: encode_read("000102030425", b"\x00\x01\x00"), "4 bytes"),
        (lambda: encode_read("000102030425", 0, preamble=5), "preamble"),
        (lambda: encode_read_address(preamble=-1), "preamble"),
        (lambda: encode_frame("000102030425", 0x100), "control byte"),
        (lambda: encode_frame("000102030425", 0x11, bytes(256)), "255 bytes"),
        (lambda: parse_read_reply(parse_frame(IMPORT_REPLY), 0x04000401), "not in the"),
    ],
)
def test_caller_mistakes_are_value_errors_not_driver_errors(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        call()
    assert not isinstance(caught.value, DriverError)


# --- find_frame: cutting frames out of a byte stream ---


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (b"", (None, b"")),
        (b"\xfe\xfe\xfe\xfe", (None, b"")),
        (b"\x00\x16\xff", (None, b"")),
        (VOLTAGE_REQUEST, (VOLTAGE_REQUEST[4:], b"")),
        (VOLTAGE_REPLY[:9], (None, VOLTAGE_REPLY[:9])),
        (b"\xfe\xfe" + VOLTAGE_REPLY[:-1], (None, VOLTAGE_REPLY[:-1])),
        (b"\x00\x16" + VOLTAGE_REPLY + b"\xfe\x68", (VOLTAGE_REPLY, b"\xfe\x68")),
        (b"\x68\x00\x68" + VOLTAGE_REPLY, (VOLTAGE_REPLY, b"")),  # a false start is skipped
        (VOLTAGE_REPLY + IMPORT_REPLY, (VOLTAGE_REPLY, IMPORT_REPLY)),
        (IMPORT_REPLY[:-2] + b"\x00\x00", (IMPORT_REPLY[:-2] + b"\x00\x00", b"")),  # cut by L
    ],
)
def test_find_frame(buffer: bytes, expected: tuple[bytes | None, bytes]) -> None:
    assert find_frame(buffer) == expected


def test_find_frame_reads_past_16_inside_a_frame() -> None:
    # Address bytes are plain BCD, so "16" occurs there; read_until(16) stops at each one.
    request = encode_read("161616161616", 0x00010000)
    chunks = [chunk + b"\x16" for chunk in request.split(b"\x16")[:-1]]
    assert len(chunks) == 7
    buffer = b""
    for chunk in chunks[:-1]:
        buffer += chunk
        assert find_frame(buffer)[0] is None
    assert find_frame(buffer + chunks[-1]) == (request[4:], b"")


# --- the item table file format ---

GOOD_ITEM = 'di = 0x00010000\nformat = "XXXXXX.XX"\nbytes = 4\nsigned = false\nunit = "kWh"\n'
GOOD_ITEM += 'quantity = "active_energy"\n'
HEADER = '[table]\nversion = 1\nstandard = "DL/T 645-2007"\n'


def test_item_table_parses() -> None:
    items = _parse_items(HEADER + "[items.energy]\n" + GOOD_ITEM, source="test")
    assert items == {
        "energy": DataItem(
            name="energy",
            di=0x00010000,
            decimals=2,
            length=4,
            signed=False,
            unit="kWh",
            quantity="active_energy",
        )
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[table", "not valid TOML"),
        ("[items.energy]\n" + GOOD_ITEM, "version = 1"),
        (HEADER.replace("1", "2") + "[items.energy]\n" + GOOD_ITEM, "version = 1"),
        (HEADER + 'colour = "red"\n[items.energy]\n' + GOOD_ITEM, "version = 1"),
        (HEADER, r"\[items.<name>\]"),
        (HEADER + "[items.Energy]\n" + GOOD_ITEM, "lower_case"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM + "scale = 2\n", "unknown key"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM.replace("4\n", "true\n"), "bytes must be int"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM.replace("4\n", "3\n"), "2 \\* bytes X"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM.replace("XX.XX", "X.X.X"), "2 \\* bytes X"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM.replace("false", '"no"'), "signed must be"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM.replace('unit = "kWh"\n', ""), "unit must"),
        (HEADER + "[items.energy]\n" + GOOD_ITEM.replace("0x00010000", "-1"), "not 4 bytes"),
        (
            HEADER + "[items.a]\n" + GOOD_ITEM + "[items.b]\n" + GOOD_ITEM,
            "data identifier is listed twice",
        ),
    ],
)
def test_item_table_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse_items(text, source="test")


# --- totality: any bytes give a value or a DriverError, never anything else ---

# Derandomized so that CI is deterministic; no deadline, so a loaded machine cannot make a
# property flaky.
_PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

_DIS = sorted(ITEMS_BY_DI)
_ADDRESSES = st.text(alphabet="0123456789", min_size=12, max_size=12) | st.just(WILDCARD)
_CONTROLS = st.sampled_from([0x11, 0x13, 0x91, 0x93, 0xB1, 0xD1, 0xD3]) | st.integers(0, 255)


def check_total(data: bytes) -> None:
    """Parse `data` as every kind of reply; only values or DriverErrors may come out."""
    try:
        parsed = parse_frame(data)
    except DriverError:
        return
    assert len(parsed.address) == 12
    for di in _DIS:
        try:
            value = parse_read_reply(parsed, di, address=parsed.address)
        except DriverError:
            continue
        item = ITEMS_BY_DI[di]
        assert math.isfinite(value)
        assert abs(value) < 10 ** (2 * item.length - item.decimals)
        assert value >= 0 or item.signed
    with contextlib.suppress(DriverError):
        assert parse_address_reply(parsed) == parsed.address


@_PROPERTY
@given(st.binary(max_size=40))
def test_any_bytes_parse_or_raise_a_driver_error(data: bytes) -> None:
    check_total(data)
    frame_bytes, rest = find_frame(data)
    assert data.endswith(rest)
    if frame_bytes is not None:
        assert frame_bytes[0] == 0x68
        assert len(frame_bytes) == 12 + frame_bytes[9]
        check_total(frame_bytes)


@_PROPERTY
@given(
    address=_ADDRESSES,
    control=_CONTROLS,
    di=st.sampled_from(_DIS),
    value=st.binary(max_size=6),
    with_di=st.booleans(),
    preamble=st.integers(0, 4),
)
def test_framed_random_data_parses_or_raises(
    address: str, control: int, di: int, value: bytes, *, with_di: bool, preamble: int
) -> None:
    # Correct length and checksum get past framing; the DI mostly matches, so the BCD
    # decoding of random value bytes is reached.
    data = (di.to_bytes(4, "little") if with_di else b"") + value
    check_total(encode_frame(address, control, data, preamble=preamble))


_BCD_BYTES = st.sampled_from([int(f"{number:02d}", 16) for number in range(100)])


@_PROPERTY
@given(st.sampled_from(_DIS), st.data())
def test_value_bytes_of_the_right_length_decode_as_bcd_or_raise(
    di: int, data: st.DataObject
) -> None:
    item = ITEMS_BY_DI[di]
    value = bytes(
        data.draw(
            st.lists(_BCD_BYTES | st.integers(0, 255), min_size=item.length, max_size=item.length),
            label="value",
        )
    )
    parsed = parse_frame(encode_frame("000102030425", 0x91, di.to_bytes(4, "little") + value))
    top = value[-1] & 0x7F if item.signed else value[-1]
    digits = (bytes([top]) + value[-2::-1]).hex()
    if digits.isdigit():
        sign = -1 if item.signed and value[-1] & 0x80 else 1
        expected = sign * int(digits) / 10**item.decimals
        assert parse_read_reply(parsed, di, address="000102030425") == expected
    else:
        with pytest.raises(ProtocolError, match="not BCD"):
            parse_read_reply(parsed, di, address="000102030425")


@_PROPERTY
@given(_ADDRESSES, st.binary(max_size=12), st.integers(0, 255))
def test_corrupted_frames_parse_or_raise(address: str, data: bytes, flip: int) -> None:
    good = encode_frame(address, 0x91, data)
    position = flip % len(good)
    check_total(good[:position] + bytes([good[position] ^ 0x5A]) + good[position + 1 :])
    check_total(good[:position])
    check_total(good + good[:position])


@_PROPERTY
@given(
    name=st.sampled_from(sorted(ITEMS)),
    count=st.integers(min_value=0, max_value=10**16 - 1),
    address=st.text(alphabet="0123456789", min_size=12, max_size=12),
    negative=st.booleans(),
)
def test_every_representable_value_round_trips(
    name: str, count: int, address: str, *, negative: bool
) -> None:
    item = ITEMS[name]
    digits = 2 * item.length
    limit = 8 * 10 ** (digits - 1) if item.signed else 10**digits
    count %= limit
    if item.signed and negative:
        count = -count
    value = count / 10**item.decimals
    parsed = parse_frame(encode_read_reply(address, item, value))
    assert parse_read_reply(parsed, item.di, address=address) == value


_NOISE = st.binary(max_size=20).map(lambda noise: noise.replace(b"\x68", b""))


@_PROPERTY
@given(_NOISE, _ADDRESSES, st.binary(max_size=16), _NOISE)
def test_find_frame_finds_a_frame_embedded_in_noise(
    before: bytes, address: str, data: bytes, after: bytes
) -> None:
    embedded = encode_frame(address, 0x91, data)
    assert find_frame(before + embedded + after) == (embedded, after)


@_PROPERTY
@given(st.binary(max_size=20), _ADDRESSES, st.binary(max_size=16), st.binary(max_size=20))
def test_find_frame_is_total_on_any_noise(
    before: bytes, address: str, data: bytes, after: bytes
) -> None:
    buffer = before + encode_frame(address, 0x91, data) + after
    rounds = 0
    while (found := find_frame(buffer))[0] is not None:
        frame_bytes, rest = found
        assert frame_bytes is not None
        assert buffer.endswith(frame_bytes + rest)
        check_total(frame_bytes)
        buffer, rounds = rest, rounds + 1
    assert rounds <= 4  # each frame is at least 12 bytes
    assert buffer.endswith(found[1])


@_PROPERTY
@given(
    st.lists(
        st.tuples(_ADDRESSES, _CONTROLS, st.binary(max_size=12), st.integers(0, 4)),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_split_and_joined_feeds_yield_every_frame_once(
    specs: list[tuple[str, int, bytes, int]], cuts: list[int]
) -> None:
    frames = [encode_frame(a, c, d, preamble=p) for a, c, d, p in specs]
    stream = b"".join(frames)
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    found: list[bytes] = []
    buffer = b""
    for start, stop in pairwise(bounds):
        buffer += stream[start:stop]
        while (frame_bytes := find_frame(buffer))[0] is not None:
            complete, buffer = frame_bytes
            assert complete is not None
            found.append(complete)
    assert found == [whole.lstrip(b"\xfe") for whole in frames]
    assert buffer == b""
    assert [parse_frame(whole) for whole in frames] == [parse_frame(f) for f in found]
