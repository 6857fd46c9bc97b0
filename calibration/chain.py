# SPDX-License-Identifier: Apache-2.0
"""The traceability chain: standards, certificate records and the walk up to the root.

References: VIM 2.41 / JJF 1001 (metrological traceability: a documented, unbroken chain),
JJF 1033-2023 (assessment certificates of public measurement standards), ILAC P10
(acceptable sources of traceability); DOMAIN.md §1. The chain in China runs national
primary standard → provincial/municipal/county public standard → enterprise highest
standard → working standard → field instrument, and it is a graph: one result may rest on
several standards, so `resolve_chain` walks every upstream branch.

Pure: frozen data in, a `ChainResult` out; the caller passes the time. No I/O, no clock.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, get_args

from calibration.certificate import CertificateKind
from calibration.errors import BrokenChainError, CalibrationError

Level = Literal["national-primary", "public", "enterprise-highest", "working"]
"""Where a standard stands in the hierarchy (a field instrument is not a `Standard`)."""

Route = Literal["NMI-CIPM-MRA", "ILAC-MRA accredited lab", "legal metrology institute", "in-house"]
"""How a certificate's issuer is an acceptable source of traceability (ILAC P10)."""

LEVELS: tuple[Level, ...] = get_args(Level)
ROUTES: tuple[Route, ...] = get_args(Route)


