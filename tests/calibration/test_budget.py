# SPDX-License-Identifier: Apache-2.0
"""Budgets: the piecewise model re-expressed, the GUM combination, shares and the table."""

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from calibration import (
    Budget,
    OutOfRangeError,
    Term,
    correct,
    correct_piecewise,
    evaluate,
    format_budget,
    t_coverage_factor,
)
from tests.calibration.factories import (
    CASE2_DOF,
    CASE2_INDICATION,
    CASE2_INTERPOLATION_U,
    CASE2_POINTS,
    CASE2_S_MEAN,
    make_certificate,
)

NORMAL_POINTS = [(100.0, 0.5, 0.2, 2.0), (200.0, -0.25, 0.2, 2.0), (400.0, 0.125, 0.3, 2.0)]


def term(name: str, u: float, *, c: float = 1.0, dof: float = math.inf, **fields: Any) -> Term:
    return Term(
        name=name,
        standard_uncertainty=np.asarray(u),
        unit="g",
        sensitivity=np.asarray(c),
        dof=np.asarray(dof),
        distribution=fields.pop("distribution", "normal"),
        **fields,
    )


def test_correct_piecewise_gives_the_numbers_of_correct() -> None:
    certificate = make_certificate(NORMAL_POINTS, point_correlation=0.4)
    indications = np.array([50.0, 100.0, 137.5, 200.0, 333.0, 400.0, 401.0])
    expected = correct(indications, certificate, 0.01, 2.5, type_a_u=0.02, type_a_dof=6)
    result = correct_piecewise(
        indications, certificate, 0.01, type_a_u=0.02, type_a_dof=6, coverage_factor=2.5
    )
    np.testing.assert_array_equal(result.value, expected.value)
    np.testing.assert_array_equal(result.in_range, expected.in_range)
    np.testing.assert_allclose(
        result.standard_uncertainty, expected.standard_uncertainty, rtol=1e-14
    )
    np.testing.assert_allclose(result.dof, expected.dof, rtol=1e-12)
    np.testing.assert_allclose(
        result.expanded_uncertainty, expected.expanded_uncertainty, rtol=1e-14
    )
    for found in result.terms:
        np.testing.assert_allclose(
            found.contribution,
            expected.contributions[found.name.split()[0]],
            rtol=1e-14,
        )


def test_domain_case2_with_k_from_the_t_distribution() -> None:
    # DOMAIN.md §1 case 2 (point correlation 1/2, see test_gtc_agreement): nu_eff = 8078.5,
    # so k = t_95.45(8078.5) = 2.00031 rather than 2.
    certificate = make_certificate(
        CASE2_POINTS, point_correlation=0.5, interpolation_u=CASE2_INTERPOLATION_U
    )
    result = correct_piecewise(
        CASE2_INDICATION,
        certificate,
        0.01,
        type_a_u=CASE2_S_MEAN,
        type_a_dof=CASE2_DOF,
        quantity="mass",
    )
    assert float(result.standard_uncertainty) == pytest.approx(0.034176, abs=5e-7)
    assert float(result.dof) == pytest.approx(8078.47, abs=0.01)
    k = float(result.coverage_factor)
    assert k == pytest.approx(float(t_coverage_factor(8078.47)), rel=1e-9)
    assert k == pytest.approx(2.0003095, abs=1e-7)  # z + (z³ + z)/(4 nu) + …
    assert float(result.expanded_uncertainty) == pytest.approx(0.068362, abs=5e-7)
    budget = result.budget()
    assert [line.name for line in budget.lines] == [
        "certificate CAL-2026-0117",
        "interpolation",
        "resolution",
        "repeatability",
    ]
    resolution = budget.lines[2]
    assert resolution.sensitivity == pytest.approx(1.0 - 0.1 / 500)  # 1 + dC/dx
    assert resolution.distribution == "rectangular"
    assert budget.lines[3].dof == 4.0
    assert sum(line.share for line in budget.lines) == pytest.approx(1.0)


def test_budget_table_for_people() -> None:
    certificate = make_certificate(
        CASE2_POINTS, point_correlation=0.5, interpolation_u=CASE2_INTERPOLATION_U
    )
    result = correct_piecewise(
        CASE2_INDICATION,
        certificate,
        0.01,
        type_a_u=CASE2_S_MEAN,
        type_a_dof=CASE2_DOF,
        quantity="mass",
    )
    text = format_budget(result.budget())
    lines = text.splitlines()
    assert lines[0] == "mass = 750.0740 g  (piecewise-linear correction; CAL-2026-0117)"
    assert lines[1].split() == [
        "input",
        "u(x_i)",
        "c_i",
        "|c_i|·u(x_i)",
        "dof",
        "distribution",
        "share",
    ]
    assert lines[5].split()[0] == "repeatability"
    assert lines[5].split()[-2:] == ["2.2", "%"]
    assert lines[-2] == "combined standard uncertainty u_c = 0.0342 g, effective dof 8078.5"
    assert lines[-1] == "expanded uncertainty U = 0.0684 g (k = 2.000, p = 95.45 %)"


