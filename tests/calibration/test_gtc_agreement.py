# SPDX-License-Identifier: Apache-2.0
"""`calibration.correct` against the same measurement model built in GTC (GUM Tree Calculator).

GTC propagates first-order sensitivities automatically (GUM 5.1.2, 5.2.2) and computes
Welch-Satterthwaite degrees of freedom (GUM G.4.1), so it checks our closed forms, including
the sensitivity 1 + dC/dx of the resolution and type A terms. Pinned figures are those of
DOMAIN.md §1, asserted at the precision they are stated with.
"""

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from GTC import set_correlation, ureal

from calibration import Certificate, correct
from tests.calibration.factories import (
    CASE1_POINTS,
    CASE2_DOF,
    CASE2_INDICATION,
    CASE2_INTERPOLATION_U,
    CASE2_POINTS,
    CASE2_S_MEAN,
    make_certificate,
)

RELATIVE = 1e-9
SEED = 20260117
RANDOM_CASES = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """The inputs of one corrected reading besides the certificate."""

    indication: float
    resolution: float
    type_a_u: float = 0.0
    type_a_dof: float = math.inf


def gtc_corrected(
    certificate: Certificate, reading: Reading, *, sensitivity_of_t: bool = True
) -> Any:
    """Build y = x + C(x) + δ_res + δ_interp (+ δ_A) in GTC and return the ureal y.

    With `sensitivity_of_t` False, t is frozen at its value, i.e. dC/dx is ignored and the
    resolution and type A terms get sensitivity 1 (used to explain DOMAIN.md's nu_eff).
    """
    points = certificate.points
    indications = [point.indication for point in points]
    corrections = [
        ureal(point.correction, point.standard_uncertainty, independent=False) for point in points
    ]
    if certificate.point_correlation > 0.0:
        for lower, upper in itertools.pairwise(corrections):
            set_correlation(certificate.point_correlation, lower, upper)
    x = ureal(reading.indication, reading.type_a_u, reading.type_a_dof)
    rounding = ureal(0.0, reading.resolution / (2.0 * math.sqrt(3.0)))
    true_indication = x + rounding
    if len(points) == 1:
        return true_indication + corrections[0]
    # Same segment rule as the model: the right-hand interval at an interior point.
    lower_index = min(
        max(bisect.bisect_right(indications, reading.indication) - 1, 0), len(points) - 2
    )
    x0, x1 = indications[lower_index], indications[lower_index + 1]
    c0, c1 = corrections[lower_index], corrections[lower_index + 1]
    t_value = (reading.indication - x0) / (x1 - x0)
    t = (true_indication - x0) / (x1 - x0) if sensitivity_of_t else t_value
    if certificate.interpolation_u is None:
        u_interpolation = abs(c1.x - c0.x) * t_value * (1.0 - t_value) / math.sqrt(3.0)
    elif 0.0 < t_value < 1.0:
        u_interpolation = certificate.interpolation_u
    else:
        u_interpolation = 0.0
    interpolation = ureal(0.0, u_interpolation)
    return true_indication + (1.0 - t) * c0 + t * c1 + interpolation


def assert_agrees(certificate: Certificate, reading: Reading, coverage_factor: float) -> None:
    """Assert value, u_c, U and nu_eff of `correct` equal GTC's to RELATIVE."""
    expected = gtc_corrected(certificate, reading)
    result = correct(
        reading.indication,
        certificate,
        reading.resolution,
        coverage_factor,
        type_a_u=reading.type_a_u if reading.type_a_u > 0.0 else None,
        type_a_dof=reading.type_a_dof if reading.type_a_u > 0.0 else None,
    )
    assert bool(result.in_range)
    assert float(result.value) == pytest.approx(expected.x, rel=RELATIVE)
    assert float(result.standard_uncertainty) == pytest.approx(expected.u, rel=RELATIVE)
    assert float(result.expanded_uncertainty) == pytest.approx(
        coverage_factor * expected.u, rel=RELATIVE
    )
    if math.isinf(expected.df):
        assert math.isinf(float(result.dof))
    else:
        assert float(result.dof) == pytest.approx(expected.df, rel=RELATIVE)