def _require_aware(moment: datetime | None, what: str) -> None:
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Standard:
    """A measurement standard (计量标准) of the register.

    Attributes:
        id: the register's id of the standard, e.g. ``"STD-PRT-01"``.
        name: what it is, e.g. ``"standard platinum resistance thermometer"``.
        level: its place in the hierarchy; a ``"national-primary"`` standard is a root.
        assessment_certificate: for a ``"public"`` standard, the number of its assessment
            certificate (考核证书, JJF 1033); None for other levels.
        assessment_valid_until: last instant (aware) of that assessment certificate.
    """

    id: str
    name: str = ""
    level: Level
    assessment_certificate: str | None = None
    assessment_valid_until: datetime | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise CalibrationError("a standard needs an id")
        if self.level not in LEVELS:
            raise CalibrationError(f"standard {self.id!r}: unknown level {self.level!r}")
        _require_aware(self.assessment_valid_until, f"standard {self.id!r} assessment validity")


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibratedRange:
    """The range a certificate covers, both ends inclusive, in `unit`."""

    minimum: float
    maximum: float
    unit: str

    def __post_init__(self) -> None:
        if not self.minimum <= self.maximum:
            raise CalibrationError(
                f"calibrated range {self.minimum!r}..{self.maximum!r} {self.unit} is empty"
            )

    def covers(self, value: float) -> bool:
        """Whether `value` (in `unit`) lies in the range."""
        return self.minimum <= value <= self.maximum


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRecord:
    """One certificate as the register keeps it: who issued it, for what, made with what.

    Attributes:
        number: the certificate number, unique in the register.
        kind: ``"calibration"`` (校准), ``"verification"`` (检定) or ``"in-house"`` (自校).
        issuer: the issuing NMI, laboratory or legal metrology institute.
        accreditation: the issuer's accreditation (e.g. CNAS L1234) or authorisation number.
        route: how the issuer is an acceptable source (ILAC P10).
        issued: instant of issue, the start of validity (aware).
        valid_until: last instant of validity (aware), or None to use `interval`.
        interval: the recalibration interval counted from `issued`, when `valid_until` is None.
        subject: the standard id, instrument id or ``instrument/channel`` it was issued for.
        made_with: ids of the standards the issuer used: the links upward.
        calibrated_range: the range covered, or None if not stated.
        accuracy_class: for a verification, the class stated, e.g. ``"0.5S"``.
        mpe: for a verification, the maximum permissible error, in the range's unit.
        passed: for a verification, its result; None if not a verification.
        procedure: the documented procedure (JJG, JJF or in-house method) followed.
    """

    number: str
    kind: CertificateKind
    issuer: str
    accreditation: str = ""
    route: Route
    issued: datetime
    valid_until: datetime | None = None
    interval: timedelta | None = None
    subject: str
    made_with: tuple[str, ...] = ()
    calibrated_range: CalibratedRange | None = None
    accuracy_class: str | None = None
    mpe: float | None = None
    passed: bool | None = None
    procedure: str = ""

    def __post_init__(self) -> None:
        where = f"certificate {self.number!r}"
        if not self.number or not self.subject:
            raise CalibrationError(f"{where}: a number and a subject are required")
        if self.route not in ROUTES:
            raise CalibrationError(f"{where}: unknown route {self.route!r}")
        _require_aware(self.issued, f"{where} issue time")
        _require_aware(self.valid_until, f"{where} valid_until")
        if (self.valid_until is None) == (self.interval is None):
            raise CalibrationError(f"{where}: give exactly one of valid_until and interval")
        if self.expires < self.issued:
            raise CalibrationError(f"{where}: expires {self.expires} before issue {self.issued}")
        if self.kind == "verification" and self.passed is None:
            raise CalibrationError(f"{where}: a verification must state its result (passed)")

    @property
    def expires(self) -> datetime:
        """The last instant of validity: `valid_until`, or `issued` + `interval`."""
        if self.valid_until is not None:
            return self.valid_until
        assert self.interval is not None  # noqa: S101 - __post_init__ guarantees one of them
        return self.issued + self.interval

    def valid_at(self, at: datetime) -> bool:
        """Whether `at` lies within issue..expiry, both inclusive."""
        return self.issued <= at <= self.expires


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatus:
    """One link of a chain: a subject, the certificate that covers it, and its verdict.

    Attributes:
        subject: the instrument, channel or standard id this link is about.
        certificate: the certificate chosen for it, or None when none is on record.
        ok: True when every check of this link passes.
        reasons: why the link fails (empty when `ok`).
        depth: 0 for the instrument, 1 for the standards its certificate names, and so on.
        standard: the `Standard` when the subject is one (None for the instrument).
    """

    subject: str
    certificate: CertificateRecord | None
    ok: bool
    reasons: tuple[str, ...] = ()
    depth: int = 0
    standard: Standard | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainResult:
    """The whole walk from a subject up to its roots.

    Attributes:
        subject: what was resolved.
        at: the instant the chain was checked for (aware).
        links: every link in walk order (depth first, upstream standards in `made_with`
            order); a standard reached by two branches appears once.
        roots: ids of the national primary standards reached (or ``NMI:<issuer>`` for an
            NMI certificate under the CIPM MRA that names no standard).
    """

    subject: str
    at: datetime
    links: tuple[LinkStatus, ...]
    roots: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every link is valid: the result is traceable at `at`."""
        return all(link.ok for link in self.links)

    @property
    def failures(self) -> tuple[LinkStatus, ...]:
        """The links that fail, in walk order."""
        return tuple(link for link in self.links if not link.ok)

    @property
    def certificate_ids(self) -> tuple[str, ...]:
        """The number of every certificate up the chain, each once, in walk order."""
        numbers = (link.certificate.number for link in self.links if link.certificate)
        return tuple(dict.fromkeys(numbers))


def require_traceable(result: ChainResult) -> ChainResult:
    """Return `result` if its chain is unbroken.

    Raises:
        BrokenChainError: naming the first failing link and why.
    """
    if result.ok:
        return result
    first = result.failures[0]
    number = first.certificate.number if first.certificate else "no certificate"
    raise BrokenChainError(
        f"chain of {result.subject!r} broken at {first.subject!r} ({number}): "
        + "; ".join(first.reasons)
    )


def expiring(
    records: Iterable[CertificateRecord], now: datetime, days: float
) -> list[CertificateRecord]:
    """The records still valid at `now` that expire within `days` days, soonest first."""
    _require_aware(now, "now")
    horizon = now + timedelta(days=days)
    soon = [record for record in records if record.valid_at(now) and record.expires <= horizon]
    return sorted(soon, key=lambda record: (record.expires, record.number))


def resolve_chain(
    subject: str,
    at: datetime,
    *,
    value: float | None = None,
    records: Iterable[CertificateRecord],
    standards: Mapping[str, Standard] | Iterable[Standard],
) -> ChainResult:
    """Walk from `subject` up every branch to the national primary standards, checking links.

    Each link must be: on record; valid at `at`; issued through an acceptable route (an
    accreditation or authorisation number for a lab or legal metrology institute; in-house
    only with a documented procedure and a traceable reference in `made_with`); for a
    verification, passed; for a public standard, its assessment certificate in date; and
    when `value` is given, the subject's range and every upstream range in the same unit
    must cover it (a transfer standard calibrated to 100 °C cannot support 150 °C). A chain
    ends at a ``"national-primary"`` standard, or at an NMI certificate under the CIPM MRA
    (the NMI's own standards are the national ones). A cycle fails the link that closes it.

    Args:
        subject: an instrument id, ``instrument/channel`` (falls back to the instrument's
            certificate when the channel has none of its own) or a standard id.
        at: the instant to check for, timezone-aware.
        value: the measured value, in the unit of the subject's certificate range, or None.
        records: every certificate record of the register.
        standards: the register's standards, as a mapping by id or an iterable.

    Returns:
        The chain with each link's verdict; see `require_traceable` to raise instead.
    """
    walk = _walk(at, value, records, standards)
    first = _choose(walk.by_subject.get(subject, []), at)
    if first is None and "/" in subject:
        first = _choose(walk.by_subject.get(subject.split("/", 1)[0], []), at)
    walk.visit(subject, first, depth=0, path=(subject,), standard=walk.standards.get(subject))
    return ChainResult(
        subject=subject, at=at, links=tuple(walk.links), roots=tuple(dict.fromkeys(walk.roots))
    )


def resolve_certificate_chain(
    number: str,
    at: datetime,
    *,
    value: float | None = None,
    records: Iterable[CertificateRecord],
    standards: Mapping[str, Standard] | Iterable[Standard],
) -> ChainResult | None:
    """Walk up from the certificate `number` itself, checking links as `resolve_chain` does.

    For a certificate a configuration pins by number rather than by subject: a channel's,
    a current or voltage transformer's (the reading rests on that certificate, not on
    whichever its subject holds last). `value` as for `resolve_chain`. None when the
    register holds no certificate of that number.
    """
    records = list(records)
    pinned = [record for record in records if record.number == number]
    if not pinned:
        return None
    walk = _walk(at, value, records, standards)
    record = pinned[0]
    walk.visit(record.subject, record, depth=0, path=(record.subject,), standard=None)
    return ChainResult(
        subject=record.subject,
        at=at,
        links=tuple(walk.links),
        roots=tuple(dict.fromkeys(walk.roots)),
    )


def _walk(
    at: datetime,
    value: float | None,
    records: Iterable[CertificateRecord],
    standards: Mapping[str, Standard] | Iterable[Standard],
) -> "_Walk":
    _require_aware(at, "at")
    by_subject: dict[str, list[CertificateRecord]] = {}
    for record in records:
        by_subject.setdefault(record.subject, []).append(record)
    known = dict(standards) if isinstance(standards, Mapping) else {s.id: s for s in standards}
    return _Walk(at=at, value=value, by_subject=by_subject, standards=known)


_JUST_AFTER = timedelta(microseconds=1)


def next_change(
    records: Iterable[CertificateRecord],
    standards: Iterable[Standard],
    after: datetime,
) -> datetime | None:
    """The first instant after `after` at which a chain resolved from the register may change.

    That is when a certificate becomes valid (its issue) or stops being valid (just after
    its last valid instant), or a public standard's assessment certificate runs out: a walk
    at that instant may choose another certificate (a renewal registered in advance) or fail
    a link. None when nothing of the register changes after `after`.
    """
    _require_aware(after, "after")
    instants = [
        moment
        for record in records
        for moment in (record.issued, record.expires + _JUST_AFTER)
        if moment > after
    ] + [
        standard.assessment_valid_until + _JUST_AFTER
        for standard in standards
        if standard.assessment_valid_until is not None
        and standard.assessment_valid_until + _JUST_AFTER > after
    ]
    return min(instants, default=None)


def _choose(candidates: list[CertificateRecord], at: datetime) -> CertificateRecord | None:
    """The certificate valid at `at` issued last; else the last one issued before `at`."""
    valid = [c for c in candidates if c.valid_at(at)]
    if valid:
        return max(valid, key=lambda c: c.issued)
    earlier = [c for c in candidates if c.issued <= at]
    if earlier:
        return max(earlier, key=lambda c: c.expires)
    return min(candidates, key=lambda c: c.issued) if candidates else None


@dataclass(slots=True, kw_only=True)
class _Walk:
    at: datetime
    value: float | None
    by_subject: dict[str, list[CertificateRecord]]
    standards: dict[str, Standard]
    links: list[LinkStatus] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    unit: str | None = None

    def visit(
        self,
        subject: str,
        record: CertificateRecord | None,
        *,
        depth: int,
        path: tuple[str, ...],
        standard: Standard | None,
    ) -> None:
        if depth == 0 and record is not None and record.calibrated_range is not None:
            self.unit = record.calibrated_range.unit
        reasons = list(self._check(subject, record, standard))
        self.links.append(
            LinkStatus(
                subject=subject,
                certificate=record,
                ok=not reasons,
                reasons=tuple(reasons),
                depth=depth,
                standard=standard,
            )
        )
        if record is None:
            return
        if not record.made_with and record.route == "NMI-CIPM-MRA":
            self.roots.append(f"NMI:{record.issuer}")
        for upstream in record.made_with:
            self._upstream(upstream, depth=depth + 1, path=(*path, upstream))

    def _upstream(self, standard_id: str, *, depth: int, path: tuple[str, ...]) -> None:
        if standard_id in path[:-1]:
            self.links.append(
                LinkStatus(
                    subject=standard_id,
                    certificate=None,
                    ok=False,
                    reasons=(f"cycle: {' → '.join(path)}",),
                    depth=depth,
                    standard=self.standards.get(standard_id),
                )
            )
            return
        if standard_id in self.done:
            return  # reached by another branch already: walked and reported once
        self.done.add(standard_id)
        standard = self.standards.get(standard_id)
        if standard is None:
            self.links.append(
                LinkStatus(
                    subject=standard_id,
                    certificate=None,
                    ok=False,
                    reasons=(f"standard {standard_id!r} is not in the register",),
                    depth=depth,
                )
            )
            return
        if standard.level == "national-primary":
            self.roots.append(standard.id)
            self.links.append(
                LinkStatus(
                    subject=standard_id, certificate=None, ok=True, depth=depth, standard=standard
                )
            )
            return
        record = _choose(self.by_subject.get(standard_id, []), self.at)
        self.visit(standard_id, record, depth=depth, path=path, standard=standard)

    def _check(
        self, subject: str, record: CertificateRecord | None, standard: Standard | None
    ) -> Iterator[str]:
        if standard is not None:
            yield from _check_assessment(standard, self.at)
        if record is None:
            yield f"no certificate on record for {subject!r}"
            return
        if self.at < record.issued:
            yield f"not valid before {record.issued.isoformat()}"
        elif self.at > record.expires:
            yield f"expired {record.expires.isoformat()}"
        yield from _check_route(record)
        if record.kind == "verification" and record.passed is False:
            yield "verification result: fail"
        yield from self._check_range(record)
        if not record.made_with and record.route not in {"NMI-CIPM-MRA", "in-house"}:
            yield "names no standard it was made with: the chain ends before a national primary"

    def _check_range(self, record: CertificateRecord) -> Iterator[str]:
        span = record.calibrated_range
        if self.value is None or span is None or span.unit != self.unit:
            return
        if not span.covers(self.value):
            yield (
                f"value {self.value!r} {span.unit} outside the calibrated range "
                f"{span.minimum!r}..{span.maximum!r} {span.unit}"
            )


def _check_route(record: CertificateRecord) -> Iterator[str]:
    """ILAC P10: an acceptable source, with its accreditation or authorisation on record."""
    match record.route:
        case "ILAC-MRA accredited lab" if not record.accreditation:
            yield f"issuer {record.issuer!r} has no accreditation number (ILAC MRA)"
        case "legal metrology institute" if not record.accreditation:
            yield f"issuer {record.issuer!r} has no authorisation number"
        case "in-house":
            if not record.procedure:
                yield "in-house calibration without a documented procedure"
            if not record.made_with:
                yield "in-house calibration without a traceable reference standard"
        case _:
            pass


def _check_assessment(standard: Standard, at: datetime) -> Iterator[str]:
    """A public standard needs an assessment certificate (JJF 1033) in date at `at`."""
    if standard.level != "public":
        return
    if not standard.assessment_certificate or standard.assessment_valid_until is None:
        yield f"public standard {standard.id!r} has no assessment certificate on record"
    elif at > standard.assessment_valid_until:
        yield (
            f"assessment certificate {standard.assessment_certificate} of {standard.id!r} "
            f"expired {standard.assessment_valid_until.isoformat()}"
        )
