# SPDX-License-Identifier: Apache-2.0
"""Composite channels: meter · CT · VT, DOMAIN.md §1 case 3, and correlation through a source."""

import math
from typing import Any

import numpy as np
import pytest

from calibration import (
    Component,
    MeasurementResult,
    calibrated_ratio,
    energy_meter_mpe,
    format_budget,
    phase_error_factor,
    product,
    scaled,
    stated_quantity,
    transformer_limits,
    transformer_mpe,
    verify,
)

# DOMAIN.md §1 case 3: E = 125 000 kWh on the primary side. The ratios are an example
# (200 A/5 A and 10 kV/100 V); the result does not depend on them (see below).
ENERGY = 125_000.0
CT_RATIO = 200.0 / 5.0
VT_RATIO = 10_000.0 / 100.0
STANDARD_COAL = 0.1229e-3  # tce/kWh: GB/T 2589-2020 当量值 0.1229 kgce/kWh


def case3(
    ct_ratio: float = CT_RATIO, vt_ratio: float = VT_RATIO, **extra: Any
) -> MeasurementResult:
    """Return E for DOMAIN case 3 under its assumptions (see the test below)."""
    meter = verify(
        ENERGY / (ct_ratio * vt_ratio),
        energy_meter_mpe("0.5S"),
        unit="kWh",
        certificate_id="JD-M-0001",
        quantity="meter",
    )
    ct = verify(
        ct_ratio,
        transformer_mpe("current", "0.2S"),
        unit="1",
        certificate_id="JD-CT-0002",
        quantity="CT ratio",
    )
    vt = verify(
        vt_ratio,
        transformer_mpe("voltage", "0.2"),
        unit="1",
        certificate_id="JD-VT-0003",
        quantity="VT ratio",
    )
    return product([meter, ct, vt, *extra.get("factors", [])], quantity="energy", unit="kWh")


def test_domain_case3_verified_meter_ct_and_vt() -> None:
    # DOMAIN.md §1 case 3: u = 415 kWh (0.332 %), U(k=2) = 829 kWh.
    # ASSUMPTIONS (not stated in DOMAIN.md; the numbers reproduce only with them):
    # 1. rated conditions: meter at I >= 0.05 In (MPE 0.5 %), CT at 20..120 % In (0.2 %), VT
    #    at 80..120 % Un (0.2 %); at 1..5 % In the CT alone would be 0.75 %;
    # 2. cos φ = 1, so the phase displacements of CT and VT (10' each) do not act;
    # 3. the three errors are independent (each instrument verified on its own), each
    #    rectangular within ±MPE, and nothing else (no VT secondary voltage drop, no
    #    meter resolution) enters: u_rel = √((0.5² + 0.2² + 0.2²)/3) % = 0.3317 %.
    energy = case3()
    assert float(energy.value) == pytest.approx(ENERGY, rel=1e-15)
    u = float(energy.standard_uncertainty)
    assert u == pytest.approx(415, abs=0.5)
    assert u == pytest.approx(ENERGY * math.sqrt((0.5**2 + 0.2**2 + 0.2**2) / 3) / 100)
    assert 100 * u / ENERGY == pytest.approx(0.332, abs=5e-4)
    assert math.isinf(float(energy.dof))
    assert float(energy.coverage_factor) == 2.0
    assert float(energy.expanded_uncertainty) == pytest.approx(829, abs=0.5)


def test_domain_case3_in_standard_coal() -> None:
    # 15.363 tce with U = 0.102 tce. The exact value is 15.3625 tce: 15.363 is rounding half
    # up; GB/T 8170 (round half to even) gives 15.362.
    coal = scaled(case3(), STANDARD_COAL, quantity="standard coal", unit="tce")
    assert float(coal.value) == pytest.approx(15.3625, abs=1e-12)
    assert float(coal.expanded_uncertainty) == pytest.approx(0.102, abs=5e-4)
    assert float(coal.expanded_uncertainty) == pytest.approx(
        STANDARD_COAL * float(case3().expanded_uncertainty), rel=1e-15
    )
    assert coal.certificate_ids == ("JD-M-0001", "JD-CT-0002", "JD-VT-0003")
    assert f"{float(coal.value):.3f}" == "15.363"  # the float lands just above the tie


