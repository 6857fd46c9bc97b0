# SPDX-License-Identifier: Apache-2.0
"""Polynomial, verification and composite models against the same models built in GTC.

GTC (the GUM Tree Calculator, MSL New Zealand) propagates first-order sensitivities itself
(GUM 5.1.2, 5.2.2), computes Welch-Satterthwaite nu_eff with ensembles of correlated inputs as
one input (Willink 2007), and its k_factor is scipy's stdtrit. Each model is checked on
DOMAIN.md's numbers and on at least 200 random cases, to 1e-9 relative on value, u and nu_eff
and on k = t_p(nu_eff).
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from GTC import multiple_ureal, reporting, set_correlation, ureal

from calibration import (
    COVERAGE_PROBABILITY_K2,
    Certificate,
    Component,
    MeasurementResult,
    Mpe,
    balance_mpe,
    calibrated_ratio,
    correct_polynomial,
    energy_meter_mpe,
    fit_polynomial,
    phase_error_factor,
    product,
    transformer_limits,
    transformer_mpe,
    verify,
)
from tests.calibration.factories import make_certificate

RELATIVE = 1e-9
SEED = 20260118
RANDOM_CASES = 200
SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """An indication with its resolution and optional type A term."""

    indication: float
    resolution: float
    type_a_u: float = 0.0
    type_a_dof: float = math.inf

    def gtc(self) -> Any:
        """x + δ_res as GTC inputs (the type A term carried by x itself)."""
        return ureal(self.indication, self.type_a_u, self.type_a_dof) + ureal(
            0.0, self.resolution / (2.0 * SQRT3)
        )

    def type_a(self) -> dict[str, Any]:
        """The type A keyword arguments of our functions."""
        if self.type_a_u > 0.0:
            return {"type_a_u": self.type_a_u, "type_a_dof": self.type_a_dof}
        return {"type_a_u": None, "type_a_dof": None}


def assert_agrees(result: MeasurementResult, expected: Any, index: Any = ()) -> None:
    """Assert value, u_c, nu_eff and k of one reading equal GTC's to RELATIVE."""
    assert bool(result.in_range[index])
    assert float(result.value[index]) == pytest.approx(expected.x, rel=RELATIVE)
    assert float(result.standard_uncertainty[index]) == pytest.approx(expected.u, rel=RELATIVE)
    dof = float(result.dof[index])
    if math.isinf(expected.df):
        assert math.isinf(dof)
    else:
        assert dof == pytest.approx(expected.df, rel=RELATIVE)
    if result.coverage_probability is not None and dof <= 1e5:  # GTC's k is normal above
        k = reporting.k_factor(expected.df, 100.0 * result.coverage_probability)
        assert float(result.coverage_factor[index]) == pytest.approx(k, rel=RELATIVE)


# --- polynomial ---------------------------------------------------------------------------


def gtc_polynomial(certificate: Certificate, degree: int, reading: Reading) -> Any:
    """y = x + Σ a_k t^k with â = G C, the C_i correlated ureals (r between every two).

    G comes from the normal equations with V⁻¹ taken by np.linalg.inv (not our whitening):
    G = (XᵀV⁻¹X)⁻¹XᵀV⁻¹ for r < 1, and the weighted estimator (XᵀWX)⁻¹XᵀW for r = 1 (our
    documented choice). GTC then propagates the full covariance of the C_i through G itself.
    """
    x = np.array([point.indication for point in certificate.points])
    u = np.array([point.standard_uncertainty for point in certificate.points])
    r = certificate.point_correlation
    low, high = certificate.calibrated_range
    center, scale = 0.5 * (low + high), (0.5 * (high - low) if high > low else 1.0)
    design = np.vander((x - center) / scale, degree + 1, increasing=True)
    if r < 1.0:
        correlation = np.full((x.size, x.size), r)
        np.fill_diagonal(correlation, 1.0)
        weighted = design.T @ np.linalg.inv(correlation * np.outer(u, u))
    else:
        weighted = design.T / u**2
    estimator = np.linalg.solve(weighted @ design, weighted)
    corrections = [
        ureal(point.correction, point.standard_uncertainty, independent=r == 0.0)
        for point in certificate.points
    ]
    if r > 0.0:
        for i, first in enumerate(corrections):
            for second in corrections[i + 1 :]:
                set_correlation(r, first, second)
    coefficients = [
        sum((float(m) * c for m, c in zip(row, corrections, strict=True)), start=ureal(0.0, 0.0))
        for row in estimator
    ]
    indication = reading.gtc()
    t = (indication - center) / scale
    return indication + sum((a * t**k for k, a in enumerate(coefficients)), start=ureal(0.0, 0.0))


