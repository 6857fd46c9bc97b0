# SPDX-License-Identifier: Apache-2.0
"""The register of standards and certificates, kept in the station database, and its CLI.

References: DOMAIN.md §1 (the chain in China, ILAC P10 sources, 检定 vs 校准); the chain
itself is checked by the pure `calibration.chain`. This module maps between the register's
tables (`gateway.models.StandardRow`, `CertificateRow`), the import files (TOML/JSON with
``[[standard]]`` and ``[[certificate]]`` tables; DCC XML through `calibration.dcc`) and the
frozen records, and defines the ``certs``, ``standards`` and ``chain`` subcommands.

Pydantic import models live here rather than in `gateway.config` only because that module
is owned by another change in flight; they belong beside `CertificateConfig` (STYLE §7).
"""

import argparse
import dataclasses
import json
import logging
import math
import sys
import tomllib
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel

from calibration import (
    CalibratedRange,
    CalibrationError,
    CalibrationPoint,
    Certificate,
    CertificateRecord,
    ChainResult,
    Level,
    Route,
    Standard,
    VerificationCertificate,
    dcc_to_certificate,
    expiring,
    parse_dcc,
    resolve_certificate_chain,
    resolve_chain,
    within,
)
from calibration.chain import LEVELS, ROUTES
from gateway.config import (
    CertificateConfig,
    Channel,
    Identifier,
    MpeRule,
    MpeValue,
    PointConfig,
    StationConfig,
    _end_of,
    _Model,
    _start_of,
    load_config,
)
from gateway.errors import ConfigError, GatewayError, StoreError
from gateway.instruments import mpe_from_rule
from gateway.models import CertificateRow, StandardRow
from gateway.pipeline import ChannelChain
from gateway.store import create_store_engine

__all__ = [
    "DEFAULT_EXPIRY_WARNING_DAYS",
    "RegisterCertificateConfig",
    "RegisterError",
    "RegisterFile",
    "StandardConfig",
    "add_register_parsers",
    "channel_certificate",
    "load_records",
    "load_standards",
    "open_register",
    "read_register_file",
    "record_from_dcc",
    "resolve_channel_chains",
    "save_certificate",
    "save_standard",
    "transformer_certificate",
]

#: Days ahead that ``certs list`` and ``chain`` warn of an expiry, until the station file
#: gains ``[register] expiry_warning_days`` (gateway.config is not this change's to edit).
DEFAULT_EXPIRY_WARNING_DAYS = 30.0
log = logging.getLogger(__name__)
_MPE_VALUE: TypeAdapter[MpeRule | float] = TypeAdapter(MpeValue)
_TABLES = [StandardRow.__table__, CertificateRow.__table__]  # type: ignore[attr-defined]  # SQLModel sets it


class RegisterError(GatewayError):
    """An import file or a register entry cannot be used; the message says which and why."""


class StandardConfig(_Model):
    """``[[standard]]``: a measurement standard of the register."""

    id: Identifier
    name: str = ""
    level: Level
    assessment_certificate: str | None = None
    assessment_valid_until: date | datetime | None = None


class RegisterCertificateConfig(CertificateConfig):
    """``[[certificate]]`` in a register file: the station file's form plus the chain's.

    `valid_until` may be left out when `interval_days` gives the recalibration interval from
    `issued` (default: `valid_from`). A verification needs no points but states `passed` and
    its `mpe` in the station file's forms (`gateway.config.MpeValue`): a constant in `unit`
    or a rule table (energy-meter, balance, transformer, linear), bounding a channel exactly
    as the same entry in the station file would.
    """

    subject: str = Field(min_length=1, max_length=130)
    route: Route
    made_with: list[str] = Field(default_factory=list)
    issued: date | datetime | None = None
    valid_until: date | datetime | None = None  # type: ignore[assignment]  # optional here
    interval_days: float | None = Field(default=None, gt=0)
    range: tuple[float, float] | None = None
    range_unit: str | None = None
    accuracy_class: str | None = None
    passed: bool | None = None
    procedure: str = ""
    points: list[PointConfig] = Field(default_factory=list)


