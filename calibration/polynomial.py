# SPDX-License-Identifier: Apache-2.0
"""Least-squares polynomial correction from certificate points, with its covariance.

Measurement model (GUM 4.1.1) for an indication x in the certificate's unit:

    y = x + c(x) + δ_res (+ δ_A),   c(x) = Σ_k a_k t^k,   t = (x - x_0)/s

with x_0 and s the centre and half-width of the calibrated range (scaling keeps the normal
matrix well conditioned; the a_k are all in the certificate's unit).

- Fit: generalised least squares with the full covariance of the points (ISO/TS 28037:2010
  8, the Gauss-Markov model; GUM H.3 and JCGM 100 5.2.2 for the covariance). The corrections
  C_i at indications x_i have u_i = U_i/k_i and, between any two points, the certificate's
  `point_correlation` r: V = D R D with D = diag(u_i) and R = (1 - r) I + r 11ᵀ (1 on the
  diagonal, r elsewhere; the piecewise model only ever combines adjacent points, so
  "adjacent" there and "every pair" here are the same statement). For 0 <= r < 1, R has the
  eigenvalues 1 - r and 1 + (n - 1)r, so V is positive definite, and
  â = (XᵀV⁻¹X)⁻¹XᵀV⁻¹C with V(â) = (XᵀV⁻¹X)⁻¹, computed by whitening with the Cholesky
  factor L of R (V = (DL)(DL)ᵀ) and a QR factorization of L⁻¹D⁻¹X. r = 0 is the weighted
  fit with weights 1/u_i².
- r = 1 (V = d dᵀ, d = (u_i), singular) is taken as what it says: each point's whole
  uncertainty is one effect common to all points (e.g. the reference standard's
  calibration), a common offset of u_i·δ with δ ~ N(0, 1) that no fit can average down.
  The limit r → 1 of the formulas above is no answer: where the u_i differ, GLS uses their
  differences to *solve* for δ and V(â) tends to 0 — the points would claim to pin c(x)
  exactly. A regularisation r = 1 - ε inherits that (u(c) ~ √ε) and was rejected. Instead
  the fit weights the points by 1/u_i² (the weighting every r < 1 gives the independent
  part (1 - r)D², which is the only part that carries scatter) and propagates the common
  effect through that linear estimator G = (XᵀWX)⁻¹XᵀW: V(â) = G d dᵀ Gᵀ (GUM 5.2.2 with
  r = 1). So u(c(x)) = |g(x)ᵀG d| is the least-squares polynomial through the u_i: with
  equal u_i it is u everywhere (the GLS limit then exists and agrees), and where the u_i lie
  on a polynomial of the fitted degree it is u interpolated along it, as the piecewise
  model's r = 1 interpolates U linearly.
- Goodness of fit: χ² = rᵀV⁻¹r of the residuals r = C - Xâ, with nu = n - (m + 1) degrees
  of freedom, the Birge ratio R_B = √(χ²/nu) and the p-value P(χ²_nu >= χ²). With r = 1 the
  points state no independent part to judge scatter against, and rᵀV⁺r of a rank-one V
  judges nothing useful; χ² is then Σ r_i²/u_i², the test that the polynomial passes the
  points within their stated uncertainties (the r = 0 statistic, the weakest of the r < 1
  tests). The u_i are the certificate's and are taken as known, so V(â) is *not* rescaled
  by χ²/nu (GUM H.3 does rescale, because there the u_i are unknown and estimated from the
  residuals). Instead, a fit whose p-value is below `significance` (default 0.05) raises
  `FitError`: a polynomial that does not describe the points within their uncertainties
  would understate u(c(x)) everywhere, and a correction model is chosen once, at
  configuration, where an error is the right signal. Pass ``significance=0`` to explore
  degrees; the statistics are kept on the fit and on the error. With nu = 0 (degree n - 1)
  no test is possible: R_B and the p-value are NaN. Note that a large r leaves little
  independent scatter: points that scatter by their u_i fail the test for r near 1.
- Correction: u_fit(x)² = gᵀV(â)g with g = (1, t, t², …) (GUM 5.2.2 eq. (13) in matrix
  form); resolution d/(2√3) (GUM F.2.2.1) and an optional type A term act through the
  indication with sensitivity 1 + dc/dx (GUM 5.1.3). Never extrapolates: outside
  [x_min, x_max] the value is the indication and u is NaN, as `calibration.correct` does.

Pure numpy; no I/O, no clock.
"""

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.polynomial import polynomial as power_series

