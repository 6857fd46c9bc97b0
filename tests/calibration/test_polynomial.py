# SPDX-License-Identifier: Apache-2.0
"""Least-squares polynomial corrections: GUM H.3, numpy's polyfit, GLS with correlated points."""

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from calibration import (
    CalibrationError,
    FitError,
    OutOfRangeError,
    correct_polynomial,
    fit_polynomial,
)
from calibration.polynomial import _chi_squared_survival
from tests.calibration.factories import make_certificate

# GUM H.3 (calibration of a thermometer), table H.6: thermometer readings t_k in °C and
# corrections b_k in °C; OLS gives y1 = -0.1712 °C and y2 = 0.00218 at t_0 = 20 °C, residual
# standard deviation s = 0.0035 °C, s(y1) = 0.0029 °C, s(y2) = 0.00067, r(y1, y2) = -0.930.
H3_READINGS = [21.521, 22.012, 22.512, 23.003, 23.507, 23.999, 24.513, 25.002, 25.503, 26.010]
H3_READINGS.append(26.511)
H3_CORRECTIONS = [-0.171, -0.169, -0.166, -0.159, -0.164, -0.165, -0.156, -0.157, -0.159]
H3_CORRECTIONS += [-0.161, -0.160]
H3_S = 0.0034975639635053  # the residual standard deviation of the OLS fit, °C


def h3_certificate() -> Any:
    # Equal u_i = s make the weighted fit the GUM's OLS fit, with the same covariance.
    points = [(t, b, 2 * H3_S, 2.0) for t, b in zip(H3_READINGS, H3_CORRECTIONS, strict=True)]
    # GUM H.3 takes the b_k as independent: r = 0.
    return make_certificate(points, certificate_id="GUM-H3", unit="°C", point_correlation=0.0)


def test_gum_h3_thermometer_line() -> None:
    fit = fit_polynomial(h3_certificate(), 1)
    (b0, b1), covariance = fit.power_coefficients()
    # y1 = b(20 °C) = b0 + 20 b1 and y2 = b1; their covariance through the same transform.
    transform = np.array([[1.0, 20.0], [0.0, 1.0]])
    y1, y2 = transform @ [b0, b1]
    v = transform @ covariance @ transform.T
    assert y1 == pytest.approx(-0.1712, abs=5e-5)
    assert y2 == pytest.approx(0.00218, abs=5e-6)
    assert math.sqrt(v[0, 0]) == pytest.approx(0.0029, abs=5e-5)
    assert math.sqrt(v[1, 1]) == pytest.approx(0.00067, abs=5e-6)
    assert v[0, 1] / math.sqrt(v[0, 0] * v[1, 1]) == pytest.approx(-0.930, abs=5e-4)
    # With u_i equal to the residual standard deviation, chi-squared is n - 2 exactly.
    assert fit.dof == 9
    assert fit.chi_squared == pytest.approx(9.0, rel=1e-12)
    assert fit.birge_ratio == pytest.approx(1.0, rel=1e-12)
    assert fit.p_value == pytest.approx(0.4373, abs=5e-5)