def case2_result(point_correlation: float) -> tuple[Any, Any]:
    """Return (ours, GTC's) for DOMAIN case 2 with the given point correlation."""
    certificate = make_certificate(
        CASE2_POINTS,
        point_correlation=point_correlation,
        interpolation_u=CASE2_INTERPOLATION_U,
    )
    reading = Reading(
        indication=CASE2_INDICATION,
        resolution=0.01,
        type_a_u=CASE2_S_MEAN,
        type_a_dof=CASE2_DOF,
    )
    ours = correct(
        CASE2_INDICATION, certificate, 0.01, 2.0, type_a_u=CASE2_S_MEAN, type_a_dof=CASE2_DOF
    )
    return ours, gtc_corrected(certificate, reading)


def test_domain_case1_single_point() -> None:
    # DOMAIN.md §1 case 1: y = 1000.1500 g, u_c = 0.040104 g, U(k=2) = 0.080208 g.
    certificate = make_certificate(CASE1_POINTS)
    result = correct(1000.00, certificate, 0.01, 2.0)
    assert float(result.value) == pytest.approx(1000.1500, abs=5e-5)
    assert float(result.standard_uncertainty) == pytest.approx(0.040104, abs=5e-7)
    assert float(result.expanded_uncertainty) == pytest.approx(0.080208, abs=5e-7)
    assert math.isinf(float(result.dof))
    assert_agrees(certificate, Reading(indication=1000.00, resolution=0.01), 2.0)


def test_domain_case2_reproduces_only_with_point_correlation_one_half() -> None:
    # FINDING: DOMAIN.md §1 does not say how the uncertainties of the two certificate points
    # combine at 750.224 g. Its u_c = 0.034176 g is reproduced only with correlation
    # r = 0.5 between the points (GTC: u_c = 0.0341755 g); independent points (r = 0) give
    # 0.029461 g and U interpolated linearly (r = 1, our default) gives 0.038314 g.
    ours, expected = case2_result(0.5)
    correction = float(ours.value) - CASE2_INDICATION
    assert correction == pytest.approx(-0.15004, abs=5e-6)  # C(x) = -0.15004 g
    assert float(ours.value) == pytest.approx(750.0740, abs=5e-5)
    assert float(ours.standard_uncertainty) == pytest.approx(0.034176, abs=5e-7)
    assert float(ours.expanded_uncertainty) == pytest.approx(0.068351, abs=5e-7)
    # DOMAIN.md states "nu_eff ≈ 8072"; the exact model gives 8078.47 (see the next test).
    assert float(ours.dof) == pytest.approx(8072, rel=1e-3)
    assert float(ours.standard_uncertainty) == pytest.approx(expected.u, rel=RELATIVE)
    assert float(ours.dof) == pytest.approx(expected.df, rel=RELATIVE)
    assert float(ours.dof) == pytest.approx(8078.47, abs=0.01)


def test_domain_case2_dof_8072_ignores_the_slope_of_the_correction() -> None:
    # FINDING: nu_eff ≈ 8072 in DOMAIN.md §1 is what one gets when the type A term enters
    # with sensitivity 1; with the exact sensitivity 1 + dC/dx = 0.9998 it is 8078.47 (u_c
    # changes by < 1e-6 relative, nu_eff by 0.08 % since it goes as (u_c/c_x u_A)^4).
    reading = Reading(
        indication=CASE2_INDICATION,
        resolution=0.01,
        type_a_u=CASE2_S_MEAN,
        type_a_dof=CASE2_DOF,
    )
    certificate = make_certificate(
        CASE2_POINTS, point_correlation=0.5, interpolation_u=CASE2_INTERPOLATION_U
    )
    unit_sensitivity = gtc_corrected(certificate, reading, sensitivity_of_t=False)
    assert unit_sensitivity.df == pytest.approx(8072, abs=0.5)
    exact = gtc_corrected(certificate, reading)
    assert exact.df == pytest.approx(8078.47, abs=0.01)
    assert exact.u == pytest.approx(unit_sensitivity.u, rel=1e-5)


