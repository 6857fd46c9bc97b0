# SPDX-License-Identifier: Apache-2.0
"""Comparison calibration on a rig (`calibration.rig`): numbers worked by hand, and GTC.

Formulas (module docstring of `calibration.rig`): E = x̄ - (r̄ + C_ref); s(e) of the paired
differences (GUM 4.2.2), s(ē) = s/√n (GUM 4.2.3), nu = n - 1; u(res) = d/(2√3) (GUM 4.3.7);
u_c² = Σ u_i² (GUM 5.1.2); nu_eff = u_c⁴ / (s(ē)⁴/(n - 1)) (GUM G.4.1, the other terms have
nu = ∞); k = t_95.45(nu_eff) (GUM G.3, Table G.2); TUR = MPE / (2·u_ref); ILAC G8 4.2.1/4.2.2.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from GTC import reporting, ureal

from calibration.certificate import Certificate
from calibration.errors import CalibrationError, OutOfRangeError
from calibration.rig import (
    DECISION_RULES,
    DecisionRule,
    ReferenceStandard,
    evaluate_point,
    rig_certificate,
)
from calibration.verification import Mpe

_FROM = datetime(2026, 1, 1, tzinfo=UTC)
_UNTIL = datetime(2027, 1, 1, tzinfo=UTC)
_SQRT3 = math.sqrt(3.0)

#: 20 µV (k = 2), no correction.
FIXED = ReferenceStandard(
    certificate_id="REF-FIXED", resolution=1e-6, expanded_uncertainty=20e-6, coverage_factor=2.0
)
#: 1 V: C = +2 µV, U = 4 µV; 10 V: C = -10 µV, U = 20 µV (k = 2).
POINTS = ReferenceStandard(
    certificate_id="REF-POINTS",
    resolution=1e-6,
    certificate=Certificate.from_points(
        certificate_id="REF-POINTS",
        unit="V",
        issuer="NIM",
        kind="calibration",
        valid_from=_FROM,
        valid_until=_UNTIL,
        abscissa="indication",
        convention="correction",
        points=[(1.0, 2e-6, 4e-6, 2.0), (10.0, -10e-6, 20e-6, 2.0)],
    ),
)
#: 34465A 10 V range, 1 year: 0.0035 % of reading + 0.0005 % of range.
DMM_MPE = Mpe(
    description="0.0035 % of reading + 0.0005 % of 10 V",
    percent_of_reading=0.0035,
    percent_of_range=0.0005,
    full_scale=10.0,
)
TIGHT_MPE = Mpe(description="10 µV", absolute=10e-6)


# Case A, at 10 V, n = 4, reference reads 10 V flat, fixed U:
#   e = (100, 120, 80, 100) µV: ē = 100 µV; s² = (0 + 20² + 20² + 0)/3 µV² -> s = 16.3299 µV;
#   s(ē) = 8.16497 µV, nu = 3.
#   u_c² = 10² + (1/(2√3))² + (10/(2√3))² + 8.16497² µV² = 100 + 0.08333 + 8.3333 + 66.6667
#        = 175.0833 µV² -> u_c = 13.2319 µV; nu_eff = 175.0833² / (66.6667²/3) = 20.692;
#   k = t(20.692) = 2.1283 (Table G.2: 2.13 at nu = 20); U = 28.162 µV.
#   MPE(10.0001 V) = 3.5000035e-4 + 5e-5 = 400.0035 µV; TUR = 400.0035/20 = 20.0002.
# Case B, at 5.5 V, n = 3, reference reads 5.5 V flat, certificate points:
#   C_ref(5.5) = 2 + (5.5 - 1)/9·(-12) = -4 µV; u_ref = (2 + 10)/2 = 6 µV (U/k interpolated);
#   e = (20, 30, 10) µV: ē = 20 µV, E = 20 - (-4) = 24 µV; s = 10 µV, s(ē) = 5.7735 µV, nu = 2;
#   u_c² = 36 + 0.08333 + 8.3333 + 33.3333 = 77.75 µV² -> u_c = 8.8176 µV;
#   nu_eff = 77.75² / (33.3333²/2) = 10.881; k = 2.2580; U = 19.910 µV.
#   MPE = 10 µV; U(standard) = 2·6 = 12 µV -> TUR = 0.8333 < 3.
@dataclass(frozen=True, kw_only=True)
class Case:
    """Readings in, and the numbers worked out by hand above."""

    nominal: float
    dut: list[float]
    ref: list[float]
    reference: ReferenceStandard
    mpe: Mpe
    rule: DecisionRule
    correction: float
    error: float
    s: float
    s_mean: float
    u_c: float
    dof: float
    k: float
    U: float
    limit_mpe: float
    tur: float
    tur_ok: bool
    acceptance_limit: float
    passed: bool


CASES = [
    pytest.param(
        Case(
            nominal=10.0, dut=[10.00010, 10.00012, 10.00008, 10.00010], ref=[10.0] * 4,
            reference=FIXED, mpe=DMM_MPE, rule="simple",
            correction=0.0, error=100e-6, s=16.3299e-6, s_mean=8.16497e-6,
            u_c=13.2319e-6, dof=20.692, k=2.1283, U=28.162e-6, limit_mpe=400.0035e-6,
            tur=20.0002, tur_ok=True, acceptance_limit=400.0035e-6, passed=True,
        ),
        id="fixed-U-simple-pass",
    ),
    pytest.param(
        Case(
            nominal=5.5, dut=[5.50002, 5.50003, 5.50001], ref=[5.5] * 3,
            reference=POINTS, mpe=TIGHT_MPE, rule="guard-band",
            correction=-4e-6, error=24e-6, s=10e-6, s_mean=5.7735e-6,
            u_c=8.8176e-6, dof=10.881, k=2.2580, U=19.910e-6, limit_mpe=10e-6,
            tur=0.83333, tur_ok=False, acceptance_limit=10e-6 - 19.910e-6, passed=False,
        ),
        id="certificate-points-guard-band-fail-low-TUR",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_point_matches_hand_computed_numbers(case: Case) -> None:
    point = evaluate_point(
        nominal=case.nominal,
        unit="V",
        dut_indications=case.dut,
        reference_indications=case.ref,
        reference=case.reference,
        dut_resolution=10e-6,
        mpe=case.mpe,
        decision_rule=case.rule,
    )

    def close(expected: float) -> object:
        return pytest.approx(expected, rel=1e-4, abs=1e-12)

    assert point.reference_correction == close(case.correction)
    assert point.error == close(case.error)
    assert point.error_std == close(case.s)
    assert point.error_std_mean == close(case.s_mean)
    assert point.budget.standard_uncertainty == close(case.u_c)
    assert point.budget.dof == close(case.dof)
    assert point.coverage_factor == close(case.k)
    assert point.expanded_uncertainty == close(case.U)
    assert point.mpe == close(case.limit_mpe)
    assert point.tur == close(case.tur)
    assert point.tur_sufficient is case.tur_ok
    assert point.acceptance_limit == close(case.acceptance_limit)
    assert point.passed is case.passed
    assert point.decision_rule == DECISION_RULES[case.rule]
    assert [line.name for line in point.budget.lines] == [
        f"reference certificate {case.reference.certificate_id}",
        "reference resolution",
        "DUT resolution",
        "repeatability",
    ]


@pytest.mark.parametrize(
    ("error_uv", "rule", "passed"),
    [
        (300.0, "simple", True),  # |E| <= MPE = 400 µV
        (300.0, "guard-band", True),  # |E| <= MPE - U ≈ 372 µV
        (390.0, "simple", True),
        (390.0, "guard-band", False),  # inside the guard band: rejected
        (-390.0, "guard-band", False),
        (410.0, "simple", False),
    ],
)
def test_decision_rules_of_ilac_g8(error_uv: float, rule: DecisionRule, *, passed: bool) -> None:
    offset = error_uv * 1e-6
    point = evaluate_point(
        nominal=10.0,
        unit="V",
        dut_indications=[10.0 + offset + delta for delta in (0.0, 20e-6, -20e-6, 0.0)],
        reference_indications=[10.0] * 4,
        reference=FIXED,
        dut_resolution=10e-6,
        mpe=Mpe(description="400 µV", absolute=400e-6),
        decision_rule=rule,
    )
    assert point.passed is passed


def test_gtc_agrees_on_the_budget() -> None:
    """The same model in GTC: E = x̄ - (r̄ + C) + δx - δr, with the repeatability as ureal."""
    dut = [5.50002, 5.50003, 5.50001]
    point = evaluate_point(
        nominal=5.5,
        unit="V",
        dut_indications=dut,
        reference_indications=[5.5] * 3,
        reference=POINTS,
        dut_resolution=10e-6,
        mpe=TIGHT_MPE,
        decision_rule="simple",
    )
    mean_difference = ureal(sum(dut) / 3 - 5.5, 10e-6 / math.sqrt(3), 2)
    correction = ureal(-4e-6, 6e-6)
    dut_resolution = ureal(0.0, 10e-6 / (2 * _SQRT3))
    reference_resolution = ureal(0.0, 1e-6 / (2 * _SQRT3))
    error = mean_difference - correction + dut_resolution - reference_resolution
    assert point.error == pytest.approx(error.x, rel=1e-9)
    assert point.budget.standard_uncertainty == pytest.approx(error.u, rel=1e-9)
    assert point.budget.dof == pytest.approx(error.df, rel=1e-9)
    assert point.coverage_factor == pytest.approx(
        reporting.k_factor(error.df, 100.0 * math.erf(math.sqrt(2.0))), rel=1e-9
    )


def test_reference_certificate_is_never_extrapolated() -> None:
    with pytest.raises(OutOfRangeError, match="REF-POINTS"):
        evaluate_point(
            nominal=11.0,
            unit="V",
            dut_indications=[11.0, 11.0],
            reference_indications=[11.0, 11.0],
            reference=POINTS,
            dut_resolution=10e-6,
            mpe=DMM_MPE,
            decision_rule="simple",
        )


def test_needs_pairs_of_at_least_two_readings() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        evaluate_point(
            nominal=1.0,
            unit="V",
            dut_indications=[1.0],
            reference_indications=[1.0],
            reference=FIXED,
            dut_resolution=1e-6,
            mpe=DMM_MPE,
            decision_rule="simple",
        )


def test_reference_needs_exactly_one_of_points_or_fixed_u() -> None:
    with pytest.raises(CalibrationError, match="exactly one"):
        ReferenceStandard(certificate_id="X", resolution=1e-6)


def test_certificate_of_the_dut_states_errors_at_its_indications() -> None:
    points = [
        evaluate_point(
            nominal=nominal,
            unit="V",
            dut_indications=[nominal + 50e-6, nominal + 70e-6],
            reference_indications=[nominal, nominal],
            reference=FIXED,
            dut_resolution=10e-6,
            mpe=DMM_MPE,
            decision_rule="simple",
        )
        for nominal in (10.0, 1.0)
    ]
    cert = rig_certificate(
        points,
        certificate_id="DUT-1",
        issuer="Lab",
        kind="in-house",
        valid_from=_FROM,
        valid_until=_UNTIL,
    )
    assert [p.indication for p in cert.points] == pytest.approx([1.00006, 10.00006])
    assert [p.error for p in cert.points] == pytest.approx([60e-6, 60e-6])
    assert cert.points[0].expanded_uncertainty == pytest.approx(points[1].expanded_uncertainty)
    assert cert.points[0].coverage_factor == pytest.approx(points[1].coverage_factor)
