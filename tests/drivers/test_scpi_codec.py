# SPDX-License-Identifier: Apache-2.0
"""The pure SCPI codecs: numbers, error queues, WT310 values, 5520A settings; totality."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DriverError, InstrumentError, ProtocolError
from drivers.reading import RawReading
from drivers.scpi.calibrator import encode_output, parse_output
from drivers.scpi.dmm import (
    ErrorQueueEntry,
    encode_configure,
    encode_nplc,
    parse_error_reply,
    parse_scpi_number,
    unit_of,
)
from drivers.scpi.power_analyzer import ITEMS, encode_settings, parse_values

# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+1.23456789E+00", 1.23456789),  # 34465A READ?, DOMAIN.md
        ("-1.50000000E-03", -1.5e-3),
        ("229.87E+00", 229.87),  # WT310
        ("0", 0.0),
        ("+0", 0.0),
        ("-0.000", 0.0),
        ("12", 12.0),
        ("1.", 1.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1E-300", 1e-300),
        ("+9.89E+37", 9.89e37),  # just below the overload value
        (" +1.0E+00\r\n", 1.0),  # blanks and a CR left by an LF terminator
    ],
)
def test_parse_scpi_number(text: str, expected: float) -> None:
    assert parse_scpi_number(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("+9.9E37", "overload"),
        ("+9.90000000E+37", "overload"),
        ("-9.90000000E+37", "overload"),
        ("9.9e37", "overload"),
        ("1E38", "overload"),
        ("9.91E37", "NaN"),
        ("+9.91000000E+37", "NaN"),
    ],
)
def test_parse_scpi_number_reports_overload_and_nan(text: str, message: str) -> None:
    with pytest.raises(InstrumentError, match=message):
        parse_scpi_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "nan",
        "NaN",
        "NAN",
        "inf",
        "-inf",
        "Infinity",
        "1E999",  # overflows to inf
        "9" * 400 + "E0" + "0" * 10 + "9",
        "1_000",
        "0x10",
        "1.2.3",
        ".",
        "+",
        "E5",
        "1E",
        "1,2",
        "+1.0E+00 V",
        "+ 1.0",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: float() takes it, an instrument never sends it
        "1\x00",
    ],
)
def test_parse_scpi_number_rejects_non_numbers(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_scpi_number(text)


# --- error queue ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('+0,"No error"', ErrorQueueEntry(code=0, message="No error")),  # 34465A
        ('0,"No error"', ErrorQueueEntry(code=0, message="No error")),  # WT310
        ('0,"No Error"', ErrorQueueEntry(code=0, message="No Error")),  # 5520A
        ('-113,"Undefined header"', ErrorQueueEntry(code=-113, message="Undefined header")),
        ('113,"Undefined header"', ErrorQueueEntry(code=113, message="Undefined header")),
        (
            '-222,"Data out of range;VOLT:DC:NPLC 1000"',
            ErrorQueueEntry(code=-222, message="Data out of range;VOLT:DC:NPLC 1000"),
        ),
        ('-100,"He said ""no"""', ErrorQueueEntry(code=-100, message='He said "no"')),
        ('+0,""', ErrorQueueEntry(code=0, message="")),
        (' 0,"No error"\r\n', ErrorQueueEntry(code=0, message="No error")),
    ],
)
def test_parse_error_reply(reply: str, expected: ErrorQueueEntry) -> None:
    assert parse_error_reply(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "0",
        "No error",
        "0,No error",
        '0,"No error',
        '0,"No "error"',
        '0 ,"No error"',
        '+1.5,"x"',
        'x,"x"',
        '1234567,"x"',
        '0,"No error",1',
        '0,"tab\there"',
        '0,"caf\u00e9"',
        "+1.23456789E+00",  # a measurement where an error entry was expected
    ],
)
def test_parse_error_reply_rejects(reply: str) -> None:
    with pytest.raises(ProtocolError):
        parse_error_reply(reply)