def _random_polynomial_case(
    rng: np.random.Generator,
) -> tuple[Certificate, int, list[Reading]]:
    scale = 10.0 ** rng.uniform(-2.0, 4.0)
    count = int(rng.integers(1, 9))
    degree = int(rng.integers(0, min(3, count - 1) + 1))
    abscissae = np.sort(rng.choice(np.arange(0, 60), size=count, replace=False)) * scale / 10
    shape = rng.normal(0.0, 1e-3 * scale, size=4)
    u = rng.uniform(1e-4, 3e-3, size=count) * scale
    relative = abscissae / (6 * scale)
    corrections = shape[0] + shape[1] * relative + shape[2] * relative**2 + rng.normal(0.0, u)
    certificate = make_certificate(
        [
            (float(a), float(c), float(k * s), float(k))
            for a, c, s, k in zip(
                abscissae, corrections, u, rng.choice([1.0, 2.0, 2.58], size=count), strict=True
            )
        ],
        # A quarter independent, a quarter fully correlated (singular V), the rest between.
        point_correlation=float(rng.choice([0.0, 1.0, rng.uniform(0.0, 0.95), rng.uniform()])),
    )
    low, high = certificate.calibrated_range
    readings = []
    for indication in (float(rng.choice(abscissae)), float(rng.uniform(low, high))):
        resolution = float(rng.choice([0.0, 1e-4, 1e-3])) * scale
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
    return certificate, degree, readings


def test_random_polynomial_fits_and_corrections_agree_with_gtc() -> None:
    rng = np.random.default_rng(SEED)
    checked = 0
    correlations = []
    for _ in range(RANDOM_CASES):
        certificate, degree, readings = _random_polynomial_case(rng)
        correlations.append(certificate.point_correlation)
        fit = fit_polynomial(certificate, degree, significance=0.0)
        for reading in readings:
            result = correct_polynomial(
                reading.indication, fit, resolution=reading.resolution, **reading.type_a()
            )
            assert_agrees(result, gtc_polynomial(certificate, degree, reading))
            checked += 1
    assert checked == 2 * RANDOM_CASES
    # Independent, fully correlated (singular V) and partly correlated points all occur.
    assert min(correlations.count(0.0), correlations.count(1.0)) > RANDOM_CASES // 8
    assert sum(0.0 < r < 1.0 for r in correlations) > RANDOM_CASES // 4


def test_polynomial_arrays_agree_with_gtc_elementwise() -> None:
    certificate = make_certificate(
        [(x, 0.02 - 1e-4 * x + 2e-7 * x**2, 0.01 + 1e-5 * x, 2.0) for x in np.linspace(0, 500, 8)],
        point_correlation=0.6,
    )
    fit = fit_polynomial(certificate, 2)
    rng = np.random.default_rng(SEED + 1)
    indications = rng.uniform(0.0, 500.0, size=30)
    type_a_u = rng.uniform(0.001, 0.01, size=30)
    result = correct_polynomial(indications, fit, resolution=0.01, type_a_u=type_a_u, type_a_dof=5)
    for index, indication in enumerate(indications):
        reading = Reading(
            indication=float(indication),
            resolution=0.01,
            type_a_u=float(type_a_u[index]),
            type_a_dof=5,
        )
        assert_agrees(result, gtc_polynomial(certificate, 2, reading), index)


# --- verification -------------------------------------------------------------------------


