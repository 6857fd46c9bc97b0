# SPDX-License-Identifier: Apache-2.0
"""Between PTB DCCs and `Certificate`: a DCC result to calibration points, a certificate to XML.

References: PTB DCC XML schema 3.2.0 with D-SI SI_Format 2.1.0 (both in calibration/schema/);
DOMAIN.md §1: error E = indication - reference, correction C = -E, u = U/k (GUM 4.3.3).
`dcc_to_certificate` builds `Certificate.from_points` rows from one dcc:result that states a
``basic_measurementError`` (or ``basic_correction``) with its uncertainty against indications
or reference values, and refuses, saying why, anything else. `certificate_to_dcc` writes a
DCC 3.2.0 document that PTB's schema accepts and that `dcc_to_certificate` reads back to the
same numbers: every number is written as repr(float), the shortest text that round-trips.
Pure: values in, values or bytes out; no I/O, no clock.
"""

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, tzinfo
from decimal import Decimal
from itertools import pairwise
from types import MappingProxyType
from typing import Final

# ElementTree only builds and serialises our own tree here; nothing from outside is parsed.
from xml.etree.ElementTree import Element, SubElement, indent, tostring

from calibration.certificate import Abscissa, Certificate, CertificateKind, Convention
from calibration.dcc import (
    RECALIBRATION,
    DccCertificate,
    DccContact,
    DccEquipment,
    DccIdentification,
    DccItem,
    DccQuantity,
    DccResult,
    DccValues,
)
from calibration.errors import CalibrationError

REFERENCE: Final = "basic_referenceValue"
INDICATION: Final = "basic_measuredValue"
ERROR: Final = "basic_measurementError"
CORRECTION: Final = "basic_correction"
NORMAL_USED: Final = "basic_normalUsed"

DSI_UNIT_SYMBOLS: Final = MappingProxyType(
    {
        r"\kelvin": "K",
        r"\degreecelsius": "°C",
        r"\gram": "g",
        r"\kilogram": "kg",
        r"\milli\gram": "mg",
        r"\one": "1",
        r"\percent": "%",
        r"\ohm": "Ω",
        r"\volt": "V",
        r"\ampere": "A",
        r"\watt": "W",
        r"\kilo\watt\hour": "kWh",
        r"\pascal": "Pa",
        r"\kilo\pascal": "kPa",
        r"\metre": "m",
        r"\second": "s",
    }
)
"""D-SI unit -> the symbol metrogate writes in `Certificate.unit` (others keep the D-SI text)."""

_CONVENTIONS: Final[dict[str, Convention]] = {ERROR: "error", CORRECTION: "correction"}
_SCHEMA_VERSION: Final = "3.2.0"
_CODE_LENGTH: Final = 2  # ISO 639-1 language and ISO 3166-1 alpha-2 country codes
_NAMESPACES: Final = {
    "xmlns:dcc": "https://ptb.de/dcc",
    "xmlns:si": "https://ptb.de/si",
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xsi:schemaLocation": "https://ptb.de/dcc https://ptb.de/dcc/v3.2.0/dcc.xsd",
}