# --- DMM settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "unit"),
    [
        ("VOLT:DC", "V"),
        ("VOLT:AC", "V"),
        ("CURR:DC", "A"),
        ("CURR:AC", "A"),
        ("RES", "Ohm"),
        ("FRES", "Ohm"),
        ("FREQ", "Hz"),
        ("PER", "s"),
        ("CAP", "F"),
    ],
)
def test_unit_of(function: str, unit: str) -> None:
    assert unit_of(function) == unit


@pytest.mark.parametrize("function", ["TEMP", "volt:dc", "VOLT", "VOLTage:DC", ""])
def test_unit_of_rejects_unknown_functions(function: str) -> None:
    with pytest.raises(ValueError, match="SCPI function"):
        unit_of(function)


@pytest.mark.parametrize(
    ("function", "measurement_range", "resolution", "expected"),
    [
        ("VOLT:DC", None, None, "CONF:VOLT:DC"),
        ("VOLT:DC", 10.0, None, "CONF:VOLT:DC 10"),
        ("VOLT:DC", 10.0, 1e-5, "CONF:VOLT:DC 10,1E-05"),  # DOMAIN.md
        ("VOLT:DC", None, 1e-5, "CONF:VOLT:DC DEF,1E-05"),
        ("VOLT:DC", 0.1, None, "CONF:VOLT:DC 0.1"),
        ("RES", 1000.0, 0.001, "CONF:RES 1000,0.001"),
        ("CURR:AC", 1.23456789012345678, None, "CONF:CURR:AC 1.23456789012346"),
    ],
)
def test_encode_configure(
    function: str, measurement_range: float | None, resolution: float | None, expected: str
) -> None:
    assert encode_configure(function, range=measurement_range, resolution=resolution) == expected


@pytest.mark.parametrize(
    ("function", "measurement_range", "resolution"),
    [
        ("TEMP", None, None),
        ("VOLT:DC", 0.0, None),
        ("VOLT:DC", -10.0, None),
        ("VOLT:DC", math.nan, None),
        ("VOLT:DC", math.inf, None),
        ("VOLT:DC", 10.0, 0.0),
        ("VOLT:DC", None, -1e-5),
    ],
)
def test_encode_configure_rejects(
    function: str, measurement_range: float | None, resolution: float | None
) -> None:
    with pytest.raises(ValueError, match="SCPI"):
        encode_configure(function, range=measurement_range, resolution=resolution)


def test_encode_nplc() -> None:
    assert encode_nplc("VOLT:DC", 10) == "VOLT:DC:NPLC 10"  # DOMAIN.md
    assert encode_nplc("FRES", 0.02) == "FRES:NPLC 0.02"
    with pytest.raises(ValueError, match="nplc"):
        encode_nplc("VOLT:DC", 0)
    with pytest.raises(ValueError, match="SCPI function"):
        encode_nplc("TEMP", 1)


# --- WT310 ----------------------------------------------------------------------------------


def test_encode_settings_selects_the_four_items() -> None:
    assert encode_settings(1) == [
        ":COMM:HEAD OFF",
        ":NUM:FORM ASCII",
        ":NUM:NORM:NUMB 4",
        ":NUM:NORM:ITEM1 U,1",
        ":NUM:NORM:ITEM2 I,1",
        ":NUM:NORM:ITEM3 P,1",
        ":NUM:NORM:ITEM4 WH,1",
    ]
    assert encode_settings(3)[-1] == ":NUM:NORM:ITEM4 WH,3"