@pytest.mark.parametrize(("ct_ratio", "vt_ratio"), [(1.0, 1.0), (40.0, 100.0), (300.0, 350.0)])
def test_domain_case3_does_not_depend_on_the_ratios(ct_ratio: float, vt_ratio: float) -> None:
    assert float(case3(ct_ratio, vt_ratio).standard_uncertainty) == pytest.approx(
        float(case3().standard_uncertainty), rel=1e-14
    )


def test_domain_case3_budget_table() -> None:
    budget = case3().budget()
    shares = [line.share for line in budget.lines]
    assert sum(shares) == pytest.approx(1.0)
    assert shares == pytest.approx([0.25 / 0.33, 0.04 / 0.33, 0.04 / 0.33])
    text = format_budget(budget)
    assert "energy = 125000 kWh" in text
    assert "meter: MPE: energy meter class 0.5S" in text
    assert "CT ratio: MPE: CT class 0.2S ratio error" in text
    assert "U = 829 kWh (k = 2.000, p = 95.45 %)" in text


def test_phase_displacement_is_what_case3_leaves_out() -> None:
    # Assumption 2 pinned: at cos φ = 1 the phase factor changes nothing; at cos φ = 0.8
    # (inductive) the CT's and VT's 10' each add (10'/√3)·tan φ·π/10800 relative.
    ct_phase = transformer_limits("current", "0.2S")[1]
    vt_phase = transformer_limits("voltage", "0.2")[1]
    assert (ct_phase, vt_phase) == (10.0, 10.0)
    unity = phase_error_factor(1.0, current_phase_mpe_min=10.0, voltage_phase_mpe_min=10.0)
    assert float(case3(factors=[unity]).standard_uncertainty) == pytest.approx(
        float(case3().standard_uncertainty), rel=1e-15
    )
    lagging = phase_error_factor(0.8, current_phase_mpe_min=10.0, voltage_phase_mpe_min=10.0)
    relative_phase = 10.0 / math.sqrt(3) * 0.75 * math.pi / 10800
    expected = ENERGY * math.sqrt(0.33 / 3 / 100**2 + 2 * relative_phase**2)
    assert float(case3(factors=[lagging]).standard_uncertainty) == pytest.approx(expected)
    assert float(case3(factors=[lagging]).standard_uncertainty) > 470


def test_a_shared_standard_adds_linearly() -> None:
    # CT and VT calibrated on one test set: its 0.02 % enters both ratio errors (r = +1).
    shared = "test set HEG-1"

    def ratios(source: str | None) -> tuple[MeasurementResult, MeasurementResult]:
        ct = calibrated_ratio(
            CT_RATIO,
            ratio_error_percent=0.05,
            components=[
                Component(name="CT own", standard_uncertainty=0.03),
                Component(name="test set", standard_uncertainty=0.02, source=source),
            ],
            quantity="CT ratio",
            certificate_id="CAL-CT-1",
        )
        vt = calibrated_ratio(
            VT_RATIO,
            ratio_error_percent=-0.08,
            components=[
                Component(name="VT own", standard_uncertainty=0.04),
                Component(name="test set", standard_uncertainty=0.02, source=source),
            ],
            quantity="VT ratio",
            certificate_id="CAL-VT-1",
        )
        return ct, vt

    correlated = product(list(ratios(shared)), quantity="K", unit="1")
    independent = product(list(ratios(None)), quantity="K", unit="1")
    k_ct = CT_RATIO / 1.0005
    k_vt = VT_RATIO / 0.9992
    # Relative sensitivities of K_CT·K_VT to ε in %: -1/(100(1 + ε/100)).
    c_ct, c_vt = -1 / (100 * 1.0005), -1 / (100 * 0.9992)
    product_value = k_ct * k_vt
    assert float(correlated.value) == pytest.approx(product_value, rel=1e-15)
    own = (c_ct * 0.03) ** 2 + (c_vt * 0.04) ** 2
    assert float(correlated.standard_uncertainty) == pytest.approx(
        product_value * math.sqrt(own + (c_ct * 0.02 + c_vt * 0.02) ** 2), rel=1e-14
    )
    assert float(independent.standard_uncertainty) == pytest.approx(
        product_value * math.sqrt(own + (c_ct * 0.02) ** 2 + (c_vt * 0.02) ** 2), rel=1e-14
    )
    budget = correlated.budget()
    assert sum(line.share for line in budget.lines) == pytest.approx(1.0)
    text = format_budget(budget)
    assert "through test set HEG-1: CT ratio: test set, VT ratio: test set" in text