def dcc_to_certificate(
    dcc: DccCertificate,
    *,
    unit: str,
    result: str | None = None,
    points: Iterable[int] | None = None,
    valid_until: datetime | None = None,
    kind: CertificateKind = "calibration",
    tz: tzinfo = UTC,
) -> Certificate:
    r"""Map one DCC result onto a `Certificate` of corrections at indications.

    The result must hold a ``basic_measurementError`` (E) or ``basic_correction`` (C) with an
    expanded (U, k) or standard (u, written as U = u with k = 1) uncertainty, and the
    indications (``basic_measuredValue``, preferred) or reference values in the same unit.
    Where both are given, E must equal indication - reference to the rounding of the printed
    digits, else the DCC is refused. Points must run monotonically: an up-and-down series
    (hysteresis) is refused until one branch is chosen with `points`.

    Args:
        dcc: a parsed DCC.
        unit: the D-SI unit to read, e.g. ``"\kelvin"``; no unit is converted.
        result: the dcc:result's refType or name; None picks the only one with errors.
        points: indices (from 0) of the list entries to use; None uses all.
        valid_until: last instant of validity; None takes the end of the DCC's
            ``basic_recalibration`` day in `tz`.
        kind: the `Certificate.kind`.
        tz: the time zone in which the DCC's calendar dates are read.

    Returns:
        The certificate; valid from the start of the first calibration day in `tz`.

    Raises:
        CalibrationError: no usable result, unit, uncertainty or validity; the message says why.
    """
    where = f"DCC {dcc.unique_identifier!r}"
    chosen = _select_result(dcc, result, where)
    here = f"{where} result {chosen.name or ' '.join(chosen.ref_types)!r}"
    errors = [q for q in chosen.quantities if set(q.ref_types) & set(_CONVENTIONS)]
    if len(errors) != 1:
        raise CalibrationError(f"{here} has {len(errors)} error or correction quantities")
    convention = next(_CONVENTIONS[t] for t in errors[0].ref_types if t in _CONVENTIONS)
    error = _in_unit(errors[0], unit, here)
    if error.uncertainty is None:
        raise CalibrationError(
            f"{here}: no measurement {convention} with uncertainty in {unit} (the "
            f"{convention} is stated with an uncertainty in: {_units_with_u(errors[0])})"
        )
    columns = {ref: _column(chosen, ref, unit) for ref in (INDICATION, REFERENCE)}
    x_values = columns[INDICATION] or columns[REFERENCE]
    if x_values is None:
        raise CalibrationError(f"{here}: no indications or reference values in {unit}")
    abscissa: Abscissa = "indication" if columns[INDICATION] else "reference"
    count = len(error.values)
    if any(column and len(column.values) != count for column in columns.values()):
        raise CalibrationError(f"{here}: its columns in {unit} differ in length from {count}")
    rows = list(range(count)) if points is None else list(points)
    if not rows or any(not 0 <= i < count for i in rows):
        raise CalibrationError(f"{here}: points {rows} do not index the {count} listed values")
    _check_monotonic([x_values.values[i] for i in rows], rows, abscissa, here)
    if columns[INDICATION] and columns[REFERENCE]:
        _check_consistency(
            indication=columns[INDICATION],
            reference=columns[REFERENCE],
            error=error,
            convention=convention,
            rows=rows,
            where=here,
        )
    u = error.uncertainty
    k = u.coverage_factors if u.kind == "expanded" else (1.0,) * count
    issuer = dcc.laboratory.name or dcc.laboratory_code or dcc.laboratory.email
    if not issuer:
        raise CalibrationError(f"{where} names no calibration laboratory (name, code or e-mail)")
    if valid_until is None and dcc.recalibration_due is not None:
        valid_until = datetime.combine(dcc.recalibration_due, time.max, tzinfo=tz)
    if valid_until is None:
        raise CalibrationError(
            f"{where} states no basic_recalibration date or period; pass valid_until "
            "(a calibration's interval is chosen by its user: JJF 1139, ILAC G-24)"
        )
    return Certificate.from_points(
        certificate_id=dcc.unique_identifier,
        unit=DSI_UNIT_SYMBOLS.get(unit, unit),
        issuer=issuer,
        kind=kind,
        valid_from=datetime.combine(dcc.begin_performance_date, time.min, tzinfo=tz),
        valid_until=valid_until,
        abscissa=abscissa,
        convention=convention,
        points=[(x_values.values[i], error.values[i], u.values[i], k[i]) for i in rows],
    )


