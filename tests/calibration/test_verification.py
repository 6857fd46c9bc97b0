# SPDX-License-Identifier: Apache-2.0
"""Verification mode: the class tables as data, MPE rules, u = MPE/√3 without correction."""

import math
from importlib import resources
from typing import Any

import numpy as np
import pytest

from calibration import (
    CalibrationError,
    Mpe,
    balance_mpe,
    default_accuracy_classes,
    energy_meter_mpe,
    parse_accuracy_classes,
    transformer_limits,
    transformer_mpe,
    verify,
)

SQRT3 = math.sqrt(3.0)


def packaged_text() -> str:
    return resources.files("calibration").joinpath("data/accuracy_classes.toml").read_text()


def test_the_packaged_table_names_its_edition_and_sources() -> None:
    table = default_accuracy_classes()
    assert table is default_accuracy_classes()  # read once
    assert table.edition.startswith("2026-01")
    families = [family for family, _, _ in table.references]
    assert families == ["energy_meter", "current_transformer", "voltage_transformer", "balance"]
    # Taken from secondary copies: marked for checking, and the mark travels with each MPE.
    assert all(status == "check" for _, _, status in table.references)
    assert "IEC 62053-22:2003" in energy_meter_mpe("0.5S").reference
    assert "status: check" in energy_meter_mpe("0.5S").reference
    assert table.balance_in_service_factor == 2.0


def test_table_rows_are_consistent() -> None:
    table = default_accuracy_classes()
    for row in table.meters:
        assert 0.0 < row.current[0] < row.current[1]
        assert row.mpe_percent > 0.0
    for kind in ("current", "voltage"):
        classes = {row.accuracy_class for row in table.transformers if row.kind == kind}
        for name in classes:
            rows = sorted(
                (r for r in table.transformers if r.kind == kind and r.accuracy_class == name),
                key=lambda r: r.load,
            )
            limits = [row.ratio_error_percent for row in rows]
            assert limits == sorted(limits, reverse=True), (kind, name)  # fall with load
    for name in ("I", "II", "III", "IIII"):
        steps = [row.mpe_e for row in table.balances if row.accuracy_class == name]
        assert steps == [0.5, 1.0, 1.5]


@pytest.mark.parametrize(
    ("accuracy_class", "arguments", "expected"),
    [
        ("0.2S", {}, 0.2),
        ("0.5S", {}, 0.5),
        ("1", {}, 1.0),
        ("2", {}, 2.0),
        ("0.5S", {"current": 0.01}, 1.0),
        ("0.5S", {"current": 0.0499}, 1.0),
        ("0.5S", {"current": 0.05}, 0.5),
        ("0.2S", {"current": 0.5, "power_factor": "0.5L"}, 0.3),
        ("0.5S", {"current": 0.05, "power_factor": "0.8C"}, 1.0),
        ("1", {"current": 0.05, "connection": "direct"}, 1.5),
        ("1", {"current": 0.05, "connection": "transformer"}, 1.0),
        ("2", {"current": 0.02, "connection": "transformer"}, 2.5),
        ("0.5S", {"current": 20.0}, 0.5),  # up to Imax (a nameplate value)
    ],
)
def test_energy_meter_mpe(accuracy_class: str, arguments: dict[str, Any], expected: float) -> None:
    mpe = energy_meter_mpe(accuracy_class, **arguments)
    assert mpe.percent_of_reading == expected
    np.testing.assert_allclose(mpe.at([1000.0, -1000.0]), [10 * expected, 10 * expected])


