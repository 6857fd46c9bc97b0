# SPDX-License-Identifier: Apache-2.0
"""The error tree of the calibration package.

```
CalibrationError (also ValueError)    certificate data, or its use, is not metrologically valid
├── OutOfRangeError                   indication outside the calibrated range (never extrapolate)
├── CertificateExpiredError           certificate not valid at the reading's time
└── BrokenChainError                  a link of the traceability chain (VIM 2.41) is missing
```
Every message names the certificate (`certificate_id`) and the offending value. Misuse of an
argument that is not certificate data (a negative resolution, a naive datetime) raises a
plain `ValueError`: that is a bug in the caller and must not be caught as a calibration fault.
`correct` itself never raises `OutOfRangeError`; it flags out-of-range readings (DOMAIN.md §1,
"flagged, not silently corrected") and `require_in_range` raises it for callers that want to.
"""


class CalibrationError(ValueError):
    """Base of every error the calibration package raises about certificate data or its use."""


class OutOfRangeError(CalibrationError):
    """An indication lies outside the calibrated range of its certificate."""


class CertificateExpiredError(CalibrationError):
    """A certificate is not valid at the time of the reading."""


class BrokenChainError(CalibrationError):
    """The traceability chain of a reading is incomplete or has an invalid link."""
