# SPDX-License-Identifier: Apache-2.0
"""The polynomial fit with correlated points (ISO/TS 28037 8): GLS against numpy, and r = 1.

The reference is computed independently of `calibration.polynomial`: V = D R D is built in
full, whitened with its own Cholesky factor (not R's) and solved with `np.linalg.lstsq`; the
covariance is the inverse of the normal matrix XᵀV⁻¹X and χ² = eᵀV⁻¹e through
`np.linalg.solve`. GTC's agreement (full covariance propagated through the estimator) is in
test_models_gtc_agreement.py.
"""

import math

import numpy as np
import pytest

from calibration import Certificate, correct, correct_polynomial, fit_polynomial
from tests.calibration.factories import make_certificate

RELATIVE = 1e-9
SEED = 20261127
RANDOM_CASES = 300


def _reference(certificate: Certificate, degree: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(â, V(â), χ²) in the scaled basis t = (x - x_0)/s, by lstsq on the whitened system."""
    x = np.array([point.indication for point in certificate.points])
    corrections = np.array([point.correction for point in certificate.points])
    u = np.array([point.standard_uncertainty for point in certificate.points])
    low, high = certificate.calibrated_range
    center, scale = 0.5 * (low + high), (0.5 * (high - low) if high > low else 1.0)
    design = np.vander((x - center) / scale, degree + 1, increasing=True)
    correlation = np.full((x.size, x.size), certificate.point_correlation)
    np.fill_diagonal(correlation, 1.0)
    covariance = correlation * np.outer(u, u)
    lower = np.linalg.cholesky(covariance)
    whitened_design = np.linalg.solve(lower, design)
    coefficients = np.linalg.lstsq(whitened_design, np.linalg.solve(lower, corrections))[0]
    normal = design.T @ np.linalg.solve(covariance, design)
    residuals = corrections - design @ coefficients
    chi_squared = float(residuals @ np.linalg.solve(covariance, residuals))
    return coefficients, np.linalg.inv(normal), chi_squared


def assert_close(actual: object, expected: np.ndarray, scale: np.ndarray) -> None:
    """|actual - expected| <= RELATIVE·(|expected| + scale), element by element."""
    difference = np.abs(np.array(actual) - expected)
    assert np.all(difference <= RELATIVE * (np.abs(expected) + scale)), (actual, expected)


def _random_certificate(rng: np.random.Generator) -> tuple[Certificate, int]:
    scale = 10.0 ** rng.uniform(-2.0, 4.0)
    count = int(rng.integers(2, 11))
    degree = int(rng.integers(0, min(3, count - 1) + 1))
    abscissae = np.sort(rng.choice(np.arange(0, 100), size=count, replace=False)) * scale / 10
    u = rng.uniform(1e-4, 3e-3, size=count) * scale
    r = float(rng.choice([0.0, rng.uniform(0.0, 0.5), rng.uniform(0.5, 0.99)]))
    correlation = np.full((count, count), r)
    np.fill_diagonal(correlation, 1.0)
    # Corrections drawn with the very covariance the fit assumes, around a smooth curve.
    noise = np.linalg.cholesky(correlation * np.outer(u, u)) @ rng.normal(size=count)
    relative = abscissae / (10 * scale)
    corrections = rng.normal(0.0, 1e-3 * scale) * (1.0 + relative - 0.5 * relative**2) + noise
    k = rng.choice([1.0, 2.0, 2.58], size=count)
    points = [
        (float(a), float(c), float(f * s), float(f))
        for a, c, s, f in zip(abscissae, corrections, u, k, strict=True)
    ]
    return make_certificate(points, point_correlation=r), degree


def test_random_gls_fits_agree_with_lstsq_on_the_whitened_system() -> None:
    rng = np.random.default_rng(SEED)
    correlations = []
    for _ in range(RANDOM_CASES):
        certificate, degree = _random_certificate(rng)
        fit = fit_polynomial(certificate, degree, significance=0.0)
        coefficients, covariance, chi_squared = _reference(certificate, degree)
        # Relative to each coefficient's standard uncertainty where the coefficient is ~0.
        u_coefficients = np.sqrt(np.diag(covariance))
        assert_close(fit.coefficients, coefficients, u_coefficients)
        assert_close(fit.covariance, covariance, np.outer(u_coefficients, u_coefficients))
        assert fit.chi_squared == pytest.approx(chi_squared, rel=RELATIVE, abs=1e-12)
        assert fit.point_correlation == certificate.point_correlation
        correlations.append(certificate.point_correlation)
    assert correlations.count(0.0) > RANDOM_CASES // 5
    assert sum(0.5 <= r < 1.0 for r in correlations) > RANDOM_CASES // 5


def _weighted_fit(certificate: Certificate, degree: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The weighted fit with independent points, by its normal equations (weights 1/u²)."""
    x = np.array([point.indication for point in certificate.points])
    corrections = np.array([point.correction for point in certificate.points])
    u = np.array([point.standard_uncertainty for point in certificate.points])
    low, high = certificate.calibrated_range
    design = np.vander(
        (x - 0.5 * (low + high)) / (0.5 * (high - low)), degree + 1, increasing=True
    )
    normal = design.T @ (design / u[:, np.newaxis] ** 2)
    coefficients = np.linalg.solve(normal, design.T @ (corrections / u**2))
    residuals = (corrections - design @ coefficients) / u
    return coefficients, np.linalg.inv(normal), float(residuals @ residuals)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_r_zero_is_the_weighted_fit(degree: int) -> None:
    rng = np.random.default_rng(degree + 7)
    x = np.linspace(0.0, 2000.0, 9)
    u = rng.uniform(0.01, 0.05, size=x.size)
    corrections = 0.05 - 2e-4 * x + 3e-8 * x**2 + rng.normal(0.0, u)
    certificate = make_certificate(
        [
            (float(a), float(c), float(2 * s), 2.0)
            for a, c, s in zip(x, corrections, u, strict=True)
        ],
        point_correlation=0.0,
    )
    fit = fit_polynomial(certificate, degree, significance=0.0)
    coefficients, covariance, chi_squared = _weighted_fit(certificate, degree)
    np.testing.assert_allclose(fit.coefficients, coefficients, rtol=RELATIVE, atol=1e-15)
    np.testing.assert_allclose(fit.covariance, covariance, rtol=RELATIVE, atol=1e-18)
    assert fit.chi_squared == pytest.approx(chi_squared, rel=RELATIVE)


def test_correlation_changes_weights_and_covariance_but_r_zero_and_equal_u_do_not() -> None:
    x = [0.0, 100.0, 200.0, 300.0, 400.0]
    corrections = [0.012, 0.031, 0.046, 0.072, 0.088]
    big_u = [0.01, 0.02, 0.02, 0.03, 0.05]
    unequal = [(a, c, b, 2.0) for a, c, b in zip(x, corrections, big_u, strict=True)]
    independent = fit_polynomial(make_certificate(unequal, point_correlation=0.0), 1)
    correlated = fit_polynomial(make_certificate(unequal, point_correlation=0.7), 1)
    assert correlated.coefficients != pytest.approx(independent.coefficients, rel=1e-6)
    # Equal u_i and a constant term: GLS is ordinary least squares for any r (the common part
    # lies along the constant column), and a_0 takes on r·u² (Rao's condition).
    equal = [(a, c, 0.02, 2.0) for a, c in zip(x, corrections, strict=True)]
    ordinary = fit_polynomial(make_certificate(equal, point_correlation=0.0), 1)
    for r in (0.3, 0.9):
        fit = fit_polynomial(make_certificate(equal, point_correlation=r), 1)
        np.testing.assert_allclose(fit.coefficients, ordinary.coefficients, rtol=1e-12)
        expected = (1 - r) * np.array(ordinary.covariance)
        expected[0, 0] += r * 0.01**2
        np.testing.assert_allclose(fit.covariance, expected, rtol=1e-10, atol=1e-20)


def test_full_correlation_with_equal_u_is_the_limit_of_gls_and_u_everywhere() -> None:
    x = np.linspace(0.0, 100.0, 6)
    corrections = 0.1 + 1e-3 * x + np.array([0.004, -0.003, 0.001, 0.005, -0.006, 0.002])
    points = [(float(a), float(c), 0.04, 2.0) for a, c in zip(x, corrections, strict=True)]
    full = fit_polynomial(make_certificate(points, point_correlation=1.0), 1)
    near = fit_polynomial(
        make_certificate(points, point_correlation=1.0 - 1e-9), 1, significance=0.0
    )
    # r = 1 - 1e-9 conditions R at ~1e9: agreement to ~1e-7 is all it can give.
    np.testing.assert_allclose(full.coefficients, near.coefficients, rtol=1e-7)
    np.testing.assert_allclose(full.covariance, near.covariance, rtol=1e-6, atol=1e-12)
    grid = np.linspace(0.0, 100.0, 11)
    result = correct_polynomial(grid, full, resolution=0.0)
    # The whole u = 0.02 is common to every point: no fit averages it down.
    np.testing.assert_allclose(result.standard_uncertainty, 0.02, rtol=1e-9)
    # χ² is the independent-points statistic (the near-1 GLS one is ~1e9 times larger).
    independent = fit_polynomial(make_certificate(points, point_correlation=0.0), 1)
    assert full.chi_squared == pytest.approx(independent.chi_squared, rel=1e-12)
    assert near.chi_squared > 1e8 * full.chi_squared


def test_full_correlation_interpolates_u_like_the_piecewise_model() -> None:
    # u_i on a straight line in x: with r = 1 a straight-line fit carries u(c(x)) equal to u
    # interpolated linearly, which is the piecewise model's certificate term at r = 1.
    x = np.array([0.0, 250.0, 500.0, 750.0, 1000.0])
    big_u = 0.02 + 4e-5 * x
    corrections = -0.05 - 1e-4 * x + np.array([0.002, -0.001, 0.003, -0.002, 0.001])
    certificate = make_certificate(
        [
            (float(a), float(c), float(b), 2.0)
            for a, c, b in zip(x, corrections, big_u, strict=True)
        ],
        point_correlation=1.0,
    )
    fit = fit_polynomial(certificate, 1)
    grid = np.linspace(0.0, 1000.0, 41)
    polynomial = correct_polynomial(grid, fit, resolution=0.0)
    piecewise = correct(grid, certificate, resolution=0.0)
    np.testing.assert_allclose(
        polynomial.terms[0].contribution, piecewise.contributions["certificate"], rtol=1e-9
    )
    np.testing.assert_allclose(
        polynomial.standard_uncertainty, (0.02 + 4e-5 * grid) / 2, rtol=1e-9
    )
    # V(â) has rank one; the correction still evaluates without warnings anywhere inside.
    assert np.linalg.matrix_rank(np.array(fit.covariance), tol=1e-12 * 1e-4) == 1
    assert np.all(np.isfinite(polynomial.standard_uncertainty))


def test_a_large_correlation_leaves_little_independent_scatter_to_fit() -> None:
    # Points scattering by about their u_i fit a line at r = 0 but not at r = 0.99, where
    # only 1 % of each u_i² may scatter independently.
    x = np.linspace(0.0, 100.0, 8)
    scatter = np.array([1.0, -1.0, 0.5, -0.5, 1.2, -0.8, 0.3, -0.7]) * 0.01
    points = [(float(a), float(0.1 + s), 0.02, 2.0) for a, s in zip(x, scatter, strict=True)]
    assert fit_polynomial(make_certificate(points, point_correlation=0.0), 1).p_value > 0.05
    strict = fit_polynomial(make_certificate(points, point_correlation=0.99), 1, significance=0)
    assert strict.p_value < 1e-10
    assert math.isfinite(strict.birge_ratio)