class RegisterFile(_Model):
    """A register import file: standards and certificates."""

    standard: list[StandardConfig] = Field(default_factory=list)
    certificate: list[RegisterCertificateConfig] = Field(default_factory=list)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def open_register(url: str) -> Engine:
    """Open the store at `url`, create the register's tables if missing, add new columns.

    A database created by an earlier version has the tables without the columns added
    since (`_ADDED_COLUMNS`); each is added with ``ALTER TABLE … ADD COLUMN`` (SQLite and
    PostgreSQL alike), empty in the existing rows, which read as before.

    Raises:
        StoreError: the database cannot be opened or upgraded.
    """
    try:
        engine = create_store_engine(url)
        SQLModel.metadata.create_all(engine, tables=_TABLES, checkfirst=True)
        _add_missing_columns(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"cannot open the register at {url}: {exc}") from exc
    return engine


#: Columns added to the register's tables after the first release: (table, column, type).
_ADDED_COLUMNS = (("register_certificates", "mpe_rule", "TEXT"),)


def _add_missing_columns(engine: Engine) -> None:
    """Add each of `_ADDED_COLUMNS` that the database lacks (a database of an older version)."""
    for table, column, sql_type in _ADDED_COLUMNS:
        if column in {c["name"] for c in inspect(engine).get_columns(table)}:
            continue
        try:
            with engine.begin() as connection:
                # Names are this module's constants, never input: no injection.
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
        except SQLAlchemyError:
            # Another process (the daemon, a second CLI) may have added it in between.
            if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise
        log.info("register: added column %s.%s (database of an earlier version)", table, column)


def save_standard(engine: Engine, standard: Standard) -> None:
    """Insert or replace `standard`."""
    row = StandardRow(
        id=standard.id,
        name=standard.name,
        level=standard.level,
        assessment_certificate=standard.assessment_certificate,
        assessment_valid_until=(
            _utc(standard.assessment_valid_until) if standard.assessment_valid_until else None
        ),
    )
    with Session(engine) as session:
        session.merge(row)
        session.commit()


def save_certificate(
    engine: Engine,
    record: CertificateRecord,
    *,
    model: Certificate | None = None,
    source: str = "",
    unit: str | None = None,
    mpe: MpeRule | float | None = None,
) -> None:
    """Insert or replace `record`, with the points of its calibration `model` if any.

    `unit` is the certificate's unit when it has no model (a verification's MPE is in it);
    `mpe` is a verification's MPE as the import file states it (a rule or a constant),
    stored as JSON so that a channel can be bounded by it (`channel_certificate`).
    """
    span = record.calibrated_range
    row = CertificateRow(
        number=record.number,
        kind=record.kind,
        issuer=record.issuer,
        accreditation=record.accreditation,
        route=record.route,
        issued=_utc(record.issued),
        valid_until=_utc(record.valid_until) if record.valid_until else None,
        interval_days=record.interval / timedelta(days=1) if record.interval else None,
        subject=record.subject,
        made_with=json.dumps(list(record.made_with)),
        range_min=span.minimum if span else None,
        range_max=span.maximum if span else None,
        range_unit=span.unit if span else None,
        accuracy_class=record.accuracy_class,
        mpe=record.mpe,
        mpe_rule=_mpe_json(mpe),
        passed=record.passed,
        procedure=record.procedure,
        unit=model.unit if model else unit,
        points=json.dumps(
            [
                [p.indication, p.correction, p.expanded_uncertainty, p.coverage_factor]
                for p in (model.points if model else ())
            ]
        ),
        point_correlation=model.point_correlation if model else 1.0,
        interpolation_u=model.interpolation_u if model else None,
        source=source,
    )
    with Session(engine) as session:
        session.merge(row)
        session.commit()


def _mpe_json(mpe: MpeRule | float | None) -> str | None:
    """The ``mpe`` value as JSON, keys as in the file (``class``), or None."""
    if mpe is None:
        return None
    if isinstance(mpe, int | float):
        return json.dumps(float(mpe))
    return json.dumps(mpe.model_dump(mode="json", by_alias=True), sort_keys=True)


def _mpe_value(row: CertificateRow) -> MpeRule | float | None:
    """The row's MPE: its stored rule, else its constant (rows from before `mpe_rule`)."""
    if row.mpe_rule is None:
        return row.mpe
    try:
        return _MPE_VALUE.validate_python(json.loads(row.mpe_rule))
    except (ValueError, ValidationError) as exc:
        raise RegisterError(
            f"register certificate {row.number}: stored MPE {row.mpe_rule} is not a rule: {exc}"
        ) from exc