@pytest.mark.parametrize(
    ("accuracy_class", "arguments", "message"),
    [
        ("0.5", {}, "no MPE"),
        ("0.5S", {"current": 0.005}, "no MPE"),
        ("0.5S", {"power_factor": "0.9L"}, "no MPE"),
        ("2", {"current": 0.05, "power_factor": "0.8C"}, "no MPE"),
        ("1", {"current": 0.05}, "connection"),
    ],
)
def test_energy_meter_mpe_refusals(
    accuracy_class: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(CalibrationError, match=message):
        energy_meter_mpe(accuracy_class, **arguments)


@pytest.mark.parametrize(
    ("kind", "accuracy_class", "load", "expected"),
    [
        ("current", "0.2S", 1.0, (0.2, 10.0)),
        ("current", "0.2S", 0.01, (0.75, 30.0)),
        ("current", "0.2S", 0.04, (0.75, 30.0)),  # the 1 % limit holds up to 5 %
        ("current", "0.2S", 0.05, (0.35, 15.0)),
        ("current", "0.2S", 1.2, (0.2, 10.0)),
        ("current", "0.2", 0.1, (0.75, 30.0)),
        ("current", "0.5", 1.0, (0.5, 30.0)),
        ("current", "3", 1.0, (3.0, None)),
        ("voltage", "0.2", 1.0, (0.2, 10.0)),
        ("voltage", "0.5", 0.8, (0.5, 20.0)),
        ("voltage", "3", 1.2, (3.0, None)),
    ],
)
def test_transformer_limits(
    kind: Any, accuracy_class: str, load: float, expected: tuple[float, float | None]
) -> None:
    assert transformer_limits(kind, accuracy_class, load=load) == expected


@pytest.mark.parametrize(
    ("kind", "accuracy_class", "load", "message"),
    [
        ("current", "0.2S", 0.009, "outside"),
        ("current", "0.2", 0.01, "outside"),  # class 0.2 starts at 5 %
        ("current", "0.2S", 1.21, "outside"),
        ("voltage", "0.2", 0.79, "outside"),
        ("voltage", "0.2S", 1.0, "not in table"),
    ],
)
def test_transformer_limits_refusals(
    kind: Any, accuracy_class: str, load: float, message: str
) -> None:
    with pytest.raises(CalibrationError, match=message):
        transformer_limits(kind, accuracy_class, load=load)


def test_transformer_mpe_is_the_ratio_error_in_percent_of_the_ratio() -> None:
    mpe = transformer_mpe("current", "0.2S")
    assert mpe.percent_of_reading == 0.2
    assert "CT class 0.2S" in mpe.description
    assert float(mpe.at(40.0)) == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("accuracy_class", "loads_in_e", "expected_in_e"),
    [
        # OIML R 76-1 table 6: the upper bound of each load range is inclusive.
        ("I", [0, 50_000, 50_001, 200_000, 200_001, 10**7], [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]),
        ("II", [0, 5_000, 5_001, 20_000, 20_001, 100_000], [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]),
        ("III", [0, 500, 501, 2_000, 2_001, 10_000], [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]),
        ("IIII", [0, 50, 51, 200, 201, 1_000], [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]),
    ],
)
def test_balance_mpe_steps(
    accuracy_class: str, loads_in_e: list[float], expected_in_e: list[float]
) -> None:
    e = 0.1
    mpe = balance_mpe(accuracy_class, scale_interval=e)
    np.testing.assert_allclose(mpe.at(np.array(loads_in_e) * e), np.array(expected_in_e) * e)
    in_service = balance_mpe(accuracy_class, scale_interval=e, in_service=True)
    np.testing.assert_allclose(
        in_service.at(np.array(loads_in_e) * e), 2 * np.array(expected_in_e) * e
    )
    assert "in service" in in_service.description


def test_balance_mpe_beyond_its_class_or_capacity_is_flagged() -> None:
    # Class III, e = 1 g, Max = 3 kg; net loads after taring may be negative.
    mpe = balance_mpe("III", scale_interval=1.0, capacity=3000.0)
    np.testing.assert_array_equal(mpe.at([-600.0, 3000.0, 3000.5]), [1.0, 1.5, np.nan])
    # Class II stops at 100 000 e: no limit is stated above.
    assert np.isnan(balance_mpe("II", scale_interval=0.01).at(1000.01))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"accuracy_class": "V", "scale_interval": 1.0}, "not in table"),
        ({"accuracy_class": "III", "scale_interval": 0.0}, "e must be > 0"),
        ({"accuracy_class": "III", "scale_interval": 1.0, "capacity": -1.0}, "Max must be"),
    ],
)
def test_balance_mpe_refusals(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        balance_mpe(**arguments)


def test_generic_mpe_percent_of_reading_plus_percent_of_range_plus_absolute() -> None:
    # A DMM: ±(0.0035 % of reading + 0.0005 % of the 10 V range) and a 2 µV offset, 0..10 V.
    mpe = Mpe(
        description="DMM 10 V range, 1 year",
        percent_of_reading=0.0035,
        percent_of_range=0.0005,
        full_scale=10.0,
        absolute=2e-6,
        measuring_range=(-12.0, 12.0),
    )
    np.testing.assert_allclose(
        mpe.at([5.0, -5.0, 0.0, 12.5]),
        [175e-6 + 50e-6 + 2e-6, 175e-6 + 50e-6 + 2e-6, 52e-6, np.nan],
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"percent_of_reading": -0.1}, "finite and >= 0"),
        ({"absolute": math.inf}, "finite and >= 0"),
        ({"load_steps": ((2.0, 0.5), (1.0, 1.0))}, "increasing"),
        ({"load_steps": ((1.0, -0.5),)}, "increasing"),
        ({"measuring_range": (1.0, 0.0)}, "empty"),
    ],
)
def test_mpe_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Mpe(description="bad", **fields)