def test_correlated_terms_must_share_their_dof() -> None:
    first = stated_quantity(
        1.0,
        quantity="a",
        unit="1",
        components=[Component(name="s", standard_uncertainty=0.1, dof=4, source="std")],
    )
    second = stated_quantity(
        1.0,
        quantity="b",
        unit="1",
        components=[Component(name="s", standard_uncertainty=0.1, dof=9, source="std")],
    )
    with pytest.raises(ValueError, match="share the source 'std' but not their degrees"):
        product([first, second], quantity="ab", unit="1")
    same = stated_quantity(
        1.0,
        quantity="b",
        unit="1",
        components=[Component(name="s", standard_uncertainty=0.1, dof=4, source="std")],
    )
    # One input for Welch-Satterthwaite: u = 0.2 with nu = 4, so nu_eff = 4.
    combined = product([first, same], quantity="ab", unit="1")
    assert float(combined.standard_uncertainty) == pytest.approx(0.2)
    assert float(combined.dof) == pytest.approx(4.0)


def test_product_of_arrays_and_scalars_keeps_flags() -> None:
    meter = verify(
        np.array([10.0, 20.0, np.nan]),
        energy_meter_mpe("1"),
        unit="kWh",
        certificate_id="M",
        quantity="meter",
    )
    ct = verify(CT_RATIO, transformer_mpe("current", "0.5S"), unit="1", certificate_id="C")
    energy = product([meter, ct], quantity="energy", unit="kWh")
    assert energy.value.shape == (3,)
    np.testing.assert_array_equal(energy.in_range, [True, True, False])
    np.testing.assert_allclose(energy.value[:2], [400.0, 800.0])
    relative = math.sqrt(1.0**2 + 0.5**2) / math.sqrt(3) / 100
    np.testing.assert_allclose(energy.standard_uncertainty[:2], relative * energy.value[:2])
    assert np.isnan(energy.standard_uncertainty[2])


def test_a_zero_factor_still_carries_the_others_uncertainty() -> None:
    zero = stated_quantity(
        0.0, quantity="x", unit="1", components=[Component(name="u", standard_uncertainty=0.1)]
    )
    two = stated_quantity(2.0, quantity="y", unit="1")
    result = product([zero, two], quantity="xy", unit="1")
    assert float(result.value) == 0.0
    assert float(result.standard_uncertainty) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: product([], quantity="e", unit="kWh"), "at least one factor"),
        (
            lambda: product(
                [stated_quantity(1.0, quantity="a", unit="1")] * 2, quantity="e", unit="1"
            ),
            "distinct",
        ),
        (
            lambda: phase_error_factor(0.0, current_phase_mpe_min=1, voltage_phase_mpe_min=1),
            "power factor",
        ),
        (
            lambda: phase_error_factor(0.9, current_phase_mpe_min=-1, voltage_phase_mpe_min=1),
            ">= 0",
        ),
        (
            lambda: stated_quantity(
                1.0,
                quantity="a",
                unit="1",
                components=[Component(name="u", standard_uncertainty=-0.1)],
            ),
            "finite and >= 0",
        ),
        (
            lambda: stated_quantity(
                1.0,
                quantity="a",
                unit="1",
                components=[Component(name="u", standard_uncertainty=0.1, dof=0.0)],
            ),
            "dof must be > 0",
        ),
        (
            lambda: scaled(
                stated_quantity(1.0, quantity="a", unit="1"), math.nan, quantity="b", unit="1"
            ),
            "finite",
        ),
    ],
)
def test_invalid_composites(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
