# SPDX-License-Identifier: Apache-2.0
"""Correction models: piecewise-linear correction from certificate points, with GUM uncertainty.

Measurement model (GUM 4.1.1), for an indication x in the certificate's unit:

    y = x + C(x) + δ_res + δ_interp (+ δ_A)

Between adjacent points i, i+1 (indications x_i < x_{i+1}), with t = (x - x_i)/(x_{i+1} - x_i):

- C(x) = (1 - t)·C_i + t·C_{i+1}: linear interpolation of the corrections (DOMAIN.md §1),
  only for x_min <= x <= x_max; outside, nothing is extrapolated: the reading is flagged
  (`in_range` False), its value is the indication and its uncertainties are NaN.
- Certificate term, with u_i = U_i/k_i (GUM 4.3.3) and r the certificate's
  `point_correlation` (GUM 5.2.2 eq. (13), sensitivities 1 - t and t):
  u_C² = (1 - t)²u_i² + t²u_{i+1}² + 2r(1 - t)t·u_i·u_{i+1}.
  r = 1 interpolates U linearly (the usual conservative practice); r = 0 treats the points
  as independent.
- Interpolation term δ_interp, mean 0: the certificate's `interpolation_u` where given
  (applied strictly between points, 0 < t < 1: at a point the correction was measured);
  otherwise rectangular with half-width |C_{i+1} - C_i|·t(1 - t) (GUM 4.3.7), i.e.
  u_interp = |ΔC|·t(1 - t)/√3: 0 at the points, |ΔC|/(4√3) at mid-interval. A single-point
  certificate covers only its point and has no interpolation term.
- Resolution δ_res: rectangular, u = d/(2√3) (GUM F.2.2.1); optional repeatability δ_A
  (type A, GUM 4.2.3) with its degrees of freedom. Both act through the indication, so their
  sensitivity coefficient (GUM 5.1.3) is c_x = ∂y/∂x = 1 + (C_{i+1} - C_i)/(x_{i+1} - x_i).
  At an interior point the right-hand interval's slope is used (the kink has no derivative;
  the two choices differ by |ΔC/Δx|, usually < 1e-3 relative on these terms).

u_c = √(u_C² + u_interp² + (c_x·u_res)² + (c_x·u_A)²) (GUM 5.1.2 eq. (10); the only
correlation, between points, is inside u_C). nu_eff follows Welch-Satterthwaite
(GUM G.4.1 eq. (G.2b)) with the certificate, interpolation and resolution terms taken as
having infinite degrees of freedom, so nu_eff = ∞ without a type A term. U = k·u_c
(GUM 6.2.1) with the caller's coverage factor k.

Pure numpy: arrays in, same-shape arrays out, no loops over readings, no I/O, no clock.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from calibration.certificate import Certificate
from calibration.errors import CalibrationError, OutOfRangeError
from calibration.uncertainty import FloatArray, resolution_uncertainty, welch_satterthwaite

BoolArray = npt.NDArray[np.bool_]

_SQRT3 = math.sqrt(3.0)

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Corrected:
    """Corrected values of an array of indications, with their uncertainty and flags.

    Every array has the shape of the indications passed to `correct` and is read-only.
    Instances compare by identity (arrays have no single truth value).

    Attributes:
        value: y = x + C(x) in `unit` where `in_range`; the indication itself elsewhere.
        standard_uncertainty: u_c(y) in `unit` (GUM 5.1.2); NaN where not `in_range`.
        expanded_uncertainty: U = k·u_c in `unit` (GUM 6.2.1); NaN where not `in_range`.
        dof: nu_eff (GUM G.4.1), +inf without a type A term; NaN where not `in_range`.
        coverage_factor: the k used for `expanded_uncertainty`.
        in_range: True where x_min <= x <= x_max; False elsewhere (and for NaN or ±inf).
        unit: the certificate's unit.
        certificate_id: the certificate applied.
        contributions: uncertainty contributions |c_i|·u(x_i) in `unit` (GUM 5.1.3), keyed
            ``"certificate"``, ``"interpolation"``, ``"resolution"``, ``"repeatability"``;
            NaN where not `in_range`. Their root sum of squares is `standard_uncertainty`.
    """

    value: FloatArray
    standard_uncertainty: FloatArray
    expanded_uncertainty: FloatArray
    dof: FloatArray
    coverage_factor: float
    in_range: BoolArray
    unit: str
    certificate_id: str
    contributions: Mapping[str, FloatArray]


def correct(
    indication: npt.ArrayLike,
    certificate: Certificate,
    resolution: npt.ArrayLike,
    coverage_factor: float = 2.0,
    *,
    type_a_u: npt.ArrayLike | None = None,
    type_a_dof: npt.ArrayLike | None = None,
) -> Corrected:
    """Correct indications with a certificate's points and evaluate their uncertainty.

    See the module docstring for the model. Never extrapolates: readings outside the
    calibrated range keep their indication as value and get NaN uncertainties.

    Args:
        indication: x, any shape, in the certificate's unit (a single reading or a mean).
        certificate: a calibration or in-house certificate in the unit of `indication`.
        resolution: step d of the indication (>= 0), in the same unit; scalar or an array
            broadcastable to the shape of `indication`.
        coverage_factor: k (> 0) for the expanded uncertainty U = k·u_c.
        type_a_u: standard uncertainty of repeatability (>= 0) in the same unit, e.g. the
            experimental standard deviation of the mean s(x̄) (GUM 4.2.3), or None.
        type_a_dof: its degrees of freedom nu (> 0, e.g. n - 1; +inf allowed); None means
            infinite. Only meaningful with `type_a_u`.

    Returns:
        The corrected values, u_c, U, nu_eff, flags and contributions, each of x's shape.

    Raises:
        CalibrationError: the certificate is a verification (检定): its error is bounded by
            the MPE and no correction may be applied (DOMAIN.md §1).
        ValueError: resolution, coverage factor or type A arguments are invalid, or do not
            broadcast to the shape of `indication`.
    """
    if certificate.kind == "verification":
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r} is a {certificate.kind}: no correction "
            "is applied under a verification; use its MPE instead"
        )
    if not (math.isfinite(coverage_factor) and coverage_factor > 0.0):
        raise ValueError(f"coverage_factor must be finite and > 0, got {coverage_factor!r}")
    x = np.asarray(indication, dtype=np.float64)
    u_resolution = np.broadcast_to(resolution_uncertainty(resolution), x.shape)
    u_repeatability, dof_repeatability = _type_a(type_a_u, type_a_dof, x.shape)

    abscissae = np.array([point.indication for point in certificate.points])
    corrections = np.array([point.correction for point in certificate.points])
    point_u = np.array([point.standard_uncertainty for point in certificate.points])
    low, high = certificate.calibrated_range
    in_range = (x >= low) & (x <= high)  # NaN compares False: flagged like any other
    # Evaluate everywhere on a safe abscissa so that ±inf or NaN readings raise no warnings.
    inside = np.where(in_range, x, low)

    if abscissae.size == 1:
        correction = np.full(x.shape, corrections[0])
        u_certificate = np.full(x.shape, point_u[0])
        u_interpolation = np.zeros(x.shape)
        slope = np.zeros(x.shape)
    else:
        lower = np.clip(
            np.searchsorted(abscissae, inside, side="right") - 1, 0, abscissae.size - 2
        )
        upper = lower + 1
        x0, x1 = abscissae[lower], abscissae[upper]
        c0, c1 = corrections[lower], corrections[upper]
        u0, u1 = point_u[lower], point_u[upper]
        t = (inside - x0) / (x1 - x0)
        weight0, weight1 = 1.0 - t, t
        correction = weight0 * c0 + weight1 * c1
        r = certificate.point_correlation
        u_certificate = np.sqrt(
            (weight0 * u0) ** 2 + (weight1 * u1) ** 2 + 2.0 * r * weight0 * weight1 * u0 * u1
        )
        between = (t > 0.0) & (t < 1.0)
        if certificate.interpolation_u is None:
            u_interpolation = np.abs(c1 - c0) * t * (1.0 - t) / _SQRT3
        else:
            u_interpolation = np.where(between, certificate.interpolation_u, 0.0)
        slope = (c1 - c0) / (x1 - x0)

    sensitivity = np.abs(1.0 + slope)  # c_x = ∂y/∂x (GUM 5.1.3)
    u_resolution = sensitivity * u_resolution
    u_repeatability = sensitivity * u_repeatability
    u_combined = np.sqrt(
        u_certificate**2 + u_interpolation**2 + u_resolution**2 + u_repeatability**2
    )
    with np.errstate(over="ignore"):  # nu_eff overflowing to +inf is the right answer
        dof = welch_satterthwaite(u_combined, [(u_repeatability, dof_repeatability)])

    def flagged(quantity: FloatArray) -> FloatArray:
        return _read_only(np.where(in_range, quantity, np.nan))

    return Corrected(
        value=_read_only(np.where(in_range, inside + correction, x)),
        standard_uncertainty=flagged(u_combined),
        expanded_uncertainty=flagged(coverage_factor * u_combined),
        dof=flagged(dof),
        coverage_factor=float(coverage_factor),
        in_range=_read_only(np.asarray(in_range, dtype=np.bool_)),
        unit=certificate.unit,
        certificate_id=certificate.certificate_id,
        contributions=MappingProxyType(
            {
                "certificate": flagged(u_certificate),
                "interpolation": flagged(u_interpolation),
                "resolution": flagged(u_resolution),
                "repeatability": flagged(u_repeatability),
            }
        ),
    )


def require_in_range(indication: npt.ArrayLike, certificate: Certificate) -> None:
    """Raise unless every indication lies in the certificate's calibrated range.

    For callers that must refuse rather than flag (e.g. a conformity decision).

    Args:
        indication: x, any shape, in the certificate's unit.
        certificate: the certificate whose `calibrated_range` applies.

    Raises:
        OutOfRangeError: some indication is outside [x_min, x_max] or not finite; the
            message names the certificate, the range and the first offending indication.
    """
    x = np.asarray(indication, dtype=np.float64)
    low, high = certificate.calibrated_range
    outside = ~((x >= low) & (x <= high))
    if np.any(outside):
        first = float(x[outside].flat[0])
        raise OutOfRangeError(
            f"certificate {certificate.certificate_id!r} covers {low!r} to {high!r} "
            f"{certificate.unit}; indication {first!r} {certificate.unit} is outside "
            f"({int(np.count_nonzero(outside))} of {x.size} readings)"
        )


def _type_a(
    type_a_u: npt.ArrayLike | None, type_a_dof: npt.ArrayLike | None, shape: tuple[int, ...]
) -> tuple[FloatArray, FloatArray]:
    """Return (u_A, nu_A) broadcast to `shape`; zeros and +inf when there is no type A term."""
    if type_a_u is None:
        if type_a_dof is not None:
            raise ValueError("type_a_dof given without type_a_u")
        return np.zeros(shape), np.full(shape, np.inf)
    u_a = np.asarray(type_a_u, dtype=np.float64)
    if not np.all(np.isfinite(u_a) & (u_a >= 0.0)):
        raise ValueError(f"type_a_u must be finite and >= 0, got {type_a_u!r}")
    dof = np.asarray(np.inf if type_a_dof is None else type_a_dof, dtype=np.float64)
    if not np.all(dof > 0.0):  # NaN fails too
        raise ValueError(f"type_a_dof must be > 0 (inf allowed), got {type_a_dof!r}")
    return np.broadcast_to(u_a, shape), np.broadcast_to(dof, shape)


def _read_only(array: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """Return `array` as an ndarray (also for 0-d results) that refuses writes."""
    frozen = np.asarray(array)
    frozen.flags.writeable = False
    return frozen