def _standard(row: StandardRow) -> Standard:
    return Standard(
        id=row.id,
        name=row.name,
        level=cast("Level", row.level),
        assessment_certificate=row.assessment_certificate,
        assessment_valid_until=_time(row.assessment_valid_until),
    )


def _record(row: CertificateRow) -> CertificateRecord:
    span = (
        CalibratedRange(minimum=row.range_min, maximum=row.range_max, unit=row.range_unit)
        if row.range_min is not None and row.range_max is not None and row.range_unit
        else None
    )
    return CertificateRecord(
        number=row.number,
        kind=cast("Literal['calibration', 'verification', 'in-house']", row.kind),
        issuer=row.issuer,
        accreditation=row.accreditation,
        route=cast("Route", row.route),
        issued=datetime.fromisoformat(row.issued),
        valid_until=_time(row.valid_until),
        interval=timedelta(days=row.interval_days) if row.interval_days is not None else None,
        subject=row.subject,
        made_with=tuple(json.loads(row.made_with)),
        calibrated_range=span,
        accuracy_class=row.accuracy_class,
        mpe=row.mpe,
        passed=row.passed,
        procedure=row.procedure,
    )


def load_standards(engine: Engine) -> dict[str, Standard]:
    """Every standard of the register, by id."""
    with Session(engine) as session:
        return {row.id: _standard(row) for row in session.scalars(select(StandardRow))}


def load_records(engine: Engine) -> list[CertificateRecord]:
    """Every certificate record of the register, by number."""
    with Session(engine) as session:
        rows = session.scalars(select(CertificateRow).order_by(CertificateRow.number))
        return [_record(row) for row in rows]


def resolve_channel_chains(
    engine: Engine, config: StationConfig, at: datetime, *, only: str | None = None
) -> dict[str, ChannelChain]:
    """The calibration chain at `at` of every channel with a certificate, by ``instr/channel``.

    The walk starts from the certificate the channel names when the register holds it (the
    readings are corrected with that one, not with whichever its subject holds last), else
    from the channel's (or its instrument's) subject. Reads the register once; the pipeline
    then checks each reading's time against the chain's validity window
    (`ChannelChain.broken_at`) and each indication against the range the chain covers in the
    channel's unit. A channel's certificate that the station file does not state is loaded
    from the register (`channel_certificate`) and carried by the chain; one the file states
    wins over a register entry of the same number (logged). So are the channel's CT and VT
    certificates (`transformer_certificate`), whose own chains up to the national standards
    are walked and joined to the channel's (`ChannelChain.joined`): a reading rests on them
    as much as on the meter's. `only` limits the work to one ``instr/channel`` (``metrogate
    budget`` explains one reading).
    """
    records = load_records(engine)
    standards = load_standards(engine)
    in_file = {cert.id for cert in config.certificate}
    chains: dict[str, ChannelChain] = {}
    for instrument in config.instrument:
        for channel in instrument.channel:
            if channel.certificate is None:
                continue
            subject = f"{instrument.id}/{channel.id}"
            if only is not None and subject != only:
                continue
            result = resolve_certificate_chain(
                channel.certificate, at, records=records, standards=standards
            ) or resolve_chain(subject, at, records=records, standards=standards)
            model = _register_model(engine, subject, channel.certificate, channel.unit, in_file)
            chain = ChannelChain.from_result(
                channel.certificate, result, unit=channel.unit, certificate=model
            )
            transformers = []
            for part, number in _transformer_certificates(channel):
                found = _register_model(engine, f"{subject} {part}", number, None, in_file)
                if found is not None:
                    transformers.append(found)
                walked = resolve_certificate_chain(
                    number, at, records=records, standards=standards
                )
                if walked is not None:
                    chain = chain.joined(part, number, walked)
            chains[subject] = dataclasses.replace(
                chain, transformer_certificates=tuple(transformers)
            )
    return chains


