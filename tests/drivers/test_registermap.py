# SPDX-License-Identifier: Apache-2.0
"""Register-map files: the shipped SDM630 map, user map files and malformed ones."""

from pathlib import Path

import pytest

from drivers.modbus.codec import RegisterTable, RegisterType, WordOrder
from drivers.modbus.registermap import (
    CombinedEntry,
    RegisterMapError,
    builtin_map_names,
    load_builtin_map,
    load_map,
    parse_register_map,
)

# Eastron SDM630 input registers, from DOMAIN.md section 3.
SDM630 = [
    ("voltage_l1", 0x0000, "V"),
    ("voltage_l2", 0x0002, "V"),
    ("voltage_l3", 0x0004, "V"),
    ("current_l1", 0x0006, "A"),
    ("current_l2", 0x0008, "A"),
    ("current_l3", 0x000A, "A"),
    ("total_power", 0x0034, "W"),
    ("frequency", 0x0046, "Hz"),
    ("import_energy", 0x0048, "kWh"),
    ("export_energy", 0x004A, "kWh"),
    ("total_energy", 0x0156, "kWh"),
]

VALID = """
[map]
model = "Test flowmeter"
word_order = "CDAB"
max_registers = 40

[registers.flow]
table = "holding"
address = 0x1010
type = "float32"
unit = "m3/h"
quantity = "volume_flow"

[registers.totalizer]
table = "holding"
address = 0x1018
type = "int32"
scale = 0.001
word_order = "ABCD"
unit = "m3"
quantity = "volume"
description = "integer part"
"""


def test_builtin_sdm630_loads() -> None:
    register_map = load_builtin_map("sdm630")

    assert register_map.model == "Eastron SDM630"
    assert register_map.max_registers == 80
    assert register_map.word_order is WordOrder.ABCD
    assert register_map.source == "builtin:sdm630"
    assert register_map.names == tuple(name for name, _, _ in SDM630)
    for name, address, unit in SDM630:
        entry = register_map.entry(name)
        assert (entry.table, entry.address, entry.unit) == (RegisterTable.INPUT, address, unit)
        assert (entry.register_type, entry.word_order) == (RegisterType.FLOAT32, WordOrder.ABCD)
        assert entry.scale == 1.0
        assert entry.count == 2
        assert entry.quantity
        assert entry.description


def test_builtin_names_list_the_shipped_maps() -> None:
    assert "sdm630" in builtin_map_names()


@pytest.mark.parametrize("name", ["no_such_meter", "../sdm630", "SDM630", ""])
def test_unknown_builtin_map_is_a_register_map_error(name: str) -> None:
    with pytest.raises(RegisterMapError, match=r"available: .*sdm630"):
        load_builtin_map(name)


def test_map_from_any_path(tmp_path: Path) -> None:
    path = tmp_path / "flowmeter.toml"
    path.write_text(VALID, encoding="utf-8")

    register_map = load_map(path)

    assert register_map.source == str(path)
    assert register_map.max_gap == 0
    flow, totalizer = register_map.entries.values()
    assert (flow.word_order, flow.scale, flow.description) == (WordOrder.CDAB, 1.0, "")
    assert (totalizer.word_order, totalizer.scale) == (WordOrder.ABCD, 0.001)
    assert totalizer.span.table is RegisterTable.HOLDING


def test_unknown_entry_lists_valid_names() -> None:
    register_map = load_builtin_map("sdm630")
    with pytest.raises(KeyError, match=r"voltage_l1.*total_energy"):
        register_map.entry("voltage_l4")


