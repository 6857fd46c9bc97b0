# SPDX-License-Identifier: Apache-2.0
"""Coverage factors from the t-distribution: k = t_p(nu_eff), GUM G.3 and G.4; numpy only.

References: JCGM 100:2008 (GUM) G.3.2-G.3.4 and Table G.2 (t_p(nu), two-sided coverage
probability p), G.4.1 (k = t_p(nu_eff) with Welch-Satterthwaite's nu_eff), 6.2.1 (U = k·u_c);
the quantile algorithm: G. W. Hill, "Algorithm 396: Student's t-quantiles", Comm. ACM 13(10)
619-620 (1970), as used in R's qt(), refined by Halley steps on the exact tail probability
2·(1 - F(t)) = I_x(nu/2, 1/2), x = nu/(nu + t²) (the regularized incomplete beta function,
continued fraction as in Numerical Recipes 3rd ed. 6.4); for large nu the Cornish-Fisher
expansion (Abramowitz & Stegun 26.7.5). Accurate to a few parts in 1e14 for 1 <= nu <= ∞
and 1/2 <= p <= 1 - 1e-9 (the tests pin closed forms at nu = 1 and 2, GUM Table G.2, both
methods where they overlap, and scipy's stdtrit through GTC to 1e-13, its own accuracy).

Why p = erf(√2) ≈ 95.45 % by default: GUM Table G.2 lists k = 2 at nu = ∞ for "p = 95.45 %",
which is 2Φ(2) - 1 = 0.954499736… rounded. Using that exact value makes k(∞) = 2 exactly, so a
result with nu_eff = ∞ carries the same U as a k = 2 certificate, and t_p(nu) matches every
column entry of Table G.2. GUM G.4.1 note 1 allows truncating a non-integer nu_eff to the next
lower integer instead of interpolating; `truncate_dof=True` does that (GTC and this module
interpolate, i.e. use the t-distribution with real nu, by default).

Pure: arrays in, same-shape arrays out; no I/O, no clock, no state.
"""

import math
from statistics import NormalDist
from typing import Final

import numpy as np
import numpy.typing as npt

from calibration.uncertainty import FloatArray

COVERAGE_PROBABILITY_K2: Final = math.erf(math.sqrt(2.0))
"""p = 2Φ(2) - 1 = 0.9544997…: GUM Table G.2's "95.45 %", the probability of k = 2 at nu = ∞."""

# The Cornish-Fisher series through nu^-5 is used from the nu where its first omitted term,
# estimated as g5·(g5/g4)/nu^6, falls below 1e-16 relative, kept within these bounds: Halley on
# the continued fraction is exact to ~1e-15 up to nu ≈ 500 and loses digits slowly above.
_CORNISH_FISHER_BOUNDS: Final = (200.0, 3000.0)
# The continued fraction stops at this relative change of its value.
_EPSILON: Final = 1e-15
_MAX_FRACTION_TERMS: Final = 2000
# Halley's method stops after a relative step below this: the error left is ~1e-18.
_HALLEY_TOLERANCE: Final = 1e-6
_HALLEY_STEPS: Final = 8
# The recurrence Γ(a + 1/2)/Γ(a) shifts a above this before using Stirling's series.
_STIRLING_FROM: Final = 16.0
_LOG_PI: Final = math.log(math.pi)