def _register_model(
    engine: Engine,
    subject: str,
    number: str,
    unit: str | None,
    in_file: set[str],
    *,
    required: bool = True,
) -> Certificate | VerificationCertificate | None:
    """The register's model of a channel's certificate when the file does not state it.

    `unit` is the channel's; None for a CT's or VT's certificate (`transformer_certificate`).
    A certificate not `required` (a CT's or VT's next to its class, which bounds the ratio
    by itself) is not an error when the register lacks it.
    """
    row = _row(engine, number)
    if number in in_file:
        if row is not None:
            log.info(
                "certificate %s: the station file's entry is used for %s; the register's "
                "entry of that number is ignored for correction",
                number,
                subject,
            )
        return None
    if row is None and not required:
        return None
    if row is None:
        log.error(
            "channel %s: certificate %s is neither in the station file nor in the register: "
            "its readings are flagged NO_CERTIFICATE",
            subject,
            number,
        )
        return None
    model: Certificate | VerificationCertificate | None = None
    refusal = ""
    try:
        model = (
            channel_certificate(row, unit) if unit is not None else transformer_certificate(row)
        )
    except RegisterError as exc:
        refusal = str(exc)  # the entry's fault, not a bug: logged without a traceback
    if model is None:
        consequence = (
            "its readings are flagged NO_CERTIFICATE" if required else "its class bounds the ratio"
        )
        log.error("channel %s: %s: %s", subject, refusal, consequence)
        return None
    log.info("channel %s: certificate %s loaded from the register (%s)", subject, number, row.kind)
    return model


def channel_certificate(row: CertificateRow, unit: str) -> Certificate | VerificationCertificate:
    """The model a channel in `unit` corrects (calibration) or is bounded (verification) with.

    A calibration's points are stored in normal form; a verification's MPE is the constant
    `mpe` in its unit, applying within its range (the register keeps no class rule).

    Raises:
        RegisterError: the entry cannot correct nor bound the channel (no points, no MPE,
            another unit, or numbers the model refuses); the message says which.
    """
    where = f"register certificate {row.number}"
    record = _record(row)
    certificate_unit = row.unit or row.range_unit
    if certificate_unit != unit:
        raise RegisterError(f'{where} is in "{certificate_unit}", the channel in "{unit}"')
    try:
        if row.kind == "verification":
            return _verification_model(row, unit, record)
        points = json.loads(row.points)
        if not points:
            raise RegisterError(f"{where} has no points to correct with")
        return Certificate(
            certificate_id=row.number,
            unit=unit,
            issuer=row.issuer,
            kind=record.kind,
            valid_from=record.issued,
            valid_until=record.expires,
            points=tuple(
                CalibrationPoint(
                    indication=x, correction=c, expanded_uncertainty=big_u, coverage_factor=k
                )
                for x, c, big_u, k in points
            ),
            point_correlation=row.point_correlation,
            interpolation_u=row.interpolation_u,
        )
    except CalibrationError as exc:
        raise RegisterError(f"{where}: {exc}") from exc


def transformer_certificate(row: CertificateRow) -> Certificate | VerificationCertificate:
    """The model a CT's or VT's ratio rests on, as `gateway.instruments.transformer_factor` uses.

    A verification bounds the ratio by its MPE (in % of it; not narrowed to a `range`, as in
    the station file); a calibration must be in ``"%"`` (ratio errors at loads in % of
    rated), as check-config demands of the station file's.

    Raises:
        RegisterError: the entry cannot bound the ratio; the message says why.
    """
    unit = row.unit or row.range_unit or ""
    if row.kind == "verification":
        return _verification_model(row, unit or "1", _record(row), narrow=False)
    if unit != "%":
        raise RegisterError(
            f'register certificate {row.number}: a transformer calibration certificate is in "%"'
            f' (ratio error at loads in % of rated), not "{unit}"'
        )
    return channel_certificate(row, "%")


def _verification_model(
    row: CertificateRow, unit: str, record: CertificateRecord, *, narrow: bool = True
) -> VerificationCertificate:
    rule = _mpe_value(row)
    if rule is None:
        raise RegisterError(f"register certificate {row.number} states no MPE (mpe)")
    verified = (
        (
            row.range_min if row.range_min is not None else -math.inf,
            row.range_max if row.range_max is not None else math.inf,
        )
        if narrow and (row.range_min is not None or row.range_max is not None)
        else None
    )
    return VerificationCertificate(
        certificate_id=row.number,
        unit=unit,
        issuer=row.issuer,
        valid_from=record.issued,
        valid_until=record.expires,
        mpe=within(
            mpe_from_rule(rule, certificate_id=row.number, unit=unit, reference=row.procedure),
            verified,
        ),
        passed=bool(row.passed),
    )


def _row(engine: Engine, number: str) -> CertificateRow | None:
    with Session(engine) as session:
        return session.get(CertificateRow, number)


