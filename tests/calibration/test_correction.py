# SPDX-License-Identifier: Apache-2.0
"""`calibration.correct`: conventions, range flags, shapes, arguments, properties and speed."""

import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calibration import (
    CalibrationError,
    Certificate,
    OutOfRangeError,
    correct,
    require_in_range,
)
from tests.calibration.factories import CASE2_POINTS, make_certificate

# Corrections and abscissae exactly representable in binary, so that every printed form
# below converts to bit-identical points and results can be compared with ==.
NORMAL_POINTS = [(100.0, 0.5, 0.2, 2.0), (200.0, -0.25, 0.2, 2.0), (400.0, 0.125, 0.3, 2.0)]
PRINTED_FORMS = {
    ("indication", "correction"): NORMAL_POINTS,
    ("indication", "error"): [(x, -c, u, k) for x, c, u, k in NORMAL_POINTS],
    ("reference", "correction"): [(x + c, c, u, k) for x, c, u, k in NORMAL_POINTS],
    ("reference", "error"): [(x + c, -c, u, k) for x, c, u, k in NORMAL_POINTS],
}
INDICATIONS = np.array([100.0, 137.5, 150.0, 200.0, 250.0, 399.9, 400.0])


def assert_same_result(first: Any, second: Any) -> None:
    for name in ("value", "standard_uncertainty", "expanded_uncertainty", "dof", "in_range"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


@pytest.mark.parametrize(("abscissa", "convention"), list(PRINTED_FORMS))
def test_every_printed_form_gives_the_same_corrected_values(
    abscissa: Any, convention: Any
) -> None:
    reference = make_certificate(NORMAL_POINTS)
    printed = make_certificate(
        PRINTED_FORMS[(abscissa, convention)], abscissa=abscissa, convention=convention
    )
    assert printed.points == reference.points
    assert_same_result(
        correct(INDICATIONS, printed, 0.01, type_a_u=0.02, type_a_dof=9),
        correct(INDICATIONS, reference, 0.01, type_a_u=0.02, type_a_dof=9),
    )


@pytest.mark.parametrize(("abscissa", "convention"), list(PRINTED_FORMS))
def test_printed_forms_of_domain_case2_agree(abscissa: Any, convention: Any) -> None:
    # Not exactly representable: agreement to rounding of reference - C.
    points = [
        (x + (c if abscissa == "reference" else 0.0), -c if convention == "error" else c, u, k)
        for x, c, u, k in CASE2_POINTS
    ]
    printed = make_certificate(points, abscissa=abscissa, convention=convention)
    expected = correct(INDICATIONS * 3.0, make_certificate(CASE2_POINTS), 0.01)
    result = correct(INDICATIONS * 3.0, printed, 0.01)
    np.testing.assert_allclose(result.value, expected.value, rtol=1e-15, atol=1e-12)
    np.testing.assert_allclose(result.standard_uncertainty, expected.standard_uncertainty)


def test_at_points_the_correction_and_its_uncertainty_are_the_certificate_s() -> None:
    # At a point t is 0 or 1: no interpolation term, not even an explicit one.
    certificate = make_certificate(NORMAL_POINTS, interpolation_u=0.05)
    at_points = np.array([100.0, 200.0, 400.0])
    result = correct(at_points, certificate, 0.0)
    np.testing.assert_array_equal(result.value, [100.5, 199.75, 400.125])
    np.testing.assert_allclose(result.standard_uncertainty, [0.1, 0.1, 0.15], rtol=1e-15)
    np.testing.assert_array_equal(result.contributions["interpolation"], 0.0)
    assert result.in_range.all()
    assert np.isinf(result.dof).all()


def test_endpoints_are_in_range_and_beyond_is_flagged() -> None:
    certificate = make_certificate(NORMAL_POINTS)
    low, high = certificate.calibrated_range
    indications = np.array(
        [np.nextafter(low, -np.inf), low, high, np.nextafter(high, np.inf), -1e300, 1e300]
    )
    result = correct(indications, certificate, 0.01)
    np.testing.assert_array_equal(result.in_range, [False, True, True, False, False, False])


def test_out_of_range_readings_keep_their_indication_and_get_nan_uncertainty() -> None:
    certificate = make_certificate(NORMAL_POINTS)
    indications = np.array([99.99, 400.01, -np.inf, np.inf, np.nan, 250.0])
    result = correct(indications, certificate, 0.01, type_a_u=0.01, type_a_dof=4)
    outside = np.array([True, True, True, True, True, False])
    np.testing.assert_array_equal(result.in_range, ~outside)
    np.testing.assert_array_equal(
        result.value[outside], indications[outside]
    )  # never extrapolated
    for quantity in (
        result.standard_uncertainty,
        result.expanded_uncertainty,
        result.dof,
        *result.contributions.values(),
    ):
        assert np.isnan(quantity[outside]).all()
        assert np.isfinite(quantity[~outside]).all()


def test_single_point_certificate_covers_only_its_point() -> None:
    certificate = make_certificate([(1000.0, 0.15, 0.08, 2.0)], interpolation_u=0.5)
    assert certificate.calibrated_range == (1000.0, 1000.0)
    result = correct([999.99, 1000.0, 1000.01], certificate, 0.01)
    np.testing.assert_array_equal(result.in_range, [False, True, False])
    np.testing.assert_array_equal(result.value, [999.99, 1000.15, 1000.01])
    assert result.contributions["interpolation"][1] == 0.0


@pytest.mark.parametrize(
    "indication",
    [750.0, np.float64(750.0), np.linspace(500.0, 1000.0, 7), np.full((2, 3), 800.0), [[600.0]]],
    ids=["float", "numpy-scalar", "1-D", "2-D", "nested-list"],
)
def test_shape_is_preserved(indication: npt.ArrayLike) -> None:
    shape = np.shape(indication)
    result = correct(indication, make_certificate(), 0.01, type_a_u=0.001, type_a_dof=5)
    arrays = [
        result.value,
        result.standard_uncertainty,
        result.expanded_uncertainty,
        result.dof,
        result.in_range,
        *result.contributions.values(),
    ]
    for array in arrays:
        assert isinstance(array, np.ndarray)
        assert array.shape == shape
    assert result.value.dtype == np.float64
    assert result.in_range.dtype == np.bool_
    assert result.unit == "g"
    assert result.certificate_id == "CAL-2026-0117"


def test_per_reading_resolution_and_type_a_broadcast() -> None:
    indications = np.array([[600.0, 700.0], [800.0, 900.0]])
    result = correct(
        indications, make_certificate(), [0.01, 0.1], type_a_u=0.01, type_a_dof=[4, 9]
    )
    assert result.dof.shape == (2, 2)
    assert result.contributions["resolution"][0, 1] > result.contributions["resolution"][0, 0]
    assert result.dof[0, 0] < result.dof[0, 1]


def test_results_are_read_only() -> None:
    result = correct(np.array([600.0, 700.0]), make_certificate(), 0.01)
    with pytest.raises(ValueError, match="read-only"):
        result.value[0] = 0.0
    with pytest.raises(TypeError):
        result.contributions["resolution"] = result.value  # type: ignore[index]  # the point


def test_contributions_add_in_quadrature_to_the_combined_uncertainty() -> None:
    indications = np.linspace(500.0, 1000.0, 101)
    certificate = make_certificate(point_correlation=0.3)
    result = correct(indications, certificate, 0.01, 2.5, type_a_u=0.004, type_a_dof=3)
    squares = sum(np.square(part) for part in result.contributions.values())
    np.testing.assert_allclose(np.sqrt(squares), result.standard_uncertainty, rtol=1e-14)
    np.testing.assert_allclose(result.expanded_uncertainty, 2.5 * result.standard_uncertainty)
    assert result.coverage_factor == 2.5


def test_default_interpolation_rule_is_zero_at_points_and_quarter_delta_c_mid_interval() -> None:
    # Rectangular with half-width |ΔC|·t(1-t): |ΔC|/4 at t = 1/2, so u = |ΔC|/(4√3).
    result = correct([500.0, 750.0, 1000.0], make_certificate(CASE2_POINTS), 0.01)
    np.testing.assert_allclose(
        result.contributions["interpolation"], [0.0, 0.1 / (4 * math.sqrt(3)), 0.0], atol=1e-18
    )


@pytest.mark.parametrize(
    ("correlation", "expected"),
    [
        # u_C at t = 1/2 with u_i = 0.03 g and u_{i+1} = 0.04 g (GUM 5.2.2 eq. (13)).
        (0.0, math.sqrt(0.25 * 0.03**2 + 0.25 * 0.04**2)),
        (0.5, math.sqrt(0.25 * 0.03**2 + 0.25 * 0.04**2 + 0.25 * 0.03 * 0.04)),
        (1.0, 0.035),  # U interpolated linearly: (0.06 + 0.08)/2 / 2
    ],
)
def test_certificate_term_follows_the_point_correlation(
    correlation: float, expected: float
) -> None:
    certificate = make_certificate(point_correlation=correlation)
    result = correct(750.0, certificate, 0.0)
    assert float(result.contributions["certificate"]) == pytest.approx(expected, rel=1e-14)


def test_without_type_a_the_effective_dof_is_infinite() -> None:
    result = correct([600.0, 700.0], make_certificate(), 0.01)
    assert np.isinf(result.dof).all()
    with_zero_type_a = correct([600.0, 700.0], make_certificate(), 0.01, type_a_u=0.0)
    assert np.isinf(with_zero_type_a.dof).all()


def test_verification_certificates_are_not_applied() -> None:
    certificate = make_certificate(kind="verification")
    with pytest.raises(CalibrationError, match=r"CAL-2026-0117.*verification"):
        correct(750.0, certificate, 0.01)


def test_an_in_house_calibration_corrects_like_an_external_one() -> None:
    # 自校 (in-house calibration) states corrections like any calibration certificate.
    in_house = correct([600.0, 750.0], make_certificate(kind="in-house"), 0.01)
    external = correct([600.0, 750.0], make_certificate(), 0.01)
    np.testing.assert_array_equal(in_house.value, external.value)
    np.testing.assert_array_equal(in_house.standard_uncertainty, external.standard_uncertainty)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"resolution": -0.01}, "resolution"),
        ({"resolution": math.nan}, "resolution"),
        ({"resolution": [0.01, 0.01, 0.01]}, "broadcast"),
        ({"coverage_factor": 0.0}, "coverage_factor"),
        ({"coverage_factor": math.inf}, "coverage_factor"),
        ({"type_a_dof": 4}, "without type_a_u"),
        ({"type_a_u": -0.001}, "type_a_u"),
        ({"type_a_u": math.nan}, "type_a_u"),
        ({"type_a_u": 0.001, "type_a_dof": 0}, "type_a_dof"),
        ({"type_a_u": 0.001, "type_a_dof": math.nan}, "type_a_dof"),
    ],
)
def test_invalid_arguments_raise_plain_value_error(
    arguments: dict[str, Any], message: str
) -> None:
    call: dict[str, Any] = {"resolution": 0.01, **arguments}
    with pytest.raises(ValueError, match=message) as excinfo:
        correct([600.0, 700.0], make_certificate(), **call)
    assert not isinstance(excinfo.value, CalibrationError)