def _select_result(dcc: DccCertificate, selector: str | None, where: str) -> DccResult:
    """Return the result named or refTyped `selector`, or the only one stating errors."""
    if selector is not None:
        named = [r for r in dcc.results if selector in (r.name, *r.ref_types)]
        if len(named) != 1:
            raise CalibrationError(f"{where}: {len(named)} results match {selector!r}")
        return named[0]
    with_errors = [
        r for r in dcc.results if any(set(q.ref_types) & set(_CONVENTIONS) for q in r.quantities)
    ]
    if len(with_errors) == 1:
        return with_errors[0]
    if with_errors:
        names = [r.name or r.ref_types for r in with_errors]
        raise CalibrationError(f"{where}: results {names} state errors; choose one with result=")
    raise CalibrationError(f"{where} states no points of an error curve: {_describe(dcc)}")


def _describe(dcc: DccCertificate) -> str:
    """Say what a DCC without errors or corrections states instead."""
    quantities = [q for r in dcc.results for q in r.quantities]
    units = {
        ref_type: {
            v.unit for q in quantities if ref_type in q.ref_types for v in q.representations
        }
        for ref_type in (REFERENCE, INDICATION)
    }
    if units[REFERENCE] and units[INDICATION]:
        kinds = (
            "in the same unit"
            if units[REFERENCE] & units[INDICATION]
            else f"of another quantity ({', '.join(sorted(units[REFERENCE]))} against "
            f"{', '.join(sorted(units[INDICATION]))}: a sensor characteristic, not an error curve)"
        )
        return f"it pairs reference values with indications {kinds}; no {ERROR} or {CORRECTION}"
    values = [
        f"{q.name} = {v.literals[0]} {v.unit}"
        + (f" (U = {v.uncertainty.literals[0]})" if v.uncertainty else "")
        for q in quantities
        for v in q.representations[:1]
    ]
    return (
        f"it states values of the item itself ({'; '.join(values) or 'none'}), as for a "
        "material measure, not errors of an instrument's indication at calibration points"
    )


def _in_unit(quantity: DccQuantity, unit: str, where: str) -> DccValues:
    values = quantity.in_unit(unit)
    if values is None:
        units = ", ".join(v.unit for v in quantity.representations)
        raise CalibrationError(
            f"{where}: {quantity.name or quantity.ref_types} is stated in {units}, not in "
            f"{unit}; choose one of those units (metrogate converts no units)"
        )
    return values


def _units_with_u(quantity: DccQuantity) -> str:
    return ", ".join(v.unit for v in quantity.representations if v.uncertainty) or "no unit"


def _column(result: DccResult, ref_type: str, unit: str) -> DccValues | None:
    found = [q.in_unit(unit) for q in result.quantities if ref_type in q.ref_types]
    return next((values for values in found if values is not None), None)


def _check_monotonic(xs: list[float], rows: list[int], abscissa: str, where: str) -> None:
    """Refuse points that do not run strictly one way, e.g. an up-and-down series."""
    steps = [b - a for a, b in pairwise(xs)]
    if all(s > 0 for s in steps) or all(s < 0 for s in steps):
        return
    turn = next(i for i, s in enumerate(steps) if s * steps[0] <= 0) + 1
    raise CalibrationError(
        f"{where}: the {abscissa}s at points {rows} do not run one way: they turn at point "
        f"{rows[turn - 1]} (an up-and-down series, as for hysteresis, or a repeated point); "
        f"choose one series with points=, e.g. points=range({rows[0]}, {rows[turn - 1] + 1}) "
        f"or points=range({rows[turn - 1]}, {rows[-1] + 1})"
    )


def _check_consistency(
    *,
    indication: DccValues,
    reference: DccValues,
    error: DccValues,
    convention: Convention,
    rows: list[int],
    where: str,
) -> None:
    """Refuse unless E = indication - reference (C = reference - indication) as printed."""
    sign = 1.0 if convention == "error" else -1.0
    for i in rows:
        x, r, e = indication.values[i], reference.values[i], error.values[i]
        literals = (indication.literals[i], reference.literals[i], error.literals[i])
        tolerance = sum(map(_half_last_digit, literals)) + 8 * math.ulp(max(abs(x), abs(r)))
        if abs(sign * (x - r) - e) <= tolerance:
            continue
        flipped = abs(sign * (r - x) - e) <= tolerance
        raise CalibrationError(
            f"{where}: point {i}: the {convention} {literals[2]} is not "
            f"{'indication - reference' if sign > 0 else 'reference - indication'} = "
            f"{literals[0]} - {literals[1]}"
            + ("; the DCC uses the opposite sign convention" if flipped else "")
        )


