# SPDX-License-Identifier: Apache-2.0
"""Comparison calibration on a test rig: the DUT against a reference standard, point by point.

References: DOMAIN.md §1 (E = indication - reference value; C = -E; U = k·u_c with
k = t_p(nu_eff); resolution d gives d/(2√3); TUR = MPE/U(standard) >= 3; ILAC G8 decision
rules, the rule recorded with the decision); JCGM 100:2008 (GUM) 4.2.2-4.2.3 (s and s(x̄) =
s/√n, nu = n - 1), 4.3.7 (rectangular), 5.1.2 (u_c² = Σ c_i² u_i²), G.4.1 (Welch-Satterthwaite);
ILAC G8:09/2019 4.2.1 (simple acceptance, w = 0) and 4.2.2 (guarded acceptance, w = U:
accept when |E| <= MPE - U); EA-4/02 M:2022 (the budget table).

The model for one set point, with n simultaneous pairs (x_i of the DUT, r_i of the reference):
    E = x̄ - (r̄ + C_ref(r̄)) + δx_res - δr_res,
the repeatability being that of the paired differences e_i = x_i - r_i (what a comparison
cancels, drift of the source, drops out): s(e), s(ē) = s(e)/√n with nu = n - 1. Budget terms:
reference certificate u (c = -1, nu = ∞), reference resolution (c = -1), DUT resolution
(c = +1), repeatability (c = +1, nu = n - 1). The reference's certificate is interpolated
linearly between its points (C and u, r = 1) and never extrapolated; or it is a fixed U with
no correction.

Pure numpy; no I/O, no clock: the gateway passes readings and dates in.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import numpy as np

from calibration.budget import Budget, Term, evaluate
from calibration.certificate import Certificate, CertificateKind
from calibration.coverage import COVERAGE_PROBABILITY_K2
from calibration.errors import CalibrationError, OutOfRangeError
from calibration.uncertainty import resolution_uncertainty
from calibration.verification import Mpe

__all__ = [
    "DECISION_RULES",
    "TUR_MINIMUM",
    "DecisionRule",
    "ReferenceStandard",
    "RigPoint",
    "evaluate_point",
    "rig_certificate",
]

DecisionRule = Literal["simple", "guard-band"]
"""ILAC G8 rules: simple acceptance (w = 0) or guarded acceptance with w = U."""

#: How each rule is recorded with the decision.
DECISION_RULES: Final = {
    "simple": "ILAC G8:09/2019 4.2.1 simple acceptance (w = 0): pass if |E| <= MPE",
    "guard-band": "ILAC G8:09/2019 4.2.2 guarded acceptance (w = U): pass if |E| <= MPE - U",
}

#: The least test-uncertainty ratio MPE/U(standard) accepted without a warning (DOMAIN.md §1).
TUR_MINIMUM: Final = 3.0

_K_REFERENCE: Final = 2.0  # U(standard) for the TUR is stated at k = 2 (≈ 95 %)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceStandard:
    """The reference standard: its certificate and the resolution of its indication.

    Give either `certificate` (corrections at indications, applied) or a fixed
    `expanded_uncertainty` with its `coverage_factor` (no correction applied).

    Attributes:
        certificate_id: the reference's certificate number (the link upward).
        resolution: d of the reference's indication, in the unit of its readings.
        certificate: its points, or None for a fixed U.
        expanded_uncertainty: the fixed U when there is no `certificate`.
        coverage_factor: k of the fixed U.
    """

    certificate_id: str
    resolution: float
    certificate: Certificate | None = None
    expanded_uncertainty: float | None = None
    coverage_factor: float = 2.0

    def __post_init__(self) -> None:
        if (self.certificate is None) == (self.expanded_uncertainty is None):
            raise CalibrationError(
                f"reference {self.certificate_id!r}: give certificate points or a fixed U, "
                "exactly one of them"
            )
        if self.certificate is not None and self.certificate.kind == "verification":
            raise CalibrationError(
                f"reference {self.certificate_id!r}: a verification certificate states no "
                "corrections; give its MPE-based U as a fixed expanded_uncertainty"
            )
        fixed = self.expanded_uncertainty
        if fixed is not None and not (math.isfinite(fixed) and fixed > 0.0):
            raise CalibrationError(f"reference {self.certificate_id!r}: U must be > 0")
        if not (math.isfinite(self.coverage_factor) and self.coverage_factor > 0.0):
            raise CalibrationError(f"reference {self.certificate_id!r}: k must be > 0")
        if not (math.isfinite(self.resolution) and self.resolution >= 0.0):
            raise CalibrationError(f"reference {self.certificate_id!r}: resolution must be >= 0")

    def correction_at(self, indication: float) -> tuple[float, float]:
        """Return (C, u(C)) at a reference indication: interpolated linearly, never extrapolated.

        Raises:
            OutOfRangeError: `indication` lies outside the certificate's calibrated range.
        """
        if self.certificate is None:
            assert self.expanded_uncertainty is not None  # noqa: S101 -- __post_init__
            return 0.0, self.expanded_uncertainty / self.coverage_factor
        points = self.certificate.points
        low, high = self.certificate.calibrated_range
        if not low <= indication <= high:
            raise OutOfRangeError(
                f"reference indication {indication!r} {self.certificate.unit} is outside "
                f"[{low!r}, {high!r}] of certificate {self.certificate_id!r}"
            )
        xs = [point.indication for point in points]
        correction = float(np.interp(indication, xs, [point.correction for point in points]))
        u = float(np.interp(indication, xs, [point.standard_uncertainty for point in points]))
        return correction, u


@dataclass(frozen=True, slots=True, kw_only=True)
class RigPoint:
    """The result at one set point.

    Attributes:
        nominal: the set point, in `unit`.
        unit: the unit of every value here.
        count: n, the number of reading pairs.
        dut_mean: x̄, the mean DUT indication (the certificate's abscissa).
        reference_mean: r̄, the mean reference indication, uncorrected.
        reference_correction: C_ref(r̄) from the reference's certificate.
        reference_value: r̄ + C_ref, the reference value.
        error: E = x̄ - (r̄ + C_ref).
        error_std: s(e) of the paired differences e_i = x_i - r_i.
        error_std_mean: s(ē) = s(e)/√n.
        budget: the uncertainty budget of E (u_c, nu_eff, k, U and the lines).
        mpe: the DUT's MPE at x̄.
        reference_expanded_uncertainty: U(standard) = 2·u(C_ref), for the TUR.
        tur: MPE / U(standard).
        tur_sufficient: TUR >= `TUR_MINIMUM`.
        decision_rule: the rule, as recorded (see `DECISION_RULES`).
        acceptance_limit: MPE - w: |E| up to it passes.
        passed: the conformity decision.
    """

    nominal: float
    unit: str
    count: int
    dut_mean: float
    reference_mean: float
    reference_correction: float
    reference_value: float
    error: float
    error_std: float
    error_std_mean: float
    budget: Budget
    mpe: float
    reference_expanded_uncertainty: float
    tur: float
    tur_sufficient: bool
    decision_rule: str
    acceptance_limit: float
    passed: bool

    @property
    def expanded_uncertainty(self) -> float:
        """U of E."""
        return self.budget.expanded_uncertainty

    @property
    def coverage_factor(self) -> float:
        """The coverage factor k of U."""
        return self.budget.coverage_factor


def evaluate_point(
    *,
    nominal: float,
    unit: str,
    dut_indications: Sequence[float],
    reference_indications: Sequence[float],
    reference: ReferenceStandard,
    dut_resolution: float,
    mpe: Mpe,
    decision_rule: DecisionRule,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
) -> RigPoint:
    """Evaluate one set point of a comparison calibration (see the module docstring).

    Args:
        nominal: the set point, in `unit`.
        unit: the unit of the indications.
        dut_indications: x_1..x_n, read simultaneously with `reference_indications`.
        reference_indications: r_1..r_n.
        reference: the reference standard.
        dut_resolution: d of the DUT's indication (>= 0).
        mpe: the DUT's maximum permissible error.
        decision_rule: ``"simple"`` or ``"guard-band"`` (ILAC G8).
        coverage_probability: p for k = t_p(nu_eff).

    Raises:
        ValueError: fewer than 2 pairs, unequal counts, non-finite readings, an unknown rule.
        OutOfRangeError: the reference reading lies outside its certificate's range, or the
            MPE states no limit at x̄.
    """
    if decision_rule not in DECISION_RULES:
        raise ValueError(
            f"decision rule must be one of {sorted(DECISION_RULES)}, got {decision_rule!r}"
        )
    dut = np.asarray(dut_indications, dtype=np.float64)
    ref = np.asarray(reference_indications, dtype=np.float64)
    if dut.ndim != 1 or dut.shape != ref.shape or dut.size < 2:  # noqa: PLR2004
        raise ValueError(
            f"set point {nominal!r} {unit}: need n >= 2 DUT and reference readings in pairs, "
            f"got {dut.size} and {ref.size}"
        )
    if not (np.all(np.isfinite(dut)) and np.all(np.isfinite(ref))):
        raise ValueError(f"set point {nominal!r} {unit}: readings must be finite")
    count = int(dut.size)
    dut_mean, reference_mean = float(dut.mean()), float(ref.mean())
    correction, u_reference = reference.correction_at(reference_mean)
    reference_value = reference_mean + correction
    error = dut_mean - reference_value
    differences = dut - ref
    error_std = float(differences.std(ddof=1))  # GUM 4.2.2
    error_std_mean = error_std / math.sqrt(count)  # GUM 4.2.3
    terms = [
        _term(f"reference certificate {reference.certificate_id}", u_reference, unit, -1.0),
        _term(
            "reference resolution",
            float(resolution_uncertainty(reference.resolution)),
            unit,
            -1.0,
            distribution="rectangular",
        ),
        _term(
            "DUT resolution",
            float(resolution_uncertainty(dut_resolution)),
            unit,
            1.0,
            distribution="rectangular",
        ),
        _term("repeatability", error_std_mean, unit, 1.0, dof=count - 1.0),
    ]
    result = evaluate(
        quantity="error of indication",
        value=error,
        unit=unit,
        terms=terms,
        in_range=True,
        model="E = x̄(DUT) - (r̄ + C_ref(r̄)) (comparison calibration)",
        certificate_ids=[reference.certificate_id],
        coverage_probability=coverage_probability,
    )
    budget = result.budget()
    limit = float(mpe.at(dut_mean))
    if not math.isfinite(limit):
        raise OutOfRangeError(
            f"DUT indication {dut_mean!r} {unit}: MPE {mpe.description!r} states no limit there"
        )
    reference_expanded = _K_REFERENCE * u_reference
    tur = limit / reference_expanded if reference_expanded > 0.0 else math.inf
    guard = budget.expanded_uncertainty if decision_rule == "guard-band" else 0.0
    acceptance_limit = limit - guard
    return RigPoint(
        nominal=nominal,
        unit=unit,
        count=count,
        dut_mean=dut_mean,
        reference_mean=reference_mean,
        reference_correction=correction,
        reference_value=reference_value,
        error=error,
        error_std=error_std,
        error_std_mean=error_std_mean,
        budget=budget,
        mpe=limit,
        reference_expanded_uncertainty=reference_expanded,
        tur=tur,
        tur_sufficient=tur >= TUR_MINIMUM,
        decision_rule=DECISION_RULES[decision_rule],
        acceptance_limit=acceptance_limit,
        passed=acceptance_limit >= 0.0 and abs(error) <= acceptance_limit,
    )


def rig_certificate(
    points: Sequence[RigPoint],
    *,
    certificate_id: str,
    issuer: str,
    kind: CertificateKind,
    valid_from: datetime,
    valid_until: datetime,
) -> Certificate:
    """Return the DUT's certificate: E with U and k at each mean DUT indication x̄.

    Raises:
        CalibrationError: no points, two points at the same x̄, or a U that is not > 0.
    """
    if not points:
        raise CalibrationError(f"certificate {certificate_id!r}: no calibrated points")
    units = {point.unit for point in points}
    if len(units) != 1:
        raise CalibrationError(f"certificate {certificate_id!r}: points in units {sorted(units)}")
    return Certificate.from_points(
        certificate_id=certificate_id,
        unit=units.pop(),
        issuer=issuer,
        kind=kind,
        valid_from=valid_from,
        valid_until=valid_until,
        abscissa="indication",
        convention="error",
        points=[
            (point.dut_mean, point.error, point.expanded_uncertainty, point.coverage_factor)
            for point in points
        ],
    )


def _term(
    name: str,
    u: float,
    unit: str,
    sensitivity: float,
    *,
    dof: float = math.inf,
    distribution: Literal["normal", "rectangular"] = "normal",
) -> Term:
    return Term(
        name=name,
        standard_uncertainty=np.asarray(u, dtype=np.float64),
        unit=unit,
        sensitivity=np.asarray(sensitivity, dtype=np.float64),
        dof=np.asarray(dof, dtype=np.float64),
        distribution=distribution,
    )