def read_register_file(path: Path) -> RegisterFile:
    """Read a register file (``.toml`` or ``.json``).

    Raises:
        RegisterError: unreadable or invalid; every problem is listed.
    """
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return RegisterFile.model_validate(document)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            problems = "\n".join(
                f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise RegisterError(problems) from exc
        raise RegisterError(f"{path}: {exc}") from exc


def standard_from_config(config: StandardConfig) -> Standard:
    """The `Standard` of a ``[[standard]]`` entry (dates are UTC days, inclusive)."""
    until = config.assessment_valid_until
    return Standard(
        id=config.id,
        name=config.name,
        level=config.level,
        assessment_certificate=config.assessment_certificate,
        assessment_valid_until=_end_of(until) if until is not None else None,
    )


def record_from_config(
    config: RegisterCertificateConfig,
) -> tuple[CertificateRecord, Certificate | None]:
    """The record of a ``[[certificate]]`` entry and, for one with points, its correction model.

    A verification's `mpe` (constant or rule), when stated, is checked by building it as a
    channel would; the record keeps a constant MPE as a number (`save_certificate` stores the
    rule itself). A verification without one is a valid link of a chain; only a channel
    resting on it needs an MPE (`channel_certificate` says so).

    Raises:
        CalibrationError: the entry is not a valid certificate, or a verification's MPE
            cannot be built (a constant <= 0, a class the tables do not know).
    """
    if config.kind == "verification" and config.mpe is not None:
        mpe_from_rule(
            config.mpe, certificate_id=config.id, unit=config.unit, reference=config.procedure
        )
    elif config.mpe is not None and not isinstance(config.mpe, int | float):
        raise CalibrationError(
            f"certificate {config.id!r}: an MPE rule is only for kind verification (this is a "
            f"{config.kind}; a number is kept as the stated MPE)"
        )
    model = None
    if config.points:
        if config.valid_until is not None:
            until = config.valid_until_utc
        elif config.interval_days is not None:
            until = _start_of(config.issued or config.valid_from) + timedelta(
                days=config.interval_days
            )
        else:
            raise CalibrationError(f"certificate {config.id!r}: no valid_until nor interval_days")
        model = Certificate.from_points(
            certificate_id=config.id,
            unit=config.unit,
            issuer=config.issuer,
            kind=config.kind,
            valid_from=config.valid_from_utc,
            valid_until=until,
            abscissa=config.abscissa,
            convention=config.convention,
            points=[(p.x, p.c, p.U, p.k) for p in config.points],
            point_correlation=config.point_correlation,
            interpolation_u=config.interpolation_u,
        )
    span: CalibratedRange | None = None
    if config.range is not None:
        low, high = config.range
        span = CalibratedRange(minimum=low, maximum=high, unit=config.range_unit or config.unit)
    elif model is not None:
        low, high = model.points[0].indication, model.points[-1].indication
        span = CalibratedRange(minimum=low, maximum=high, unit=model.unit)
    record = CertificateRecord(
        number=config.id,
        kind=config.kind,
        issuer=config.issuer,
        accreditation=config.accreditation,
        route=config.route,
        issued=_start_of(config.issued or config.valid_from),
        valid_until=_end_of(config.valid_until) if config.valid_until is not None else None,
        interval=timedelta(days=config.interval_days) if config.interval_days else None,
        subject=config.subject,
        made_with=tuple(config.made_with),
        calibrated_range=span,
        accuracy_class=config.accuracy_class,
        mpe=float(config.mpe) if isinstance(config.mpe, int | float) else None,
        passed=config.passed,
        procedure=config.procedure,
    )
    return record, model


def record_from_dcc(
    xml: bytes,
    *,
    subject: str | None,
    unit: str | None,
    route: Route | None,
    accreditation: str | None,
    made_with: Iterable[str] | None,
    result: str | None = None,
) -> tuple[CertificateRecord, Certificate | None]:
    r"""The record of a DCC and, when `unit` is given, its correction model.

    Defaults come from the DCC: the subject is the first item's first identification, the
    accreditation the laboratory code, the upstream standards each measuring equipment's
    first identification (`dcc:measuringEquipments`: the link upward), the route an
    accredited lab when a laboratory code is given.

    Raises:
        CalibrationError: the DCC cannot be read or lacks what the register needs.
    """
    dcc = parse_dcc(xml)
    where = f"DCC {dcc.unique_identifier!r}"
    if subject is None:
        ids = [i.value for item in dcc.items for i in item.identifications]
        if not ids:
            raise CalibrationError(f"{where} identifies no item: give --subject")
        subject = ids[0]
    accreditation = accreditation if accreditation is not None else dcc.laboratory_code or ""
    if route is None:
        if not accreditation:
            raise CalibrationError(f"{where} has no laboratory code: give --route")
        route = "ILAC-MRA accredited lab"
    if made_with is None:
        made_with = [
            e.identifications[0].value
            for m in dcc.measurement_results
            for e in m.equipment
            if e.identifications
        ]
    model = dcc_to_certificate(dcc, unit=unit, result=result) if unit else None
    if dcc.recalibration_due is None and model is None:
        raise CalibrationError(f"{where} states no recalibration date: give --unit")
    issued = datetime.combine(dcc.begin_performance_date, datetime.min.time(), tzinfo=UTC)
    until = model.valid_until if model else _end_of(cast("date", dcc.recalibration_due))
    span = (
        CalibratedRange(
            minimum=model.points[0].indication,
            maximum=model.points[-1].indication,
            unit=model.unit,
        )
        if model
        else None
    )
    record = CertificateRecord(
        number=dcc.unique_identifier,
        kind="calibration",
        issuer=dcc.laboratory.name or "",
        accreditation=accreditation,
        route=route,
        issued=issued,
        valid_until=until,
        subject=subject,
        made_with=tuple(made_with),
        calibrated_range=span,
    )
    return record, model


# ---- command line -------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _fail(text: str) -> int:
    sys.stderr.write(f"metrogate: {text}\n")
    return 1


def _engine(args: argparse.Namespace) -> Engine:
    url = args.db if args.db else load_config(args.config).store_url
    return open_register(url)


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _run(handler: Any) -> Any:  # noqa: ANN401 - wraps any command handler
    def run(args: argparse.Namespace) -> int:
        try:
            engine = _engine(args)
        except (ConfigError, StoreError) as exc:
            return _fail(str(exc))
        try:
            status: int = handler(args, engine)
        except (RegisterError, CalibrationError, StoreError, OSError) as exc:
            return _fail(str(exc))
        finally:
            engine.dispose()
        return status

    return run


def _cmd_certs_import(args: argparse.Namespace, engine: Engine) -> int:
    path = Path(args.file)
    if path.suffix.lower() == ".xml":
        record, model = record_from_dcc(
            path.read_bytes(),
            subject=args.subject,
            unit=args.unit,
            route=args.route,
            accreditation=args.accreditation,
            made_with=args.made_with,
            result=args.result,
        )
        save_certificate(engine, record, model=model, source=f"dcc:{path.name}")
        _out(f"imported {record.number} for {record.subject} from {path}")
        return 0
    register = read_register_file(path)
    for entry in register.standard:
        save_standard(engine, standard_from_config(entry))
    for certificate in register.certificate:
        record, model = record_from_config(certificate)
        save_certificate(
            engine,
            record,
            model=model,
            source=path.name,
            unit=certificate.unit,
            mpe=certificate.mpe if certificate.kind == "verification" else None,
        )
    _out(
        f"imported {len(register.standard)} standards and "
        f"{len(register.certificate)} certificates from {path}"
    )
    return 0


def _validity(record: CertificateRecord, at: datetime, warn_days: float) -> str:
    if at > record.expires:
        return "EXPIRED"
    if at < record.issued:
        return "NOT YET VALID"
    left = record.expires - at
    return f"expires in {left.days} d" if left <= timedelta(days=warn_days) else "valid"


def _cmd_certs_list(args: argparse.Namespace, engine: Engine) -> int:
    at = _at(args.at)
    records = load_records(engine)
    _out(f"{'number':<24} {'kind':<12} {'subject':<24} {'route':<26} {'expires':<11} status")
    for record in records:
        _out(
            f"{record.number:<24} {record.kind:<12} {record.subject:<24} {record.route:<26} "
            f"{record.expires.date().isoformat():<11} {_validity(record, at, args.warn_days)}"
        )
    soon = expiring(records, at, args.warn_days)
    _out(f"{len(records)} certificates; {len(soon)} expire within {args.warn_days:g} days")
    for record in soon:
        _out(f"WARNING: {record.number} ({record.subject}) expires {record.expires.isoformat()}")
    return 0


def _cmd_certs_show(args: argparse.Namespace, engine: Engine) -> int:
    row = _row(engine, args.number)
    if row is None:
        return _fail(f"no certificate {args.number!r} in the register")
    for key, value in row.model_dump().items():
        if key == "points":
            points = json.loads(value)
            _out(f"{'points':<22} {len(points)} (indication, correction, U, k)")
            for point in points:
                _out(f"{'':<22} {point}")
        elif value not in (None, "", "[]"):
            _out(f"{key:<22} {value}")
    return 0


def _cmd_standards_add(args: argparse.Namespace, engine: Engine) -> int:
    until = args.assessment_valid_until
    save_standard(
        engine,
        standard_from_config(
            StandardConfig(
                id=args.id,
                name=args.name,
                level=args.level,
                assessment_certificate=args.assessment_certificate,
                assessment_valid_until=date.fromisoformat(until) if until else None,
            )
        ),
    )
    _out(f"standard {args.id} saved")
    return 0


def _cmd_standards_import(args: argparse.Namespace, engine: Engine) -> int:
    register = read_register_file(Path(args.file))
    for entry in register.standard:
        save_standard(engine, standard_from_config(entry))
    _out(f"imported {len(register.standard)} standards from {args.file}")
    return 0


def _cmd_standards_list(_args: argparse.Namespace, engine: Engine) -> int:
    for standard in load_standards(engine).values():
        assessment = (
            f" assessment {standard.assessment_certificate} until "
            f"{standard.assessment_valid_until.date().isoformat()}"
            if standard.assessment_valid_until and standard.assessment_certificate
            else ""
        )
        _out(f"{standard.id:<20} {standard.level:<19} {standard.name}{assessment}")
    return 0


def format_chain(result: ChainResult, *, warn_days: float) -> list[str]:
    """The chain as indented lines, one per link, then the verdict."""
    lines = [f"chain of {result.subject} at {result.at.isoformat()}"]
    for link in result.links:
        indent = "  " * (link.depth + 1)
        level = f" [{link.standard.level}]" if link.standard else ""
        cert = link.certificate
        if cert is None:
            what = "root" if link.ok else "-"
        else:
            what = (
                f"{cert.number} {cert.kind} by {cert.issuer} "
                f"({cert.route}{', ' + cert.accreditation if cert.accreditation else ''}) "
                f"valid until {cert.expires.date().isoformat()}"
            )
        lines.append(f"{indent}{'OK  ' if link.ok else 'FAIL'} {link.subject}{level}: {what}")
        lines.extend(f"{indent}     - {reason}" for reason in link.reasons)
    certificates = [link.certificate for link in result.links if link.certificate]
    lines.extend(
        f"WARNING: {record.number} ({record.subject}) expires {record.expires.isoformat()}"
        for record in expiring(dict.fromkeys(certificates), result.at, warn_days)
    )
    if result.ok:
        lines.append(f"OK: traceable to {', '.join(result.roots)}")
    else:
        first = result.failures[0]
        number = first.certificate.number if first.certificate else "no certificate"
        lines.append(
            f"BROKEN at {first.subject} ({number}): {'; '.join(first.reasons)}"
            + (f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else "")
        )
    return lines


def _cmd_chain(args: argparse.Namespace, engine: Engine) -> int:
    at, records, standards = _at(args.at), load_records(engine), load_standards(engine)
    channel = _station_channel(args)
    named = channel.certificate if channel is not None else None
    pinned = named and resolve_certificate_chain(
        named, at, value=args.value, records=records, standards=standards
    )
    result = (
        dataclasses.replace(pinned, subject=args.subject)
        if pinned
        else resolve_chain(
            args.subject, at, value=args.value, records=records, standards=standards
        )
    )
    for line in format_chain(result, warn_days=args.warn_days):
        _out(line)
    ok = result.ok
    for part, number in _transformer_certificates(channel):
        walked = resolve_certificate_chain(number, at, records=records, standards=standards)
        _out("")
        if walked is None:
            _out(f"{part} certificate {number}: not in the register (its chain is unchecked)")
            continue
        _out(f"{part} certificate {number}:")
        for line in format_chain(walked, warn_days=args.warn_days):
            _out(f"  {line}")
        ok = ok and walked.ok
    return 0 if ok else 1


def _station_channel(args: argparse.Namespace) -> Channel | None:
    """The channel `args.subject` (``instrument/channel``) of the ``--config`` station file.

    Only the station file knows which certificate a channel names (the daemon walks its
    chain from that one when the register holds it, not from the subject's latest) and
    which transformers a meter's channel is wired through; with ``--db`` alone, None.
    """
    if not args.config or "/" not in args.subject:
        return None
    instrument_id, channel_id = args.subject.split("/", 1)
    config = load_config(args.config)
    return next(
        (
            channel
            for instrument in config.instrument
            if instrument.id == instrument_id
            for channel in instrument.channel
            if channel.id == channel_id
        ),
        None,
    )


def _transformer_certificates(channel: Channel | None) -> list[tuple[str, str]]:
    """("CT" or "VT", certificate number) of the channel's transformers that name one."""
    if channel is None:
        return []
    return [
        (name.upper(), transformer.certificate)
        for name in ("ct", "vt")
        if (transformer := getattr(channel, name)) is not None
        and transformer.certificate is not None
    ]


def _source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help="station file whose store holds the register")
    group.add_argument("--db", help="store URL, e.g. sqlite:////var/lib/metrogate/metrogate.db")


