# SPDX-License-Identifier: Apache-2.0
"""Certificates: normal form of the points, validity dates, validation of what is printed."""

import dataclasses
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from calibration import (
    BrokenChainError,
    CalibrationError,
    CalibrationPoint,
    Certificate,
    CertificateExpiredError,
    OutOfRangeError,
)
from tests.calibration.factories import VALID_FROM, VALID_UNTIL, make_certificate

ID = "CAL-2026-0117"
MICROSECOND = timedelta(microseconds=1)


def test_error_tree() -> None:
    for error in (OutOfRangeError, CertificateExpiredError, BrokenChainError):
        assert issubclass(error, CalibrationError)
    assert issubclass(CalibrationError, ValueError)


def test_points_are_stored_sorted_by_indication() -> None:
    certificate = make_certificate([(1000.0, -0.2, 0.08, 2.0), (500.0, -0.1, 0.06, 2.0)])
    assert [point.indication for point in certificate.points] == [500.0, 1000.0]
    assert certificate.points[0] == CalibrationPoint(
        indication=500.0, correction=-0.1, expanded_uncertainty=0.06, coverage_factor=2.0
    )
    assert certificate.calibrated_range == (500.0, 1000.0)


@pytest.mark.parametrize(
    ("abscissa", "convention", "printed", "indication", "correction"),
    [
        ("indication", "correction", (500.0, -0.1), 500.0, -0.1),
        ("indication", "error", (500.0, 0.1), 500.0, -0.1),
        # The reference 500 g is indicated as 500.1 g: indication = reference - C = ref + E.
        ("reference", "correction", (500.0, -0.1), 500.1, -0.1),
        ("reference", "error", (500.0, 0.1), 500.1, -0.1),
    ],
)
def test_printed_columns_become_corrections_at_indications(
    abscissa: Any,
    convention: Any,
    printed: tuple[float, float],
    indication: float,
    correction: float,
) -> None:
    certificate = make_certificate(
        [(*printed, 0.06, 2.0)], abscissa=abscissa, convention=convention
    )
    (point,) = certificate.points
    assert point.indication == pytest.approx(indication, abs=1e-12)
    assert point.correction == correction
    assert point.error == -correction
    assert point.reference == pytest.approx(printed[0] if abscissa == "reference" else 500.0 - 0.1)
    assert certificate.calibrated_range == (point.indication, point.indication)


def test_calibration_point_standard_uncertainty_is_u_over_k() -> None:
    point = CalibrationPoint(
        indication=1.0, correction=0.0, expanded_uncertainty=0.06, coverage_factor=3.0
    )
    assert point.standard_uncertainty == pytest.approx(0.02)


def test_values_are_frozen_slotted_and_comparable() -> None:
    certificate = make_certificate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        certificate.unit = "kg"  # type: ignore[misc]  # the point of the test
    assert not hasattr(certificate, "__dict__")
    assert not hasattr(certificate.points[0], "__dict__")
    assert certificate == make_certificate()
    assert hash(certificate) == hash(make_certificate())


@pytest.mark.parametrize(
    ("time", "valid"),
    [
        (VALID_FROM - MICROSECOND, False),
        (VALID_FROM, True),
        (VALID_FROM + timedelta(days=100), True),
        (VALID_UNTIL, True),
        (VALID_UNTIL + MICROSECOND, False),
        # The same instants written in Beijing time (UTC+8).
        (VALID_UNTIL.astimezone(timezone(timedelta(hours=8))), True),
        ((VALID_FROM - MICROSECOND).astimezone(timezone(timedelta(hours=8))), False),
    ],
)
def test_valid_at_boundaries(time: datetime, *, valid: bool) -> None:
    certificate = make_certificate()
    assert certificate.valid_at(time) is valid
    if valid:
        certificate.require_valid_at(time)
    else:
        with pytest.raises(CertificateExpiredError, match=ID):
            certificate.require_valid_at(time)


def test_valid_at_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive") as excinfo:
        make_certificate().valid_at(datetime(2026, 6, 1))  # noqa: DTZ001  # the point of the test
    assert not isinstance(excinfo.value, CalibrationError)


def test_a_certificate_valid_for_one_instant() -> None:
    certificate = make_certificate(valid_from=VALID_FROM, valid_until=VALID_FROM)
    assert certificate.valid_at(VALID_FROM)
    assert not certificate.valid_at(VALID_FROM + MICROSECOND)


GOOD = (500.0, -0.1, 0.06, 2.0)

