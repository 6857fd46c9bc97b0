# SPDX-License-Identifier: Apache-2.0
"""DCC import, mapping to `Certificate`, export, round trip and validation against PTB's XSD.

PTB's example DCCs are read from ../shared/fixtures/dcc beside the clone (they are PTB's and
are not copied into the project); those cases skip, saying so, when the folder is absent.
Numbers are checked against the XML text read here with a plain XPath, independently of the
parser. The project's own DCC files (tests/calibration/data) were written by the exporter.
"""

import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from defusedxml.ElementTree import fromstring
from xmlschema.locations import FALLBACK_LOCATIONS

from calibration import (
    CalibrationError,
    Certificate,
    DccContact,
    DccEquipment,
    DccIdentification,
    DccItem,
    certificate_to_dcc,
    dcc_to_certificate,
    parse_dcc,
)
from tests.calibration.factories import CASE2_POINTS, make_certificate

REPO = Path(__file__).resolve().parents[2]
FIXTURES = (REPO.parent / "shared" / "fixtures" / "dcc").resolve()
SCHEMA = REPO / "calibration" / "schema"
DATA = Path(__file__).resolve().parent / "data"
NS = {"dcc": "https://ptb.de/dcc", "si": "https://ptb.de/si"}
KELVIN, CELSIUS, ONE, PERCENT = r"\kelvin", r"\degreecelsius", r"\one", r"\percent"
TEMPERATURE_FILES = (
    "dcc_gp_temperature_typical_v12.xml",
    "dcc_gp_temperature_simplified_v12.xml",
    "dcc_gp_temperature_extensive_v12.xml",
    "dcc_gp_temperature_typical_adjustment_v12.xml",
)
HUMIDITY = "dcc_gp_humidity_v1.0.xml"
RESISTANCE = "dcc_gp_temperatur_resistance_v12.xml"
SPHERE = "siliziumkugel_2_4_0.xml"


def fixture(name: str) -> bytes:
    """Return PTB's example DCC `name`, or skip when ../shared/fixtures/dcc is not there."""
    if not FIXTURES.is_dir():
        pytest.skip(
            f"PTB's example DCCs are not at {FIXTURES}: CI puts ../shared/fixtures beside the "
            "clone; they are PTB's files and are not copied into metrogate"
        )
    return (FIXTURES / name).read_bytes()


def xml_column(xml: bytes, ref_type: str, unit: str, element: str = "valueXMLList") -> list[str]:
    """Read, with a plain XPath, the literals of one result column in one unit."""
    root = fromstring(xml)
    quantity = f".//dcc:results//dcc:quantity[@refType='{ref_type}']"
    lists = root.findall(f"{quantity}/si:realListXMLList", NS) + root.findall(
        f"{quantity}/si:hybrid/si:realListXMLList", NS
    )
    (match,) = [x for x in lists if x.findtext("si:unitXMLList", namespaces=NS) == unit]
    text = match.findtext(f".//si:{element}", namespaces=NS)
    assert text is not None
    return text.split()


# ----------------------------------------------------------- PTB's examples: what each yields
# Every file in the folder must be listed: a new example needs a decision (import or refuse).
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "dcc_gp_temperature_typical_v12.xml": ("3.1.1", KELVIN, "5 points"),
    "dcc_gp_temperature_simplified_v12.xml": ("3.1.1", KELVIN, "5 points"),
    "dcc_gp_temperature_extensive_v12.xml": ("3.1.1", KELVIN, "5 points"),
    "dcc_gp_temperature_typical_adjustment_v12.xml": ("3.1.1", KELVIN, "5 points"),
    HUMIDITY: ("3.1.2", ONE, r"do not run one way.*points=range\(0, 4\) or points=range\(3, 7\)"),
    RESISTANCE: ("3.1.1", KELVIN, r"another quantity .*sensor characteristic.*no basic_measure"),
    SPHERE: ("2.4.0", r"\kilogram", r"values of the item itself \(mass = 1\.00007841 \\kilogram"),
}


def test_every_fixture_is_listed_with_its_outcome() -> None:
    fixture(HUMIDITY)
    assert sorted(p.name for p in FIXTURES.glob("*.xml")) == sorted(OUTCOMES)