def _half_last_digit(literal: str) -> float:
    """Half a unit in the last printed digit of a decimal literal: its rounding bound."""
    mantissa, _, exponent = literal.lower().partition("e")
    decimals = len(mantissa.partition(".")[2]) - int(exponent or 0)
    return 0.5 * 10.0**-decimals


def certificate_to_dcc(
    cert: Certificate,
    *,
    coverage_probability: float,
    item: DccItem,
    customer: DccContact,
    responsible_persons: Sequence[str],
    software_release: str,
    country_code: str,
    laboratory: DccContact | None = None,
    laboratory_code: str | None = None,
    standards: Sequence[DccEquipment] = (),
    dsi_unit: str | None = None,
    language: str = "en",
    tz: tzinfo = UTC,
) -> bytes:
    r"""Write `cert` as a PTB DCC 3.2.0 document (UTF-8 XML).

    One result lists the reference values x + C, the indications x and the errors E = -C
    with U, k and `coverage_probability` (a `Certificate` keeps U and k, not p). The
    calibration day is valid_from's date and the ``basic_recalibration`` date valid_until's,
    both in `tz`; point_correlation and interpolation_u have no DCC element and are not written.

    Args:
        cert: a calibration or in-house calibration certificate (not a verification).
        coverage_probability: p of every U, in (0, 1], e.g. 0.95 for k = 2.
        item: the calibrated item; it needs a name, a manufacturer and an identification.
        customer: the customer's contact (a name; the location defaults to `country_code`).
        responsible_persons: names of the responsible persons; the first is the main signer.
        software_release: metrogate's version, written as the DCC software's release.
        country_code: ISO 3166-1 alpha-2 code of the laboratory's country, e.g. ``"CN"``.
        laboratory: the laboratory's contact; default: `cert.issuer` in `country_code`.
        laboratory_code: its accreditation or authorisation number, if any.
        standards: the standards used (the traceability link upward).
        dsi_unit: the D-SI spelling of `cert.unit`, e.g. ``"\gram"``; default: looked up in
            `DSI_UNIT_SYMBOLS`, or `cert.unit` itself if it is D-SI already.
        language: ISO 639-1 code of the text written.
        tz: the time zone of the calendar dates written.

    Returns:
        The XML document; `calibration.dcc.parse_dcc` reads it back to the same numbers.

    Raises:
        CalibrationError: a verification certificate, or a k < 1 (D-SI kValueType).
        ValueError: missing or malformed administrative data.
    """
    if cert.kind == "verification":
        raise CalibrationError(
            f"certificate {cert.certificate_id!r} is a verification (检定): it states "
            "conformity, not corrections to apply; a DCC export needs a calibration"
        )
    if any(p.coverage_factor < 1.0 for p in cert.points):
        raise CalibrationError(f"certificate {cert.certificate_id!r}: D-SI needs every k >= 1")
    if not 0.0 < coverage_probability <= 1.0:
        raise ValueError(f"coverage_probability {coverage_probability!r} is not in (0, 1]")
    symbols = {symbol: dsi for dsi, symbol in DSI_UNIT_SYMBOLS.items()}
    unit = dsi_unit or symbols.get(cert.unit) or cert.unit
    if not unit.startswith("\\"):
        raise ValueError(f"unit {cert.unit!r} has no known D-SI spelling; pass dsi_unit")
    if not (item.identifications and responsible_persons):
        raise ValueError("a DCC needs an item identification and a responsible person")
    writer = _Writer(language, country_code)
    root = Element("dcc:digitalCalibrationCertificate", _NAMESPACES, schemaVersion=_SCHEMA_VERSION)
    admin = writer.add(root, "dcc:administrativeData")
    software = writer.add(writer.add(admin, "dcc:dccSoftware"), "dcc:software")
    writer.text(software, "dcc:name", "metrogate")
    writer.value(software, "dcc:release", software_release)
    day = cert.valid_from.astimezone(tz).date().isoformat()
    core = writer.add(admin, "dcc:coreData")
    for tag, text in (
        ("dcc:countryCodeISO3166_1", country_code),
        ("dcc:usedLangCodeISO639_1", language),
        ("dcc:mandatoryLangCodeISO639_1", language),
        ("dcc:uniqueIdentifier", cert.certificate_id),
        ("dcc:beginPerformanceDate", day),
        ("dcc:endPerformanceDate", day),
        ("dcc:performanceLocation", "laboratory"),
    ):
        writer.value(core, tag, text)
    writer.item(writer.add(admin, "dcc:items"), item)
    lab = writer.add(admin, "dcc:calibrationLaboratory")
    writer.value(lab, "dcc:calibrationLaboratoryCode", laboratory_code, required=False)
    writer.contact(lab, "dcc:contact", laboratory or DccContact(name=cert.issuer))
    persons = writer.add(admin, "dcc:respPersons")
    for number, name in enumerate(responsible_persons):
        person = writer.add(persons, "dcc:respPerson")
        writer.text(writer.add(person, "dcc:person"), "dcc:name", name)
        writer.value(person, "dcc:mainSigner", "true" if number == 0 else None, required=False)
    writer.contact(admin, "dcc:customer", customer)
    statement = writer.add(writer.add(admin, "dcc:statements"), "dcc:statement")
    statement.set("refType", RECALIBRATION)
    writer.text(statement, "dcc:declaration", "Date of the next calibration, at the latest.")
    writer.value(statement, "dcc:date", cert.valid_until.astimezone(tz).date().isoformat())
    measurement = writer.add(writer.add(root, "dcc:measurementResults"), "dcc:measurementResult")
    writer.text(measurement, "dcc:name", "Calibration results")
    if standards:
        used = writer.add(measurement, "dcc:measuringEquipments")
        for standard in standards:
            writer.equipment(used, standard)
    result = writer.add(writer.add(measurement, "dcc:results"), "dcc:result")
    writer.text(result, "dcc:name", "Calibration points")
    table = writer.add(writer.add(result, "dcc:data"), "dcc:list")
    _points(writer, table, cert, unit, _plain(coverage_probability))
    indent(root, space="  ")
    document: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _points(writer: "_Writer", table: Element, cert: Certificate, unit: str, p: str) -> None:
    """Write the reference, indication and error columns, with U, k and p, as XML lists."""
    points = cert.points
    for ref_type, name, literals in (
        (REFERENCE, "Reference value", [_decimal_sum(p.indication, p.correction) for p in points]),
        (INDICATION, "Indication", [repr(p.indication) for p in points]),
        (ERROR, "Measurement error", [repr(-p.correction) for p in points]),
    ):
        quantity = writer.add(table, "dcc:quantity")
        quantity.set("refType", ref_type)
        writer.text(quantity, "dcc:name", name)
        values = writer.add(quantity, "si:realListXMLList")
        writer.value(values, "si:valueXMLList", " ".join(literals))
        writer.value(values, "si:unitXMLList", unit)
        if ref_type == ERROR:
            u = writer.add(values, "si:expandedUncXMLList")
            writer.value(u, "si:uncertaintyXMLList", _join(q.expanded_uncertainty for q in points))
            writer.value(u, "si:coverageFactorXMLList", _join(q.coverage_factor for q in points))
            writer.value(u, "si:coverageProbabilityXMLList", p)


