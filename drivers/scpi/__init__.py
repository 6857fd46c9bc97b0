# SPDX-License-Identifier: Apache-2.0
"""SCPI instruments over a `MessageLink` (VISA): multimeters, power analyzers, calibrators.

One module per instrument kind, each a pure codec plus a thin driver; `dmm` also holds the
SCPI basics (numeric replies, the error queue) the others share.
"""

from drivers.scpi.calibrator import Calibrator, encode_output, parse_output
from drivers.scpi.dmm import (
    FUNCTION_UNITS,
    ErrorQueueEntry,
    ScpiDmm,
    check_error_queue,
    parse_error_reply,
    parse_scpi_number,
    unit_of,
)
from drivers.scpi.power_analyzer import PowerAnalyzer, parse_values

__all__ = [
    "FUNCTION_UNITS",
    "Calibrator",
    "ErrorQueueEntry",
    "PowerAnalyzer",
    "ScpiDmm",
    "check_error_queue",
    "encode_output",
    "parse_error_reply",
    "parse_output",
    "parse_scpi_number",
    "parse_values",
    "unit_of",
]
