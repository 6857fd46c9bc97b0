# SPDX-License-Identifier: Apache-2.0
"""Uncertainty budgets: named input terms, their GUM combination, and a table for people.

References: JCGM 100:2008 (GUM) 5.1.2 eq. (10) and 5.1.3 (sensitivity coefficients c_i and
contributions u_i(y) = |c_i|·u(x_i)), 5.2.2 eq. (13) (correlated inputs; r = +1 adds the
contributions linearly), G.4.1 eq. (G.2b) (Welch-Satterthwaite nu_eff), G.3 and 6.2.1
(U = k·u_c with k = t_p(nu_eff)), 7.2 (what a report states); EA-4/02 M:2022 section 5 (the
budget table). DOMAIN.md §1: when one upstream standard feeds several inputs of one result,
those components are correlated and add linearly. For Welch-Satterthwaite, terms fed by one
source act as a single input (as GTC does for an ensemble, after Willink, Metrologia 44 (2007)
340-349): they must share their degrees of freedom.

Every model of the package that reports a budget (`correct_piecewise`, `correct_polynomial`,
`verify`, `composite.product`) returns a `MeasurementResult`: arrays for every reading, with
the `Term`s that made them; `MeasurementResult.budget(index)` gives one reading's `Budget`,
and `format_budget` prints it. Pure numpy; no I/O, no clock.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from calibration.coverage import COVERAGE_PROBABILITY_K2, t_coverage_factor
from calibration.errors import OutOfRangeError
from calibration.uncertainty import FloatArray, welch_satterthwaite

BoolArray = npt.NDArray[np.bool_]
Distribution = Literal["normal", "rectangular", "triangular", "U-shaped"]
"""The distribution assigned to an input (GUM 4.3.3, 4.3.7, 4.3.9; JCGM 101 6.4.6 U-shaped)."""

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Term:
    """One input quantity x_i of a result and its part in the uncertainty, for every reading.

    Arrays have the result's shape and are read-only; NaN where the reading is not in range.

    Attributes:
        name: the input, e.g. ``"resolution"`` or ``"CT ratio: MPE class 0.2S"``.
        standard_uncertainty: u(x_i) >= 0 in `unit`.
        unit: the unit of x_i and u(x_i), e.g. ``"g"``, ``"%"`` or ``"1"``.
        sensitivity: c_i = ∂y/∂x_i in the result's unit per `unit` (GUM 5.1.3).
        dof: nu_i, +inf for a type B evaluation taken as exactly known (GUM G.4.2).
        distribution: the distribution assigned to x_i.
        source: the upstream standard x_i rests on, or None; terms of one result naming the
            same source are fully correlated (r = +1) and add linearly (GUM 5.2.2).
    """

    name: str
    standard_uncertainty: FloatArray
    unit: str
    sensitivity: FloatArray
    dof: FloatArray
    distribution: Distribution
    source: str | None = None

    @property
    def contribution(self) -> FloatArray:
        """|c_i|·u(x_i) in the result's unit (GUM 5.1.3)."""
        return np.asarray(np.abs(self.sensitivity) * self.standard_uncertainty, dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetLine:
    """One row of a `Budget`: an input, its uncertainty and its share of u_c².

    Attributes:
        name: the input.
        standard_uncertainty: u(x_i) in `unit`.
        unit: unit of x_i.
        sensitivity: c_i in the result's unit per `unit`.
        contribution: |c_i|·u(x_i) in the result's unit.
        dof: nu_i (+inf for exactly known type B).
        distribution: the distribution assigned to x_i.
        source: the upstream standard shared with correlated lines, or None.
        share: this line's part of u_c²: c_i·u_i·Σ_j r_ij·c_j·u_j / u_c² (shares add to 1).
    """

    name: str
    standard_uncertainty: float
    unit: str
    sensitivity: float
    contribution: float
    dof: float
    distribution: Distribution
    source: str | None
    share: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """The uncertainty budget of one reading (GUM 7.2.2; EA-4/02 5).

    Attributes:
        quantity: the measurand, e.g. ``"mass"`` or ``"active energy"``.
        value: the result y in `unit`.
        unit: the result's unit.
        lines: the inputs, in the order the model lists them.
        standard_uncertainty: u_c(y) in `unit`.
        dof: nu_eff (GUM G.4.1), +inf when every input is exactly known type B.
        coverage_factor: k.
        coverage_probability: p when k = t_p(nu_eff); None when the caller fixed k.
        expanded_uncertainty: U = k·u_c in `unit`.
        model: the measurement model, e.g. ``"piecewise-linear correction"``.
        certificate_ids: the certificates the result rests on.
    """

    quantity: str
    value: float
    unit: str
    lines: tuple[BudgetLine, ...]
    standard_uncertainty: float
    dof: float
    coverage_factor: float
    coverage_probability: float | None
    expanded_uncertainty: float
    model: str
    certificate_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MeasurementResult:
    """Results for an array of readings (VIM 2.9), with the terms of their uncertainty.

    Arrays have the shape of the readings and are read-only; instances compare by identity.

    Attributes:
        quantity: the measurand, e.g. ``"mass"``.
        value: y in `unit` where `in_range`; the uncorrected value elsewhere.
        unit: the unit of y.
        standard_uncertainty: u_c(y) in `unit` (GUM 5.1.2, 5.2.2); NaN where not in range.
        dof: nu_eff (GUM G.4.1); NaN where not in range.
        coverage_factor: k for each reading; NaN where not in range.
        coverage_probability: p when k = t_p(nu_eff) (GUM G.3.4); None when k was fixed.
        expanded_uncertainty: U = k·u_c in `unit` (GUM 6.2.1); NaN where not in range.
        in_range: True where the model applies (never extrapolated outside).
        terms: the inputs, with their u(x_i), c_i, nu_i for each reading.
        model: the measurement model, e.g. ``"polynomial correction, degree 2"``.
        certificate_ids: the certificates the result rests on.
    """

    quantity: str
    value: FloatArray
    unit: str
    standard_uncertainty: FloatArray
    dof: FloatArray
    coverage_factor: FloatArray
    coverage_probability: float | None
    expanded_uncertainty: FloatArray
    in_range: BoolArray
    terms: tuple[Term, ...]
    model: str
    certificate_ids: tuple[str, ...]

    def budget(self, index: int | tuple[int, ...] = ()) -> Budget:
        """Return the budget of one reading.

        Args:
            index: the reading's index into the result's arrays (``()`` for a 0-d result).

        Raises:
            OutOfRangeError: the reading is not `in_range`, so it has no uncertainty.
            IndexError: `index` does not select one reading.
        """
        if np.ndim(self.value[index]) != 0:
            raise IndexError(f"index {index!r} selects more than one reading")
        if not self.in_range[index]:
            raise OutOfRangeError(
                f"{self.quantity} {float(self.value[index])!r} {self.unit} at {index!r} "
                f"is outside the range of {', '.join(self.certificate_ids) or 'its model'}"
            )
        u_c = float(self.standard_uncertainty[index])
        signed = [
            float(term.sensitivity[index] * term.standard_uncertainty[index])
            for term in self.terms
        ]
        group_sums: dict[str, float] = {}
        for term, part in zip(self.terms, signed, strict=True):
            if term.source is not None:
                group_sums[term.source] = group_sums.get(term.source, 0.0) + part
        lines = tuple(
            BudgetLine(
                name=term.name,
                standard_uncertainty=float(term.standard_uncertainty[index]),
                unit=term.unit,
                sensitivity=float(term.sensitivity[index]),
                contribution=abs(part),
                dof=float(term.dof[index]),
                distribution=term.distribution,
                source=term.source,
                share=(
                    part * (part if term.source is None else group_sums[term.source]) / u_c**2
                    if u_c > 0.0
                    else 0.0
                ),
            )
            for term, part in zip(self.terms, signed, strict=True)
        )
        return Budget(
            quantity=self.quantity,
            value=float(self.value[index]),
            unit=self.unit,
            lines=lines,
            standard_uncertainty=u_c,
            dof=float(self.dof[index]),
            coverage_factor=float(self.coverage_factor[index]),
            coverage_probability=self.coverage_probability,
            expanded_uncertainty=float(self.expanded_uncertainty[index]),
            model=self.model,
            certificate_ids=self.certificate_ids,
        )


def evaluate(
    *,
    quantity: str,
    value: npt.ArrayLike,
    unit: str,
    terms: Sequence[Term],
    in_range: npt.ArrayLike,
    model: str,
    certificate_ids: Sequence[str],
    coverage_factor: float | None = None,
    coverage_probability: float = COVERAGE_PROBABILITY_K2,
) -> MeasurementResult:
    """Combine input terms into u_c, nu_eff, k and U for every reading (GUM 5.1.2, 5.2.2, G.4).

    u_c² = Σ_g (Σ_{i in g} c_i u_i)² over groups g of terms sharing a `source` (r = +1), each
    term without a source being its own group. nu_eff = u_c⁴ / Σ_g (Σ c_i u_i)⁴/nu_g.

    Args:
        quantity: the measurand's name.
        value: y for every reading (the uncorrected value where not in range).
        unit: the unit of y.
        terms: the inputs; their arrays must broadcast to the shape of `value`.
        in_range: where the model applies; u_c, nu_eff, k, U and the terms are NaN elsewhere.
        model: the measurement model's name.
        certificate_ids: the certificates the result rests on (duplicates are dropped).
        coverage_factor: a fixed k (> 0), or None for k = t_p(nu_eff).
        coverage_probability: p for k = t_p(nu_eff), 0 < p < 1; GUM Table G.2's 95.45 %.

    Raises:
        ValueError: duplicate term names, terms of one source with different dof, a bad k or
            p, or a term with nu_i < 1 when k = t_p(nu_eff).
    """
    if coverage_factor is not None and not (
        math.isfinite(coverage_factor) and coverage_factor > 0.0
    ):
        raise ValueError(f"coverage_factor must be finite and > 0, got {coverage_factor!r}")
    if not 0.0 < coverage_probability < 1.0:
        raise ValueError(f"coverage_probability must lie in (0, 1), got {coverage_probability!r}")
    names = [term.name for term in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"{quantity}: term names must be unique, got {names!r}")
    y = np.asarray(value, dtype=np.float64)
    inside = np.broadcast_to(np.asarray(in_range, dtype=np.bool_), y.shape)
    shape = y.shape
    groups: dict[str | int, list[Term]] = {}
    for position, term in enumerate(terms):
        groups.setdefault(position if term.source is None else term.source, []).append(term)
    parts: list[tuple[FloatArray, FloatArray]] = []
    for key, members in groups.items():
        signed = sum(
            (
                np.broadcast_to(term.sensitivity * term.standard_uncertainty, shape)
                for term in members
            ),
            start=np.zeros(shape),
        )
        dof = np.broadcast_to(members[0].dof, shape)
        for other in members[1:]:
            if not np.array_equal(np.broadcast_to(other.dof, shape)[inside], dof[inside]):
                raise ValueError(
                    f"{quantity}: terms {members[0].name!r} and {other.name!r} share the source "
                    f"{key!r} but not their degrees of freedom"
                )
        parts.append((np.abs(signed), dof))
    variance = sum((part**2 for part, _ in parts), start=np.zeros(shape))
    u_c = np.sqrt(variance)
    with np.errstate(over="ignore", invalid="ignore"):
        dof_eff = welch_satterthwaite(
            u_c, [(part, dof) for part, dof in parts if np.any(np.isfinite(dof))]
        )
    u_c = np.where(inside, u_c, np.nan)
    dof_eff = np.where(inside, dof_eff, np.nan)
    if coverage_factor is None:
        k = t_coverage_factor(dof_eff, coverage_probability)
        probability: float | None = coverage_probability
    else:
        k = np.where(inside, coverage_factor, np.nan)
        probability = None

    def masked(array: npt.ArrayLike) -> FloatArray:
        return _read_only(np.where(inside, np.broadcast_to(array, shape), np.nan))

    return MeasurementResult(
        quantity=quantity,
        value=_read_only(y.copy()),
        unit=unit,
        standard_uncertainty=_read_only(u_c),
        dof=_read_only(dof_eff),
        coverage_factor=_read_only(k),
        coverage_probability=probability,
        expanded_uncertainty=_read_only(k * u_c),
        in_range=_read_only(inside.copy()),
        terms=tuple(
            Term(
                name=term.name,
                standard_uncertainty=masked(term.standard_uncertainty),
                unit=term.unit,
                sensitivity=masked(term.sensitivity),
                dof=masked(term.dof),
                distribution=term.distribution,
                source=term.source,
            )
            for term in terms
        ),
        model=model,
        certificate_ids=tuple(dict.fromkeys(certificate_ids)),
    )


def repeatability_term(
    type_a_u: npt.ArrayLike | None,
    type_a_dof: npt.ArrayLike | None,
    *,
    shape: tuple[int, ...],
    unit: str,
    sensitivity: npt.ArrayLike = 1.0,
) -> Term | None:
    """Return the type A term (GUM 4.2.3) of a reading, or None without `type_a_u`.

    Args:
        type_a_u: the standard uncertainty of repeatability (>= 0), e.g. s(x̄), or None.
        type_a_dof: its degrees of freedom (> 0, e.g. n - 1; inf allowed); None is infinite.
        shape: the readings' shape.
        unit: the indication's unit.
        sensitivity: c = ∂y/∂x through which the indication acts.

    Raises:
        ValueError: u < 0 or not finite, nu <= 0 or NaN, or nu without u.
    """
    if type_a_u is None:
        if type_a_dof is not None:
            raise ValueError("type_a_dof given without type_a_u")
        return None
    u_a = np.asarray(type_a_u, dtype=np.float64)
    if not np.all(np.isfinite(u_a) & (u_a >= 0.0)):
        raise ValueError(f"type_a_u must be finite and >= 0, got {type_a_u!r}")
    dof = np.asarray(np.inf if type_a_dof is None else type_a_dof, dtype=np.float64)
    if not np.all(dof > 0.0):  # NaN fails too
        raise ValueError(f"type_a_dof must be > 0 (inf allowed), got {type_a_dof!r}")
    return Term(
        name="repeatability",
        standard_uncertainty=np.broadcast_to(u_a, shape),
        unit=unit,
        sensitivity=np.broadcast_to(np.asarray(sensitivity, dtype=np.float64), shape),
        dof=np.broadcast_to(dof, shape),
        distribution="normal",
    )


def format_budget(budget: Budget) -> str:
    """Return a budget as a plain-text table for people (EA-4/02 M:2022 5, GUM 7.2).

    Uncertainties are shown to three significant digits, the value to the decimal place of
    U's third digit; shares are each line's part of u_c² in percent.
    """
    decimals = _decimals(budget.expanded_uncertainty)
    unit = budget.unit
    header = ("input", "u(x_i)", "c_i", "|c_i|·u(x_i)", "dof", "distribution", "share")
    rows = [
        (
            line.name,
            f"{line.standard_uncertainty:.3g}{_unit_suffix(line.unit)}",
            f"{line.sensitivity:.4g}",
            f"{line.contribution:.3g}{_unit_suffix(unit)}",
            _format_dof(line.dof),
            line.distribution,
            f"{100.0 * line.share:.1f} %",
        )
        for line in budget.lines
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    probability = (
        ""
        if budget.coverage_probability is None
        else f", p = {100.0 * budget.coverage_probability:.2f} %"
    )
    sources: dict[str, list[str]] = {}
    for line in budget.lines:
        if line.source is not None:
            sources.setdefault(line.source, []).append(line.name)
    correlated = [
        f"correlated (r = +1, added linearly) through {source}: {', '.join(names)}"
        for source, names in sources.items()
        if len(names) > 1
    ]
    certificates = ", ".join(budget.certificate_ids) or "no certificate"
    value = f"{budget.value:.{decimals}f}"
    u_c, dof = budget.standard_uncertainty, _format_dof(budget.dof)
    expanded, k = budget.expanded_uncertainty, budget.coverage_factor
    return "\n".join(
        [
            f"{budget.quantity} = {value} {unit}  ({budget.model}; {certificates})",
            *table,
            f"combined standard uncertainty u_c = {u_c:.3g} {unit}, effective dof {dof}",
            f"expanded uncertainty U = {expanded:.3g} {unit} (k = {k:.3f}{probability})",
            *correlated,
        ]
    )


def _unit_suffix(unit: str) -> str:
    """Return " unit", or nothing for a dimensionless quantity (unit "" or "1")."""
    return "" if unit in {"", "1"} else f" {unit}"


def _decimals(expanded_uncertainty: float) -> int:
    """Return the decimal places that show U to three significant digits (at least 0)."""
    if not (math.isfinite(expanded_uncertainty) and expanded_uncertainty > 0.0):
        return 6
    return max(0, 2 - math.floor(math.log10(expanded_uncertainty)))


def _format_dof(dof: float) -> str:
    """Return nu as ``inf``, or with one decimal."""
    return "inf" if math.isinf(dof) else f"{dof:.1f}"


def _read_only(array: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """Return `array` as an ndarray (also for 0-d results) that refuses writes."""
    frozen = np.asarray(array)
    frozen.flags.writeable = False
    return frozen
