# SPDX-License-Identifier: Apache-2.0
"""Metrology for metrogate: certificates, corrections and GUM uncertainty; pure numpy.

References: JCGM 100:2008 (GUM) and VIM 2.41 (traceability); see DOMAIN.md §1. No I/O, no
clock and no imports of `drivers` or `gateway` (import-linter enforces it): the gateway
passes indications, certificates and times in and gets corrected, flagged values back.
"""

from calibration.accuracy_classes import (
    AccuracyClasses,
    BalanceLimit,
    MeterLimit,
    TransformerKind,
    TransformerLimit,
    default_accuracy_classes,
    parse_accuracy_classes,
)
from calibration.budget import (
    Budget,
    BudgetLine,
    Distribution,
    MeasurementResult,
    Term,
    evaluate,
    format_budget,
)
from calibration.certificate import (
    Abscissa,
    CalibrationPoint,
    Certificate,
    CertificateKind,
    Convention,
)
from calibration.chain import (
    CalibratedRange,
    CertificateRecord,
    ChainResult,
    Level,
    LinkStatus,
    Route,
    Standard,
    expiring,
    next_change,
    require_traceable,
    resolve_certificate_chain,
    resolve_chain,
)
from calibration.composite import (
    Component,
    calibrated_ratio,
    phase_error_factor,
    product,
    scaled,
    stated_quantity,
)
from calibration.coverage import COVERAGE_PROBABILITY_K2, t_coverage_factor, t_two_sided_tail
from calibration.dcc import (
    DccCertificate,
    DccContact,
    DccEquipment,
    DccIdentification,
    DccItem,
    DccQuantity,
    DccResult,
    DccValues,
    parse_dcc,
)
from calibration.dcc_export import certificate_to_dcc, dcc_to_certificate
from calibration.errors import (
    BrokenChainError,
    CalibrationError,
    CertificateExpiredError,
    OutOfRangeError,
)
from calibration.models import Corrected, correct, require_in_range
from calibration.piecewise import correct_piecewise
from calibration.polynomial import FitError, PolynomialFit, correct_polynomial, fit_polynomial
from calibration.uncertainty import FloatArray, resolution_uncertainty, welch_satterthwaite
from calibration.verification import (
    Mpe,
    VerificationCertificate,
    balance_mpe,
    energy_meter_mpe,
    transformer_limits,
    transformer_mpe,
    verify,
    within,
)

__all__ = [
    "COVERAGE_PROBABILITY_K2",
    "Abscissa",
    "AccuracyClasses",
    "BalanceLimit",
    "BrokenChainError",
    "Budget",
    "BudgetLine",
    "CalibratedRange",
    "CalibrationError",
    "CalibrationPoint",
    "Certificate",
    "CertificateExpiredError",
    "CertificateKind",
    "CertificateRecord",
    "ChainResult",
    "Component",
    "Convention",
    "Corrected",
    "DccCertificate",
    "DccContact",
    "DccEquipment",
    "DccIdentification",
    "DccItem",
    "DccQuantity",
    "DccResult",
    "DccValues",
    "Distribution",
    "FitError",
    "FloatArray",
    "Level",
    "LinkStatus",
    "MeasurementResult",
    "MeterLimit",
    "Mpe",
    "OutOfRangeError",
    "PolynomialFit",
    "Route",
    "Standard",
    "Term",
    "TransformerKind",
    "TransformerLimit",
    "VerificationCertificate",
    "balance_mpe",
    "calibrated_ratio",
    "certificate_to_dcc",
    "correct",
    "correct_piecewise",
    "correct_polynomial",
    "dcc_to_certificate",
    "default_accuracy_classes",
    "energy_meter_mpe",
    "evaluate",
    "expiring",
    "fit_polynomial",
    "format_budget",
    "next_change",
    "parse_accuracy_classes",
    "parse_dcc",
    "phase_error_factor",
    "product",
    "require_in_range",
    "require_traceable",
    "resolution_uncertainty",
    "resolve_certificate_chain",
    "resolve_chain",
    "scaled",
    "stated_quantity",
    "t_coverage_factor",
    "t_two_sided_tail",
    "transformer_limits",
    "transformer_mpe",
    "verify",
    "welch_satterthwaite",
    "within",
]
