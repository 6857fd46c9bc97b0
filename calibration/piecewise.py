# SPDX-License-Identifier: Apache-2.0
"""The piecewise-linear correction of `calibration.models` as a `MeasurementResult`.

Reference: the model and its GUM clauses are in `calibration.models` (GUM 4.1.1, 5.1.2,
5.2.2, F.2.2.1, G.4.1); `correct_piecewise` calls `correct` itself, so the numbers are the
ones the gateway uses, and only re-expresses them as named inputs with u(x_i), c_i and nu_i
(`calibration.budget`), with k = t_p(nu_eff) when asked. Pure numpy; no I/O, no clock.
"""

import numpy as np
import numpy.typing as npt

from calibration.budget import (
    BoolArray,
    Distribution,
    MeasurementResult,
    Term,
    evaluate,
    repeatability_term,
)
from calibration.certificate import Certificate
from calibration.coverage import COVERAGE_PROBABILITY_K2
from calibration.models import correct
from calibration.uncertainty import FloatArray, resolution_uncertainty


def correct_piecewise(
    indication: npt.ArrayLike,
    certificate: Certificate,
    resolution: npt.ArrayLike,
    *,
    type_a_u: npt.ArrayLike | None = None,
    type_a_dof: npt.ArrayLike | None = None,
    coverage_factor: float | None = None,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
    quantity: str = "corrected indication",
) -> MeasurementResult:
    """Correct indications as `calibration.correct` does and return them with their terms.

    The same model and numbers as `correct` (which the gateway uses; see
    `calibration.models`), re-expressed as inputs with u(x_i), c_i and nu_i so that a budget
    can be printed, results combined (`calibration.composite`) and k taken as t_p(nu_eff).
    The certificate term names the certificate as its source: two inputs corrected with one
    certificate are taken as fully correlated through it.

    Args:
        indication: x, any shape, in the certificate's unit.
        certificate: a ``kind="calibration"`` certificate.
        resolution: step d of the indication (>= 0), broadcastable to x.
        type_a_u: standard uncertainty of repeatability (GUM 4.2.3), or None.
        type_a_dof: its degrees of freedom (>= 1 when k = t_p(nu_eff)); None is infinite.
        coverage_factor: a fixed k, or None for k = t_p(nu_eff).
        coverage_probability: p for k = t_p(nu_eff).
        quantity: the measurand's name for the budget.

    Raises:
        CalibrationError: the certificate is a verification.
        ValueError: as `correct`, or a degree of freedom below 1 with k = t_p(nu_eff).
    """
    corrected = correct(
        indication,
        certificate,
        resolution,
        2.0 if coverage_factor is None else coverage_factor,
        type_a_u=type_a_u,
        type_a_dof=type_a_dof,
    )
    x = np.asarray(indication, dtype=np.float64)
    sensitivity = _piecewise_sensitivity(x, corrected.in_range, certificate)
    infinite = np.full(x.shape, np.inf)
    interpolation_distribution: Distribution = (
        "rectangular" if certificate.interpolation_u is None else "normal"
    )
    terms = [
        Term(
            name=f"certificate {certificate.certificate_id}",
            standard_uncertainty=corrected.contributions["certificate"],
            unit=certificate.unit,
            sensitivity=np.ones(x.shape),
            dof=infinite,
            distribution="normal",
            source=certificate.certificate_id,
        ),
        Term(
            name="interpolation",
            standard_uncertainty=corrected.contributions["interpolation"],
            unit=certificate.unit,
            sensitivity=np.ones(x.shape),
            dof=infinite,
            distribution=interpolation_distribution,
        ),
        Term(
            name="resolution",
            standard_uncertainty=np.broadcast_to(resolution_uncertainty(resolution), x.shape),
            unit=certificate.unit,
            sensitivity=sensitivity,
            dof=infinite,
            distribution="rectangular",
        ),
    ]
    repeatability = repeatability_term(
        type_a_u, type_a_dof, shape=x.shape, unit=certificate.unit, sensitivity=sensitivity
    )
    if repeatability is not None:
        terms.append(repeatability)
    return evaluate(
        quantity=quantity,
        value=corrected.value,
        unit=certificate.unit,
        terms=terms,
        in_range=corrected.in_range,
        model="piecewise-linear correction",
        certificate_ids=(certificate.certificate_id,),
        coverage_factor=coverage_factor,
        coverage_probability=coverage_probability,
    )


def _piecewise_sensitivity(
    x: FloatArray, in_range: BoolArray, certificate: Certificate
) -> FloatArray:
    """Return c_x = 1 + dC/dx with the segment rule of `calibration.models.correct`."""
    abscissae = np.array([point.indication for point in certificate.points])
    corrections = np.array([point.correction for point in certificate.points])
    if abscissae.size == 1:
        return np.ones(x.shape)
    inside = np.where(in_range, x, abscissae[0])
    lower = np.clip(np.searchsorted(abscissae, inside, side="right") - 1, 0, abscissae.size - 2)
    slope = (corrections[lower + 1] - corrections[lower]) / (
        abscissae[lower + 1] - abscissae[lower]
    )
    return np.asarray(1.0 + slope, dtype=np.float64)
