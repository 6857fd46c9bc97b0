# SPDX-License-Identifier: Apache-2.0
"""GUM building blocks pinned to the GUM's own numbers."""

import math

import numpy as np
import pytest

from calibration import resolution_uncertainty, welch_satterthwaite


def test_resolution_uncertainty_is_rectangular_with_half_width_d_over_2() -> None:
    # GUM F.2.2.1: u = d/(2√3); 0.01 g -> 0.0028868 g.
    assert float(resolution_uncertainty(0.01)) == 0.01 / (2 * math.sqrt(3))
    assert float(resolution_uncertainty(0.01)) == pytest.approx(0.0028868, abs=5e-8)
    np.testing.assert_array_equal(resolution_uncertainty([0.0, 2 * math.sqrt(3)]), [0.0, 1.0])


@pytest.mark.parametrize("resolution", [-0.01, math.nan, math.inf])
def test_resolution_must_be_finite_and_not_negative(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution"):
        resolution_uncertainty(resolution)


def test_welch_satterthwaite_gum_g41_example() -> None:
    # GUM G.4.1 example: relative uncertainties 0.25 %, 0.57 %, 0.82 % from means of 10, 5
    # and 15 observations; u_c = 1.03 % and nu_eff = 19.0.
    parts = [(0.25, 10 - 1), (0.57, 5 - 1), (0.82, 15 - 1)]
    combined = math.sqrt(sum(u**2 for u, _ in parts))
    assert combined == pytest.approx(1.03, abs=5e-3)
    assert float(welch_satterthwaite(combined, parts)) == pytest.approx(19.0, abs=0.05)


def test_welch_satterthwaite_edge_cases() -> None:
    assert math.isinf(float(welch_satterthwaite(0.1, [])))
    assert math.isinf(float(welch_satterthwaite(0.1, [(0.05, math.inf)])))
    assert math.isinf(float(welch_satterthwaite(0.0, [(0.0, 4)])))  # nothing to weigh
    # A single type A term equal to u_c keeps its own degrees of freedom.
    assert float(welch_satterthwaite(0.3, [(0.3, 7)])) == pytest.approx(7.0)
    broadcast = welch_satterthwaite([1.0, 2.0], [(0.5, 4), (np.array([0.5, 1.0]), 9)])
    np.testing.assert_allclose(
        broadcast, [1 / (0.5**4 / 4 + 0.5**4 / 9), 16 / (0.5**4 / 4 + 1 / 9)]
    )
