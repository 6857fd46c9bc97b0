# SPDX-License-Identifier: Apache-2.0
"""Verification mode (检定): no correction; the error is bounded by the MPE of a class.

References: DOMAIN.md §1 (a verified instrument is used without correction, its error
bounded by its maximum permissible error, u = MPE/√3); GUM 4.3.7 (rectangular distribution
of half-width a: u = a/√3) and G.4.2 (a bound taken as exactly known: nu = ∞). The limits come
from the class tables of `calibration.accuracy_classes` (energy meters IEC 62053-21/-22,
transformers IEC 61869-2/-3, balances OIML R 76-1 / JJG 1036), which are data with an
edition; each `Mpe` quotes its source and edition. A generic limit (% of reading + % of
range + absolute) is an `Mpe` built directly.

Pure numpy; no clock; no I/O (the packaged table is read by `accuracy_classes`).
"""

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

from calibration.accuracy_classes import (
    AccuracyClasses,
    TransformerKind,
    default_accuracy_classes,
)
from calibration.budget import MeasurementResult, Term, evaluate, repeatability_term
from calibration.coverage import COVERAGE_PROBABILITY_K2
from calibration.errors import CalibrationError
from calibration.uncertainty import FloatArray, resolution_uncertainty

_SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Mpe:
    """A maximum permissible error as a function of the indication x, in x's unit.

    MPE(x) = p_r·|x|/100 + p_f·F/100 + a + s(|x|), where s is a step function of the load
    (balances: 0.5 e, 1 e, 1.5 e by load range). Outside `measuring_range`, or above the last
    step, the class states no limit: such readings are flagged, never extrapolated.

    Attributes:
        description: the class and conditions, e.g. ``"energy meter class 0.5S, I/In = 1, PF 1"``.
        percent_of_reading: p_r >= 0, in % of |x|.
        percent_of_range: p_f >= 0, in % of `full_scale`.
        full_scale: F >= 0, the range (span or upper limit) p_f refers to, in x's unit.
        absolute: a >= 0, in x's unit.
        load_steps: ((bound, MPE), …) with increasing bounds: MPE for previous bound < |x| <=
            bound, in x's unit; empty for no step term.
        measuring_range: (low, high): where the class applies, in x's unit.
        reference: the standard and edition the limit comes from.
    """

    description: str
    percent_of_reading: float = 0.0
    percent_of_range: float = 0.0
    full_scale: float = 0.0
    absolute: float = 0.0
    load_steps: tuple[tuple[float, float], ...] = ()
    measuring_range: tuple[float, float] = (-math.inf, math.inf)
    reference: str = ""

    def __post_init__(self) -> None:
        numbers = (self.percent_of_reading, self.percent_of_range, self.full_scale, self.absolute)
        if not all(math.isfinite(number) and number >= 0.0 for number in numbers):
            raise CalibrationError(f"MPE {self.description!r}: terms must be finite and >= 0")
        bounds = [bound for bound, _ in self.load_steps]
        if any(not (limit >= 0.0 and math.isfinite(limit)) for _, limit in self.load_steps) or (
            bounds != sorted(set(bounds))
        ):
            raise CalibrationError(
                f"MPE {self.description!r}: load steps need increasing bounds and finite "
                f"limits >= 0, got {self.load_steps!r}"
            )
        low, high = self.measuring_range
        if not low <= high:
            raise CalibrationError(
                f"MPE {self.description!r}: measuring range {self.measuring_range!r} is empty"
            )

    def at(self, indication: npt.ArrayLike) -> FloatArray:
        """Return MPE(x) in x's unit for each indication; NaN where the class states none."""
        x = np.asarray(indication, dtype=np.float64)
        magnitude = np.abs(x)
        limit = (
            self.percent_of_reading / 100.0 * magnitude
            + self.percent_of_range / 100.0 * self.full_scale
            + self.absolute
        )
        low, high = self.measuring_range
        inside = (x >= low) & (x <= high)
        if self.load_steps:
            bounds = np.array([bound for bound, _ in self.load_steps])
            steps = np.array([step for _, step in self.load_steps])
            index = np.searchsorted(bounds, magnitude, side="left")
            inside &= index < bounds.size
            limit = limit + steps[np.minimum(index, bounds.size - 1)]
        return np.asarray(np.where(inside, limit, np.nan), dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationCertificate:
    """A verification certificate (检定证书) a channel rests on: no correction, u = MPE/√3.

    Attributes:
        certificate_id: the certificate number.
        unit: the unit of the indications and of `mpe`.
        issuer: the verifying institute.
        valid_from: first instant of validity (timezone-aware).
        valid_until: last instant of validity (timezone-aware), inclusive.
        mpe: the MPE rule, its `measuring_range` already narrowed to the verified range.
        passed: the verification's result; a failed one bounds nothing.
    """

    certificate_id: str
    unit: str
    issuer: str = ""
    valid_from: datetime
    valid_until: datetime
    mpe: Mpe
    passed: bool

    def __post_init__(self) -> None:
        where = f"verification certificate {self.certificate_id!r}"
        if not self.certificate_id.strip() or not self.unit.strip():
            raise CalibrationError(f"{where}: an id and a unit are required")
        for instant in (self.valid_from, self.valid_until):
            if instant.utcoffset() is None:
                raise CalibrationError(f"{where}: validity dates must be timezone-aware")
        if self.valid_from > self.valid_until:
            raise CalibrationError(f"{where}: valid_from is after valid_until")

    @property
    def calibrated_range(self) -> tuple[float, float]:
        """The verified range (low, high) in `unit` within which the MPE applies."""
        return self.mpe.measuring_range


def within(mpe: Mpe, verified_range: tuple[float, float] | None) -> Mpe:
    """Return `mpe` applying only within `verified_range` as well (None: unchanged).

    A verification covers the range it was carried out over; outside it nothing is stated,
    so readings there are flagged, never extrapolated.

    Raises:
        CalibrationError: the verified range is empty or misses the class's range.
    """
    if verified_range is None:
        return mpe
    low, high = mpe.measuring_range
    return dataclasses.replace(
        mpe, measuring_range=(max(low, verified_range[0]), min(high, verified_range[1]))
    )


def energy_meter_mpe(
    accuracy_class: str,
    *,
    current: float = 1.0,
    power_factor: str = "1",
    connection: Literal["direct", "transformer"] | None = None,
    classes: AccuracyClasses | None = None,
) -> Mpe:
    """Return the MPE of an active energy meter, in % of the energy registered.

    Args:
        accuracy_class: ``"0.2S"``, ``"0.5S"``, ``"1"`` or ``"2"``.
        current: I/In (transformer operated) or I/Ib (direct); 1 is rated conditions.
        power_factor: ``"1"``, ``"0.5L"`` (inductive) or ``"0.8C"`` (capacitive).
        connection: ``"direct"`` or ``"transformer"`` where the class distinguishes them
            and they disagree at this current (classes 1 and 2 at low currents).
        classes: a table; None for the packaged one.

    Raises:
        CalibrationError: the class, power factor or current has no limit in the table, or
            the limit depends on an unspecified connection.
    """
    table = classes or default_accuracy_classes()
    rows = [
        row
        for row in table.meters
        if row.accuracy_class == accuracy_class
        and row.power_factor == power_factor
        and row.current[0] <= current < row.current[1]
        and (connection is None or row.connection in {None, connection})
    ]
    limits = {row.mpe_percent for row in rows}
    label = f"energy meter class {accuracy_class}, I/In = {current:g}, PF {power_factor}"
    if not limits:
        raise CalibrationError(f"{label}: no MPE in table edition {table.edition!r}")
    if len(limits) > 1:
        raise CalibrationError(f"{label}: the MPE depends on the connection; give connection=")
    return Mpe(
        description=label,
        percent_of_reading=limits.pop(),
        reference=table.reference("energy_meter"),
    )


def transformer_limits(
    kind: TransformerKind,
    accuracy_class: str,
    *,
    load: float = 1.0,
    classes: AccuracyClasses | None = None,
) -> tuple[float, float | None]:
    """Return (ratio error limit in %, phase displacement limit in minutes or None).

    The limit at a load is that of the highest tabulated load at or below it (the limits
    fall with load, so this is the conservative reading of the tables); outside the first and
    last tabulated loads the class states no limit.

    Args:
        kind: ``"current"`` or ``"voltage"``.
        accuracy_class: e.g. ``"0.2S"`` (CT) or ``"0.2"`` (VT).
        load: I/In or U/Un; 1 is rated conditions.
        classes: a table; None for the packaged one.

    Raises:
        CalibrationError: the class is unknown or `load` is outside its tabulated range.
    """
    table = classes or default_accuracy_classes()
    rows = sorted(
        (
            row
            for row in table.transformers
            if row.kind == kind and row.accuracy_class == accuracy_class
        ),
        key=lambda row: row.load,
    )
    label = f"{kind} transformer class {accuracy_class}"
    if not rows:
        raise CalibrationError(f"{label}: not in table edition {table.edition!r}")
    if not rows[0].load <= load <= rows[-1].load:
        raise CalibrationError(
            f"{label}: load {load!r} is outside {rows[0].load!r} to {rows[-1].load!r} of rated"
        )
    row = [row for row in rows if row.load <= load][-1]
    return row.ratio_error_percent, row.phase_displacement_min


def transformer_mpe(
    kind: TransformerKind,
    accuracy_class: str,
    *,
    load: float = 1.0,
    classes: AccuracyClasses | None = None,
) -> Mpe:
    """Return the ratio-error MPE of a measuring transformer, in % of its ratio.

    Args and errors as `transformer_limits`; the phase displacement is left out (it acts on
    energy only at a power factor below 1: see `calibration.composite.phase_error_factor`).
    """
    table = classes or default_accuracy_classes()
    ratio_error, _ = transformer_limits(kind, accuracy_class, load=load, classes=table)
    short = "CT" if kind == "current" else "VT"
    return Mpe(
        description=f"{short} class {accuracy_class} ratio error, load {load:g} of rated",
        percent_of_reading=ratio_error,
        reference=table.reference(f"{kind}_transformer"),
    )


def balance_mpe(
    accuracy_class: str,
    *,
    scale_interval: float,
    capacity: float | None = None,
    in_service: bool = False,
    classes: AccuracyClasses | None = None,
) -> Mpe:
    """Return the MPE of a non-automatic weighing instrument as steps of its interval e.

    Args:
        accuracy_class: ``"I"``, ``"II"``, ``"III"`` or ``"IIII"``.
        scale_interval: the verification scale interval e (> 0), in the indication's unit.
        capacity: Max in the same unit, or None; readings with |x| > Max are flagged.
        in_service: MPE in service, twice that on verification (OIML R 76-1 3.5.2).
        classes: a table; None for the packaged one.

    Raises:
        CalibrationError: unknown class, or e or Max not positive and finite.
    """
    table = classes or default_accuracy_classes()
    if not (math.isfinite(scale_interval) and scale_interval > 0.0):
        raise CalibrationError(
            f"balance class {accuracy_class}: e must be > 0, got {scale_interval!r}"
        )
    if capacity is not None and not (math.isfinite(capacity) and capacity > 0.0):
        raise CalibrationError(
            f"balance class {accuracy_class}: Max must be > 0, got {capacity!r}"
        )
    rows = sorted(
        (row for row in table.balances if row.accuracy_class == accuracy_class),
        key=lambda row: row.up_to_e,
    )
    if not rows:
        raise CalibrationError(
            f"balance class {accuracy_class!r}: not in table edition {table.edition!r}"
        )
    factor = table.balance_in_service_factor if in_service else 1.0
    limit = math.inf if capacity is None else capacity
    stage = "in service" if in_service else "on verification"
    return Mpe(
        description=f"balance class {accuracy_class}, e = {scale_interval:g}, {stage}",
        # Net loads after taring may be negative: the MPE applies to |x| (R 76-1 3.5.3.3).
        load_steps=tuple(
            (row.up_to_e * scale_interval, factor * row.mpe_e * scale_interval) for row in rows
        ),
        measuring_range=(-limit, limit),
        reference=table.reference("balance"),
    )


def verify(
    indication: npt.ArrayLike,
    mpe: Mpe,
    *,
    unit: str,
    certificate_id: str,
    resolution: npt.ArrayLike | None = None,
    type_a_u: npt.ArrayLike | None = None,
    type_a_dof: npt.ArrayLike | None = None,
    coverage_factor: float | None = None,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
    quantity: str = "indication",
) -> MeasurementResult:
    """Return indications of a verified instrument with u = MPE/√3 (no correction).

    Args:
        indication: x, any shape, in `unit`; it is the result (检定: nothing is corrected).
        mpe: the instrument's MPE rule, in `unit`.
        unit: the unit of x.
        certificate_id: the verification certificate (检定证书) number.
        resolution: the step d, when the MPE does not already cover the rounding of the
            indication (OIML R 76 judges errors before rounding); None adds no term.
        type_a_u: standard uncertainty of repeatability of this use, or None.
        type_a_dof: its degrees of freedom; None is infinite.
        coverage_factor: a fixed k, or None for k = t_p(nu_eff).
        coverage_probability: p for k = t_p(nu_eff).
        quantity: the measurand's name for the budget.

    Returns:
        y = x with the term "MPE: …" (rectangular, half-width MPE(x), nu = ∞) and any others;
        flagged with NaN uncertainty where the class states no MPE.
    """
    x = np.asarray(indication, dtype=np.float64)
    limit = mpe.at(x)
    in_range = np.isfinite(limit) & np.isfinite(x)
    terms = [
        Term(
            name=f"MPE: {mpe.description}",
            standard_uncertainty=limit / _SQRT3,
            unit=unit,
            sensitivity=np.ones(x.shape),
            dof=np.full(x.shape, np.inf),
            distribution="rectangular",
        )
    ]
    if resolution is not None:
        terms.append(
            Term(
                name="resolution",
                standard_uncertainty=np.broadcast_to(resolution_uncertainty(resolution), x.shape),
                unit=unit,
                sensitivity=np.ones(x.shape),
                dof=np.full(x.shape, np.inf),
                distribution="rectangular",
            )
        )
    repeatability = repeatability_term(type_a_u, type_a_dof, shape=x.shape, unit=unit)
    if repeatability is not None:
        terms.append(repeatability)
    return evaluate(
        quantity=quantity,
        value=x,
        unit=unit,
        terms=terms,
        in_range=in_range,
        model="verification: no correction, u = MPE/√3",
        certificate_ids=(certificate_id,),
        coverage_factor=coverage_factor,
        coverage_probability=coverage_probability,
    )