def _join(numbers: Iterable[float]) -> str:
    return " ".join(map(repr, numbers))


def _plain(probability: float) -> str:
    """Write a coverage probability without exponent (D-SI probabilityValueType)."""
    return repr(probability) if "e" not in repr(probability) else f"{probability:.17f}"


def _decimal_sum(indication: float, correction: float) -> str:
    """Return x + C as the exact sum of the printed decimals: 306.32 + -0.072 is 306.248."""
    return str(Decimal(repr(indication)) + Decimal(repr(correction)))


class _Writer:
    """Appends DCC elements in schema order, text in one language, locations in one country."""

    def __init__(self, language: str, country_code: str) -> None:
        if not (len(language) == _CODE_LENGTH == len(country_code)):
            raise ValueError(f"language {language!r}, country {country_code!r}: need 2 letters")
        self._language = language
        self._country_code = country_code

    @staticmethod
    def add(parent: Element, tag: str) -> Element:
        """Append an empty `tag` and return it."""
        return SubElement(parent, tag)

    @staticmethod
    def value(parent: Element, tag: str, text: str | None, *, required: bool = True) -> None:
        """Append `tag` holding `text` (whitespace collapsed); skip an optional empty one."""
        collapsed = " ".join((text or "").split())
        if collapsed:
            SubElement(parent, tag).text = collapsed
        elif required:
            raise ValueError(f"{tag} needs a non-empty value, got {text!r}")

    def text(self, parent: Element, tag: str, text: str | None) -> None:
        """Append a dcc:textType `tag` holding `text` in the writer's language."""
        content = SubElement(SubElement(parent, tag), "dcc:content", lang=self._language)
        content.text = " ".join((text or "").split())
        if not content.text:
            raise ValueError(f"{tag} needs a non-empty text, got {text!r}")

    def identifications(
        self, parent: Element, identifications: Sequence[DccIdentification]
    ) -> None:
        """Append dcc:identifications (issuer, value, name) unless there are none."""
        if identifications:
            holder = self.add(parent, "dcc:identifications")
            for identification in identifications:
                element = self.add(holder, "dcc:identification")
                self.value(element, "dcc:issuer", identification.issuer)
                self.value(element, "dcc:value", identification.value)
                if identification.name:
                    self.text(element, "dcc:name", identification.name)

    def item(self, parent: Element, item: DccItem) -> None:
        """Append a dcc:item: name, manufacturer, model and identifications."""
        element = self.add(parent, "dcc:item")
        self.text(element, "dcc:name", item.name)
        self.text(self.add(element, "dcc:manufacturer"), "dcc:name", item.manufacturer)
        self.value(element, "dcc:model", item.model, required=False)
        self.identifications(element, item.identifications)

    def contact(self, parent: Element, tag: str, contact: DccContact) -> None:
        """Append a dcc:contactType; its location falls back to the writer's country."""
        element = self.add(parent, tag)
        self.text(element, "dcc:name", contact.name)
        self.value(element, "dcc:eMail", contact.email, required=False)
        location = self.add(element, "dcc:location")
        self.value(location, "dcc:city", contact.city, required=False)
        self.value(location, "dcc:countryCode", contact.country_code or self._country_code)

    def equipment(self, parent: Element, standard: DccEquipment) -> None:
        """Append a dcc:measuringEquipment with its certificate reference, if any."""
        element = self.add(parent, "dcc:measuringEquipment")
        element.set("refType", " ".join(standard.ref_types or (NORMAL_USED,)))
        self.text(element, "dcc:name", standard.name)
        if standard.certificate_id:
            certificate = self.add(element, "dcc:certificate")
            self.text(certificate, "dcc:referral", standard.certificate_id)
            self.value(certificate, "dcc:referralID", standard.certificate_id)
            self.value(certificate, "dcc:procedure", standard.certificate_procedure or "analogue")
            self.value(certificate, "dcc:value", standard.certificate_value or "analogue")
        if standard.manufacturer:
            self.text(self.add(element, "dcc:manufacturer"), "dcc:name", standard.manufacturer)
        self.value(element, "dcc:model", standard.model, required=False)
        self.identifications(element, standard.identifications)