def t_coverage_factor(
    dof: npt.ArrayLike,
    probability: float = COVERAGE_PROBABILITY_K2,
    *,
    truncate_dof: bool = False,
) -> FloatArray:
    """Return the coverage factor k = t_p(nu) of the t-distribution (GUM G.3.4, Table G.2).

    k is such that a t-distributed variable with nu degrees of freedom lies in [-k, k] with
    probability p (two-sided), e.g. t_p(4) = 2.87 and t_p(∞) = 2 for p = 95.45 %.

    Args:
        dof: nu >= 1, any shape; +inf gives the normal quantile; NaN gives NaN (a reading
            without a result keeps none).
        probability: p, the two-sided coverage probability, 0 < p < 1.
        truncate_dof: truncate a finite nu to the next lower integer first (GUM G.4.1 note 1).

    Returns:
        k, a float64 array of the shape of `dof`.

    Raises:
        ValueError: p is not in (0, 1), or some nu is below 1 (t_p(nu) grows without bound as
            nu -> 0; a mean of n >= 2 readings has nu >= 1).
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"coverage probability must lie in (0, 1), got {probability!r}")
    nu = np.array(dof, dtype=np.float64)  # a copy: truncated below
    if np.any(nu < 1.0):
        raise ValueError(f"degrees of freedom must be >= 1 (or inf), got {dof!r}")
    if truncate_dof:
        np.floor(nu, out=nu, where=np.isfinite(nu))
    # z from the lower tail (1 - p)/2: 1 - p is exact for p >= 1/2; (1 + p)/2 would lose the
    # relative precision of the tail (2e-7 of it at p = 1 - 1e-9).
    z = -NormalDist().inv_cdf(0.5 * (1.0 - probability))
    factor = np.full(nu.shape, np.nan)
    factor[np.isposinf(nu)] = z
    crossover = _cornish_fisher_from(z)
    large = np.isfinite(nu) & (nu >= crossover)
    factor[large] = _cornish_fisher(z, nu[large])
    small = np.isfinite(nu) & (nu < crossover)
    if np.any(small):
        # Distinct dof values only: a batch of readings usually shares a few.
        distinct, inverse = np.unique(nu[small], return_inverse=True)
        factor[small] = _halley_quantile(distinct, 1.0 - probability, z)[inverse]
    return factor


def t_two_sided_tail(coverage_factor: npt.ArrayLike, dof: npt.ArrayLike) -> FloatArray:
    """Return P(|T| > k) for T t-distributed with nu degrees of freedom (finite nu >= 1).

    Evaluated as I_x(nu/2, 1/2) with x = nu/(nu + k²) (Abramowitz & Stegun 26.7.1 and 26.5.27);
    p = 1 - tail is the coverage probability of the interval [-k, k].

    Args:
        coverage_factor: k >= 0.
        dof: nu, finite and >= 1, broadcastable against `coverage_factor`.

    Returns:
        The tail probability in [0, 1], a float64 array of the broadcast shape.

    Raises:
        ValueError: some nu is not finite or below 1.
    """
    k, nu = np.broadcast_arrays(
        np.asarray(coverage_factor, dtype=np.float64), np.asarray(dof, dtype=np.float64)
    )
    if not np.all(np.isfinite(nu) & (nu >= 1.0)):
        raise ValueError(f"degrees of freedom must be finite and >= 1, got {dof!r}")
    flat_k, flat_nu = np.abs(k).ravel(), nu.ravel()
    tail = _tail(flat_k, flat_nu, _log_gamma_half_ratio(0.5 * flat_nu))
    return tail.reshape(k.shape)


def _cornish_fisher_terms(z: float) -> tuple[float, float, float, float, float]:
    """Return g1..g5 of t = z + g1/nu + ... + g5/nu^5 (A&S 26.7.5; g5 from Hill 1970)."""
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    g5 = (
        (((((27.0 * z2 + 339.0) * z2 + 930.0) * z2 - 1782.0) * z2 - 765.0) * z2 + 17955.0)
        * z
        / 368640.0
    )
    return g1, g2, g3, g4, g5


def _cornish_fisher_from(z: float) -> float:
    """Return the smallest nu at which the Cornish-Fisher series is used for this z."""
    *_, g4, g5 = _cornish_fisher_terms(z)
    estimate = (abs(g5) * abs(g5 / g4) / 1e-16) ** (1.0 / 6.0)
    low, high = _CORNISH_FISHER_BOUNDS
    return float(min(max(estimate, low), high))


def _cornish_fisher(z: float, nu: FloatArray) -> FloatArray:
    """Return t_p(nu) from the normal quantile z as a series in 1/nu (A&S 26.7.5, to nu^-5)."""
    g1, g2, g3, g4, g5 = _cornish_fisher_terms(z)
    w = 1.0 / nu
    return np.asarray(z + w * (g1 + w * (g2 + w * (g3 + w * (g4 + w * g5)))), dtype=np.float64)


def _hill_start(nu: FloatArray, tail: float, z: float) -> FloatArray:
    """Return Hill's (1970) approximation of t with P(|T| > t) = tail, for nu >= 1."""
    a = 1.0 / (nu - 0.5)
    b = 48.0 / (a * a)
    c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
    d = ((94.5 / (b + c) - 3.0) / b + 1.0) * np.sqrt(a * math.pi / 2.0) * nu
    y = (d * tail) ** (2.0 / nu)
    # Normal-based branch (x is the lower-tail deviate, -z, as in Hill's and R's code); the
    # literal numbers here are Hill's published constants.
    x = -z
    small_dof = nu < 5.0  # noqa: PLR2004
    c_normal = c + np.where(small_dof, 0.3 * (nu - 4.5) * (x + 0.6), 0.0)
    c_normal = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c_normal
    x2 = x * x
    y_normal = (((((0.4 * x2 + 6.3) * x2 + 36.0) * x2 + 94.5) / c_normal - x2 - 3.0) / b + 1.0) * x
    y_normal = np.expm1(a * y_normal * y_normal)
    # Tail branch for small tail probabilities and small nu.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y_tail = (
            (
                1.0 / (((nu + 6.0) / (nu * y) - 0.089 * d - 0.822) * (nu + 2.0) * 3.0)
                + 0.5 / (nu + 4.0)
            )
            * y
            - 1.0
        ) * (nu + 1.0) / (nu + 2.0) + 1.0 / y
    # R's qt() also takes this branch for nu < 2.1 and a tail above 1/2.
    normal_branch = ((nu < 2.1) & (tail > 0.5)) | (y > 0.05 + a)  # noqa: PLR2004
    return np.asarray(np.sqrt(nu * np.where(normal_branch, y_normal, y_tail)), dtype=np.float64)