def test_verify_applies_no_correction_and_u_is_mpe_over_root_3() -> None:
    indications = np.array([100.0, 250.0, -30.0])
    result = verify(
        indications, energy_meter_mpe("0.5S"), unit="kWh", certificate_id="JD-2026-001"
    )
    np.testing.assert_array_equal(result.value, indications)
    np.testing.assert_allclose(result.standard_uncertainty, 0.005 * np.abs(indications) / SQRT3)
    assert np.isinf(result.dof).all()
    np.testing.assert_array_equal(result.coverage_factor, 2.0)
    np.testing.assert_allclose(result.expanded_uncertainty, 2 * result.standard_uncertainty)
    (term,) = result.terms
    assert term.distribution == "rectangular"
    assert term.name == "MPE: energy meter class 0.5S, I/In = 1, PF 1"
    assert result.certificate_ids == ("JD-2026-001",)
    assert result.model.startswith("verification")


def test_verify_with_resolution_and_repeatability() -> None:
    mpe = balance_mpe("II", scale_interval=0.01)
    result = verify(
        20.0, mpe, unit="g", certificate_id="J-7", resolution=0.001, type_a_u=0.002, type_a_dof=9
    )
    u_mpe = 0.005 / SQRT3
    u_res = 0.001 / (2 * SQRT3)
    expected = math.sqrt(u_mpe**2 + u_res**2 + 0.002**2)
    assert float(result.standard_uncertainty) == pytest.approx(expected, rel=1e-14)
    assert float(result.dof) == pytest.approx(9 * expected**4 / 0.002**4, rel=1e-12)
    assert [term.name for term in result.terms][1:] == ["resolution", "repeatability"]


def test_verify_flags_readings_without_a_limit() -> None:
    mpe = balance_mpe("III", scale_interval=1.0, capacity=3000.0)
    result = verify([1000.0, 3500.0, np.nan], mpe, unit="g", certificate_id="J-8")
    np.testing.assert_array_equal(result.in_range, [True, False, False])
    np.testing.assert_array_equal(result.value[:2], [1000.0, 3500.0])
    assert np.isnan(result.standard_uncertainty[1:]).all()


def test_a_corrected_edition_is_a_data_change() -> None:
    # Replace one limit in the text: the MPE follows, and names the new edition.
    text = (
        packaged_text()
        .replace('edition = "2026-01', 'edition = "2027-03')
        .replace(
            '{ current = [0.05, inf], power_factor = "1", mpe_percent = 0.5 }',
            '{ current = [0.05, inf], power_factor = "1", mpe_percent = 0.45 }',
        )
    )
    table = parse_accuracy_classes(text)
    mpe = energy_meter_mpe("0.5S", classes=table)
    assert mpe.percent_of_reading == 0.45
    assert "table edition 2027-03" in mpe.reference


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("format = 1", "format = 2"), "format must be 1"),
        (
            lambda text: text.replace(", mpe_percent = 0.4 }", " }"),
            r"energy_meter class 0\.2S row 1 lacks mpe_percent",
        ),
        (lambda text: text + "\n[[[", "accuracy class table"),
        (lambda text: text.replace("{ up_to_e = 500, mpe_e = 0.5 }", "500"), "not a table"),
    ],
)
def test_malformed_tables_are_refused(edit: Any, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        parse_accuracy_classes(edit(packaged_text()))