@pytest.mark.parametrize(
    ("point_correlation", "standard_uncertainty"),
    [(0.0, 0.029461), (0.5, 0.034176), (1.0, 0.038314)],
)
def test_domain_case2_point_correlation_against_gtc(
    point_correlation: float, standard_uncertainty: float
) -> None:
    ours, expected = case2_result(point_correlation)
    assert float(ours.standard_uncertainty) == pytest.approx(standard_uncertainty, abs=5e-7)
    assert float(ours.value) == pytest.approx(expected.x, rel=RELATIVE)
    assert float(ours.standard_uncertainty) == pytest.approx(expected.u, rel=RELATIVE)
    assert float(ours.dof) == pytest.approx(expected.df, rel=RELATIVE)


def _random_case(
    rng: np.random.Generator,
) -> tuple[Certificate, list[Reading], float]:
    """Return a random certificate, readings inside its range and a coverage factor."""
    scale = 10.0 ** rng.uniform(-2.0, 4.0)  # unit-free: from 0.01 to 10 000
    count = int(rng.integers(1, 7))
    abscissae = np.sort(rng.choice(np.arange(0, 50), size=count, replace=False)) * scale / 10
    corrections = rng.normal(0.0, 1e-3 * scale, size=count)
    expanded = rng.uniform(1e-4, 5e-3, size=count) * scale
    factors = rng.choice([1.0, 1.65, 1.96, 2.0, 2.58, 3.0], size=count)
    correlation = float(rng.choice([0.0, 1.0, rng.uniform(0.0, 1.0)]))
    explicit = rng.uniform() < 0.3
    certificate = make_certificate(
        list(zip(abscissae, corrections, expanded, factors, strict=True)),
        point_correlation=correlation,
        interpolation_u=float(rng.uniform(0.0, 2e-3) * scale) if explicit else None,
    )
    low, high = certificate.calibrated_range
    indications = [float(rng.choice(abscissae)), float(rng.uniform(low, high))]
    if count > 1:
        indications.append(float(rng.uniform(low, high)))
    resolution = float(rng.choice([0.0, 1e-4, 1e-3, 1e-2])) * scale
    readings: list[Reading] = []
    for indication in indications:
        if rng.uniform() < 0.5:
            readings.append(
                Reading(
                    indication=indication,
                    resolution=resolution,
                    type_a_u=float(rng.uniform(1e-5, 3e-3) * scale),
                    type_a_dof=float(rng.choice([1, 2, 4, 9, 29, math.inf])),
                )
            )
        else:
            readings.append(Reading(indication=indication, resolution=resolution))
    return certificate, readings, float(rng.choice([1.0, 2.0, 2.26, 3.0]))


def test_random_cases_agree_with_gtc() -> None:
    rng = np.random.default_rng(SEED)
    checked = 0
    for _ in range(RANDOM_CASES):
        certificate, readings, coverage_factor = _random_case(rng)
        for reading in readings:
            assert_agrees(certificate, reading, coverage_factor)
            checked += 1
    assert checked > 2 * RANDOM_CASES


def test_random_arrays_agree_with_gtc_elementwise() -> None:
    # The same agreement for one vectorised call on an array with per-reading type A terms.
    rng = np.random.default_rng(SEED + 1)
    certificate = make_certificate(
        [(0.0, 0.02, 0.05, 2.0), (200.0, -0.03, 0.06, 2.0), (500.0, 0.05, 0.1, 2.0)],
        point_correlation=0.3,
    )
    indications = np.append(rng.uniform(0.0, 500.0, size=40), [0.0, 200.0, 500.0])
    type_a_u = rng.uniform(0.001, 0.02, size=indications.size)
    type_a_dof = rng.integers(1, 20, size=indications.size).astype(np.float64)
    result = correct(indications, certificate, 0.01, 2.0, type_a_u=type_a_u, type_a_dof=type_a_dof)
    for index, indication in enumerate(indications):
        expected = gtc_corrected(
            certificate,
            Reading(
                indication=float(indication),
                resolution=0.01,
                type_a_u=float(type_a_u[index]),
                type_a_dof=float(type_a_dof[index]),
            ),
        )
        assert result.value[index] == pytest.approx(expected.x, rel=RELATIVE)
        assert result.standard_uncertainty[index] == pytest.approx(expected.u, rel=RELATIVE)
        assert result.dof[index] == pytest.approx(expected.df, rel=RELATIVE)