def test_gum_h3_prediction_inside_and_refusal_outside_the_range() -> None:
    fit = fit_polynomial(h3_certificate(), 1)
    # At 24 °C: b = y1 + 4 y2, u² = s²(y1) + 16 s²(y2) + 8 r s(y1) s(y2) (GUM H.3.4, eq. H.15).
    y1, y2, s1, s2, r = -0.171204, 0.00218270, 0.00287760, 0.000667940, -0.930430
    result = correct_polynomial([24.0, 30.0], fit, resolution=0.0)
    assert float(result.value[0]) == pytest.approx(24.0 + y1 + 4 * y2, abs=2e-6)
    u = math.sqrt(s1**2 + 16 * s2**2 + 8 * r * s1 * s2)
    assert float(result.standard_uncertainty[0]) == pytest.approx(u, rel=2e-5)
    # GUM H.3.4 predicts b(30 °C) = -0.1494 °C by extrapolation; we never extrapolate.
    assert not result.in_range[1]
    assert result.value[1] == 30.0
    assert np.isnan(result.standard_uncertainty[1])


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_agrees_with_numpy_polyfit_weighted_unscaled(degree: int) -> None:
    rng = np.random.default_rng(degree)
    x = np.sort(rng.choice(np.arange(0.0, 2000.0, 10.0), size=9, replace=False))
    u = rng.uniform(0.01, 0.05, size=x.size)
    corrections = 0.05 - 2e-4 * x + 3e-8 * x**2 + rng.normal(0.0, u)
    certificate = make_certificate(
        [
            (float(a), float(c), float(2 * s), 2.0)
            for a, c, s in zip(x, corrections, u, strict=True)
        ],
        point_correlation=0.0,  # numpy's weighted fit takes the points as independent
    )
    fit = fit_polynomial(certificate, degree, significance=0.0)
    coefficients, covariance = fit.power_coefficients()
    expected, expected_covariance = np.polyfit(x, corrections, degree, w=1 / u, cov="unscaled")
    np.testing.assert_allclose(coefficients, expected[::-1], rtol=1e-7, atol=1e-15)
    np.testing.assert_allclose(covariance, expected_covariance[::-1, ::-1], rtol=1e-6, atol=1e-25)
    # And the correction and its u at a few indications, through the power basis.
    grid = np.linspace(x[0], x[-1], 7)
    basis = np.vander(grid, degree + 1)
    result = correct_polynomial(grid, fit, resolution=0.0)
    np.testing.assert_allclose(result.value - grid, basis @ expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        result.standard_uncertainty,
        np.sqrt(np.einsum("ij,jk,ik->i", basis, expected_covariance, basis)),
        rtol=1e-8,
    )


def test_exact_polynomial_points_fit_with_zero_chi_squared() -> None:
    x = np.array([0.0, 100.0, 200.0, 300.0, 400.0])
    corrections = 0.1 - 1e-3 * x + 2e-6 * x**2
    certificate = make_certificate(
        [(a, c, 0.02, 2.0) for a, c in zip(x, corrections, strict=True)]
    )
    fit = fit_polynomial(certificate, 2)
    assert fit.chi_squared == pytest.approx(0.0, abs=1e-20)
    assert fit.p_value == 1.0
    result = correct_polynomial(x, fit, resolution=0.0)
    np.testing.assert_allclose(result.value, x + corrections, atol=1e-12)


def test_a_model_that_does_not_fit_raises_fit_error_with_its_statistics() -> None:
    # A parabola through points with u = 0.005: a straight line misses them by 0.06.
    x = np.linspace(0.0, 100.0, 6)
    corrections = 1e-4 * (x - 50.0) ** 2
    certificate = make_certificate(
        [(a, c, 0.01, 2.0) for a, c in zip(x, corrections, strict=True)]
    )
    with pytest.raises(FitError, match=r"CAL-2026-0117.*degree 1.*Birge ratio") as excinfo:
        fit_polynomial(certificate, 1)
    error = excinfo.value
    assert isinstance(error, CalibrationError)
    assert error.dof == 4
    assert error.birge_ratio == pytest.approx(math.sqrt(error.chi_squared / 4))
    assert error.p_value < 1e-10
    # significance=0 accepts it, e.g. to explore degrees; the statistics stay on the fit.
    accepted = fit_polynomial(certificate, 1, significance=0.0)
    assert accepted.chi_squared == pytest.approx(error.chi_squared)
    assert fit_polynomial(certificate, 2).chi_squared == pytest.approx(0.0, abs=1e-18)


def test_interpolating_polynomial_has_no_goodness_of_fit() -> None:
    certificate = make_certificate([(0.0, 0.1, 0.02, 2.0), (10.0, 0.3, 0.02, 2.0)])
    fit = fit_polynomial(certificate, 1)
    assert fit.dof == 0
    assert math.isnan(fit.birge_ratio)
    assert math.isnan(fit.p_value)


def test_single_point_degree_zero_covers_only_its_point() -> None:
    fit = fit_polynomial(make_certificate([(1000.0, 0.15, 0.08, 2.0)]), 0)
    assert fit.valid_range == (1000.0, 1000.0)
    result = correct_polynomial([999.99, 1000.0], fit, resolution=0.01)
    np.testing.assert_array_equal(result.in_range, [False, True])
    # DOMAIN.md §1 case 1: y = 1000.1500 g, u_c = 0.040104 g.
    assert result.value[1] == pytest.approx(1000.15, abs=1e-12)
    assert result.standard_uncertainty[1] == pytest.approx(0.040104, abs=5e-7)