@pytest.mark.parametrize(("name", "outcome"), OUTCOMES.items())
def test_each_fixture_imports_then_maps_or_is_refused(name: str, outcome: tuple[str, ...]) -> None:
    version, unit, expected = outcome
    dcc = parse_dcc(fixture(name))
    assert dcc.schema_version == version
    if expected.endswith("points"):
        certificate = dcc_to_certificate(dcc, unit=unit)
        assert f"{len(certificate.points)} points" == expected
    else:
        with pytest.raises(CalibrationError, match=expected):
            dcc_to_certificate(dcc, unit=unit)


COLUMNS = [
    (name, ref_type, unit)
    for name in TEMPERATURE_FILES
    for ref_type, unit in (
        ("basic_referenceValue", KELVIN),
        ("basic_referenceValue", CELSIUS),
        ("basic_measuredValue", KELVIN),
        ("basic_measuredValue", CELSIUS),
        ("basic_measurementError", KELVIN),
    )
] + [
    (HUMIDITY, ref_type, unit)
    for ref_type in ("basic_referenceValue", "basic_measuredValue", "basic_measurementError")
    for unit in (ONE, PERCENT)
]


@pytest.mark.parametrize(("name", "ref_type", "unit"), COLUMNS)
def test_numbers_read_equal_the_xml(name: str, ref_type: str, unit: str) -> None:
    xml = fixture(name)
    literals = xml_column(xml, ref_type, unit)
    (quantity,) = [
        q for r in parse_dcc(xml).results for q in r.quantities if ref_type in q.ref_types
    ]
    values = quantity.in_unit(unit)
    assert values is not None
    assert values.literals == tuple(literals)
    assert values.values == tuple(float(literal) for literal in literals)


@pytest.mark.parametrize("name", [*TEMPERATURE_FILES, HUMIDITY])
def test_error_uncertainty_equals_the_xml_with_one_entry_for_all(name: str) -> None:
    xml = fixture(name)
    unit = ONE if name == HUMIDITY else KELVIN
    quantities = [q for r in parse_dcc(xml).results for q in r.quantities]
    (error,) = [q for q in quantities if "basic_measurementError" in q.ref_types]
    values = error.in_unit(unit)
    assert values is not None
    assert values.uncertainty is not None
    count = len(values.values)
    for element, read in (
        ("uncertaintyXMLList", values.uncertainty.values),
        ("coverageFactorXMLList", values.uncertainty.coverage_factors),
        ("coverageProbabilityXMLList", values.uncertainty.coverage_probabilities),
    ):
        literals = xml_column(xml, "basic_measurementError", unit, element)
        # D-SI: a one-entry XML list applies to every value.
        expected = [float(x) for x in literals] * (count if len(literals) == 1 else 1)
        assert list(read) == expected
    assert values.uncertainty.kind == "expanded"
    assert set(values.uncertainty.coverage_factors) == {2.0}


@pytest.mark.parametrize("name", TEMPERATURE_FILES)
def test_temperature_certificate_is_corrections_at_indications(name: str) -> None:
    xml = fixture(name)
    certificate = dcc_to_certificate(parse_dcc(xml), unit=KELVIN)
    indications = xml_column(xml, "basic_measuredValue", KELVIN)
    errors = xml_column(xml, "basic_measurementError", KELVIN)
    assert [p.indication for p in certificate.points] == [float(x) for x in indications]
    assert [p.correction for p in certificate.points] == [-float(e) for e in errors]
    assert {(p.expanded_uncertainty, p.coverage_factor) for p in certificate.points} == {
        (0.061, 2)
    }
    assert (certificate.unit, certificate.issuer, certificate.kind) == (
        "K",
        "Kalibrierfirma GmbH",
        "calibration",
    )
    assert certificate.valid_from == datetime(1957, 8, 13, tzinfo=UTC)
    assert certificate.valid_until == datetime.combine(date(1959, 10, 22), time.max, UTC)


def test_adjusted_sensor_maps_the_results_after_adjustment_not_before() -> None:
    certificate = dcc_to_certificate(
        parse_dcc(fixture("dcc_gp_temperature_typical_adjustment_v12.xml")), unit=KELVIN
    )
    # Before adjustment (an influence condition) the first error was 0.105 K; after, 0.072 K.
    assert certificate.points[0].correction == -0.072


