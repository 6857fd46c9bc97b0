# SPDX-License-Identifier: Apache-2.0
"""Calibration certificates given as points: corrections with their U and k, validity dates.

A calibration certificate (校准证书; DOMAIN.md §1) states, at a few points, either the error
E = indication - reference or the correction C = -E, each with an expanded uncertainty U and
its coverage factor k (GUM 6.2.1, u = U/k as in GUM 4.3.3), and the points are labelled by
the indication or by the reference value. `Certificate.from_points` takes the columns as
printed and stores them in one normal form: corrections at indications, sorted by
indication, so that the corrected value is y = x + C(x) for an indication x.

Frozen data only; no I/O and no clock (the caller passes the time to `valid_at`).
"""

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Self, get_args

from calibration.errors import CalibrationError, CertificateExpiredError

CertificateKind = Literal["calibration", "verification", "in-house"]
"""校准 calibration (values to apply) or 检定 verification (pass/fail, no correction)."""

Abscissa = Literal["indication", "reference"]
"""What the x column of a certificate's points is."""

Convention = Literal["correction", "error"]
"""Whether the second column is the correction C or the error E = indication - reference."""

_POINT_ARITY = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationPoint:
    """One certificate point in normal form: the correction C at an indication x.

    Attributes:
        indication: x, the indication at which the point applies, in the certificate's unit.
        correction: C = reference - indication at x, in the certificate's unit.
        expanded_uncertainty: U of C (> 0), in the certificate's unit.
        coverage_factor: k (> 0) with which U was stated; u = U/k (GUM 4.3.3).
    """

    indication: float
    correction: float
    expanded_uncertainty: float
    coverage_factor: float

    @property
    def standard_uncertainty(self) -> float:
        """Standard uncertainty u = U/k of the correction, in the certificate's unit, GUM 4.3.3."""
        return self.expanded_uncertainty / self.coverage_factor

    @property
    def error(self) -> float:
        """E = indication - reference = -C, in the certificate's unit."""
        return -self.correction

    @property
    def reference(self) -> float:
        """The reference value x + C, in the certificate's unit."""
        return self.indication + self.correction


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """A calibration certificate: its identity, validity and points in normal form.

    Build one with `from_points`, which accepts the columns as printed; a directly constructed
    instance is validated the same way (points sorted strictly by indication).

    Attributes:
        certificate_id: the certificate number, e.g. ``"CAL-2026-0117"``.
        unit: unit of indications, corrections and uncertainties, e.g. ``"g"``.
        issuer: the laboratory or legal metrology institute that issued it.
        kind: ``"calibration"`` (校准, corrections are applied) or ``"verification"``
            (检定, no correction; `calibration.correct` refuses it).
        valid_from: first instant of validity (timezone-aware).
        valid_until: last instant of validity (timezone-aware), inclusive.
        points: corrections at indications, sorted by strictly increasing indication.
        point_correlation: r between the standard uncertainties of any two points,
            0 <= r <= 1; the piecewise model uses it for adjacent points (r = 1 is U
            interpolated linearly, conservative, the default), the polynomial fit for every
            pair (generalised least squares, `calibration.polynomial`).
        interpolation_u: an explicit standard uncertainty for interpolating between points,
            in `unit`, or None for the default rule |ΔC|·t(1-t)/√3 (see `calibration.models`).
    """

    certificate_id: str
    unit: str
    issuer: str
    kind: CertificateKind
    valid_from: datetime
    valid_until: datetime
    points: tuple[CalibrationPoint, ...]
    point_correlation: float = 1.0
    interpolation_u: float | None = None

    def __post_init__(self) -> None:
        _check_identity(self)
        _check_validity_dates(self)
        _check_model_parameters(self)
        if not self.points:
            raise CalibrationError(f"certificate {self.certificate_id!r} has no points")
        for point in self.points:
            _check_point_numbers(
                self.certificate_id,
                f"point at indication {point.indication!r}",
                (
                    point.indication,
                    point.correction,
                    point.expanded_uncertainty,
                    point.coverage_factor,
                ),
            )
        for lower, upper in itertools.pairwise(self.points):
            if not lower.indication < upper.indication:
                raise CalibrationError(
                    f"certificate {self.certificate_id!r}: points at indications "
                    f"{lower.indication!r} and {upper.indication!r} are not strictly "
                    "increasing (equal indications, or not sorted)"
                )

    @classmethod
    def from_points(
        cls,
        *,
        certificate_id: str,
        unit: str,
        issuer: str,
        kind: CertificateKind,
        valid_from: datetime,
        valid_until: datetime,
        abscissa: Abscissa,
        convention: Convention,
        points: Iterable[Sequence[float]],
        point_correlation: float = 1.0,
        interpolation_u: float | None = None,
    ) -> Self:
        """Build a certificate from its table of points as printed.

        Each point is (x, C or E, U, k). With ``abscissa="reference"`` x is the reference
        value and the indication is x - C (= x + E); with ``convention="error"`` the second
        column is E and C = -E (DOMAIN.md §1: E = indication - reference, C = -E).

        Args:
            certificate_id: the certificate number.
            unit: unit of every number in `points`.
            issuer: the issuing laboratory or institute.
            kind: ``"calibration"`` or ``"verification"``.
            valid_from: first instant of validity, timezone-aware.
            valid_until: last instant of validity, timezone-aware, >= `valid_from`.
            abscissa: ``"indication"`` or ``"reference"``: what x is.
            convention: ``"correction"`` or ``"error"``: what the second column is.
            points: at least one (x, C or E, U, k); finite numbers, U > 0, k > 0, distinct x.
            point_correlation: r between any two points' standard uncertainties, in [0, 1].
            interpolation_u: explicit interpolation standard uncertainty in `unit` (>= 0),
                or None for the default rule.

        Returns:
            The certificate with points as corrections at indications, sorted by indication.

        Raises:
            CalibrationError: any of the above is violated; the message names the
                certificate and the offending point.
        """
        if abscissa not in get_args(Abscissa):
            raise CalibrationError(
                f"certificate {certificate_id!r}: abscissa must be 'indication' or "
                f"'reference', got {abscissa!r}"
            )
        if convention not in get_args(Convention):
            raise CalibrationError(
                f"certificate {certificate_id!r}: convention must be 'correction' or "
                f"'error', got {convention!r}"
            )
        normal: list[CalibrationPoint] = []
        seen: dict[float, int] = {}
        for number, row in enumerate(points, start=1):
            x, value, expanded, k = _parse_row(certificate_id, number, row)
            if x in seen:
                raise CalibrationError(
                    f"certificate {certificate_id!r}: point {number} {tuple(row)!r} repeats "
                    f"the {abscissa} {x!r} of point {seen[x]}"
                )
            seen[x] = number
            correction = -value if convention == "error" else value
            indication = x - correction if abscissa == "reference" else x
            normal.append(
                CalibrationPoint(
                    indication=indication,
                    correction=correction,
                    expanded_uncertainty=expanded,
                    coverage_factor=k,
                )
            )
        normal.sort(key=lambda point: point.indication)
        try:
            r = float(point_correlation)
            u_interp = None if interpolation_u is None else float(interpolation_u)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(
                f"certificate {certificate_id!r}: point_correlation {point_correlation!r} and "
                f"interpolation_u {interpolation_u!r} must be numbers"
            ) from exc
        return cls(
            certificate_id=certificate_id,
            unit=unit,
            issuer=issuer,
            kind=kind,
            valid_from=valid_from,
            valid_until=valid_until,
            points=tuple(normal),
            point_correlation=r,
            interpolation_u=u_interp,
        )

    @property
    def calibrated_range(self) -> tuple[float, float]:
        """The closed interval (x_min, x_max) of indications covered, in `unit`.

        A single-point certificate covers only its point: (x_0, x_0).
        """
        return (self.points[0].indication, self.points[-1].indication)

    def valid_at(self, time: datetime) -> bool:
        """Return whether the certificate is valid at `time`: valid_from <= time <= valid_until.

        Args:
            time: the instant of the reading, timezone-aware.

        Raises:
            ValueError: `time` is naive (an instant needs a time zone).
        """
        if time.utcoffset() is None:
            raise ValueError(
                f"certificate {self.certificate_id!r}: valid_at needs an aware datetime, "
                f"got naive {time!r}"
            )
        return self.valid_from <= time <= self.valid_until

    def require_valid_at(self, time: datetime) -> None:
        """Raise unless the certificate is valid at `time` (see `valid_at`).

        Raises:
            CertificateExpiredError: `time` lies outside [valid_from, valid_until].
            ValueError: `time` is naive.
        """
        if not self.valid_at(time):
            raise CertificateExpiredError(
                f"certificate {self.certificate_id!r} is valid from "
                f"{self.valid_from.isoformat()} until {self.valid_until.isoformat()}, "
                f"not at {time.isoformat()}"
            )