INVALID_POINTS: list[tuple[str, Sequence[Sequence[Any]], str]] = [
    ("no points", [], "no points"),
    ("non-finite x", [GOOD, (math.nan, 0.0, 0.06, 2.0)], r"point 2 \(nan"),
    ("non-finite correction", [(1.0, math.inf, 0.06, 2.0)], r"point 1 .*non-finite"),
    ("zero U", [GOOD, (1000.0, 0.0, 0.0, 2.0)], r"point 2 .*expanded uncertainty 0\.0"),
    ("negative U", [(1000.0, 0.0, -0.1, 2.0)], r"point 1 .*must be > 0"),
    ("zero k", [(1000.0, 0.0, 0.1, 0.0)], r"point 1 .*coverage factor 0\.0"),
    ("repeated x", [GOOD, (500.0, -0.2, 0.08, 2.0)], r"point 2 .*point 1"),
    ("three values", [(500.0, -0.1, 0.06)], r"point 1 .*3 values"),
    ("five values", [(500.0, -0.1, 0.06, 2.0, 1.0)], r"point 1 .*5 values"),
    ("not numbers", [("500 g", -0.1, 0.06, 2.0)], r"point 1 .*not four numbers"),
]


@pytest.mark.parametrize(
    ("points", "message"),
    [pytest.param(points, message, id=case) for case, points, message in INVALID_POINTS],
)
def test_from_points_rejects_invalid_points(
    points: Sequence[Sequence[float]], message: str
) -> None:
    with pytest.raises(CalibrationError, match=message) as excinfo:
        make_certificate(points)
    assert ID in str(excinfo.value)


def test_reference_points_that_collapse_to_one_indication_are_rejected() -> None:
    # References 10 and 11 with corrections 0 and 1 are both indicated as 10.
    with pytest.raises(CalibrationError, match=rf"{ID}.*10\.0 and 10\.0"):
        make_certificate([(10.0, 0.0, 0.1, 2.0), (11.0, 1.0, 0.1, 2.0)], abscissa="reference")


INVALID_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("empty unit", {"unit": " "}, "unit must be non-empty"),
    ("bad kind", {"kind": "adjustment"}, "kind must be"),
    ("bad abscissa", {"abscissa": "nominal"}, "abscissa must be"),
    ("bad convention", {"convention": "deviation"}, "convention must be"),
    ("r below 0", {"point_correlation": -0.1}, "point_correlation -0.1"),
    ("r above 1", {"point_correlation": 1.5}, "point_correlation 1.5"),
    ("r NaN", {"point_correlation": math.nan}, "point_correlation nan"),
    ("r not a number", {"point_correlation": "high"}, "must be numbers"),
    ("negative interpolation u", {"interpolation_u": -0.01}, "interpolation_u -0.01"),
    ("infinite interpolation u", {"interpolation_u": math.inf}, "interpolation_u inf"),
    ("dates reversed", {"valid_from": VALID_UNTIL, "valid_until": VALID_FROM}, "is after"),
    (
        "naive valid_from",
        {"valid_from": datetime(2026, 1, 10)},  # noqa: DTZ001  # the point of the test
        "valid_from .* timezone-aware",
    ),
    (
        "naive valid_until",
        {"valid_until": datetime(2027, 1, 9)},  # noqa: DTZ001  # the point of the test
        "valid_until .* timezone-aware",
    ),
]


@pytest.mark.parametrize(
    ("fields", "message"),
    [pytest.param(fields, message, id=case) for case, fields, message in INVALID_FIELDS],
)
def test_from_points_rejects_invalid_fields(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message) as excinfo:
        make_certificate(**fields)
    assert ID in str(excinfo.value)


def test_empty_certificate_id_is_rejected() -> None:
    with pytest.raises(CalibrationError, match="certificate id must be non-empty"):
        make_certificate(certificate_id="")


def test_direct_construction_is_validated_too() -> None:
    lower = CalibrationPoint(
        indication=500.0, correction=-0.1, expanded_uncertainty=0.06, coverage_factor=2.0
    )
    upper = CalibrationPoint(
        indication=1000.0, correction=-0.2, expanded_uncertainty=0.08, coverage_factor=2.0
    )
    fields: dict[str, Any] = {
        "certificate_id": ID,
        "unit": "g",
        "issuer": "Provincial Institute of Metrology",
        "kind": "calibration",
        "valid_from": VALID_FROM,
        "valid_until": VALID_UNTIL,
    }
    assert Certificate(points=(lower, upper), **fields).calibrated_range == (500.0, 1000.0)
    with pytest.raises(CalibrationError, match=rf"{ID}.*not strictly increasing"):
        Certificate(points=(upper, lower), **fields)
    broken = dataclasses.replace(upper, coverage_factor=-2.0)
    with pytest.raises(CalibrationError, match=rf"{ID}': point at indication 1000\.0"):
        Certificate(points=(lower, broken), **fields)


def test_validity_dates_may_be_in_any_time_zone() -> None:
    beijing = timezone(timedelta(hours=8))
    certificate = make_certificate(
        valid_from=datetime(2026, 1, 10, 8, tzinfo=beijing),
        valid_until=datetime(2027, 1, 9, tzinfo=UTC),
    )
    assert certificate.valid_at(datetime(2026, 1, 10, tzinfo=UTC))
    assert not certificate.valid_at(datetime(2026, 1, 10, tzinfo=UTC) - MICROSECOND)