def test_resolution_and_repeatability_act_through_the_slope() -> None:
    certificate = make_certificate([(0.0, 0.0, 0.02, 2.0), (100.0, 1.0, 0.02, 2.0)])
    fit = fit_polynomial(certificate, 1)  # dc/dx = 0.01
    result = correct_polynomial(50.0, fit, resolution=0.01, type_a_u=0.03, type_a_dof=4)
    resolution, repeatability = result.terms[1], result.terms[2]
    assert float(resolution.sensitivity) == pytest.approx(1.01)
    assert float(repeatability.contribution) == pytest.approx(1.01 * 0.03)
    assert float(repeatability.dof) == 4.0
    # k = t_p(nu_eff) at 95.45 %: nu_eff is finite, so k > 2.
    assert float(result.coverage_factor) > 2.0
    assert result.coverage_probability == pytest.approx(0.9545, abs=1e-4)


def test_shapes_flags_and_read_only_results() -> None:
    fit = fit_polynomial(make_certificate(), 1)
    indications = np.array([[400.0, 500.0, 750.0], [1000.0, np.nan, np.inf]])
    result = correct_polynomial(indications, fit, resolution=0.01, coverage_factor=2.0)
    assert result.value.shape == (2, 3)
    np.testing.assert_array_equal(result.in_range, [[False, True, True], [True, False, False]])
    np.testing.assert_array_equal(result.value[~result.in_range], indications[~result.in_range])
    assert np.isnan(result.expanded_uncertainty[~result.in_range]).all()
    assert result.coverage_probability is None
    np.testing.assert_array_equal(result.coverage_factor[result.in_range], 2.0)
    with pytest.raises(ValueError, match="read-only"):
        result.value[0, 0] = 1.0
    with pytest.raises(OutOfRangeError, match="CAL-2026-0117"):
        result.budget((0, 0))


def test_fit_is_frozen() -> None:
    fit = fit_polynomial(make_certificate(), 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.degree = 2  # type: ignore[misc]  # the point of the test


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"degree": 2}, CalibrationError, "2 points; a degree 2 polynomial needs at least 3"),
        ({"degree": -1}, ValueError, "degree"),
        ({"degree": 1, "significance": 1.0}, ValueError, "significance"),
    ],
)
def test_invalid_fits(arguments: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        fit_polynomial(make_certificate(), **arguments)


def test_verification_certificates_are_not_fitted() -> None:
    with pytest.raises(CalibrationError, match="verification"):
        fit_polynomial(make_certificate(kind="verification"), 1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"resolution": -0.01}, "resolution"),
        ({"resolution": 0.01, "type_a_dof": 4}, "without type_a_u"),
        ({"resolution": 0.01, "type_a_u": -1.0}, "type_a_u"),
        ({"resolution": 0.01, "type_a_u": 0.01, "type_a_dof": 0.0}, "type_a_dof"),
        ({"resolution": 0.01, "coverage_factor": 0.0}, "coverage_factor"),
        ({"resolution": 0.01, "coverage_probability": 1.0}, "coverage_probability"),
    ],
)
def test_invalid_corrections(arguments: dict[str, Any], message: str) -> None:
    fit = fit_polynomial(make_certificate(), 1)
    with pytest.raises(ValueError, match=message):
        correct_polynomial(750.0, fit, **arguments)


@pytest.mark.parametrize(
    ("chi_squared", "dof", "survival"),
    [
        # Upper 5 % points of chi-squared (Abramowitz & Stegun table 26.8).
        (3.841459, 1, 0.05),
        (5.991465, 2, 0.05),
        (11.070498, 5, 0.05),
        (18.307038, 10, 0.05),
        (124.342113, 100, 0.05),
        (0.0, 3, 1.0),
    ],
)
def test_chi_squared_survival(chi_squared: float, dof: int, survival: float) -> None:
    assert _chi_squared_survival(chi_squared, dof) == pytest.approx(survival, rel=1e-6)


def test_chi_squared_survival_closed_form_for_two_dof() -> None:
    for chi_squared in (0.01, 1.0, 7.5, 60.0):
        assert _chi_squared_survival(chi_squared, 2) == pytest.approx(
            math.exp(-chi_squared / 2), rel=1e-13
        )
