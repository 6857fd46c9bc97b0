# SPDX-License-Identifier: Apache-2.0
"""t_p(nu): GUM Table G.2, closed forms for nu = 1 and 2, and scipy's stdtrit through GTC."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from GTC import reporting

from calibration import COVERAGE_PROBABILITY_K2, t_coverage_factor, t_two_sided_tail
from calibration.coverage import _cornish_fisher, _cornish_fisher_from, _halley_quantile

# GUM Table G.2, column p = 95.45 %, as quoted in the issue (two decimals).
TABLE_G2_9545 = [
    (1, 13.97),
    (2, 4.53),
    (3, 3.31),
    (4, 2.87),
    (5, 2.65),
    (10, 2.28),
    (20, 2.13),
    (50, 2.05),
    (math.inf, 2.00),
]
# GUM Table G.2's 68.27 % and 99.73 % are, like 95.45 %, 2Φ(k) - 1 for k = 1 and 3 rounded:
# with p = 0.9973 exactly, t_p(1) would be 235.78, not the table's 235.80.
P_K1 = math.erf(1.0 / math.sqrt(2.0))
P_K3 = math.erf(3.0 / math.sqrt(2.0))
# Other columns of GUM Table G.2: (nu, p, t_p(nu)).
TABLE_G2_OTHERS = [
    (1, P_K1, 1.84),
    (1, 0.90, 6.31),
    (1, 0.95, 12.71),
    (1, 0.99, 63.66),
    (1, P_K3, 235.80),
    (4, 0.95, 2.78),
    (10, 0.95, 2.23),
    (10, P_K3, 3.96),
    (100, 0.99, 2.63),
    (math.inf, P_K1, 1.00),
    (math.inf, 0.95, 1.96),
    (math.inf, 0.99, 2.576),
    (math.inf, P_K3, 3.00),
]


def test_default_probability_is_that_of_k2_for_a_normal_distribution() -> None:
    assert pytest.approx(0.9545, abs=5e-5) == COVERAGE_PROBABILITY_K2
    assert math.erf(math.sqrt(2.0)) == COVERAGE_PROBABILITY_K2
    # So that nu_eff = ∞ gives exactly the k = 2 of a certificate.
    assert float(t_coverage_factor(math.inf)) == 2.0


@pytest.mark.parametrize(("dof", "expected"), TABLE_G2_9545)
def test_gum_table_g2_at_9545_percent(dof: float, expected: float) -> None:
    assert float(t_coverage_factor(dof)) == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize(("dof", "probability", "expected"), TABLE_G2_OTHERS)
def test_gum_table_g2_other_columns(dof: float, probability: float, expected: float) -> None:
    digits = 3 if expected == 2.576 else 2
    assert float(t_coverage_factor(dof, probability)) == pytest.approx(
        expected, abs=0.5 * 10**-digits
    )


@pytest.mark.parametrize(
    "probability", [0.1, 0.5, 0.6827, 0.9545, 0.99, 0.9973, 1 - 1e-6, 1 - 1e-9]
)
def test_closed_forms_for_one_and_two_degrees_of_freedom(probability: float) -> None:
    # nu = 1 is Cauchy: t = tan(πp/2) = cot(π(1 - p)/2) (the latter exact near p = 1);
    # nu = 2: p = t/√(2 + t²), so t = p√(2/(1 - p²)). Below p = 1/2 the tail 1 - p loses
    # relative precision in p (1e-10 of it at p = 1e-6): no coverage interval is that narrow.
    cauchy = 1.0 / math.tan(math.pi * (1.0 - probability) / 2.0)
    two = probability * math.sqrt(2.0 / ((1.0 - probability) * (1.0 + probability)))
    np.testing.assert_allclose(
        t_coverage_factor([1.0, 2.0], probability), [cauchy, two], rtol=3e-14
    )


@pytest.mark.parametrize("probability", [0.6827, 0.9545, 0.9973, 0.9999, 1 - 1e-6])
def test_series_and_continued_fraction_agree_where_both_apply(probability: float) -> None:
    # Above a p-dependent nu (400 at 95.45 %) the Cornish-Fisher series is used; below it,
    # Halley steps on the exact tail. Up to nu = 3000 both are accurate: compare them.
    z = -NormalDist().inv_cdf(0.5 * (1.0 - probability))
    dof = np.linspace(_cornish_fisher_from(z), 3000.0, 50)
    np.testing.assert_allclose(
        _halley_quantile(dof.copy(), 1.0 - probability, z), _cornish_fisher(z, dof), rtol=1e-13
    )


def _closed_form_tail(coverage_factor: float, dof: int) -> float:
    """P(|T| > t) for integer nu by Abramowitz & Stegun 26.7.3 and 26.7.4."""
    theta = math.atan(coverage_factor / math.sqrt(dof))
    sine, cosine = math.sin(theta), math.cos(theta)
    if dof % 2:
        total, term = (cosine, cosine) if dof > 1 else (0.0, 0.0)
        for j in range(1, (dof - 3) // 2 + 1):
            term *= cosine**2 * (2 * j) / (2 * j + 1)
            total += term
        return 1.0 - 2.0 / math.pi * (theta + sine * total)
    total = term = 1.0
    for j in range(1, (dof - 2) // 2 + 1):
        term *= cosine**2 * (2 * j - 1) / (2 * j)
        total += term
    return 1.0 - sine * total


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 6, 7, 9, 12, 30])
def test_tail_against_closed_forms(dof: int) -> None:
    factors = np.array([0.01, 0.3, 1.0, 2.0, 2.87, 4.0])
    expected = [_closed_form_tail(float(k), dof) for k in factors]
    # The closed forms lose ~2e-16 absolute to 1 - A; the tails go down to 4e-4.
    np.testing.assert_allclose(t_two_sided_tail(factors, dof), expected, rtol=2e-14, atol=5e-16)


def test_quantile_inverts_the_tail() -> None:
    dof = np.array([1.0, 1.5, 2.7, 4.0, 9.3, 33.0, 150.0, 399.0])
    for probability in (0.6827, 0.95, COVERAGE_PROBABILITY_K2, 0.99, 0.9973):
        tail = t_two_sided_tail(t_coverage_factor(dof, probability), dof)
        np.testing.assert_allclose(tail, 1.0 - probability, rtol=5e-13)


@pytest.mark.parametrize(
    "probability", [0.6827, 0.90, 0.95, COVERAGE_PROBABILITY_K2, 0.99, 0.9973]
)
def test_agrees_with_scipy_stdtrit_through_gtc(probability: float) -> None:
    # GTC's k_factor is scipy.special.stdtrit (Boost) for 1 <= nu <= 1e5.
    dof = np.concatenate([np.linspace(1.0, 10.0, 37), np.geomspace(10.0, 1e5, 40)])
    expected = [reporting.k_factor(float(nu), 100.0 * probability) for nu in dof]
    np.testing.assert_allclose(t_coverage_factor(dof, probability), expected, rtol=1e-13)


def test_cornish_fisher_and_continued_fraction_meet_smoothly() -> None:
    # The method changes near nu = 400 for p = 95.45 %; k must stay monotonic across it.
    dof = np.linspace(150.0, 3500.0, 20001)
    factors = t_coverage_factor(dof)
    assert np.all(np.diff(factors) < 0.0)


def test_truncating_dof_follows_gum_g41_note_1() -> None:
    np.testing.assert_array_equal(
        t_coverage_factor([4.9, 8078.47, math.inf], truncate_dof=True),
        t_coverage_factor([4.0, 8078.0, math.inf]),
    )


def test_shapes_nan_and_repeated_values() -> None:
    dof = np.array([[4.0, np.nan], [np.inf, 4.0]])
    factors = t_coverage_factor(dof)
    assert factors.shape == (2, 2)
    assert np.isnan(factors[0, 1])
    assert factors[1, 0] == 2.0
    assert factors[0, 0] == factors[1, 1]
    assert t_coverage_factor(7.0).shape == ()


@pytest.mark.parametrize(
    ("dof", "probability", "message"),
    [
        (0.5, COVERAGE_PROBABILITY_K2, "degrees of freedom"),
        (-1.0, COVERAGE_PROBABILITY_K2, "degrees of freedom"),
        (4.0, 0.0, "probability"),
        (4.0, 1.0, "probability"),
        (4.0, math.nan, "probability"),
    ],
)
def test_invalid_arguments(dof: float, probability: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        t_coverage_factor(dof, probability)


def test_tail_refuses_infinite_or_small_dof() -> None:
    with pytest.raises(ValueError, match="finite and >= 1"):
        t_two_sided_tail(2.0, math.inf)