@pytest.mark.parametrize("element", [0, 4, -1, True])
def test_encode_settings_rejects_elements(element: int) -> None:
    with pytest.raises(ValueError, match="element"):
        encode_settings(element)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "229.87E+00,1.0123E+00,232.10E+00,12.345E+00",
            (229.87, 1.0123, 232.10, 12.345),
        ),
        ("-1.0E+00,0,-0.5E+00,-1.2E+03\n", (-1.0, 0.0, -0.5, -1200.0)),
    ],
)
def test_parse_values(reply: str, expected: tuple[float, ...]) -> None:
    assert parse_values(reply) == [
        RawReading(source=source, indication=value, unit=unit)
        for (source, _, unit), value in zip(ITEMS, expected, strict=True)
    ]
    assert [reading.unit for reading in parse_values(reply)] == ["V", "A", "W", "Wh"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("NAN,1.0123E+00,232.10E+00,12.345E+00", "no data for voltage"),
        ("229.87E+00,1.0123E+00,232.10E+00,NAN", "no data for energy"),
        ("229.87E+00,INF,232.10E+00,12.345E+00", "current is over range"),
        ("229.87E+00,1.0123E+00,-INF,12.345E+00", "power is over range"),
        ("229.87E+00,9.91E+37,232.10E+00,12.345E+00", "current.*NaN"),
        ("9.9E+37,1.0123E+00,232.10E+00,12.345E+00", "voltage.*overload"),
    ],
)
def test_parse_values_refuses_to_invent_a_value(reply: str, message: str) -> None:
    with pytest.raises(InstrumentError, match=message):
        parse_values(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "229.87E+00,1.0123E+00,232.10E+00",  # DOMAIN.md's example: three items, not four
        "229.87E+00,1.0123E+00,232.10E+00,12.345E+00,1",
        "",
        "229.87E+00,,232.10E+00,12.345E+00",
        "229.87E+00;1.0123E+00;232.10E+00;12.345E+00",
        "nan,1.0123E+00,232.10E+00,12.345E+00",
        ":NUM:NORM:VAL 229.87E+00,1.0123E+00,232.10E+00,12.345E+00",  # header on
        "229.87 V,1.0123E+00,232.10E+00,12.345E+00",
    ],
)
def test_parse_values_rejects_malformed_lists(reply: str) -> None:
    with pytest.raises(ProtocolError):
        parse_values(reply)


def test_parse_values_names_the_item_that_does_not_parse() -> None:
    with pytest.raises(ProtocolError, match="energy"):
        parse_values("229.87E+00,1.0123E+00,232.10E+00,x")


# --- 5520A ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "frequency", "expected"),
    [
        (1.5, "V", None, "OUT 1.5 V, 0 HZ"),
        (1.5, "V", 60.0, "OUT 1.5 V, 60 HZ"),
        (0.1, "A", None, "OUT 0.1 A, 0 HZ"),
        (-10.0, "V", None, "OUT -10 V, 0 HZ"),
        (1e-5, "V", None, "OUT 1E-05 V, 0 HZ"),
        (100.0, "OHM", None, "OUT 100 OHM"),
        (1e-9, "F", None, "OUT 1E-09 F"),
        (23.5, "CEL", None, "OUT 23.5 CEL"),
        (-10.0, "DBM", 1000.0, "OUT -10 DBM, 1000 HZ"),
        (1.0, "A", 1e3, "OUT 1 A, 1000 HZ"),
    ],
)
def test_encode_output(value: float, unit: str, frequency: float | None, expected: str) -> None:
    assert encode_output(value, unit, frequency=frequency) == expected