from calibration.budget import MeasurementResult, Term, evaluate, repeatability_term
from calibration.certificate import Certificate
from calibration.coverage import COVERAGE_PROBABILITY_K2
from calibration.errors import CalibrationError
from calibration.uncertainty import FloatArray, resolution_uncertainty

_SERIES_TERMS = 10_000
_SERIES_EPSILON = 1e-16


class FitError(CalibrationError):
    """Certificate points are not described by the polynomial within their uncertainties.

    Attributes:
        chi_squared: χ² of the weighted residuals.
        dof: nu = n - (degree + 1).
        birge_ratio: √(χ²/nu).
        p_value: P(χ²_nu >= χ²).
    """

    def __init__(
        self, message: str, *, chi_squared: float, dof: int, birge_ratio: float, p_value: float
    ) -> None:
        super().__init__(message)
        self.chi_squared = chi_squared
        self.dof = dof
        self.birge_ratio = birge_ratio
        self.p_value = p_value


@dataclass(frozen=True, slots=True, kw_only=True)
class PolynomialFit:
    """A least-squares polynomial correction c(x) = Σ a_k t^k, t = (x - center)/scale.

    Attributes:
        certificate_id: the certificate whose points were fitted.
        unit: unit of x, c and every a_k.
        degree: m.
        center: x_0, the middle of the calibrated range, in `unit`.
        scale: s, its half-width (1 for a single point), in `unit`.
        coefficients: a_0 … a_m in `unit`.
        covariance: V(â), a square matrix of order m + 1, in `unit`².
        valid_range: (x_min, x_max), the calibrated range; never extrapolated.
        chi_squared: χ² of the weighted residuals.
        dof: nu = n - (m + 1).
        birge_ratio: √(χ²/nu); NaN when nu = 0.
        p_value: P(χ²_nu >= χ²); NaN when nu = 0.
        point_correlation: r between the points' standard uncertainties that the fit used
            (the certificate's; 0 for a hand-made fit that does not say).
    """

    certificate_id: str
    unit: str
    degree: int
    center: float
    scale: float
    coefficients: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    valid_range: tuple[float, float]
    chi_squared: float
    dof: int
    birge_ratio: float
    p_value: float
    point_correlation: float = 0.0

    def power_coefficients(self) -> tuple[FloatArray, FloatArray]:
        """Return (b, V(b)) of c(x) = Σ b_k x^k, b_k in unit^(1-k), for display and export.

        The power basis can be ill-conditioned far from x = 0; corrections use the scaled form.
        """
        size = self.degree + 1
        # Column j holds the power-basis coefficients of t^j = ((x - x_0)/s)^j.
        transform = np.zeros((size, size))
        for power in range(size):
            column = power_series.polypow([-self.center / self.scale, 1.0 / self.scale], power)
            transform[: column.size, power] = column
        coefficients = transform @ np.array(self.coefficients)
        covariance = transform @ np.array(self.covariance) @ transform.T
        return coefficients, covariance