def _halley_quantile(nu: FloatArray, tail: float, z: float) -> FloatArray:
    """Return t with I_x(nu/2, 1/2) = tail by Halley steps on log(tail) against log(t).

    On these log scales the tail is nearly linear (it decays as t^-nu), so steps from Hill's
    start (good to ~1e-4) converge cubically without safeguards for nu >= 1: a step below
    1e-6 leaves an error of order 1e-18, and most values need two evaluations of the tail.
    """
    t = _hill_start(nu, tail, z)
    log_target = math.log(tail)
    log_gamma_ratio = _log_gamma_half_ratio(0.5 * nu)
    active = np.arange(nu.size)
    for _ in range(_HALLEY_STEPS):
        t_active, nu_active, ratio_active = t[active], nu[active], log_gamma_ratio[active]
        probability = _tail(t_active, nu_active, ratio_active)
        residual = np.log(probability) - log_target
        # h = log G(e^s): h' = -2 t f(t)/G, h'' = h'·(1 - (nu + 1) t²/(nu + t²) - h').
        first = -2.0 * t_active * _density(t_active, nu_active, ratio_active) / probability
        square = t_active * t_active
        second = first * (1.0 - (nu_active + 1.0) * square / (nu_active + square) - first)
        step = 2.0 * residual * first / (2.0 * first * first - residual * second)
        t[active] = t_active * np.exp(-step)
        active = active[np.abs(step) >= _HALLEY_TOLERANCE]
        if active.size == 0:
            break
    return t


def _density(t: FloatArray, nu: FloatArray, log_gamma_ratio: FloatArray) -> FloatArray:
    """Return the t density f(t) = Γ((nu+1)/2)/(√(nu π) Γ(nu/2)) (1 + t²/nu)^(-(nu+1)/2).

    `log_gamma_ratio` is log(Γ((nu+1)/2)/Γ(nu/2)), computed once per nu by the caller.
    """
    log_f = (
        log_gamma_ratio - 0.5 * (np.log(nu) + _LOG_PI) - 0.5 * (nu + 1.0) * np.log1p(t * t / nu)
    )
    return np.asarray(np.exp(log_f), dtype=np.float64)