def test_typical_core_data_item_and_laboratory() -> None:
    dcc = parse_dcc(fixture("dcc_gp_temperature_typical_v12.xml"))
    assert dcc.unique_identifier == "GP_DCC_temperature_typical_1.2"
    assert (dcc.country_code, dcc.languages) == ("DE", ("de", "en"))
    assert dcc.begin_performance_date == dcc.end_performance_date == date(1957, 8, 13)
    assert dcc.recalibration_due == date(1959, 10, 22)
    assert dcc.issue_date is None  # coreData/issueDate is new in DCC 3.2
    assert dcc.laboratory == DccContact(
        name="Kalibrierfirma GmbH",
        email="info@kalibrierfirma.xx",
        city="Musterstadt",
        country_code="DE",
    )
    (item,) = dcc.items
    assert (item.name, item.manufacturer, item.model) == ("Temperature sensor", "String", "String")
    assert item.serial_number == "string-manufacturer-item"
    assert [i.issuer for i in item.identifications] == [
        "manufacturer",
        "customer",
        "calibrationLaboratory",
    ]
    assert dcc.responsible_persons == ("Michaela Musterfrau", "Michael Mustermann")
    assert dcc.identifications[0].value == "string-calibrationLaboratory-coreData"


def test_standards_used_give_the_traceability_links_upward() -> None:
    extensive = parse_dcc(fixture("dcc_gp_temperature_extensive_v12.xml"))
    assert [e.certificate_id for e in extensive.equipment] == [
        None,
        "GP-mE-Certificate2",
        "GP-mE-Certificate3",
    ]
    assert extensive.equipment[2].certificate_procedure == "SHA256"
    assert extensive.equipment[2].name == "DAkkS-Reference (PT25)"
    humidity = parse_dcc(fixture(HUMIDITY))
    assert {e.ref_types for e in humidity.equipment} == {("basic_standardUsed",)}
    assert [e.certificate_id for e in humidity.equipment] == [
        "GP-mE-Certificate-x",
        "GP-mE-Certificate-y",
    ]


def test_humidity_branches_map_once_chosen() -> None:
    xml = fixture(HUMIDITY)
    dcc = parse_dcc(xml)
    indications = [float(x) for x in xml_column(xml, "basic_measuredValue", ONE)]
    errors = [float(x) for x in xml_column(xml, "basic_measurementError", ONE)]
    u_literals = xml_column(xml, "basic_measurementError", ONE, "uncertaintyXMLList")
    uncertainties = [float(x) for x in u_literals]
    for branch in (range(4), range(3, 7)):
        certificate = dcc_to_certificate(dcc, unit=ONE, points=branch)
        expected = sorted((indications[i], -errors[i], uncertainties[i]) for i in branch)
        assert [
            (p.indication, p.correction, p.expanded_uncertainty) for p in certificate.points
        ] == expected
        assert certificate.unit == "1"
    assert dcc.recalibration_due == date(1959, 10, 22)
    assert len(dcc.items) == 2  # the display unit and the sensor


def test_humidity_error_in_percent_has_no_uncertainty_and_is_refused() -> None:
    with pytest.raises(
        CalibrationError, match=r"no measurement error with uncertainty in \\percent"
    ):
        dcc_to_certificate(parse_dcc(fixture(HUMIDITY)), unit=PERCENT, points=range(4))


def test_temperature_error_is_stated_in_kelvin_only() -> None:
    dcc = parse_dcc(fixture("dcc_gp_temperature_typical_v12.xml"))
    with pytest.raises(CalibrationError, match=r"stated in \\kelvin, not in \\degreecelsius"):
        dcc_to_certificate(dcc, unit=CELSIUS)