def fit_polynomial(
    certificate: Certificate, degree: int, *, significance: float = 0.05
) -> PolynomialFit:
    """Fit c(x) of the given degree to a certificate's corrections by least squares.

    Generalised least squares with the points' covariance (their u_i and the certificate's
    `point_correlation` r between every two points; see the module docstring, also for
    r = 1). r = 0 is the weighted fit with weights 1/u_i².

    Args:
        certificate: a calibration or in-house certificate with at least degree + 1 points.
        degree: m >= 0, chosen by the caller (at most n - 1).
        significance: the fit fails when P(χ²_nu >= χ²) < significance; 0 accepts any fit.

    Returns:
        The coefficients with their covariance and the goodness-of-fit statistics.

    Raises:
        FitError: the points are inconsistent with the polynomial (see the module docstring).
        CalibrationError: a verification certificate, or too few points for the degree.
        ValueError: a negative degree or a significance outside [0, 1).
    """
    if certificate.kind == "verification":
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r} is a {certificate.kind}: no correction "
            "is fitted to a verification; use its MPE instead"
        )
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree!r}")
    if not 0.0 <= significance < 1.0:
        raise ValueError(f"significance must lie in [0, 1), got {significance!r}")
    points = certificate.points
    if len(points) < degree + 1:
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r} has {len(points)} points; a degree "
            f"{degree} polynomial needs at least {degree + 1}"
        )
    x = np.array([point.indication for point in points])
    corrections = np.array([point.correction for point in points])
    u = np.array([point.standard_uncertainty for point in points])
    low, high = certificate.calibrated_range
    center = 0.5 * (low + high)
    scale = 0.5 * (high - low) if high > low else 1.0
    design = np.vander((x - center) / scale, degree + 1, increasing=True)
    coefficients, covariance, chi_squared = _generalised_least_squares(
        design, corrections, u, certificate.point_correlation
    )
    dof = len(points) - (degree + 1)
    birge_ratio = math.sqrt(chi_squared / dof) if dof > 0 else math.nan
    p_value = _chi_squared_survival(chi_squared, dof) if dof > 0 else math.nan
    if dof > 0 and p_value < significance:
        raise FitError(
            f"certificate {certificate.certificate_id!r}: a degree {degree} polynomial does "
            f"not fit its {len(points)} points: chi-squared {chi_squared:.4g} with {dof} "
            f"degrees of freedom (Birge ratio {birge_ratio:.3g}), p = {p_value:.3g} < "
            f"{significance}",
            chi_squared=chi_squared,
            dof=dof,
            birge_ratio=birge_ratio,
            p_value=p_value,
        )
    return PolynomialFit(
        certificate_id=certificate.certificate_id,
        unit=certificate.unit,
        degree=degree,
        center=center,
        scale=scale,
        coefficients=tuple(float(a) for a in coefficients),
        covariance=tuple(tuple(float(v) for v in row) for row in covariance),
        valid_range=(low, high),
        chi_squared=chi_squared,
        dof=dof,
        birge_ratio=birge_ratio,
        p_value=p_value,
        point_correlation=certificate.point_correlation,
    )


def _generalised_least_squares(
    design: FloatArray, corrections: FloatArray, u: FloatArray, correlation: float
) -> tuple[FloatArray, FloatArray, float]:
    """Return (â, V(â), χ²) for C = Xa with V = D R D, R_ij = r (i != j) (module docstring).

    Args:
        design: X, n x (m + 1).
        corrections: C, n values.
        u: the u_i (> 0), n values.
        correlation: r in [0, 1].
    """
    whitened_design = design / u[:, np.newaxis]
    whitened = corrections / u
    if correlation < 1.0:
        size = u.size
        # R = (1 - r) I + r 11ᵀ; solving with its Cholesky factor L whitens D⁻¹X and D⁻¹C.
        cholesky = np.linalg.cholesky(
            (1.0 - correlation) * np.eye(size) + correlation * np.ones((size, size))
        )
        whitened_design = np.linalg.solve(cholesky, whitened_design)
        whitened = np.linalg.solve(cholesky, whitened)
    q, upper = np.linalg.qr(whitened_design)
    coefficients = np.linalg.solve(upper, q.T @ whitened)
    residuals = whitened - whitened_design @ coefficients
    chi_squared = float(residuals @ residuals)
    if correlation < 1.0:
        r_inverse = np.linalg.solve(upper, np.eye(upper.shape[0]))
        return coefficients, r_inverse @ r_inverse.T, chi_squared
    # r = 1: the whole u_i is one common effect u_i·δ, propagated through the weighted
    # estimator G = U⁻¹Qᵀ D⁻¹ from D⁻¹X = QU (G d = U⁻¹Qᵀ 1): V(â) = (G d)(G d)ᵀ, of rank one.
    common = np.linalg.solve(upper, q.T @ np.ones(u.size))
    return coefficients, np.outer(common, common), chi_squared