def _warn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--warn-days",
        type=float,
        default=DEFAULT_EXPIRY_WARNING_DAYS,
        help=f"warn of expiry this many days ahead (default {DEFAULT_EXPIRY_WARNING_DAYS:g})",
    )
    parser.add_argument("--at", default=None, help="the instant to check for (ISO 8601; now)")


def add_register_parsers(commands: Any) -> None:  # noqa: ANN401 - argparse's private _SubParsersAction
    """Add the ``certs``, ``standards`` and ``chain`` subcommands to `commands`."""
    certs = commands.add_parser("certs", help="the register's certificates")
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    imported = actions.add_parser(
        "import", help="import a register file (TOML/JSON) or a DCC (XML)"
    )
    imported.add_argument("file")
    _source(imported)
    imported.add_argument("--subject", help="DCC: instrument[/channel] or standard id")
    imported.add_argument("--unit", help=r"DCC: D-SI unit of the points to keep, e.g. \gram")
    imported.add_argument("--result", help="DCC: the result's refType or name")
    imported.add_argument("--route", choices=ROUTES, help="DCC: how the issuer is acceptable")
    imported.add_argument("--accreditation", help="DCC: accreditation/authorisation number")
    imported.add_argument(
        "--made-with", action="append", help="DCC: upstream standard id (repeat)"
    )
    imported.set_defaults(handler=_run(_cmd_certs_import))
    listed = actions.add_parser("list", help="every certificate, with expiry warnings")
    _source(listed)
    _warn(listed)
    listed.set_defaults(handler=_run(_cmd_certs_list))
    show = actions.add_parser("show", help="one certificate with its points")
    show.add_argument("number")
    _source(show)
    show.set_defaults(handler=_run(_cmd_certs_show))

    standards = commands.add_parser("standards", help="the register's measurement standards")
    actions = standards.add_subparsers(dest="standards_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add or replace a standard")
    add.add_argument("id")
    add.add_argument("--level", required=True, choices=LEVELS)
    add.add_argument("--name", default="")
    add.add_argument("--assessment-certificate", default=None, help="考核证书 number")
    add.add_argument("--assessment-valid-until", default=None, help="YYYY-MM-DD")
    _source(add)
    add.set_defaults(handler=_run(_cmd_standards_add))
    imported = actions.add_parser("import", help="import [[standard]] tables from TOML/JSON")
    imported.add_argument("file")
    _source(imported)
    imported.set_defaults(handler=_run(_cmd_standards_import))
    listed = actions.add_parser("list", help="every standard")
    _source(listed)
    listed.set_defaults(handler=_run(_cmd_standards_list))

    chain = commands.add_parser(
        "chain",
        help="the traceability chain of an instrument[/channel] up to the root (with "
        "--config, a channel's CT's and VT's chains too)",
    )
    chain.add_argument("subject", metavar="INSTRUMENT[/CHANNEL]")
    chain.add_argument("--value", type=float, default=None, help="check ranges cover it")
    _source(chain)
    _warn(chain)
    chain.set_defaults(handler=_run(_cmd_chain))