def test_resistance_thermometer_values_and_coefficients() -> None:
    dcc = parse_dcc(fixture(RESISTANCE))
    measured, coefficients = dcc.results
    (resistance,) = [q for q in measured.quantities if "basic_measuredValue" in q.ref_types]
    (ohms,) = resistance.representations
    assert ohms.unit == r"\kilogram\metre\tothe{2}\ampere\tothe{-2}\second\tothe{-3}"
    assert ohms.literals[:2] == ("100.0220", "103.9329")
    assert ohms.uncertainty is not None
    assert ohms.uncertainty.literals[:2] == ("0.0039", "0.0041")
    names = {q.name: q.representations[0].values[0] for q in coefficients.quantities}
    assert names == {"R0": 100.0225, "A": 0.0039155, "B": -6.469e-07}


def test_silicon_sphere_mass_and_volume_equal_the_xml() -> None:
    xml = fixture(SPHERE)
    root = fromstring(xml)
    dcc = parse_dcc(xml)
    assert (dcc.schema_version, dcc.unique_identifier) == ("2.4.0", "PTB - 11129 18")
    assert dcc.recalibration_due is None
    for data_id, result in zip(("Mass", "Volume"), dcc.results, strict=True):
        real = f".//dcc:data[@id='{data_id}']//si:real"
        nominal, marking, value = result.quantities
        assert (nominal.kind, nominal.text, marking.text) == ("noQuantity", "1 kg", "none")
        (values,) = value.representations
        assert values.unit == root.findtext(f"{real}/si:unit", namespaces=NS)
        assert values.literals == (root.findtext(f"{real}/si:value", namespaces=NS),)
        assert values.uncertainty is not None
        u_text = root.findtext(f"{real}/si:expandedUnc/si:uncertainty", namespaces=NS)
        assert values.uncertainty.literals == (u_text,)
        assert values.uncertainty.coverage_factors == (2.0,)
        assert values.uncertainty.coverage_probabilities == (0.95,)
    assert dcc.results[0].quantities[2].representations[0].values == (1.00007841,)


def test_silicon_sphere_statements_and_no_standards() -> None:
    dcc = parse_dcc(fixture(SPHERE))
    assert dcc.measurement_results[0].equipment == ()
    statements = {s.convention: s for s in dcc.statements if s.convention}
    assert statements["CIPM-MRA"].valid is True
    assert statements["Tracebility"].traceable is True  # PTB's spelling


# ------------------------------------------------------------ the project's own DCC documents
def export(certificate: Certificate, **overrides: Any) -> bytes:
    """Export with the administrative data of a balance calibrated by a provincial institute."""
    arguments: dict[str, Any] = {
        "coverage_probability": 0.95,
        "item": DccItem(
            name="Electronic balance",
            manufacturer="Mettler Toledo",
            model="XPR2003S",
            identifications=(DccIdentification(issuer="manufacturer", value="B512345678"),),
        ),
        "customer": DccContact(name="Energy audit customer", city="Hangzhou"),
        "responsible_persons": ("Zhang Wei", "Li Na"),
        "software_release": "0.1.0",
        "country_code": "CN",
        "laboratory_code": "CNAS L0001",
        "standards": (
            DccEquipment(
                name="E2 weight set 1 g - 1 kg",
                identifications=(DccIdentification(issuer="owner", value="W-2019-07"),),
                certificate_id="NIM-2025-M-0042",
            ),
        ),
        "dsi_unit": r"\gram",
    }
    arguments.update(overrides)
    return certificate_to_dcc(certificate, **arguments)


@pytest.fixture(scope="module")
def dcc_schema() -> xmlschema.XMLSchema10:
    """PTB's dcc.xsd 3.2.0 with its imports resolved offline (calibration/schema/README.md)."""

    def local(uri: str) -> str:
        if uri.startswith("https://ptb.de/"):
            return (SCHEMA / uri.removeprefix("https://ptb.de/")).as_uri()
        if uri.endswith("/xmldsig-core-schema.xsd"):
            signature = FALLBACK_LOCATIONS["http://www.w3.org/2000/09/xmldsig#"]
            assert isinstance(signature, str)
            return signature
        return uri

    return xmlschema.XMLSchema10(
        str(SCHEMA / "dcc" / "v3.2.0" / "dcc.xsd"), uri_mapper=local, allow="local"
    )


def test_export_validates_against_ptb_schema(dcc_schema: xmlschema.XMLSchema10) -> None:
    xml = export(make_certificate(CASE2_POINTS))
    assert [str(e) for e in dcc_schema.iter_errors(xml)] == []