def correct_polynomial(
    indication: npt.ArrayLike,
    fit: PolynomialFit,
    *,
    resolution: npt.ArrayLike,
    coverage_factor: float | None = None,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
    type_a_u: npt.ArrayLike | None = None,
    type_a_dof: npt.ArrayLike | None = None,
    quantity: str = "corrected indication",
) -> MeasurementResult:
    """Correct indications with a fitted polynomial and evaluate their uncertainty.

    Args:
        indication: x, any shape, in the fit's unit.
        fit: from `fit_polynomial`.
        resolution: step d of the indication (>= 0), broadcastable to x.
        coverage_factor: a fixed k, or None for k = t_p(nu_eff) (GUM G.4.1).
        coverage_probability: p for k = t_p(nu_eff); GUM Table G.2's 95.45 %.
        type_a_u: standard uncertainty of repeatability (>= 0), or None.
        type_a_dof: its degrees of freedom (>= 1 with k = t_p(nu_eff)); None is infinite.
        quantity: the measurand's name for the budget.

    Returns:
        y = x + c(x) with u_c, nu_eff, k, U and the terms "certificate … fit", "resolution"
        (and "repeatability"); outside the fitted range y = x, flagged, with NaN uncertainty.

    Raises:
        ValueError: invalid resolution, type A terms or coverage arguments.
    """
    x = np.asarray(indication, dtype=np.float64)
    u_resolution = np.broadcast_to(resolution_uncertainty(resolution), x.shape)
    low, high = fit.valid_range
    in_range = (x >= low) & (x <= high)  # NaN compares False
    t = (np.where(in_range, x, low) - fit.center) / fit.scale
    basis = t[..., np.newaxis] ** np.arange(fit.degree + 1)
    coefficients = np.array(fit.coefficients)
    correction = basis @ coefficients
    covariance = np.array(fit.covariance)
    try:
        # gᵀVg = |gᵀL|² with V = LLᵀ: a matrix product, several times faster than einsum.
        u_fit = np.linalg.norm(basis @ np.linalg.cholesky(covariance), axis=-1)
    except np.linalg.LinAlgError:  # only semi-definite: a fit with r = 1, or hand-made
        # Rounding can leave gᵀVg a hair below 0 where it should be 0.
        u_fit = np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", basis, covariance, basis), 0.0))
    derivative = power_series.polyval(t, power_series.polyder(coefficients)) / fit.scale
    sensitivity = np.asarray(1.0 + derivative, dtype=np.float64)
    infinite = np.full(x.shape, np.inf)
    terms = [
        Term(
            name=f"certificate {fit.certificate_id} (degree {fit.degree} fit)",
            standard_uncertainty=u_fit,
            unit=fit.unit,
            sensitivity=np.ones(x.shape),
            dof=infinite,
            distribution="normal",
            source=fit.certificate_id,
        ),
        Term(
            name="resolution",
            standard_uncertainty=u_resolution,
            unit=fit.unit,
            sensitivity=sensitivity,
            dof=infinite,
            distribution="rectangular",
        ),
    ]
    repeatability = repeatability_term(
        type_a_u, type_a_dof, shape=x.shape, unit=fit.unit, sensitivity=sensitivity
    )
    if repeatability is not None:
        terms.append(repeatability)
    return evaluate(
        quantity=quantity,
        value=np.where(in_range, x + correction, x),
        unit=fit.unit,
        terms=terms,
        in_range=in_range,
        model=f"polynomial correction, degree {fit.degree}",
        certificate_ids=(fit.certificate_id,),
        coverage_factor=coverage_factor,
        coverage_probability=coverage_probability,
    )


def _chi_squared_survival(chi_squared: float, dof: int) -> float:
    """Return P(χ²_nu >= chi_squared) = Q(nu/2, χ²/2), the upper regularized gamma function.

    Series for x < a + 1, Lentz continued fraction otherwise (Numerical Recipes 3rd ed. 6.2);
    accurate to ~1e-14, ample for a decision at a significance level.
    """
    a, x = 0.5 * dof, 0.5 * chi_squared
    if x <= 0.0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        for n in range(1, _SERIES_TERMS):
            term *= x / (a + n)
            total += term
            if abs(term) < abs(total) * _SERIES_EPSILON:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for n in range(1, _SERIES_TERMS):
        an = -n * (n - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _SERIES_EPSILON:
            break
    return math.exp(log_prefix) * h
