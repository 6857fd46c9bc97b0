# SPDX-License-Identifier: Apache-2.0
"""PTB Digital Calibration Certificates (DCC XML) read into frozen values.

References: PTB's DCC XML schema 2.4 and 3.x (https://ptb.de/dcc) with D-SI quantities
(https://ptb.de/si, SI_Format 1.3-2.2), and PTB's good-practice example DCCs.
`parse_dcc` takes the bytes or text the caller read and returns a `DccCertificate`: core data,
laboratory, items, statements, the standards used (the traceability link upward) and every
quantity of every result. Each number is the float of its literal, and the literal is kept.
`calibration.dcc_export` maps a result to a `Certificate` and writes DCC 3.2.0 XML.

XML from outside goes through defusedxml with DTDs forbidden: a DCC needs no DTD or entity,
and the stdlib parser's defence against entity expansion depends on the expat it was built
with (Python docs, "XML vulnerabilities"). Elements are matched by local name inside PTB's
namespaces, because DCC 2.0-2.1 used other URIs than 2.4 and 3.x. No I/O, no clock.
"""

import calendar
import datetime
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

# The stdlib Element is only the type of the tree; parsing goes through defusedxml.
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from calibration.errors import CalibrationError

RECALIBRATION: Final = "basic_recalibration"
"""The refType of the statement giving the recalibration date or period."""

