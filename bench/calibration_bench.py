# SPDX-License-Identifier: Apache-2.0
"""Benchmark: correcting a million readings with their uncertainty in one vectorised call.

Run:  .venv/bin/python bench/calibration_bench.py [--readings 1000000] [--gtc-readings 2000]

For each model (piecewise `correct`, its `correct_piecewise` form with named terms,
`correct_polynomial`, `verify`, and a meter · CT · VT `product`) it times one call on
--readings indications (best of --repeat), with k fixed at 2 and with k = t_p(nu_eff) per
reading, and times the same model built reading by reading in GTC (the GUM Tree Calculator)
on --gtc-readings indications, extrapolated to --readings ("k = t" includes GTC's k_factor).
Every reading carries a type A term (s = 0.003 g, nu = 9); nu_eff then differs from reading to
reading but stays large, where t_p(nu) is a short series. The "scattered" row is the worst
case: a type A term of its own per reading (nu 2 to 9), so one t-quantile solve per reading.
"""

import argparse
import itertools
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from GTC import reporting, set_correlation, ureal

from calibration import (
    COVERAGE_PROBABILITY_K2,
    Certificate,
    balance_mpe,
    correct,
    correct_piecewise,
    correct_polynomial,
    energy_meter_mpe,
    fit_polynomial,
    product,
    transformer_mpe,
    verify,
)

RESOLUTION = 0.01  # g
TYPE_A_U = 0.003  # g
TYPE_A_DOF = 9.0
SQRT3 = math.sqrt(3.0)


def _certificate() -> Certificate:
    return Certificate.from_points(
        certificate_id="CAL-BENCH",
        unit="g",
        issuer="bench",
        kind="calibration",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        valid_until=datetime(2036, 1, 1, tzinfo=UTC),
        abscissa="indication",
        convention="correction",
        points=[
            (float(x), -2e-4 * x + 4e-8 * x**2, 0.02 + 4e-5 * x, 2.0) for x in range(0, 2001, 200)
        ],
        point_correlation=0.5,
    )


def _best(call: Callable[[], object], repeat: int) -> float:
    call()  # warm up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def _gtc_piecewise(certificate: Certificate, indications: np.ndarray) -> None:
    points = certificate.points
    abscissae = [point.indication for point in points]
    corrections = [ureal(p.correction, p.standard_uncertainty, independent=False) for p in points]
    for lower, upper in itertools.pairwise(corrections):
        set_correlation(certificate.point_correlation, lower, upper)
    for indication in indications:
        i = min(
            max(int(np.searchsorted(abscissae, indication, side="right")) - 1, 0), len(points) - 2
        )
        x0, x1 = abscissae[i], abscissae[i + 1]
        c0, c1 = corrections[i], corrections[i + 1]
        x = ureal(float(indication), TYPE_A_U, TYPE_A_DOF) + ureal(0.0, RESOLUTION / (2 * SQRT3))
        t = (x - x0) / (x1 - x0)
        t_value = (float(indication) - x0) / (x1 - x0)
        interpolation = ureal(0.0, abs(c1.x - c0.x) * t_value * (1 - t_value) / SQRT3)
        y = x + (1 - t) * c0 + t * c1 + interpolation
        _ = (y.x, y.u, reporting.k_factor(y.df, 100 * COVERAGE_PROBABILITY_K2))


def _gtc_polynomial(certificate: Certificate, degree: int, indications: np.ndarray) -> None:
    fit = fit_polynomial(certificate, degree, significance=0.0)
    coefficients = [ureal(a, 0.0, independent=False) for a in fit.coefficients]
    # The fitted coefficients as correlated inputs with the fit's covariance.
    coefficients = [
        ureal(a, math.sqrt(fit.covariance[k][k]), independent=False)
        for k, a in enumerate(fit.coefficients)
    ]
    for j, first in enumerate(coefficients):
        for k in range(j + 1, len(coefficients)):
            r = fit.covariance[j][k] / (first.u * coefficients[k].u)
            set_correlation(r, first, coefficients[k])
    for indication in indications:
        x = ureal(float(indication), TYPE_A_U, TYPE_A_DOF) + ureal(0.0, RESOLUTION / (2 * SQRT3))
        t = (x - fit.center) / fit.scale
        y = x + sum((a * t**k for k, a in enumerate(coefficients)), start=ureal(0.0, 0.0))
        _ = (y.x, y.u, reporting.k_factor(y.df, 100 * COVERAGE_PROBABILITY_K2))


def _gtc_verification(indications: np.ndarray) -> None:
    mpe = balance_mpe("II", scale_interval=0.1, capacity=2200.0)
    for indication in indications:
        limit = float(mpe.at(float(indication)))
        y = ureal(float(indication), TYPE_A_U, TYPE_A_DOF) + ureal(0.0, limit / SQRT3)
        _ = (y.x, y.u, reporting.k_factor(y.df, 100 * COVERAGE_PROBABILITY_K2))