def _tail(t: FloatArray, nu: FloatArray, log_gamma_ratio: FloatArray) -> FloatArray:
    """Return G = P(|T| > t) = I_x(a, 1/2), x = nu/(nu + t²), a = nu/2 (t >= 0, finite nu).

    `log_gamma_ratio` is log(Γ(a + 1/2)/Γ(a)), computed once per nu by the caller.
    """
    a = 0.5 * nu
    b = 0.5
    ratio = t * t / nu
    # log x and log(1 - x) straight from t: no cancellation for t near 0 or large.
    log_x = -np.log1p(ratio)
    with np.errstate(divide="ignore"):
        log_one_minus_x = -np.log1p(1.0 / ratio)  # -inf at t = 0: the prefix is then 0
    x = np.exp(log_x)
    # log(x^a (1-x)^b / B(a, b)), log B(a, 1/2) = log Γ(1/2) + log Γ(a) - log Γ(a + 1/2).
    log_prefix = a * log_x + b * log_one_minus_x - 0.5 * _LOG_PI + log_gamma_ratio
    prefix = np.exp(log_prefix)
    direct = x < (a + 1.0) / (a + b + 2.0)
    # I_x(a, b) by its continued fraction where it converges fast; else 1 - I_{1-x}(b, a).
    fraction = _beta_fraction(
        np.where(direct, a, b), np.where(direct, b, a), np.where(direct, x, -np.expm1(log_x))
    )
    return np.asarray(
        np.where(direct, prefix * fraction / a, 1.0 - prefix * fraction / b), dtype=np.float64
    )


def _beta_fraction(a: FloatArray, b: FloatArray, x: FloatArray) -> FloatArray:
    """Return the continued fraction of I_x(a, b) by the modified Lentz method (NR 6.4).

    Each pass adds the even and the odd term; values leave the loop once converged.
    """
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 / _not_tiny(1.0 - qab * x / qap)
    h = d.copy()
    active = np.arange(x.size)
    for m in range(1, _MAX_FRACTION_TERMS + 1):
        aa_, bb_, xx_ = a[active], b[active], x[active]
        m2 = 2.0 * m
        even = m * (bb_ - m) * xx_ / ((qam[active] + m2) * (aa_ + m2))
        odd = -(aa_ + m) * (qab[active] + m) * xx_ / ((aa_ + m2) * (qap[active] + m2))
        d_even = 1.0 / _not_tiny(1.0 + even * d[active])
        c_even = _not_tiny(1.0 + even / c[active])
        d_odd = 1.0 / _not_tiny(1.0 + odd * d_even)
        c_odd = _not_tiny(1.0 + odd / c_even)
        delta = d_odd * c_odd
        h[active] *= d_even * c_even * delta
        c[active], d[active] = c_odd, d_odd
        active = active[np.abs(delta - 1.0) >= _EPSILON]
        if active.size == 0:
            break
    return h


def _not_tiny(value: FloatArray) -> FloatArray:
    """Return `value` with magnitudes below 1e-300 replaced by 1e-300 (Lentz's guard)."""
    tiny = 1e-300
    return np.where(np.abs(value) < tiny, tiny, value)


def _log_gamma_half_ratio(a: FloatArray) -> FloatArray:
    """Return log(Γ(a + 1/2)/Γ(a)) for a >= 1/2, to ~1e-16 absolute.

    Shifts a up by the recurrence Γ(a+3/2)/Γ(a+1) = Γ(a+1/2)/Γ(a)·(a+1/2)/a, then uses the
    difference of Stirling's series (A&S 6.1.40) through the z^-9 term: no subtraction of two
    large log-gamma values, which would lose ~log10(a log a) digits.
    """
    shift = np.maximum(np.ceil(_STIRLING_FROM - a), 0.0)
    # Π (1 + 1/(2(a + j))) over the shift: at most 16 factors below 2, one log at the end.
    product = np.ones_like(a)
    for step in range(int(shift.max(initial=0.0))):
        product *= np.where(step < shift, 1.0 + 0.5 / (a + step), 1.0)
    correction = -np.log(product)
    z = a + shift
    h = 0.5 / z
    # z log(1 + h) - 1/2 is small (≈ -1/(8z)); log1p keeps it exact to rounding.
    value = 0.5 * np.log(z) + (z * np.log1p(h) - 0.5)
    for coefficient, power in (
        (1.0 / 12.0, 1),
        (-1.0 / 360.0, 3),
        (1.0 / 1260.0, 5),
        (-1.0 / 1680.0, 7),
        (1.0 / 1188.0, 9),
    ):
        value += coefficient * ((z + 0.5) ** -power - z**-power)
    return np.asarray(value + correction, dtype=np.float64)