_SUPPORTED_MAJOR_VERSIONS: Final = ("2", "3")
# D-SI decimalType (SI_Format 2.x); float() alone would also take "nan", "inf" and "1_0".
_DECIMAL: Final = re.compile(r"[-+]?(\d*\.\d+|\d+\.\d*|\d+\.?)([Ee][-+]?\d+)?")
_XS_DATE: Final = re.compile(r"(\d{4}-\d{2}-\d{2})(Z|[+-]\d{2}:\d{2})?")
_DURATION: Final = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?")
# Uncertainty element -> (kind, element holding U or u); lists append "XMLList" to every name.
_UncertaintyKind = Literal["expanded", "standard"]
_UNCERTAINTY_FORMS: Final[dict[str, tuple[_UncertaintyKind, str]]] = {
    "expandedUnc": ("expanded", "uncertainty"),
    "expandedMU": ("expanded", "valueExpandedMU"),
    "standardMU": ("standard", "valueStandardMU"),
    "coverageInterval": ("standard", "standardUnc"),
    "coverageIntervalMU": ("standard", "valueStandardMU"),
}
_QUANTITY_FORMS: Final = ("real", "realListXMLList", "hybrid", "constant", "noQuantity",
                          "complex", "list", "realList", "charsXMLList")  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class DccUncertainty:
    """A univariate uncertainty, one entry per value (a one-entry XML list applies to all).

    Attributes:
        kind: ``"expanded"`` (U with k and p) or ``"standard"`` (u: standardMU, a coverage
            interval's standard uncertainty, or an si:constant's uncertainty).
        values: U or u per value, in the unit of the values.
        literals: the text each of `values` was read from.
        coverage_factors: k per value; () for a standard uncertainty.
        coverage_probabilities: p per value, () where not stated.
        distributions: per value, () where not stated.
    """

    kind: _UncertaintyKind
    values: tuple[float, ...]
    literals: tuple[str, ...]
    coverage_factors: tuple[float, ...]
    coverage_probabilities: tuple[float, ...]
    distributions: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DccValues:
    r"""The values of one quantity in one unit (an si:hybrid holds several of these).

    Attributes:
        unit: the D-SI unit as written, e.g. ``"\kelvin"``.
        values: float(literal) for each value, in `unit`.
        literals: the text of each value as written in the XML.
        uncertainty: the uncertainty stated with these values, or None.
        label: the si:label, if any.
    """

    unit: str
    values: tuple[float, ...]
    literals: tuple[str, ...]
    uncertainty: DccUncertainty | None
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DccQuantity:
    """One dcc:quantity of a result or statement.

    Attributes:
        name: its name (English where given, else the first language).
        ref_types: its refType tokens, e.g. ``("basic_measurementError",)``.
        kind: the element holding the value: ``"real"``, ``"realListXMLList"``, ``"hybrid"``,
            ``"constant"``, ``"noQuantity"``, or one not read (``"complex"``, ``"list"``...).
        representations: the values in each unit stated; () for text or unread forms.
        text: the text of a dcc:noQuantity, else None.
    """

    name: str | None
    ref_types: tuple[str, ...]
    kind: str
    representations: tuple[DccValues, ...]
    text: str | None = None

    def in_unit(self, unit: str) -> DccValues | None:
        r"""Return the values stated in the D-SI `unit`, or None if not stated in it.

        The match is exact, else case-insensitive: D-SI 1.x wrote ``\degreeCelsius``.
        """
        exact = [rep for rep in self.representations if rep.unit == unit]
        loose = [rep for rep in self.representations if rep.unit.casefold() == unit.casefold()]
        return next(iter(exact or loose), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class DccIdentification:
    """An identification: who issued it (manufacturer, customer...), its value and name."""

    issuer: str
    value: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DccItem:
    """A calibrated item: name, manufacturer's name, model and identifications."""

    name: str | None
    manufacturer: str | None
    model: str | None
    identifications: tuple[DccIdentification, ...]

    @property
    def serial_number(self) -> str | None:
        """The first identification issued by the manufacturer, usually the serial number."""
        ids = [i.value for i in self.identifications if i.issuer == "manufacturer"]
        return ids[0] if ids else None


@dataclass(frozen=True, slots=True, kw_only=True)
class DccContact:
    """A laboratory, customer or person: name, e-mail, city and ISO 3166 country code."""

    name: str | None
    email: str | None = None
    city: str | None = None
    country_code: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DccEquipment:
    """A measuring standard used (dcc:measuringEquipment): the traceability link upward.

    Attributes:
        name: its name.
        ref_types: e.g. ``("basic_normalUsed",)`` or ``("basic_standardUsed",)``.
        manufacturer: the manufacturer's name, if given.
        model: the model, if given.
        identifications: serial and inventory numbers.
        certificate_id: dcc:certificate/referralID, the standard's own certificate, if given.
        certificate_procedure: how `certificate_value` identifies it: ``"SHA256"``, ``"analogue"``.
        certificate_value: the hash or mark of that certificate.
    """

    name: str | None
    ref_types: tuple[str, ...] = ()
    manufacturer: str | None = None
    model: str | None = None
    identifications: tuple[DccIdentification, ...] = ()
    certificate_id: str | None = None
    certificate_procedure: str | None = None
    certificate_value: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DccStatement:
    """A dcc:statement, e.g. ``basic_recalibration`` with its date or period (xs:duration)."""

    ref_types: tuple[str, ...]
    declaration: str | None = None
    norms: tuple[str, ...] = ()
    convention: str | None = None
    date: datetime.date | None = None
    period: str | None = None
    valid: bool | None = None
    traceable: bool | None = None
    conformity: str | None = None
    quantities: tuple[DccQuantity, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DccResult:
    """A dcc:result: its name, refTypes and quantities (nested dcc:lists flattened)."""

    name: str | None
    ref_types: tuple[str, ...]
    quantities: tuple[DccQuantity, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DccMeasurementResult:
    """A dcc:measurementResult: the standards used and the results measured with them."""

    name: str | None
    ref_types: tuple[str, ...]
    equipment: tuple[DccEquipment, ...]
    results: tuple[DccResult, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DccCertificate:
    """A parsed DCC. Calendar dates are as written (a DCC date has no time or zone).

    Attributes:
        schema_version: the root's schemaVersion, e.g. ``"3.1.1"``.
        unique_identifier: coreData/uniqueIdentifier, the certificate number.
        country_code: coreData/countryCodeISO3166_1.
        languages: the languages used (ISO 639-1).
        identifications: coreData identifications (order numbers...).
        begin_performance_date: first day of the calibration.
        end_performance_date: last day of the calibration.
        issue_date: coreData/issueDate (DCC >= 3.2), if given.
        laboratory: the calibration laboratory's contact.
        laboratory_code: calibrationLaboratoryCode (often its accreditation number), if given.
        items: the calibrated items.
        customer: the customer's contact, if given.
        responsible_persons: names (or e-mails) of the responsible persons.
        statements: every dcc:statement.
        recalibration_due: the ``basic_recalibration`` date, or end_performance_date plus its
            period; None if the DCC states neither.
        measurement_results: every dcc:measurementResult.
    """

    schema_version: str
    unique_identifier: str
    country_code: str | None
    languages: tuple[str, ...]
    identifications: tuple[DccIdentification, ...]
    begin_performance_date: date
    end_performance_date: date
    issue_date: date | None
    laboratory: DccContact
    laboratory_code: str | None
    items: tuple[DccItem, ...]
    customer: DccContact | None
    responsible_persons: tuple[str, ...]
    statements: tuple[DccStatement, ...]
    recalibration_due: date | None
    measurement_results: tuple[DccMeasurementResult, ...]

    @property
    def results(self) -> tuple[DccResult, ...]:
        """Every dcc:result of every measurement result, in document order."""
        return tuple(r for m in self.measurement_results for r in m.results)

    @property
    def equipment(self) -> tuple[DccEquipment, ...]:
        """Every standard used, over all measurement results."""
        return tuple(e for m in self.measurement_results for e in m.equipment)


def parse_dcc(xml: bytes | str) -> DccCertificate:
    """Read a PTB DCC (schema 2.x or 3.x) from the bytes or text of its XML file.

    Args:
        xml: the document as read by the caller.

    Returns:
        The certificate's data; numbers equal float() of their literals, which are kept too.

    Raises:
        CalibrationError: not well-formed XML, a DTD or entity, not a DCC, an unsupported
            schema version, a missing required element, or a number or date that does not parse.
    """
    try:
        root = fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise CalibrationError(f"DCC refused: it declares a DTD or entity ({exc!r})") from exc
    except ParseError as exc:
        raise CalibrationError(f"DCC is not well-formed XML: {exc}") from exc
    if _local(root) != "digitalCalibrationCertificate":
        raise CalibrationError(f"not a PTB DCC: the root element is {root.tag!r}")
    version = (root.get("schemaVersion") or "").strip()
    if version.partition(".")[0] not in _SUPPORTED_MAJOR_VERSIONS:
        raise CalibrationError(f"DCC schema version {version!r} is not supported (2.x, 3.x are)")
    admin = _required(root, "administrativeData", "DCC")
    core = _required(admin, "coreData", "DCC administrativeData")
    uid = _child_text(core, "uniqueIdentifier")
    if uid is None:
        raise CalibrationError("DCC coreData has no uniqueIdentifier")
    where = f"DCC {uid!r}"
    end = _date(_child_text(core, "endPerformanceDate"), f"{where} endPerformanceDate")
    statements = tuple(_statement(s, where) for s in _path(admin, "statements", "statement"))
    lab = _required(admin, "calibrationLaboratory", where)
    customer = _child(admin, "customer")
    persons = [
        p for r in _path(admin, "respPersons", "respPerson") for p in _children(r, "person")
    ]
    return DccCertificate(
        schema_version=version,
        unique_identifier=uid,
        country_code=_child_text(core, "countryCodeISO3166_1"),
        languages=tuple(_text(e) or "" for e in _children(core, "usedLangCodeISO639_1")),
        identifications=_identifications(core),
        begin_performance_date=_date(
            _child_text(core, "beginPerformanceDate"), f"{where} beginPerformanceDate"
        ),
        end_performance_date=end,
        issue_date=_optional_date(_child_text(core, "issueDate"), f"{where} issueDate"),
        laboratory=_contact(_required(lab, "contact", f"{where} calibrationLaboratory")),
        laboratory_code=_child_text(lab, "calibrationLaboratoryCode"),
        items=tuple(_item(i) for i in _path(admin, "items", "item")),
        customer=None if customer is None else _contact(customer),
        responsible_persons=tuple(c.name or c.email or "" for c in map(_contact, persons)),
        statements=statements,
        recalibration_due=_recalibration_due(statements, end, where),
        measurement_results=tuple(
            _measurement_result(m, where)
            for m in _path(root, "measurementResults", "measurementResult")
        ),
    )


def _local(element: Element) -> str:
    """Return the local name of a PTB (dcc or si) element, "" for any other namespace."""
    namespace, _, name = element.tag[1:].partition("}")
    return name if element.tag.startswith("{") and "ptb.de" in namespace else ""


def _children(element: Element, name: str) -> list[Element]:
    return [child for child in element if _local(child) == name]


def _child(element: Element | None, name: str) -> Element | None:
    found = [] if element is None else _children(element, name)
    return found[0] if found else None


def _path(element: Element, *names: str) -> Iterator[Element]:
    """Yield the descendants reached through `names`, one child level per name."""
    level = [element]
    for name in names:
        level = [child for parent in level for child in _children(parent, name)]
    yield from level


def _required(element: Element, name: str, where: str) -> Element:
    child = _child(element, name)
    if child is None:
        raise CalibrationError(f"{where} has no {name}")
    return child


def _text(element: Element | None) -> str | None:
    text = None if element is None else " ".join((element.text or "").split())
    return text or None


def _child_text(element: Element | None, name: str) -> str | None:
    return _text(_child(element, name))


def _content(text_element: Element | None) -> str | None:
    """Return a dcc:textType's content in English where given, else in its first language."""
    contents = [] if text_element is None else _children(text_element, "content")
    texts = [(c.get("lang"), t) for c in contents if (t := _text(c))]
    english = [t for lang, t in texts if lang == "en"]
    return next(iter(english or [t for _, t in texts]), None)


def _ref_types(element: Element) -> tuple[str, ...]:
    return tuple((element.get("refType") or "").split())


def _bool(text: str | None) -> bool | None:
    return {"true": True, "1": True, "false": False, "0": False}.get(text or "")


def _date(text: str | None, where: str) -> date:
    match = _XS_DATE.fullmatch(text or "")
    if match is None:
        raise CalibrationError(f"{where}: {text!r} is not an xs:date")
    try:
        return date.fromisoformat(match.group(1))
    except ValueError as exc:
        raise CalibrationError(f"{where}: {text!r} is not a calendar date") from exc


def _optional_date(text: str | None, where: str) -> date | None:
    return None if text is None else _date(text, where)


def _number(literal: str, where: str) -> float:
    value = float(literal) if _DECIMAL.fullmatch(literal) else math.nan
    if not math.isfinite(value):
        raise CalibrationError(f"{where}: {literal!r} is not a finite D-SI decimal number")
    return value


def _literals(
    element: Element | None, name: str, count: int | None, where: str
) -> tuple[str, ...]:
    """Return the whitespace-separated literals of child `name`, broadcast to `count` entries.

    A missing or empty child gives (); the caller decides whether it was required.
    """
    literals = tuple((_child_text(element, name) or "").split())
    if count is None or len(literals) in {0, count}:
        return literals
    if len(literals) == 1:
        return literals * count
    raise CalibrationError(f"{where}: {name} has {len(literals)} entries for {count} values")


def _identifications(element: Element) -> tuple[DccIdentification, ...]:
    return tuple(
        DccIdentification(
            issuer=_child_text(i, "issuer") or "other",
            value=_child_text(i, "value") or "",
            name=_content(_child(i, "name")) or _content(_child(i, "description")),
        )
        for i in _path(element, "identifications", "identification")
    )


def _contact(element: Element) -> DccContact:
    location = _child(element, "location")
    return DccContact(
        name=_content(_child(element, "name")),
        email=_child_text(element, "eMail"),
        city=_child_text(location, "city"),
        country_code=_child_text(location, "countryCode"),
    )


def _item(element: Element) -> DccItem:
    return DccItem(
        name=_content(_child(element, "name")),
        manufacturer=_content(_child(_child(element, "manufacturer"), "name")),
        model=_child_text(element, "model"),
        identifications=_identifications(element),
    )


def _statement(element: Element, where: str) -> DccStatement:
    data = _child(element, "data")
    return DccStatement(
        ref_types=_ref_types(element),
        declaration=_content(_child(element, "declaration")),
        norms=tuple(t for n in _children(element, "norm") if (t := _text(n))),
        convention=_child_text(element, "convention"),
        date=_optional_date(_child_text(element, "date"), f"{where} statement date"),
        period=_child_text(element, "period"),
        valid=_bool(_child_text(element, "valid")),
        traceable=_bool(_child_text(element, "traceable")),
        conformity=_child_text(element, "conformity"),
        quantities=() if data is None else tuple(_data_quantities(data, where)),
    )


def _recalibration_due(statements: tuple[DccStatement, ...], end: date, where: str) -> date | None:
    """The basic_recalibration date, or `end` plus its xs:duration period (PnYnMnD)."""
    for statement in (s for s in statements if RECALIBRATION in s.ref_types):
        if statement.date is not None:
            return statement.date
        if statement.period is None:  # a declaration only, e.g. "recalibrate in due time"
            continue
        match = _DURATION.fullmatch(statement.period or "")
        if match is None or statement.period == "P":
            raise CalibrationError(
                f"{where}: recalibration period {statement.period!r} is not PnYnMnD"
            )
        years, months, days = (int(part or 0) for part in match.groups())
        month_index = end.month - 1 + months + 12 * years
        year, month = end.year + month_index // 12, month_index % 12 + 1
        day = min(end.day, calendar.monthrange(year, month)[1])
        return date.fromordinal(date(year, month, day).toordinal() + days)
    return None


def _equipment(element: Element) -> DccEquipment:
    certificate = _child(element, "certificate")
    return DccEquipment(
        name=_content(_child(element, "name")),
        ref_types=_ref_types(element),
        manufacturer=_content(_child(_child(element, "manufacturer"), "name")),
        model=_child_text(element, "model"),
        identifications=_identifications(element),
        certificate_id=_child_text(certificate, "referralID"),
        certificate_procedure=_child_text(certificate, "procedure"),
        certificate_value=_child_text(certificate, "value"),
    )


def _measurement_result(element: Element, where: str) -> DccMeasurementResult:
    return DccMeasurementResult(
        name=_content(_child(element, "name")),
        ref_types=_ref_types(element),
        equipment=tuple(
            map(_equipment, _path(element, "measuringEquipments", "measuringEquipment"))
        ),
        results=tuple(
            DccResult(
                name=_content(_child(r, "name")),
                ref_types=_ref_types(r),
                quantities=tuple(_data_quantities(_required(r, "data", f"{where} result"), where)),
            )
            for r in _path(element, "results", "result")
        ),
    )


def _data_quantities(element: Element, where: str) -> Iterator[DccQuantity]:
    """Yield the quantities of a dcc:data or dcc:list, descending into nested lists only."""
    for child in element:
        if _local(child) == "quantity":
            yield _quantity(child, where)
        elif _local(child) == "list":
            yield from _data_quantities(child, where)


def _quantity(element: Element, where: str) -> DccQuantity:
    name, ref_types = _content(_child(element, "name")), _ref_types(element)
    here = f"{where}, quantity {name or ' '.join(ref_types) or '(unnamed)'}"
    form = next((c for c in element if _local(c) in _QUANTITY_FORMS), None)
    kind = "" if form is None else _local(form)
    if form is None or kind not in {"real", "realListXMLList", "hybrid", "constant"}:
        text = _content(form) if kind == "noQuantity" else None
        return DccQuantity(
            name=name, ref_types=ref_types, kind=kind, representations=(), text=text
        )
    parts = list(form) if kind == "hybrid" else [form]
    representations = tuple(
        _values(part, _local(part), here)
        for part in parts
        if _local(part) in {"real", "realListXMLList", "constant"}
    )
    # A quantity without a dcc:name (e.g. the coefficients R0, A, B) is named by its si:label.
    label = next((r.label for r in representations if r.label), None)
    return DccQuantity(
        name=name or label, ref_types=ref_types, kind=kind, representations=representations
    )


def _values(element: Element, kind: str, where: str) -> DccValues:
    """Read an si:real, si:constant or si:realListXMLList."""
    suffix = "XMLList" if kind == "realListXMLList" else ""
    literals = _literals(element, "value" + suffix, None, where)
    units = set(_literals(element, "unit" + suffix, None, where))
    if not literals or len(units) != 1 or (not suffix and len(literals) != 1):
        raise CalibrationError(
            f"{where}: si:{kind} needs its value(s) and one unit, got {literals} in {units}"
        )
    values = tuple(_number(literal, where) for literal in literals)
    if kind == "constant":
        field = "uncertainty" if _child(element, "uncertainty") is not None else "valueStandardMU"
        u = _literals(element, field, 1, where)
        uncertainty = None if not u else _uncertainty_of("standard", u, where=where)
    else:
        uncertainty = _uncertainty(element, len(values), suffix, where)
    label = _child_text(element, "label")
    return DccValues(
        unit=units.pop(), values=values, literals=literals, uncertainty=uncertainty, label=label
    )


def _uncertainty(element: Element, count: int, suffix: str, where: str) -> DccUncertainty | None:
    """Read expandedUnc, coverageInterval or (D-SI 2.2) measurementUncertaintyUnivariate."""
    forms = {name + suffix: kind_field for name, kind_field in _UNCERTAINTY_FORMS.items()}
    wrapper = _child(element, "measurementUncertaintyUnivariate" + suffix)
    for form in wrapper if wrapper is not None else element:
        if (kind_field := forms.get(_local(form))) is None:
            continue
        kind, field = kind_field
        expanded = kind == "expanded"
        return _uncertainty_of(
            kind,
            _literals(form, field + suffix, count, where),
            where=where,
            factors=_literals(form, "coverageFactor" + suffix, count, where) if expanded else (),
            probabilities=_literals(form, "coverageProbability" + suffix, count, where),
            distributions=_literals(form, "distribution" + suffix, count, where),
        )
    return None


def _uncertainty_of(
    kind: _UncertaintyKind,
    literals: tuple[str, ...],
    *,
    where: str,
    factors: tuple[str, ...] = (),
    probabilities: tuple[str, ...] = (),
    distributions: tuple[str, ...] = (),
) -> DccUncertainty:
    if not literals or (kind == "expanded" and not factors):
        raise CalibrationError(f"{where}: an {kind} uncertainty without its value or k")
    return DccUncertainty(
        kind=kind,
        values=tuple(_number(literal, where) for literal in literals),
        literals=literals,
        coverage_factors=tuple(_number(k, where) for k in factors),
        coverage_probabilities=tuple(_number(p, where) for p in probabilities),
        distributions=distributions,
    )