def _gtc_composite(indications: np.ndarray) -> None:
    ct = ureal(40.0, 0.002 * 40.0 / SQRT3)
    vt = ureal(100.0, 0.002 * 100.0 / SQRT3)
    for indication in indications:
        meter = ureal(float(indication), TYPE_A_U, TYPE_A_DOF) + ureal(
            0.0, 0.005 * float(indication) / SQRT3
        )
        y = meter * ct * vt
        _ = (y.x, y.u, reporting.k_factor(y.df, 100 * COVERAGE_PROBABILITY_K2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--gtc-readings", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    count = arguments.readings
    rng = np.random.default_rng(20260117)
    indications = rng.uniform(0.0, 2000.0, size=count)
    sample = indications[: arguments.gtc_readings]
    certificate = _certificate()
    fit = fit_polynomial(certificate, 2, significance=0.0)
    meter_mpe = energy_meter_mpe("0.5S")
    balance = balance_mpe("II", scale_interval=0.1, capacity=2200.0)
    ct = verify(
        40.0, transformer_mpe("current", "0.2S"), unit="1", certificate_id="C", quantity="CT"
    )
    vt = verify(
        100.0, transformer_mpe("voltage", "0.2"), unit="1", certificate_id="V", quantity="VT"
    )
    # Worst case for k = t_p(nu_eff): small, different nu_eff for every reading.
    scattered_u = rng.uniform(0.02, 0.2, size=count)
    scattered_dof = rng.integers(2, 10, size=count).astype(np.float64)

    def composite(k: float | None) -> object:
        meter = verify(
            indications,
            meter_mpe,
            unit="kWh",
            certificate_id="M",
            quantity="meter",
            type_a_u=TYPE_A_U,
            type_a_dof=TYPE_A_DOF,
        )
        return product([meter, ct, vt], quantity="energy", unit="kWh", coverage_factor=k)

    cases: list[
        tuple[str, Callable[[], object], Callable[[], object] | None, Callable[[], None]]
    ] = [
        (
            "piecewise correct (k = 2)",
            lambda: correct(
                indications, certificate, RESOLUTION, type_a_u=TYPE_A_U, type_a_dof=TYPE_A_DOF
            ),
            None,
            lambda: _gtc_piecewise(certificate, sample),
        ),
        (
            "piecewise correct_piecewise",
            lambda: correct_piecewise(
                indications,
                certificate,
                RESOLUTION,
                coverage_factor=2.0,
                type_a_u=TYPE_A_U,
                type_a_dof=TYPE_A_DOF,
            ),
            lambda: correct_piecewise(
                indications, certificate, RESOLUTION, type_a_u=TYPE_A_U, type_a_dof=TYPE_A_DOF
            ),
            lambda: _gtc_piecewise(certificate, sample),
        ),
        (
            "polynomial, degree 2",
            lambda: correct_polynomial(
                indications,
                fit,
                resolution=RESOLUTION,
                coverage_factor=2.0,
                type_a_u=TYPE_A_U,
                type_a_dof=TYPE_A_DOF,
            ),
            lambda: correct_polynomial(
                indications, fit, resolution=RESOLUTION, type_a_u=TYPE_A_U, type_a_dof=TYPE_A_DOF
            ),
            lambda: _gtc_polynomial(certificate, 2, sample),
        ),
        (
            "verification, balance class II",
            lambda: verify(
                indications,
                balance,
                unit="g",
                certificate_id="J",
                coverage_factor=2.0,
                type_a_u=TYPE_A_U,
                type_a_dof=TYPE_A_DOF,
            ),
            lambda: verify(
                indications,
                balance,
                unit="g",
                certificate_id="J",
                type_a_u=TYPE_A_U,
                type_a_dof=TYPE_A_DOF,
            ),
            lambda: _gtc_verification(sample),
        ),
        (
            "verification, nu_eff 2..9 scattered",
            lambda: verify(
                indications,
                balance,
                unit="g",
                certificate_id="J",
                coverage_factor=2.0,
                type_a_u=scattered_u,
                type_a_dof=scattered_dof,
            ),
            lambda: verify(
                indications,
                balance,
                unit="g",
                certificate_id="J",
                type_a_u=scattered_u,
                type_a_dof=scattered_dof,
            ),
            lambda: _gtc_verification(sample),
        ),
        (
            "composite meter · CT · VT",
            lambda: composite(2.0),
            lambda: composite(None),
            lambda: _gtc_composite(sample),
        ),
    ]
    print(f"{count:,} readings per call, best of {arguments.repeat}; GTC on {sample.size:,}")
    print(
        f"{'model':36} {'k = 2':>9} {'k = t':>9} {'ns/reading':>11} "
        f"{'GTC µs/reading':>15} {'GTC for all':>12} {'speed-up':>9}"
    )
    for name, fixed, student, gtc in cases:
        fixed_time = _best(fixed, arguments.repeat)
        t_time = _best(student, arguments.repeat) if student is not None else math.nan
        started = time.perf_counter()
        gtc()
        gtc_per_reading = (time.perf_counter() - started) / sample.size
        slowest = fixed_time if math.isnan(t_time) else t_time
        t_column = "-" if math.isnan(t_time) else f"{t_time:.3f}s"
        print(
            f"{name:36} {fixed_time:8.3f}s {t_column:>9} {1e9 * slowest / count:11.0f} "
            f"{1e6 * gtc_per_reading:15.1f} {gtc_per_reading * count:11.0f}s "
            f"{gtc_per_reading * count / slowest:8.0f}x"
        )


if __name__ == "__main__":
    main()
