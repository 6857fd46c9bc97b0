# SPDX-License-Identifier: Apache-2.0
"""Certificates shared by the calibration tests, including the DOMAIN.md §1 reference cases."""

from collections.abc import Sequence
from datetime import UTC, datetime

from calibration import Abscissa, Certificate, CertificateKind, Convention

VALID_FROM = datetime(2026, 1, 10, tzinfo=UTC)
VALID_UNTIL = datetime(2027, 1, 9, tzinfo=UTC)

# DOMAIN.md §1 reference case 1: one point at 1000 g, C = +0.15 g, U = 0.08 g (k = 2).
CASE1_POINTS = [(1000.0, 0.15, 0.08, 2.0)]
# DOMAIN.md §1 reference case 2: 500 g (C = -0.10 g, U = 0.06 g) and 1000 g (C = -0.20 g,
# U = 0.08 g), both k = 2; the interpolation term u = 0.0144338 g is given explicitly.
CASE2_POINTS = [(500.0, -0.10, 0.06, 2.0), (1000.0, -0.20, 0.08, 2.0)]
CASE2_INTERPOLATION_U = 0.0144338
CASE2_INDICATION = 750.2240  # g, mean of 5 indications
CASE2_S_MEAN = 0.005099  # g, experimental standard deviation of the mean
CASE2_DOF = 4


def make_certificate(
    points: Sequence[Sequence[float]] = CASE2_POINTS,
    *,
    certificate_id: str = "CAL-2026-0117",
    unit: str = "g",
    kind: CertificateKind = "calibration",
    abscissa: Abscissa = "indication",
    convention: Convention = "correction",
    point_correlation: float = 1.0,
    interpolation_u: float | None = None,
    valid_from: datetime = VALID_FROM,
    valid_until: datetime = VALID_UNTIL,
) -> Certificate:
    """Return a certificate from printed points with test defaults for everything else."""
    return Certificate.from_points(
        certificate_id=certificate_id,
        unit=unit,
        issuer="Provincial Institute of Metrology",
        kind=kind,
        valid_from=valid_from,
        valid_until=valid_until,
        abscissa=abscissa,
        convention=convention,
        points=points,
        point_correlation=point_correlation,
        interpolation_u=interpolation_u,
    )