def _parse_row(
    certificate_id: str, number: int, row: Sequence[float]
) -> tuple[float, float, float, float]:
    """Return one printed row as four floats, checked by `_check_point_numbers`."""
    try:
        values = tuple(float(item) for item in row)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(
            f"certificate {certificate_id!r}: point {number} {row!r} is not four numbers"
        ) from exc
    if len(values) != _POINT_ARITY:
        raise CalibrationError(
            f"certificate {certificate_id!r}: point {number} {tuple(row)!r} has "
            f"{len(values)} values, expected (x, C or E, U, k)"
        )
    x, value, expanded, k = values
    _check_point_numbers(certificate_id, f"point {number} {tuple(row)!r}", (x, value, expanded, k))
    return x, value, expanded, k


def _check_point_numbers(
    certificate_id: str, label: str, numbers: tuple[float, float, float, float]
) -> None:
    """Raise CalibrationError unless (x, C or E, U, k) are finite, U > 0 and k > 0."""
    x, value, expanded, k = numbers
    if not all(math.isfinite(number) for number in (x, value, expanded, k)):
        raise CalibrationError(f"certificate {certificate_id!r}: {label} has a non-finite number")
    if not expanded > 0.0:
        raise CalibrationError(
            f"certificate {certificate_id!r}: {label} has expanded uncertainty "
            f"{expanded!r}, must be > 0"
        )
    if not k > 0.0:
        raise CalibrationError(
            f"certificate {certificate_id!r}: {label} has coverage factor {k!r}, must be > 0"
        )