def test_require_in_range() -> None:
    certificate = make_certificate()
    require_in_range([500.0, 750.0, 1000.0], certificate)
    with pytest.raises(OutOfRangeError, match=r"CAL-2026-0117.*1000\.5 g is outside \(2 of 3"):
        require_in_range([1000.5, 750.0, np.nan], certificate)


def test_one_million_readings_in_well_under_a_second() -> None:
    certificate = make_certificate(
        [(float(x), 0.001 * x, 0.05, 2.0) for x in range(0, 1001, 50)], point_correlation=0.5
    )
    indications = np.random.default_rng(7).uniform(-10.0, 1010.0, size=1_000_000)
    correct(indications[:1000], certificate, 0.01)  # warm up
    started = time.perf_counter()
    result = correct(indications, certificate, 0.01, type_a_u=0.003, type_a_dof=9)
    elapsed = time.perf_counter() - started
    assert result.value.shape == (1_000_000,)
    assert elapsed < 1.0, f"{elapsed:.3f} s"


@st.composite
def certificates(draw: st.DrawFn) -> Certificate:
    """Certificates of 1 to 6 points with corrections small against their spacing."""
    abscissae = draw(
        st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=6, unique=True)
    )
    correction = st.floats(min_value=-0.5, max_value=0.5)
    points = [
        (
            float(x),
            draw(correction),
            draw(st.floats(min_value=1e-6, max_value=1.0)),
            draw(st.sampled_from([1.0, 2.0, 3.0])),
        )
        for x in abscissae
    ]
    return make_certificate(
        points,
        point_correlation=draw(st.floats(min_value=0.0, max_value=1.0)),
        interpolation_u=draw(st.none() | st.floats(min_value=0.0, max_value=1.0)),
    )


@given(
    certificate=certificates(),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20),
    resolution=st.floats(min_value=0.0, max_value=1.0),
    type_a_u=st.none() | st.floats(min_value=0.0, max_value=1.0),
)
def test_inside_the_range_u_covers_resolution_and_value_stays_between_the_corrections(
    certificate: Certificate,
    fractions: list[float],
    resolution: float,
    type_a_u: float | None,
) -> None:
    low, high = certificate.calibrated_range
    indications = np.clip(low + np.array(fractions) * (high - low), low, high)
    result = correct(indications, certificate, resolution, type_a_u=type_a_u)
    corrections = [point.correction for point in certificate.points]
    assert result.in_range.all()
    assert (result.standard_uncertainty >= result.contributions["resolution"]).all()
    assert (result.dof > 0).all()
    slack = 1e-12 * (np.abs(indications) + 1.0)
    assert (result.value >= indications + min(corrections) - slack).all()
    assert (result.value <= indications + max(corrections) + slack).all()
