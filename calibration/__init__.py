# SPDX-License-Identifier: Apache-2.0
"""Metrology for metrogate: certificates, corrections and GUM uncertainty; pure numpy.

References: JCGM 100:2008 (GUM) and VIM 2.41 (traceability); see DOMAIN.md §1. No I/O, no
clock and no imports of `drivers` or `gateway` (import-linter enforces it): the gateway
passes indications, certificates and times in and gets corrected, flagged values back.
"""

from calibration.certificate import (
    Abscissa,
    CalibrationPoint,
    Certificate,
    CertificateKind,
    Convention,
)
from calibration.errors import (
    BrokenChainError,
    CalibrationError,
    CertificateExpiredError,
    OutOfRangeError,
)
from calibration.models import Corrected, correct, require_in_range
from calibration.uncertainty import FloatArray, resolution_uncertainty, welch_satterthwaite

__all__ = [
    "Abscissa",
    "BrokenChainError",
    "CalibrationError",
    "CalibrationPoint",
    "Certificate",
    "CertificateExpiredError",
    "CertificateKind",
    "Convention",
    "Corrected",
    "FloatArray",
    "OutOfRangeError",
    "correct",
    "require_in_range",
    "resolution_uncertainty",
    "welch_satterthwaite",
]