def _entry(**fields: object) -> str:
    lines = ['[map]\nmodel = "M"\n\n[registers.bad]']
    base: dict[str, object] = {
        "table": '"input"',
        "address": "0",
        "type": '"float32"',
        "unit": '"V"',
        "quantity": '"voltage"',
    }
    base.update(fields)
    lines += [f"{key} = {value}" for key, value in base.items() if value is not None]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "entry", "problem"),
    [
        (_entry(type='"float16"'), "bad", "type 'float16' is not one of int16"),
        (_entry(table='"coil"'), "bad", "table 'coil'"),
        (_entry(address=None), "bad", "missing key 'address'"),
        (_entry(address="true"), "bad", "address must be an integer"),
        (_entry(address="0xFFFF"), "bad", "outside 0x0000..0xFFFF"),
        (_entry(address="-2"), "bad", "outside"),
        (_entry(scale="0"), "bad", "scale must be finite and non-zero"),
        (_entry(scale='"x"'), "bad", "scale must be a number"),
        (_entry(word_order='"ADCB"'), "bad", "word_order 'ADCB'"),
        (_entry(unit="1"), "bad", "unit must be text"),
        (_entry(adress="2"), "bad", "unknown key(s) adress"),
        (_entry(quantity=None), "bad", "missing key 'quantity'"),
        (_entry().replace("registers.bad", "registers.Bad-Name"), "Bad-Name", "names are lower"),
        (
            _entry().replace('model = "M"', 'model = "M"\nmax_registers = 1'),
            "bad",
            "max_registers",
        ),
        (_entry().replace('model = "M"', "max_registers = 126"), None, "[map] max_registers"),
        (_entry().replace('model = "M"', 'model = "M"\nmax_gap = -1'), None, "[map] max_gap"),
        (_entry().replace('model = "M"', 'model = "M"\nspeed = 1'), None, "[map] unknown key"),
        (_entry().replace('model = "M"', ""), None, "[map] missing key 'model'"),
        (_entry().replace("[map]", "[mapp]"), None, "unknown key(s) mapp"),
        ('[map]\nmodel = "M"\n', None, "[registers] is missing"),
        ('[map]\nmodel = "M"\n[registers]\n', None, "has no [registers.<name>] entries"),
        (_entry() + "\n[registers.bad]\n", None, "not valid TOML"),  # a repeated entry
        ("[map\n", None, "not valid TOML"),
    ],
)
def test_malformed_map_names_file_and_entry(
    tmp_path: Path, text: str, entry: str | None, problem: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(RegisterMapError) as caught:
        load_map(path)

    error = caught.value
    assert isinstance(error, ValueError)
    assert error.source == str(path)
    assert error.entry == entry
    assert str(path) in str(error)
    assert problem in str(error)
    if entry is not None:
        assert f"entry {entry!r}" in str(error)


def test_non_utf8_file_is_a_register_map_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(_entry(description='"Spannung \xe4"').encode("latin-1"))
    with pytest.raises(RegisterMapError, match="not UTF-8"):
        load_map(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_map(tmp_path / "absent.toml")


def test_parse_names_the_given_source() -> None:
    with pytest.raises(RegisterMapError, match=r"^register map config/x\.toml: "):
        parse_register_map("", source="config/x.toml")


# ---- combined entries (sum_of) -------------------------------------------------------------

TOTALIZER = """
[map]
model = "Flowmeter"
word_order = "CDAB"

[registers.total]
sum_of = ["total_int", "total_frac"]
unit = "m3"
quantity = "volume"
description = "integer part + fraction"

[registers.total_int]
table = "holding"
address = 0x1018
type = "int32"
unit = "m3"
quantity = "volume"

[registers.total_frac]
table = "holding"
address = 0x101A
type = "float32"
unit = "m3"
quantity = "volume"
"""


def test_combined_entry_may_precede_its_parts() -> None:
    register_map = parse_register_map(TOTALIZER, source="t.toml")

    assert list(register_map.entries) == ["total_int", "total_frac"]
    (total,) = register_map.combined.values()
    assert total == CombinedEntry(
        name="total",
        parts=("total_int", "total_frac"),
        unit="m3",
        quantity="volume",
        description="integer part + fraction",
    )
    assert register_map.names == ("total_int", "total_frac", "total")
    assert register_map.value("total") is total
    assert register_map.value("total_int") is register_map.entry("total_int")
    with pytest.raises(KeyError, match=r"no register 'total'; valid: total_int, total_frac\W*$"):
        register_map.entry("total")
    with pytest.raises(KeyError, match=r"no value 'totl'; valid: total_int, total_frac, total"):
        register_map.value("totl")


def test_maps_without_combined_entries_have_none() -> None:
    assert load_builtin_map("sdm630").combined == {}


@pytest.mark.parametrize(
    ("replace", "by", "problem"),
    [
        ('["total_int", "total_frac"]', '["total_int"]', "at least two entry names"),
        ('["total_int", "total_frac"]', '"total_int"', "must be a list"),
        ('["total_int", "total_frac"]', '["total_int", 2]', "must be a list"),
        ('["total_int", "total_frac"]', '["total_int", "total_int"]', "repeats an entry"),
        ('["total_int", "total_frac"]', '["total_int", "totl"]', "'totl', which are not reg"),
        ('["total_int", "total_frac"]', '["total_int", "total"]', "'total', which are not reg"),
        (
            'unit = "m3"\nquantity = "volume"\ndesc',
            'unit = "L"\nquantity = "volume"\ndesc',
            "unit",
        ),
        (
            'unit = "m3"\nquantity = "volume"\ndesc',
            'quantity = "volume"\ndesc',
            "missing key 'unit'",
        ),
        ('quantity = "volume"\ndescription', "description", "missing key 'quantity'"),
        ('sum_of = ["total_int"', 'address = 0\nsum_of = ["total_int"', "unknown key(s) address"),
    ],
)
def test_malformed_combined_entry_names_file_and_entry(
    replace: str, by: str, problem: str
) -> None:
    assert replace in TOTALIZER
    text = TOTALIZER.replace(replace, by, 1)

    with pytest.raises(RegisterMapError) as caught:
        parse_register_map(text, source="t.toml")

    assert caught.value.entry == "total"
    assert problem in str(caught.value)


def test_combined_entry_name_is_checked() -> None:
    text = TOTALIZER.replace("[registers.total]", "[registers.Total]")
    with pytest.raises(RegisterMapError, match="names are lower case"):
        parse_register_map(text, source="t.toml")