def _check_identity(certificate: Certificate) -> None:
    """Raise CalibrationError unless id and unit are non-empty and kind is known."""
    if not certificate.certificate_id.strip():
        raise CalibrationError(
            f"certificate id must be non-empty, got {certificate.certificate_id!r}"
        )
    if not certificate.unit.strip():
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r}: unit must be non-empty, "
            f"got {certificate.unit!r}"
        )
    if certificate.kind not in get_args(CertificateKind):
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r}: kind must be 'calibration' or "
            f"'verification', got {certificate.kind!r}"
        )


def _check_validity_dates(certificate: Certificate) -> None:
    """Raise CalibrationError unless both dates are aware and valid_from <= valid_until."""
    for name, instant in (
        ("valid_from", certificate.valid_from),
        ("valid_until", certificate.valid_until),
    ):
        if instant.utcoffset() is None:
            raise CalibrationError(
                f"certificate {certificate.certificate_id!r}: {name} {instant!r} must be "
                "timezone-aware"
            )
    if certificate.valid_from > certificate.valid_until:
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r}: valid_from "
            f"{certificate.valid_from.isoformat()} is after valid_until "
            f"{certificate.valid_until.isoformat()}"
        )


def _check_model_parameters(certificate: Certificate) -> None:
    """Raise CalibrationError unless 0 <= r <= 1 and interpolation_u is None or finite >= 0."""
    r = certificate.point_correlation
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r}: point_correlation {r!r} must be "
            "in [0, 1]"
        )
    u_interp = certificate.interpolation_u
    if u_interp is not None and not (math.isfinite(u_interp) and u_interp >= 0.0):
        raise CalibrationError(
            f"certificate {certificate.certificate_id!r}: interpolation_u {u_interp!r} must "
            "be finite and >= 0"
        )