def _random_mpe(rng: np.random.Generator, scale: float) -> Mpe:
    match int(rng.integers(0, 4)):
        case 0:
            return energy_meter_mpe(str(rng.choice(["0.2S", "0.5S", "1", "2"])))
        case 1:
            e = float(rng.choice([1e-4, 1e-3, 0.01, 0.1])) * scale
            return balance_mpe(
                str(rng.choice(["I", "II", "III", "IIII"])),
                scale_interval=e,
                in_service=bool(rng.uniform() < 0.5),
            )
        case 2:
            return transformer_mpe("current", str(rng.choice(["0.2S", "0.5S", "0.2", "0.5"])))
        case _:
            return Mpe(
                description="generic",
                percent_of_reading=float(rng.uniform(0.0, 0.5)),
                percent_of_range=float(rng.uniform(0.0, 0.1)),
                full_scale=10.0 * scale,
                absolute=float(rng.uniform(0.0, 1e-3)) * scale,
            )


def test_random_verifications_agree_with_gtc() -> None:
    rng = np.random.default_rng(SEED + 2)
    checked = 0
    while checked < RANDOM_CASES:
        scale = 10.0 ** rng.uniform(-2.0, 4.0)
        mpe = _random_mpe(rng, scale)
        indication = float(rng.uniform(-1.0, 10.0)) * scale
        limit = float(mpe.at(indication))
        if not math.isfinite(limit) or limit == 0.0:
            continue  # above a balance class's last step: flagged (tested elsewhere)
        resolution = float(rng.choice([0.0, 1e-3])) * scale
        reading = Reading(
            indication=indication,
            resolution=resolution,
            type_a_u=float(rng.choice([0.0, rng.uniform(1e-4, 1e-2)])) * scale,
            type_a_dof=float(rng.choice([1, 3, 7, 19, math.inf])),
        )
        result = verify(
            indication,
            mpe,
            unit="u",
            certificate_id="JD",
            resolution=resolution if resolution > 0.0 else None,
            **reading.type_a(),
        )
        expected = reading.gtc() + ureal(0.0, limit / SQRT3)
        assert_agrees(result, expected)
        checked += 1


# --- composite ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Shared:
    """One upstream standard feeding both transformer calibrations."""

    name: str
    u_ct: float
    u_vt: float
    dof: float


def _gtc_shared(shared: Shared | None) -> tuple[Any, Any]:
    """Two fully correlated GTC inputs for the shared standard (an ensemble if nu is finite)."""
    if shared is None:
        return ureal(0.0, 0.0), ureal(0.0, 0.0)
    if math.isinf(shared.dof):
        first = ureal(0.0, shared.u_ct, independent=False)
        second = ureal(0.0, shared.u_vt, independent=False)
    else:
        first, second = multiple_ureal([0.0, 0.0], [shared.u_ct, shared.u_vt], shared.dof)
    set_correlation(1.0, first, second)
    return first, second


def _random_ratio(
    rng: np.random.Generator,
    kind: Any,
    rated: float,
    *,
    shared: Shared | None,
    shared_u: float,
    gtc_shared: Any,
) -> tuple[MeasurementResult, Any]:
    """A verified or calibrated ratio, ours and GTC's."""
    name = "CT ratio" if kind == "current" else "VT ratio"
    if shared is None and rng.uniform() < 0.5:
        accuracy_class = str(rng.choice(["0.2S", "0.5S"] if kind == "current" else ["0.2", "0.5"]))
        load = float(rng.uniform(0.2, 1.2)) if kind == "current" else float(rng.uniform(0.8, 1.2))
        mpe = transformer_mpe(kind, accuracy_class, load=load)
        ours = verify(rated, mpe, unit="1", certificate_id=f"JD-{name}", quantity=name)
        return ours, ureal(rated, float(mpe.at(rated)) / SQRT3)
    error = float(rng.normal(0.0, 0.1))
    own_u = float(rng.uniform(0.005, 0.05))
    own_dof = float(rng.choice([3, 8, 30, math.inf]))
    components = [Component(name="own", standard_uncertainty=own_u, dof=own_dof)]
    epsilon = error + ureal(0.0, own_u, own_dof)
    if shared is not None:
        components.append(
            Component(
                name="standard", standard_uncertainty=shared_u, dof=shared.dof, source=shared.name
            )
        )
        epsilon = epsilon + gtc_shared
    ours = calibrated_ratio(
        rated,
        ratio_error_percent=error,
        components=components,
        quantity=name,
        certificate_id=f"CAL-{name}",
    )
    return ours, rated / (1.0 + epsilon / 100.0)