def test_the_schema_rejects_what_it_should(dcc_schema: xmlschema.XMLSchema10) -> None:
    xml = export(make_certificate(CASE2_POINTS))
    assert not dcc_schema.is_valid(xml.replace(b'schemaVersion="3.2.0"', b'schemaVersion="3.1.2"'))
    k_below_one = xml.replace(b"<si:coverageFactorXMLList>2.0", b"<si:coverageFactorXMLList>0.5")
    assert not dcc_schema.is_valid(k_below_one)


def test_ptb_examples_validate_against_the_vendored_schema(
    dcc_schema: xmlschema.XMLSchema10,
) -> None:
    # A check of the copied XSD: PTB's 3.1.x examples are valid 3.2.0 once relabelled.
    for name in (*TEMPERATURE_FILES, HUMIDITY, RESISTANCE):
        relabelled = re.sub(rb'schemaVersion="3\.1\.\d"', b'schemaVersion="3.2.0"', fixture(name))
        assert dcc_schema.is_valid(relabelled), name


@pytest.mark.parametrize(
    "points",
    [
        CASE2_POINTS,
        [(0.1, 0.2, 1e-05, 1.0), (10.0, -0.3, 0.05, 1.96), (1e5, 12.5, 3.0, 2.0)],
        [(-40.0, 0.125, 0.061, 2.0), (0.0, -0.0, 0.05, 2.0), (150.0, 1 / 3, 0.2, 2.5)],
    ],
)
def test_export_then_import_gives_the_same_numbers(
    points: list[tuple[float, ...]], dcc_schema: xmlschema.XMLSchema10
) -> None:
    original = make_certificate(points, unit="g")
    xml = export(original)
    assert dcc_schema.is_valid(xml)
    dcc = parse_dcc(xml)
    again = dcc_to_certificate(dcc, unit=r"\gram")
    assert again.points == original.points
    assert (again.certificate_id, again.unit, again.issuer) == (
        original.certificate_id,
        original.unit,
        original.issuer,
    )
    assert again.valid_from.date() == original.valid_from.date()
    assert again.valid_until.date() == original.valid_until.date()
    assert dcc.laboratory_code == "CNAS L0001"
    assert dcc.items[0].serial_number == "B512345678"
    (standard,) = dcc.equipment
    assert (standard.certificate_id, standard.ref_types) == (
        "NIM-2025-M-0042",
        ("basic_normalUsed",),
    )


def test_exported_reference_values_are_the_printed_sums() -> None:
    points = [(306.32, -0.072, 0.061, 2.0), (373.21, -0.089, 0.061, 2.0)]
    xml = export(make_certificate(points, unit="K"), dsi_unit=KELVIN)
    assert xml_column(xml, "basic_referenceValue", KELVIN) == ["306.248", "373.121"]
    assert xml_column(xml, "basic_measurementError", KELVIN) == ["0.072", "0.089"]


def test_project_dcc_file_reimports_to_case2() -> None:
    # tests/calibration/data/metrogate_case2_3.2.0.xml was written by certificate_to_dcc.
    xml = (DATA / "metrogate_case2_3.2.0.xml").read_bytes()
    certificate = dcc_to_certificate(parse_dcc(xml), unit=r"\gram")
    assert certificate.points == make_certificate(CASE2_POINTS).points
    assert xml == export(make_certificate(CASE2_POINTS)), "exporter output changed"


