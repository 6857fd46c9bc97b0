# SPDX-License-Identifier: Apache-2.0
"""GUM building blocks: type B from resolution, Welch-Satterthwaite effective degrees of freedom.

References: JCGM 100:2008 (GUM) F.2.2.1 (resolution of a digital indication), 4.3.7
(rectangular distribution, u = a/√3), G.4.1 eq. (G.2b) (Welch-Satterthwaite formula).
Pure numpy, arrays in and same-shape arrays out; no I/O, no clock.
"""

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_SQRT3 = float(np.sqrt(3.0))


def resolution_uncertainty(resolution: npt.ArrayLike) -> FloatArray:
    """Return the standard uncertainty of a digital indication of resolution d.

    The indication is the true value rounded to a step d, so the rounding error is rectangular
    with half-width a = d/2 (GUM F.2.2.1) and u = a/√3 = d/(2√3) (GUM 4.3.7).

    Args:
        resolution: the step d of the last digit, in the unit of the indication; d >= 0.

    Returns:
        d/(2√3) in the unit of the indication, a float64 array of the shape of `resolution`.

    Raises:
        ValueError: d is negative or not finite.
    """
    step = np.asarray(resolution, dtype=np.float64)
    if not np.all(np.isfinite(step) & (step >= 0.0)):
        raise ValueError(f"resolution must be finite and >= 0, got {resolution!r}")
    return np.asarray(step / (2.0 * _SQRT3), dtype=np.float64)


def welch_satterthwaite(
    combined_uncertainty: npt.ArrayLike,
    components: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]],
) -> FloatArray:
    """Return the effective degrees of freedom nu_eff of a combined standard uncertainty.

    nu_eff = u_c⁴ / Σ u_i⁴/nu_i (GUM G.4.1 eq. (G.2b)), where u_i = |c_i|·u(x_i) is the
    contribution of input i (GUM 5.1.3). Components with infinite nu_i add nothing and may be
    omitted; if every component is omitted or has nu_i = ∞ the result is +inf. The sum is
    evaluated as Σ (u_i/u_c)⁴/nu_i so that very small or large uncertainties neither overflow
    nor underflow into a spurious warning.

    Args:
        combined_uncertainty: u_c >= 0, in the unit of the result.
        components: pairs (u_i, nu_i): uncertainty contributions in the unit of the result
            and their degrees of freedom (> 0, may be +inf), each broadcastable against u_c.
            Inputs with finite nu_i must be uncorrelated with each other, as G.4.1 requires.

    Returns:
        nu_eff as a float64 array of the broadcast shape (+inf where no component is finite).
    """
    u_c = np.asarray(combined_uncertainty, dtype=np.float64)
    inverse = np.zeros_like(u_c)
    for contribution, dof in components:
        # u_c = 0 only if every u_i is 0 (or underflowed): such a term adds nothing.
        u_i = np.asarray(contribution, dtype=np.float64)
        ratio = np.divide(u_i, u_c, out=np.zeros(np.broadcast(u_i, u_c).shape), where=u_c > 0.0)
        inverse = inverse + ratio**4 / np.asarray(dof, dtype=np.float64)
    effective = np.full(inverse.shape, np.inf)
    np.divide(1.0, inverse, out=effective, where=inverse > 0.0)
    return effective
