# SPDX-License-Identifier: Apache-2.0
"""The traceability chain walk (VIM 2.41; ILAC P10; DOMAIN.md §1), table-driven."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from calibration.chain import (
    CalibratedRange,
    CertificateRecord,
    ChainResult,
    Standard,
    expiring,
    next_change,
    require_traceable,
    resolve_certificate_chain,
    resolve_chain,
)
from calibration.errors import BrokenChainError, CalibrationError

AT = datetime(2026, 6, 1, tzinfo=UTC)
ISSUED = datetime(2026, 1, 10, tzinfo=UTC)
YEAR = timedelta(days=365)

STANDARDS = (
    Standard(id="NIM-T", name="national temperature primary standard", level="national-primary"),
    Standard(
        id="PROV-PRT",
        name="provincial SPRT standard",
        level="public",
        assessment_certificate="[2024]量标浙证字第001号",
        assessment_valid_until=datetime(2028, 1, 1, tzinfo=UTC),
    ),
    Standard(id="ENT-PRT", name="enterprise highest standard PRT", level="enterprise-highest"),
    Standard(id="WS-PT100", name="working standard Pt100", level="working"),
    Standard(id="WS-P", name="working standard pressure gauge", level="working"),
)


def record(number: str, subject: str, *made_with: str, **changes: object) -> CertificateRecord:
    base = CertificateRecord(
        number=number,
        kind="calibration",
        issuer="Zhejiang Institute of Metrology",
        accreditation="CNAS L0001",
        route="ILAC-MRA accredited lab",
        issued=ISSUED,
        interval=YEAR,
        subject=subject,
        made_with=made_with,
        calibrated_range=CalibratedRange(minimum=-50.0, maximum=200.0, unit="°C"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # test overrides


VALID = (
    record("C-PROV", "PROV-PRT", "NIM-T", route="legal metrology institute",
           accreditation="(国)法计(2020)01001号"),
    record("C-ENT", "ENT-PRT", "PROV-PRT"),
    record("C-WS", "WS-PT100", "ENT-PRT", route="in-house", accreditation="",
           procedure="QP-CAL-07"),
    record("C-TT1", "TT-101", "WS-PT100", calibrated_range=CalibratedRange(
        minimum=0.0, maximum=150.0, unit="°C")),
)  # fmt: skip


def replaced(
    records: tuple[CertificateRecord, ...], new: CertificateRecord
) -> list[CertificateRecord]:
    return [new if r.number == new.number else r for r in records]


def resolve(
    records: list[CertificateRecord] | tuple[CertificateRecord, ...], **kw: object
) -> ChainResult:
    return resolve_chain("TT-101/temperature", AT, records=records, standards=STANDARDS, **kw)  # type: ignore[arg-type]  # value only


def test_valid_four_level_chain() -> None:
    result = resolve(VALID, value=80.0)
    assert result.ok, result.failures
    assert [link.subject for link in result.links] == [
        "TT-101/temperature", "WS-PT100", "ENT-PRT", "PROV-PRT", "NIM-T",
    ]  # fmt: skip
    assert [link.depth for link in result.links] == [0, 1, 2, 3, 4]
    assert result.certificate_ids == ("C-TT1", "C-WS", "C-ENT", "C-PROV")
    assert result.roots == ("NIM-T",)
    assert require_traceable(result) is result


@pytest.mark.parametrize(
    ("records", "value", "failing", "reason"),
    [
        pytest.param(
            replaced(VALID, record("C-ENT", "ENT-PRT", "PROV-PRT", interval=timedelta(days=100))),
            None, "ENT-PRT", "expired 2026-04-20", id="expired-middle-link",
        ),
        pytest.param(
            replaced(VALID, record("C-ENT", "ENT-PRT", "PROV-PRT", accreditation="")),
            None, "ENT-PRT", "no accreditation number", id="unaccredited-issuer",
        ),
        pytest.param(
            replaced(VALID, record("C-WS", "WS-PT100", "ENT-PRT", route="in-house",
                                   accreditation="")),
            None, "WS-PT100", "without a documented procedure", id="in-house-undocumented",
        ),
        pytest.param(VALID, 160.0, "TT-101/temperature", "outside the calibrated range",
                     id="value-outside-instrument-range"),
        pytest.param(
            replaced(VALID, record("C-ENT", "ENT-PRT", "PROV-PRT",
                     calibrated_range=CalibratedRange(minimum=0.0, maximum=100.0, unit="°C"))),
            120.0, "ENT-PRT", "value 120.0 °C outside", id="value-outside-upstream-range",
        ),
        pytest.param(
            replaced(VALID, record("C-TT1", "TT-101", "WS-PT100", kind="verification",
                                   passed=False, accuracy_class="A")),
            None, "TT-101/temperature", "verification result: fail", id="failed-verification",
        ),
        pytest.param(
            [r for r in VALID if r.number != "C-ENT"],
            None, "ENT-PRT", "no certificate on record", id="missing-link",
        ),
        pytest.param(
            replaced(VALID, record("C-PROV", "PROV-PRT", route="legal metrology institute")),
            None, "PROV-PRT", "ends before a national primary", id="chain-stops-short",
        ),
    ],
)  # fmt: skip
def test_a_broken_link_is_named(
    records: list[CertificateRecord], value: float | None, failing: str, reason: str
) -> None:
    result = resolve(records, value=value)
    assert not result.ok
    assert [link.subject for link in result.failures] == [failing]
    assert reason in "; ".join(result.failures[0].reasons)
    with pytest.raises(BrokenChainError, match=failing):
        require_traceable(result)


def test_expired_public_standard_assessment_fails_its_link() -> None:
    standards = [
        dataclasses.replace(s, assessment_valid_until=datetime(2026, 3, 1, tzinfo=UTC))
        if s.id == "PROV-PRT"
        else s
        for s in STANDARDS
    ]
    result = resolve_chain("TT-101", AT, records=VALID, standards=standards)
    assert [link.subject for link in result.failures] == ["PROV-PRT"]
    assert "assessment certificate" in result.failures[0].reasons[0]


def test_graph_with_two_upstream_standards_walks_both_and_names_the_broken_one() -> None:
    records = [
        *VALID,
        record("C-FLOW", "FM-7", "WS-PT100", "WS-P", calibrated_range=None),
        record("C-WSP", "WS-P", "PROV-P", calibrated_range=None),  # PROV-P is not registered
    ]
    result = resolve_chain("FM-7", AT, records=records, standards=STANDARDS)
    subjects = [link.subject for link in result.links]
    assert subjects == ["FM-7", "WS-PT100", "ENT-PRT", "PROV-PRT", "NIM-T", "WS-P", "PROV-P"]
    assert [link.subject for link in result.failures] == ["PROV-P"]
    assert "not in the register" in result.failures[0].reasons[0]
    assert result.certificate_ids == ("C-FLOW", "C-WS", "C-ENT", "C-PROV", "C-WSP")


def test_shared_upstream_standard_is_reported_once() -> None:
    records = [*VALID, record("C-FLOW", "FM-7", "WS-PT100", "ENT-PRT", calibrated_range=None)]
    result = resolve_chain("FM-7", AT, records=records, standards=STANDARDS)
    assert result.ok
    assert [link.subject for link in result.links].count("ENT-PRT") == 1


def test_cycle_is_reported_not_looped() -> None:
    records = replaced(VALID, record("C-ENT", "ENT-PRT", "WS-PT100"))
    result = resolve(records)
    assert not result.ok
    assert [link.subject for link in result.failures] == ["WS-PT100"]
    assert "cycle" in result.failures[0].reasons[0]
    assert "WS-PT100 → ENT-PRT → WS-PT100" in result.failures[0].reasons[0]


def test_nmi_certificate_without_standards_is_a_root() -> None:
    records = replaced(
        VALID, record("C-PROV", "PROV-PRT", route="NMI-CIPM-MRA", issuer="NIM", accreditation="")
    )
    result = resolve(records)
    assert result.ok, result.failures
    assert result.roots == ("NMI:NIM",)


def test_the_newest_valid_certificate_is_chosen_and_a_renewal_heals_an_expired_one() -> None:
    old = record("C-ENT-OLD", "ENT-PRT", "PROV-PRT", issued=ISSUED - YEAR)
    result = resolve([*VALID, old])
    assert result.ok
    assert "C-ENT-OLD" not in result.certificate_ids
    expired_only = replaced(
        VALID, record("C-ENT", "ENT-PRT", "PROV-PRT", issued=ISSUED - 2 * YEAR)
    )
    assert not resolve(expired_only).ok


def test_not_yet_valid_and_missing_subject() -> None:
    early = replaced(VALID, record("C-TT1", "TT-101", "WS-PT100", issued=AT + timedelta(days=1)))
    assert "not valid before" in resolve(early).failures[0].reasons[0]
    result = resolve_chain("NOPE", AT, records=VALID, standards=STANDARDS)
    assert result.links[0].reasons == ("no certificate on record for 'NOPE'",)


def test_a_certificate_pinned_by_number_is_walked_even_when_its_subject_has_a_newer_one() -> None:
    # A CT's certificate named in the station file: the reading rests on that one, not on
    # whichever certificate its subject holds last.
    newer = record("C-TT1-NEW", "TT-101", "WS-PT100", issued=ISSUED + timedelta(days=30))
    result = resolve_certificate_chain("C-TT1", AT, records=[*VALID, newer], standards=STANDARDS)
    assert result is not None
    assert result.ok, result.failures
    assert result.subject == "TT-101"
    assert result.certificate_ids == ("C-TT1", "C-WS", "C-ENT", "C-PROV")
    assert result.roots == ("NIM-T",)
    broken = replaced(VALID, record("C-ENT", "ENT-PRT", "PROV-PRT", accreditation=""))
    failed = resolve_certificate_chain("C-TT1", AT, records=iter(broken), standards=STANDARDS)
    assert failed is not None
    assert [link.subject for link in failed.failures] == ["ENT-PRT"]
    assert resolve_certificate_chain("C-NONE", AT, records=VALID, standards=STANDARDS) is None


def test_next_change_is_the_first_start_or_end_of_validity_after_the_instant() -> None:
    # VALID: every record issued 2026-01-10, valid a year; PROV-PRT's assessment to 2028.
    ends = next_change(VALID, STANDARDS, AT)
    assert ends == ISSUED + YEAR + timedelta(microseconds=1)  # the first no longer valid
    assert not VALID[0].valid_at(ends)
    assert VALID[0].valid_at(ends - timedelta(microseconds=1))
    renewal = record("C-ENT-2027", "ENT-PRT", "PROV-PRT", issued=AT + timedelta(days=30))
    assert next_change([*VALID, renewal], STANDARDS, AT) == AT + timedelta(days=30)
    assert next_change(VALID, STANDARDS, ISSUED - timedelta(days=1)) == ISSUED
    # After every certificate ended, the public standard's assessment is what is left.
    later = datetime(2027, 6, 1, tzinfo=UTC)
    assert next_change(VALID, STANDARDS, later) == datetime(2028, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert next_change(VALID, STANDARDS, datetime(2029, 1, 1, tzinfo=UTC)) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        next_change(VALID, STANDARDS, datetime(2026, 6, 1))  # noqa: DTZ001 - the point


def test_expiring_lists_records_within_the_horizon_soonest_first() -> None:
    soon = record("C-SOON", "X", "NIM-T", valid_until=AT + timedelta(days=10), interval=None)
    sooner = record("C-SOONER", "Y", "NIM-T", valid_until=AT + timedelta(days=2), interval=None)
    gone = record("C-GONE", "Z", "NIM-T", valid_until=AT - timedelta(days=1), interval=None)
    assert [r.number for r in expiring([*VALID, soon, sooner, gone], AT, 30)] == [
        "C-SOONER",
        "C-SOON",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {"interval": None},
        {"valid_until": AT},
        {"issued": datetime(2026, 1, 1)},  # noqa: DTZ001 - the naive datetime under test
        {"kind": "verification"},
        {"route": "friend of a friend"},
    ],
)
def test_malformed_records_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"certificate 'C-X'|timezone"):
        record("C-X", "X", "NIM-T", **changes)


def test_empty_range_refused() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        CalibratedRange(minimum=2.0, maximum=1.0, unit="g")
