# SPDX-License-Identifier: Apache-2.0
"""Composite channels: results multiplied together, e.g. energy = meter · CT ratio · VT ratio.

References: GUM 5.1.2 and 5.1.3 (the law of propagation; for y = Π y_j the sensitivity of an
input x_i of factor y_j is Π_{l≠j} y_l · ∂y_j/∂x_i, which for a product gives the relative
uncertainties of GUM 5.1.6 added in quadrature), 5.2.2 (correlated inputs); DOMAIN.md §1:
"when one upstream standard feeds several inputs of one result, those components are
correlated and add linearly" — terms naming the same `source` are combined with r = +1 by
`calibration.budget.evaluate`, and act as one input in Welch-Satterthwaite.

Transformers in energy metering: the ratio error ε = (K_n·I_s - I_p)/I_p (its definition in
IEC 61869-1/-2) makes the true ratio K = K_n/(1 + ε); the phase displacements δ_I, δ_U add
the error (δ_I - δ_U)·tan φ (δ in rad) to the energy at a power factor cos φ, lagging (the
composite error 合成误差 of a transformer pair used under DL/T 448, f_I + f_U + 0.0291·(δ_I -
δ_U)·tan φ in % with δ in minutes; 0.0291 = 100·π/10 800 is the conversion of minutes to
radians in %, so the form agrees with the one used here; the sign convention of δ in its text
is not checked, and does not matter for an uncertainty: δ_I and δ_U are symmetric bounds, not
corrections). At cos φ = 1 it vanishes. Channels use it through ``power_factor``
(`gateway.instruments.phase_factor`).

Pure numpy; no I/O, no clock.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration.budget import Distribution, MeasurementResult, Term, evaluate
from calibration.coverage import COVERAGE_PROBABILITY_K2

_RADIANS_PER_MINUTE = math.pi / (180.0 * 60.0)
_SQRT3 = math.sqrt(3.0)
_ALWAYS = np.ones((), dtype=np.bool_)  # in range: a stated quantity has no range


@dataclass(frozen=True, slots=True, kw_only=True)
class Component:
    """One uncertainty component of a stated quantity (e.g. from a certificate's budget).

    Attributes:
        name: e.g. ``"standard transformer"`` or ``"test set HEG-1"``.
        standard_uncertainty: u >= 0, in the unit its quantity gives it (see the function).
        dof: nu (> 0), +inf for type B taken as exact.
        distribution: the distribution assigned.
        source: the upstream standard it rests on, or None; components of one result with the
            same source are fully correlated (r = +1) and add linearly.
    """

    name: str
    standard_uncertainty: float
    dof: float = math.inf
    distribution: Distribution = "normal"
    source: str | None = None


def stated_quantity(
    value: npt.ArrayLike,
    *,
    quantity: str,
    unit: str,
    components: Sequence[Component] = (),
    certificate_ids: Sequence[str] = (),
) -> MeasurementResult:
    """Return a quantity with stated components y = value + Σ δ_i (each c_i = 1, u in `unit`).

    A constant (an exact conversion coefficient) is a stated quantity without components.
    """
    y = np.asarray(value, dtype=np.float64)
    return evaluate(
        quantity=quantity,
        value=y,
        unit=unit,
        terms=[_term(component, unit, np.ones(y.shape)) for component in components],
        in_range=np.isfinite(y),
        model="stated value",
        certificate_ids=certificate_ids,
        coverage_factor=None,
    )


def calibrated_ratio(
    rated_ratio: float,
    *,
    ratio_error_percent: float,
    components: Sequence[Component],
    quantity: str,
    certificate_id: str,
) -> MeasurementResult:
    """Return a calibrated transformer's ratio K = K_n/(1 + ε/100) (校准: ε is corrected).

    Args:
        rated_ratio: K_n, e.g. 200/5 = 40 for a 200 A / 5 A CT.
        ratio_error_percent: ε from the certificate at the operating load, in %.
        components: the uncertainty of ε, each u in % (e.g. the certificate's U/k, or its
            budget split into the shared standard and the rest).
        quantity: e.g. ``"CT ratio"``.
        certificate_id: the calibration certificate.
    """
    denominator = 1.0 + ratio_error_percent / 100.0
    sensitivity = np.asarray(-rated_ratio / (100.0 * denominator**2))  # ∂K/∂ε per %
    return evaluate(
        quantity=quantity,
        value=np.asarray(rated_ratio / denominator),
        unit="1",
        terms=[_term(component, "%", sensitivity) for component in components],
        in_range=_ALWAYS,
        model="calibrated ratio K_n/(1 + ε)",
        certificate_ids=(certificate_id,),
    )


def phase_error_factor(
    power_factor: float,
    *,
    current_phase_mpe_min: float,
    voltage_phase_mpe_min: float,
    inductive: bool = True,
    certificate_ids: Sequence[str] = (),
) -> MeasurementResult:
    """Return the factor 1 + (δ_I - δ_U)·tan φ of verified transformers (value 1, no correction).

    δ_I and δ_U are rectangular within ±their MPE (in minutes; `transformer_limits` gives
    them); at cos φ = 1 both sensitivities are zero. Multiply the energy by it (`product`).

    Args:
        power_factor: cos φ, 0 < cos φ <= 1.
        current_phase_mpe_min: the CT's phase displacement limit, in minutes.
        voltage_phase_mpe_min: the VT's phase displacement limit, in minutes.
        inductive: lagging load (tan φ > 0); False for leading.
        certificate_ids: the transformers' verification certificates.

    Raises:
        ValueError: cos φ outside (0, 1] or a negative limit.
    """
    if not 0.0 < power_factor <= 1.0:
        raise ValueError(f"power factor must lie in (0, 1], got {power_factor!r}")
    if not (current_phase_mpe_min >= 0.0 and voltage_phase_mpe_min >= 0.0):
        raise ValueError("phase displacement limits must be >= 0")
    tangent = math.sqrt(1.0 - power_factor**2) / power_factor * (1.0 if inductive else -1.0)
    sensitivity = tangent * _RADIANS_PER_MINUTE  # per minute of phase displacement
    components = (
        ("CT phase displacement", current_phase_mpe_min, sensitivity),
        ("VT phase displacement", voltage_phase_mpe_min, -sensitivity),
    )
    return evaluate(
        quantity="phase error factor",
        value=np.asarray(1.0),
        unit="1",
        terms=[
            Term(
                name=f"{name} (MPE {limit:g} arcmin)",
                standard_uncertainty=np.asarray(limit / _SQRT3),
                unit="arcmin",
                sensitivity=np.asarray(coefficient),
                dof=np.asarray(np.inf),
                distribution="rectangular",
            )
            for name, limit, coefficient in components
        ],
        in_range=_ALWAYS,
        model=f"1 + (δ_I - δ_U)·tan φ at cos φ = {power_factor:g}",
        certificate_ids=certificate_ids,
    )


def product(
    factors: Sequence[MeasurementResult],
    *,
    quantity: str,
    unit: str,
    coverage_factor: float | None = None,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
) -> MeasurementResult:
    """Return y = Π y_j for every reading, with every input term carried through (GUM 5.1.2).

    Each term of factor j keeps its u(x_i) and gets the sensitivity Π_{l≠j} y_l · c_i; its name
    is prefixed with the factor's quantity. Terms naming one `source` add linearly.

    Args:
        factors: at least one result; their arrays broadcast together (a scalar CT ratio
            times an array of meter readings).
        quantity: the measurand, e.g. ``"active energy"``.
        unit: the unit of y.
        coverage_factor: a fixed k, or None for k = t_p(nu_eff).
        coverage_probability: p for k = t_p(nu_eff).

    Returns:
        The product; in range where every factor is.

    Raises:
        ValueError: no factors, or two factors with the same quantity name.
    """
    # A model check, not a formality: a product of results is exact to first order only
    # (GUM 5.1.2), like GTC; for relative u of a few % the neglected terms are ~u_1·u_2.
    if not factors:
        raise ValueError(f"{quantity}: a product needs at least one factor")
    names = [factor.quantity for factor in factors]
    if len(set(names)) != len(names):
        raise ValueError(f"{quantity}: factor quantities must be distinct, got {names!r}")
    shape = np.broadcast_shapes(*(factor.value.shape for factor in factors))
    values = [np.broadcast_to(factor.value, shape) for factor in factors]
    terms: list[Term] = []
    for position, factor in enumerate(factors):
        # Π of the other factors, not y/y_j: a factor may be zero.
        others = np.ones(shape)
        for other_position, other in enumerate(values):
            if other_position != position:
                others = others * other
        terms.extend(
            Term(
                name=f"{factor.quantity}: {term.name}",
                standard_uncertainty=np.broadcast_to(term.standard_uncertainty, shape),
                unit=term.unit,
                sensitivity=others * term.sensitivity,
                dof=np.broadcast_to(term.dof, shape),
                distribution=term.distribution,
                source=term.source,
            )
            for term in factor.terms
        )
    value = np.ones(shape)
    for factor_value in values:
        value = value * factor_value
    in_range = np.ones(shape, dtype=np.bool_)
    for factor in factors:
        in_range = in_range & factor.in_range
    return evaluate(
        quantity=quantity,
        value=value,
        unit=unit,
        terms=terms,
        in_range=in_range,
        model="product " + " · ".join(names),
        certificate_ids=[
            identifier for factor in factors for identifier in factor.certificate_ids
        ],
        coverage_factor=coverage_factor,
        coverage_probability=coverage_probability,
    )


def scaled(
    result: MeasurementResult,
    coefficient: float,
    *,
    quantity: str,
    unit: str,
    coverage_factor: float | None = None,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
) -> MeasurementResult:
    """Return coefficient · result for an exact coefficient (a conversion, e.g. kgce/kWh).

    For example GB/T 2589-2020's 0.1229 kgce/kWh (当量值) is a conventional, exact factor:
    it scales y and u and leaves nu_eff and the shares unchanged.
    """
    if not math.isfinite(coefficient):
        raise ValueError(f"{quantity}: the coefficient must be finite, got {coefficient!r}")
    return evaluate(
        quantity=quantity,
        value=coefficient * result.value,
        unit=unit,
        terms=[
            Term(
                name=term.name,
                standard_uncertainty=term.standard_uncertainty,
                unit=term.unit,
                sensitivity=coefficient * term.sensitivity,
                dof=term.dof,
                distribution=term.distribution,
                source=term.source,
            )
            for term in result.terms
        ],
        in_range=result.in_range,
        model=f"{result.model}, · {coefficient:g} {unit}/{result.unit}",
        certificate_ids=result.certificate_ids,
        coverage_factor=coverage_factor,
        coverage_probability=coverage_probability,
    )


def _term(component: Component, unit: str, sensitivity: npt.ArrayLike) -> Term:
    """Return a `Term` for a stated component with u in `unit` and the given c."""
    if not (math.isfinite(component.standard_uncertainty) and component.standard_uncertainty >= 0):
        raise ValueError(
            f"component {component.name!r}: standard uncertainty must be finite and >= 0, "
            f"got {component.standard_uncertainty!r}"
        )
    if not component.dof > 0.0:
        raise ValueError(f"component {component.name!r}: dof must be > 0, got {component.dof!r}")
    shape = np.shape(sensitivity)
    return Term(
        name=component.name,
        standard_uncertainty=np.full(shape, component.standard_uncertainty),
        unit=unit,
        sensitivity=np.asarray(sensitivity, dtype=np.float64),
        dof=np.full(shape, component.dof),
        distribution=component.distribution,
        source=component.source,
    )