@pytest.mark.parametrize(
    ("value", "unit", "frequency", "message"),
    [
        (1.0, "W", None, "unit"),
        (1.0, "v", None, "unit"),
        (1.0, "MV", None, "unit"),
        (1.0, "HZ", None, "unit"),
        (math.nan, "V", None, "finite"),
        (math.inf, "A", None, "finite"),
        (100.0, "OHM", 60.0, "no frequency"),
        (1.0, "V", 0.0, "positive"),
        (1.0, "V", -60.0, "positive"),
        (1.0, "V", math.inf, "positive"),
        (-10.0, "DBM", None, "needs a frequency"),
    ],
)
def test_encode_output_rejects(
    value: float, unit: str, frequency: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_output(value, unit, frequency=frequency)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("1.500000E+00,V,0.00E+00,0.00E+00", (1.5, "V")),  # DOMAIN.md's four-field form
        ("1.500000E+00,V,0.00E+00,0,0.00E+00", (1.5, "V")),  # the manual's five fields
        ("-1.520000E+00,V,0E+00,0,6.000E+01", (-1.52, "V")),
        ("1.000000E+02,OHM,0.00E+00,0,0.00E+00", (100.0, "OHM")),
        ("2.000000E+00,V,1.000000E+00,A,6.00E+01", (2.0, "V")),  # dual output (power)
        ("1.5,V,0.00E+00,0,0\n", (1.5, "V")),
    ],
)
def test_parse_output(reply: str, expected: tuple[float, str]) -> None:
    assert parse_output(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "1.5",
        "1.5,V",
        "1.5,V,0",
        "1.5,V,0,0,0,0",
        "abc,V,0,0",
        "1.5,v,0,0",
        "1.5,V1,0,0",
        "1.5,,0,0",
        "1.5,V,x,0",
        "1.5,V,0,0,x",
        "1.5,V,0,a,0",
        "1.5,VOLTS,0,0",
    ],
)
def test_parse_output_rejects(reply: str) -> None:
    with pytest.raises(ProtocolError):
        parse_output(reply)


# --- totality: any text gives a valid value or a DriverError, never anything else ------------

# Derandomized so that CI is deterministic; no deadline, so that a loaded machine cannot make
# a property flaky.
_PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

_NUMBER_TEXT = st.text(alphabet="0123456789.+-eE ", max_size=14)
_FIELDS = st.one_of(
    _NUMBER_TEXT,
    st.sampled_from(
        [
            "+1.23456789E+00",
            "229.87E+00",
            "9.9E+37",
            "9.91E+37",
            "NAN",
            "INF",
            "-INF",
            "nan",
            "V",
            "A",
            "OHM",
            "0",
            '"No error"',
            '"a""b"',
            "",
            "\u0661",
            "\t",
        ]
    ),
)
_LISTS = st.lists(_FIELDS, max_size=6).map(",".join)
_ANY_TEXT = st.one_of(st.text(max_size=40), _LISTS)


@_PROPERTY
@given(_ANY_TEXT)
def test_parse_scpi_number_is_total(text: str) -> None:
    try:
        value = parse_scpi_number(text)
    except DriverError:
        return
    assert math.isfinite(value)
    assert abs(value) < 9.9e37


@_PROPERTY
@given(st.one_of(_ANY_TEXT, st.tuples(_NUMBER_TEXT, st.text(max_size=12)).map(",".join)))
def test_parse_error_reply_is_total(reply: str) -> None:
    try:
        entry = parse_error_reply(reply)
    except DriverError:
        return
    assert entry.message.isascii()
    assert entry.message.isprintable()


@_PROPERTY
@given(_ANY_TEXT)
def test_parse_values_is_total(reply: str) -> None:
    try:
        readings = parse_values(reply)
    except DriverError:
        return
    assert [reading.source for reading in readings] == [source for source, _, _ in ITEMS]
    assert all(math.isfinite(reading.indication) for reading in readings)


@_PROPERTY
@given(_ANY_TEXT)
def test_parse_output_is_total(reply: str) -> None:
    try:
        amplitude, unit = parse_output(reply)
    except DriverError:
        return
    assert math.isfinite(amplitude)
    assert unit.isalpha()
    assert unit.isupper()


@_PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=1e-12, max_value=1e12))
def test_encode_configure_round_trips_the_range(measurement_range: float) -> None:
    command = encode_configure("VOLT:DC", range=measurement_range)
    sent = parse_scpi_number(command.removeprefix("CONF:VOLT:DC "))
    assert math.isclose(sent, measurement_range, rel_tol=1e-14)


@_PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e3, max_value=1e3))
def test_encode_output_sends_what_parse_output_reads_back(value: float) -> None:
    command = encode_output(value, "V")
    sent = command.removeprefix("OUT ").removesuffix(" V, 0 HZ")
    amplitude, unit = parse_output(f"{sent},V,0.00E+00,0,0")
    assert unit == "V"
    assert math.isclose(amplitude, value, rel_tol=1e-14)