def test_random_composites_with_correlation_agree_with_gtc() -> None:
    rng = np.random.default_rng(SEED + 3)
    correlated = 0
    for _ in range(RANDOM_CASES):
        shared = (
            Shared(
                name="test set",
                u_ct=float(rng.uniform(0.005, 0.03)),
                u_vt=float(rng.uniform(0.005, 0.03)),
                dof=float(rng.choice([5, math.inf])),
            )
            if rng.uniform() < 0.6
            else None
        )
        gtc_ct_shared, gtc_vt_shared = _gtc_shared(shared)
        ct, gtc_ct = _random_ratio(
            rng,
            "current",
            float(rng.choice([20.0, 40.0, 300.0])),
            shared=shared,
            shared_u=shared.u_ct if shared else 0.0,
            gtc_shared=gtc_ct_shared,
        )
        vt, gtc_vt = _random_ratio(
            rng,
            "voltage",
            float(rng.choice([35.0, 100.0, 1100.0])),
            shared=shared,
            shared_u=shared.u_vt if shared else 0.0,
            gtc_shared=gtc_vt_shared,
        )
        indication = float(rng.uniform(1.0, 1e4))
        meter_mpe = energy_meter_mpe(str(rng.choice(["0.2S", "0.5S", "1", "2"])))
        reading = Reading(
            indication=indication,
            resolution=0.0,
            type_a_u=float(rng.choice([0.0, rng.uniform(1e-4, 5e-3)])) * indication,
            type_a_dof=float(rng.choice([2, 9, math.inf])),
        )
        meter = verify(
            indication,
            meter_mpe,
            unit="kWh",
            certificate_id="JD-M",
            quantity="meter",
            **reading.type_a(),
        )
        gtc_meter = ureal(indication, reading.type_a_u, reading.type_a_dof) + ureal(
            0.0, float(meter_mpe.at(indication)) / SQRT3
        )
        factors = [meter, ct, vt]
        expected = gtc_meter * gtc_ct * gtc_vt
        if rng.uniform() < 0.3:
            power_factor = float(rng.uniform(0.5, 1.0))
            factors.append(
                phase_error_factor(
                    power_factor, current_phase_mpe_min=10.0, voltage_phase_mpe_min=20.0
                )
            )
            tangent = math.sqrt(1.0 - power_factor**2) / power_factor
            phase = (ureal(0.0, 10.0 / SQRT3) - ureal(0.0, 20.0 / SQRT3)) * tangent
            expected = expected * (1.0 + phase * math.pi / 10800.0)
        result = product(factors, quantity="energy", unit="kWh")
        assert_agrees(result, expected)
        correlated += shared is not None
    assert correlated > RANDOM_CASES // 3


def test_domain_case3_in_gtc() -> None:
    # DOMAIN.md §1 case 3, under the assumptions pinned in test_composite.
    ct_ratio, vt_ratio = 40.0, 100.0
    indication = 125_000.0 / (ct_ratio * vt_ratio)
    meter = ureal(indication, 0.005 * indication / SQRT3)
    ct = ureal(ct_ratio, 0.002 * ct_ratio / SQRT3)
    vt = ureal(vt_ratio, 0.002 * vt_ratio / SQRT3)
    expected = meter * ct * vt
    ours = product(
        [
            verify(
                indication,
                energy_meter_mpe("0.5S"),
                unit="kWh",
                certificate_id="M",
                quantity="meter",
            ),
            verify(
                ct_ratio,
                transformer_mpe("current", "0.2S"),
                unit="1",
                certificate_id="C",
                quantity="CT",
            ),
            verify(
                vt_ratio,
                transformer_mpe("voltage", "0.2"),
                unit="1",
                certificate_id="V",
                quantity="VT",
            ),
        ],
        quantity="energy",
        unit="kWh",
    )
    assert_agrees(ours, expected)
    assert expected.u == pytest.approx(414.578, abs=1e-3)
    assert reporting.k_factor(expected.df, 100 * COVERAGE_PROBABILITY_K2) == pytest.approx(2.0)
    assert transformer_limits("current", "0.2S") == (0.2, 10.0)