def test_export_time_zone_sets_the_calendar_dates() -> None:
    beijing = timezone(timedelta(hours=8))
    late = make_certificate(valid_from=datetime(2026, 1, 9, 20, tzinfo=UTC))
    dcc = parse_dcc(export(late, tz=beijing))
    assert dcc.begin_performance_date == date(2026, 1, 10)
    assert dcc_to_certificate(dcc, unit=r"\gram", tz=beijing).valid_from == datetime(
        2026, 1, 10, tzinfo=beijing
    )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"kind": "verification"}, CalibrationError, "verification"),
        ({"points": [(500.0, -0.1, 0.06, 0.5)]}, CalibrationError, "k >= 1"),
        ({"unit": "lb"}, ValueError, "no known D-SI spelling"),
    ],
)
def test_export_refuses(change: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        export(make_certificate(**change), dsi_unit=None)


UNNAMED_ITEM = DccItem(
    name=None,
    manufacturer="Mettler Toledo",
    model=None,
    identifications=(DccIdentification(issuer="manufacturer", value="B1"),),
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"coverage_probability": 1.5}, "not in"),
        ({"country_code": "CHN"}, "2 letters"),
        ({"responsible_persons": ()}, "responsible person"),
        ({"item": UNNAMED_ITEM}, "dcc:name"),
    ],
)
def test_export_refuses_incomplete_administrative_data(
    override: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        export(make_certificate(), **override)


# ------------------------------------------------------------------ parser edge cases, inline
def dcc_text(results: str, *, statements: str = "", version: str = "3.3.0") -> str:
    """A minimal DCC around `results`; not schema-complete, enough for the parser."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<dcc:digitalCalibrationCertificate xmlns:dcc="https://ptb.de/dcc" xmlns:si="https://ptb.de/si"
    schemaVersion="{version}">
  <dcc:administrativeData>
    <dcc:coreData>
      <dcc:countryCodeISO3166_1>CN</dcc:countryCodeISO3166_1>
      <dcc:uniqueIdentifier>T-1</dcc:uniqueIdentifier>
      <dcc:beginPerformanceDate>2026-01-10</dcc:beginPerformanceDate>
      <dcc:endPerformanceDate>2026-01-11</dcc:endPerformanceDate>
    </dcc:coreData>
    <dcc:calibrationLaboratory><dcc:contact><dcc:name><dcc:content>Lab</dcc:content></dcc:name>
    </dcc:contact></dcc:calibrationLaboratory>
    <dcc:statements>{statements}</dcc:statements>
  </dcc:administrativeData>
  <dcc:measurementResults><dcc:measurementResult><dcc:results>{results}</dcc:results>
  </dcc:measurementResult></dcc:measurementResults>
</dcc:digitalCalibrationCertificate>"""


def result_text(*quantities: str, ref_type: str = "r1") -> str:
    joined = "".join(quantities)
    return (
        f'<dcc:result refType="{ref_type}"><dcc:data><dcc:list>{joined}</dcc:list></dcc:data>'
        "</dcc:result>"
    )


def quantity_text(ref_type: str, body: str) -> str:
    return f'<dcc:quantity refType="{ref_type}">{body}</dcc:quantity>'


def xml_list(values: str, unit: str, uncertainty: str = "") -> str:
    return (
        f"<si:realListXMLList><si:valueXMLList>{values}</si:valueXMLList>"
        f"<si:unitXMLList>{unit}</si:unitXMLList>{uncertainty}</si:realListXMLList>"
    )


def recalibration_period(period: str) -> str:
    return (
        f'<dcc:statement refType="basic_recalibration"><dcc:period>{period}</dcc:period>'
        "</dcc:statement>"
    )


KWH = r"\kilo\watt\hour"
EXPANDED_MU = (
    "<si:measurementUncertaintyUnivariateXMLList><si:expandedMUXMLList>"
    "<si:valueExpandedMUXMLList>0.2 0.3</si:valueExpandedMUXMLList>"
    "<si:coverageFactorXMLList>2</si:coverageFactorXMLList>"
    "<si:coverageProbabilityXMLList>0.95</si:coverageProbabilityXMLList>"
    "</si:expandedMUXMLList></si:measurementUncertaintyUnivariateXMLList>"
)
ENERGY_METER = result_text(
    quantity_text("basic_measuredValue", xml_list("100 200", KWH)),
    quantity_text("basic_correction", xml_list("0.5 -0.25", KWH, EXPANDED_MU)),
)


def test_d_si_2_2_uncertainty_and_corrections_map() -> None:
    dcc = parse_dcc(dcc_text(ENERGY_METER))
    certificate = dcc_to_certificate(dcc, unit=KWH, valid_until=datetime(2027, 1, 1, tzinfo=UTC))
    assert certificate.unit == "kWh"
    assert [(p.indication, p.correction, p.expanded_uncertainty) for p in certificate.points] == [
        (100.0, 0.5, 0.2),
        (200.0, -0.25, 0.3),
    ]


def test_no_recalibration_date_needs_valid_until() -> None:
    with pytest.raises(CalibrationError, match="pass valid_until"):
        dcc_to_certificate(parse_dcc(dcc_text(ENERGY_METER)), unit=KWH)


@pytest.mark.parametrize(
    ("period", "due"),
    [("P1Y6M10D", date(2027, 7, 21)), ("P12M", date(2027, 1, 11)), ("P30D", date(2026, 2, 10))],
)
def test_recalibration_period_counts_from_the_end_of_calibration(period: str, due: date) -> None:
    statement = recalibration_period(period)
    assert parse_dcc(dcc_text(ENERGY_METER, statements=statement)).recalibration_due == due


SINGLE_FORMS = {
    "expandedMU": (
        (
            "<si:real><si:value>1.5</si:value><si:unit>\\volt</si:unit>"
            "<si:measurementUncertaintyUnivariate><si:expandedMU><si:valueExpandedMU>0.02"
            "</si:valueExpandedMU><si:coverageFactor>2</si:coverageFactor><si:coverageProbability>"
            "0.95</si:coverageProbability></si:expandedMU></si:measurementUncertaintyUnivariate>"
            "</si:real>"
        ),
        ("expanded", (0.02,), (2.0,)),
    ),
    "standardMU": (
        (
            "<si:real><si:value>1.5</si:value><si:unit>\\volt</si:unit>"
            "<si:measurementUncertaintyUnivariate><si:standardMU><si:valueStandardMU>0.01"
            "</si:valueStandardMU></si:standardMU></si:measurementUncertaintyUnivariate></si:real>"
        ),
        ("standard", (0.01,), ()),
    ),
    "coverageInterval": (
        (
            "<si:real><si:value>1.5</si:value><si:unit>\\volt</si:unit><si:coverageInterval>"
            "<si:standardUnc>0.01</si:standardUnc><si:intervalMin>1.48</si:intervalMin>"
            "<si:intervalMax>1.52</si:intervalMax><si:coverageProbability>0.95"
            "</si:coverageProbability></si:coverageInterval></si:real>"
        ),
        ("standard", (0.01,), ()),
    ),
    "constant": (
        (
            "<si:constant><si:value>299792458</si:value><si:unit>\\metre\\second\\tothe{-1}"
            "</si:unit><si:uncertainty>0</si:uncertainty></si:constant>"
        ),
        ("standard", (0.0,), ()),
    ),
    "hybrid": (
        (
            "<si:hybrid><si:real><si:value>1.5</si:value><si:unit>\\volt</si:unit></si:real>"
            "<si:real><si:value>1500</si:value><si:unit>\\milli\\volt</si:unit></si:real></si:hybrid>"
        ),
        None,
    ),
}


@pytest.mark.parametrize("form", SINGLE_FORMS)
def test_single_value_forms(form: str) -> None:
    body, expected = SINGLE_FORMS[form]
    dcc = parse_dcc(dcc_text(result_text(quantity_text("basic_measuredValue", body))))
    (quantity,) = dcc.results[0].quantities
    first = quantity.representations[0]
    assert first.values == (float(re.findall(r"<si:value>([^<]+)", body)[0]),)
    if expected is None:
        assert [r.unit for r in quantity.representations] == [r"\volt", r"\milli\volt"]
        assert quantity.in_unit(r"\milli\volt") is quantity.representations[1]
        assert quantity.in_unit(r"\ampere") is None
        return
    assert first.uncertainty is not None
    u = first.uncertainty
    assert (u.kind, u.values, u.coverage_factors) == expected


def test_d_si_1_spelling_of_celsius_is_found() -> None:
    body = "<si:real><si:value>20.775</si:value><si:unit>\\degreeCelsius</si:unit></si:real>"
    dcc = parse_dcc(dcc_text(result_text(quantity_text("basic_measuredValue", body))))
    values = dcc.results[0].quantities[0].in_unit(CELSIUS)
    assert values is not None
    assert (values.unit, values.values) == (r"\degreeCelsius", (20.775,))


def test_old_namespaces_and_unread_forms_are_kept() -> None:
    text = dcc_text(
        result_text(quantity_text("x", "<si:complex><si:valueReal>1</si:valueReal></si:complex>"))
    ).replace('xmlns:si="https://ptb.de/si"', 'xmlns:si="https://ptb.de/si/smartcom/d-si/v1_0_1"')
    (quantity,) = parse_dcc(text).results[0].quantities
    assert (quantity.kind, quantity.representations) == ("complex", ())


REFUSED = [
    ("not xml <", "not well-formed"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', "DTD"),
    ("<x xmlns='https://example.org/dcc'/>", "not a PTB DCC"),
    (dcc_text("", version="1.0.0"), "schema version '1.0.0'"),
    (dcc_text("").replace("<dcc:uniqueIdentifier>T-1</dcc:uniqueIdentifier>", ""), "uniqueIdent"),
    (dcc_text("").replace("2026-01-11", "2026-02-30"), "not a calendar date"),
    (dcc_text(result_text(quantity_text("m", xml_list("1 nan", KWH)))), "'nan' is not a finite"),
    (dcc_text(result_text(quantity_text("m", xml_list("1e999", KWH)))), "'1e999' is not a finite"),
    (dcc_text(result_text(quantity_text("m", xml_list("1 2 3", KWH, EXPANDED_MU)))), "2 entries"),
    (dcc_text(result_text(quantity_text("m", xml_list("1 2", f"{KWH} \\watt")))), "one unit"),
    (
        dcc_text(
            result_text(
                quantity_text("m", SINGLE_FORMS["expandedMU"][0].replace(">1.5<", ">1 2<"))
            )
        ),
        "si:real needs its value",
    ),
    (dcc_text("", statements=recalibration_period("PT5H")), "PnYnMnD"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_parse_refuses_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(CalibrationError, match=re.escape(message)):
        parse_dcc(text)


def flip_errors(xml: bytes, old: str, new: str) -> bytes:
    before, after = (f"<si:valueXMLList>{v}</si:valueXMLList>".encode() for v in (old, new))
    return xml.replace(before, after)


MAPPING_REFUSALS: list[tuple[Callable[[bytes], bytes], dict[str, Any], str]] = [
    (lambda x: flip_errors(x, "0.1 0.2", "-0.1 -0.2"), {}, "opposite sign convention"),
    (lambda x: flip_errors(x, "0.1 0.2", "0.1 0.5"), {}, "is not indication - reference"),
    (lambda x: x, {"points": [5]}, "do not index"),
    (lambda x: x, {"result": "nothing"}, "0 results match 'nothing'"),
    (lambda x: x, {"points": [0, 1, 0]}, "do not run one way"),
]


@pytest.mark.parametrize(("edit", "arguments", "message"), MAPPING_REFUSALS)
def test_mapping_refuses_with_a_reason(
    edit: Callable[[bytes], bytes], arguments: dict[str, Any], message: str
) -> None:
    dcc = parse_dcc(edit(export(make_certificate(CASE2_POINTS))))
    with pytest.raises(CalibrationError, match=re.escape(message)):
        dcc_to_certificate(dcc, unit=r"\gram", **arguments)


def test_points_may_be_listed_downwards() -> None:
    dcc = parse_dcc(export(make_certificate(CASE2_POINTS)))
    downwards = dcc_to_certificate(dcc, unit=r"\gram", points=[1, 0])
    assert downwards.points == make_certificate(CASE2_POINTS).points


def test_two_results_with_errors_need_a_choice() -> None:
    twice = dcc_text(ENERGY_METER + ENERGY_METER.replace('refType="r1"', 'refType="r2"'))
    dcc = parse_dcc(twice)
    with pytest.raises(CalibrationError, match="choose one with result="):
        dcc_to_certificate(dcc, unit=KWH, valid_until=datetime(2027, 1, 1, tzinfo=UTC))
    until = datetime(2027, 1, 1, tzinfo=UTC)
    chosen = dcc_to_certificate(dcc, unit=KWH, result="r2", valid_until=until)
    assert len(chosen.points) == 2


def test_fixture_folder_missing_skips_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "FIXTURES", REPO / "no-such-folder")
    with pytest.raises(pytest.skip.Exception, match="not copied into metrogate"):
        fixture(HUMIDITY)