def test_a_fixed_coverage_factor_states_no_probability() -> None:
    result = correct_piecewise(750.0, make_certificate(), 0.01, coverage_factor=3.0)
    budget = result.budget()
    assert budget.coverage_probability is None
    assert budget.coverage_factor == 3.0
    assert "(k = 3.000)" in format_budget(budget)


def test_evaluate_combines_in_quadrature_and_groups_linearly() -> None:
    result = evaluate(
        quantity="y",
        value=10.0,
        unit="g",
        terms=[
            term("a", 0.3, c=2.0, dof=4.0),
            term("b", 0.4, c=-1.0, source="std"),
            term("c", 0.2, c=-1.0, source="std"),
        ],
        in_range=True,
        model="test",
        certificate_ids=["X", "Y", "X"],
    )
    # (2·0.3)² + (-0.4 - 0.2)² = 0.72.
    assert float(result.standard_uncertainty) == pytest.approx(math.sqrt(0.72))
    assert float(result.dof) == pytest.approx(0.72**2 / (0.6**4 / 4))
    assert result.certificate_ids == ("X", "Y")
    budget = result.budget()
    assert [line.share for line in budget.lines] == pytest.approx(
        [0.36 / 0.72, 0.24 / 0.72, 0.12 / 0.72]
    )
    assert budget.lines[1].contribution == pytest.approx(0.4)


def test_opposite_sensitivities_through_one_source_cancel() -> None:
    # A comparison against one standard: its error cancels in the difference.
    result = evaluate(
        quantity="difference",
        value=0.0,
        unit="g",
        terms=[
            term("std in x1", 0.05, c=1.0, source="S"),
            term("std in x2", 0.05, c=-1.0, source="S"),
        ],
        in_range=True,
        model="x1 - x2",
        certificate_ids=[],
    )
    assert float(result.standard_uncertainty) == 0.0
    assert math.isinf(float(result.dof))
    assert [line.share for line in result.budget().lines] == [0.0, 0.0]


def test_budget_indexing_and_values() -> None:
    certificate = make_certificate(NORMAL_POINTS)
    result = correct_piecewise(np.array([[150.0, 500.0]]), certificate, 0.01)
    budget = result.budget((0, 0))
    assert isinstance(budget, Budget)
    assert budget.value == float(result.value[0, 0])
    with pytest.raises(OutOfRangeError, match="outside the range of CAL-2026-0117"):
        result.budget((0, 1))
    with pytest.raises(IndexError, match="more than one reading"):
        result.budget(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.value = 0.0  # type: ignore[misc]  # the point of the test
    assert budget == result.budget((0, 0))


def test_result_arrays_are_read_only_and_masked_outside_the_range() -> None:
    result = correct_piecewise([150.0, 500.0], make_certificate(NORMAL_POINTS), 0.01)
    for array in (result.value, result.standard_uncertainty, result.terms[0].sensitivity):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1.0
    for found in result.terms:
        assert np.isnan(found.standard_uncertainty[1])
        assert np.isfinite(found.standard_uncertainty[0])


@pytest.mark.parametrize(
    ("terms", "arguments", "message"),
    [
        ([term("a", 0.1), term("a", 0.2)], {}, "unique"),
        ([term("a", 0.1)], {"coverage_factor": -1.0}, "coverage_factor"),
        ([term("a", 0.1)], {"coverage_probability": 0.0}, "coverage_probability"),
        ([term("a", 0.1, dof=0.5)], {}, "degrees of freedom must be >= 1"),
    ],
)
def test_evaluate_refuses(terms: list[Term], arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(
            quantity="y",
            value=1.0,
            unit="g",
            terms=terms,
            in_range=True,
            model="test",
            certificate_ids=[],
            **arguments,
        )


def test_correct_piecewise_refuses_what_correct_refuses() -> None:
    with pytest.raises(ValueError, match="resolution"):
        correct_piecewise(750.0, make_certificate(), -0.01)
    with pytest.raises(ValueError, match="without type_a_u"):
        correct_piecewise(750.0, make_certificate(), 0.01, type_a_dof=4)
