# SPDX-License-Identifier: Apache-2.0
"""``metrogate calibrate``: a comparison calibration run on a test rig from a procedure file.

For each set point the source (a 5520A-kind `Calibrator`, or the technician when prompted) is
set and switched to OPERATE, the rig settles, and n pairs of DUT and reference readings are
taken simultaneously; `calibration.rig` turns them into E, U, k, TUR and an ILAC G8 decision.
The source is put to STANDBY at the end and on any error or cancellation: it is never left
in OPERATE. The result is the DUT's certificate, written as a station file's
``[[certificate]]`` table (the reference certificate it rests on and each decision in its
comments, since that table has no key for them) and, with ``--dcc``, as a PTB DCC.

References: DOMAIN.md §1 (TUR >= 3, decision rules recorded); `calibration.rig` for the model.
`config/procedures/dmm-dcv.example.toml` documents the procedure file.
"""

import argparse
import asyncio
import json
import math
import sys
import tomllib
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from calibration import (
    COVERAGE_PROBABILITY_K2,
    CalibrationError,
    Certificate,
    DccContact,
    DccEquipment,
    DccIdentification,
    DccItem,
    Mpe,
    certificate_to_dcc,
    format_budget,
)
from calibration.rig import (
    TUR_MINIMUM,
    DecisionRule,
    ReferenceStandard,
    RigPoint,
    evaluate_point,
    rig_certificate,
)
from drivers.errors import DriverError
from drivers.scpi.calibrator import Calibrator
from drivers.scpi.dmm import ScpiDmm
from drivers.transports.visa import open_visa
from gateway import __version__

__all__ = [
    "Procedure",
    "Prompter",
    "add_calibrate_parser",
    "certificate_toml",
    "cmd_calibrate",
    "load_procedure",
    "main",
    "run_procedure",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class SourceSection(_Model):
    """``[source]``: a VISA calibrator, or ``kind = "prompt"`` for a manually set source."""

    kind: Literal["visa", "prompt"] = "visa"
    resource: str | None = None
    library: str = "@py"
    timeout: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _resource_for_visa(self) -> "SourceSection":
        if self.kind == "visa" and not self.resource:
            raise ValueError('a VISA source needs "resource"')
        return self


class _Dmm(_Model):
    resource: str | None = None
    library: str = "@py"
    timeout: float = Field(default=5.0, gt=0)
    function: str = "VOLT:DC"
    range: float | None = Field(default=None, gt=0)
    nplc: float | None = Field(default=None, gt=0)
    resolution: float = Field(ge=0)  # d of the indication, in the procedure's unit
    name: str = ""
    manufacturer: str = ""
    model: str = ""
    serial: str = ""


class ReferencePoint(_Model):
    """A point of the reference's certificate, as in a station file's ``[[certificate]]``."""

    x: float
    c: float
    U: float = Field(gt=0)
    k: float = Field(default=2.0, gt=0)


class ReferenceSection(_Dmm):
    """``[reference]``: the reference DMM and its certificate (points, or a fixed U)."""

    certificate_id: str = Field(min_length=1)
    # The reference's id in the station's register of standards: with [certificate] subject,
    # the new certificate is also written as a register file whose made_with links to it.
    standard: str | None = None
    abscissa: Literal["indication", "reference"] = "indication"
    convention: Literal["correction", "error"] = "correction"
    points: list[ReferencePoint] = Field(default_factory=list)
    expanded_uncertainty: float | None = Field(default=None, gt=0)
    coverage_factor: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _one_kind_of_certificate(self) -> "ReferenceSection":
        if not self.resource:
            raise ValueError('the reference DMM needs "resource"')
        if bool(self.points) == (self.expanded_uncertainty is not None):
            raise ValueError('give either "points" or "expanded_uncertainty", not both or none')
        return self


class DutSection(_Dmm):
    """``[dut]``: the device under test: a VISA DMM, or ``kind = "prompt"`` to type readings."""

    kind: Literal["visa", "prompt"] = "visa"

    @model_validator(mode="after")
    def _resource_for_visa(self) -> "DutSection":
        if self.kind == "visa" and not self.resource:
            raise ValueError('a VISA DUT needs "resource"')
        return self


class MpeSection(_Model):
    """``[mpe]``: the DUT's MPE: % of reading + % of range + absolute."""

    description: str = "MPE"
    percent_of_reading: float = Field(default=0.0, ge=0)
    percent_of_range: float = Field(default=0.0, ge=0)
    full_scale: float = Field(default=0.0, ge=0)
    absolute: float = Field(default=0.0, ge=0)
    reference: str = ""


class SetPoint(_Model):
    """``[[point]]``: one set point of the source."""

    value: float
    unit: str = Field(min_length=1)
    frequency: float | None = Field(default=None, gt=0)


class CertificateSection(_Model):
    """``[certificate]``: the administrative data of the certificate to issue."""

    id: str = Field(min_length=1)
    issuer: str = Field(min_length=1)
    kind: Literal["calibration", "in-house"] = "calibration"
    accreditation: str = ""
    valid_until: date
    customer: str = ""
    responsible_person: str = ""
    country_code: str = "CN"
    # What the certificate is for in the station's register: an instrument or standard id
    # (``instrument/channel`` for one channel). With [reference] standard, a register file
    # ``<id>.register.toml`` is written too; `metrogate certs import` joins it to the chain.
    subject: str | None = None
    route: Literal[
        "NMI-CIPM-MRA", "ILAC-MRA accredited lab", "legal metrology institute", "in-house"
    ] = "in-house"


class Procedure(_Model):
    """A whole procedure file."""

    name: str = Field(min_length=1)
    unit: str = Field(min_length=1)
    repetitions: int = Field(ge=2)
    settle: float = Field(default=2.0, ge=0)
    decision_rule: DecisionRule = "simple"
    source: SourceSection
    reference: ReferenceSection
    dut: DutSection
    mpe: MpeSection
    point: list[SetPoint] = Field(min_length=1)
    certificate: CertificateSection


def load_procedure(path: str | Path) -> Procedure:
    """Read and validate a procedure file.

    Raises:
        ValueError: the file is not TOML or not a valid procedure (the message says where).
        OSError: the file cannot be read.
    """
    with Path(path).open("rb") as handle:
        try:
            document = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    try:
        return Procedure.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise ValueError(f"{path}: {problems}") from exc


class Prompter:
    """Questions to the technician: a line written out, a line read back (off the loop)."""

    def __init__(self, answers: IO[str], questions: IO[str]) -> None:
        self._answers = answers
        self._questions = questions

    async def ask(self, question: str) -> str:
        """Write `question` and return the next line typed, stripped.

        Raises:
            EOFError: the input ended.
        """
        self._questions.write(question)
        self._questions.flush()
        line = await asyncio.to_thread(self._answers.readline)
        if not line:
            raise EOFError(f"no answer to {question.strip()!r}: input ended")
        return line.strip()

    async def number(self, question: str) -> float:
        """Ask until the answer is a finite number."""
        while True:
            answer = await self.ask(question)
            try:
                value = float(answer)
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return value
            self._questions.write(f"  {answer!r} is not a number; again.\n")


class Source(Protocol):
    """What the rig needs of a settable source (`Calibrator` has it)."""

    async def set_output(
        self, value: float, unit: str, *, frequency: float | None = None
    ) -> None: ...
    async def operate(self) -> None: ...
    async def standby(self) -> None: ...


async def run_procedure(
    procedure: Procedure,
    *,
    source: Source | None,
    reference: ScpiDmm,
    dut: ScpiDmm | None,
    prompter: Prompter,
    progress: Callable[[str], None],
) -> list[RigPoint]:
    """Run every set point and return the evaluated points.

    Args:
        procedure: the procedure.
        source: the settable source, or None for a source the technician sets (prompted).
        reference: the reference DMM, configured.
        dut: the DUT's DMM, configured, or None to prompt for its indications.
        prompter: asks the technician.
        progress: receives one line per step.

    Raises:
        DriverError: an instrument failed; the source was put to STANDBY first.
        CalibrationError: a reading is outside the reference's calibrated range.
    """
    reference_standard = _reference_standard(procedure.reference)
    mpe = Mpe(**procedure.mpe.model_dump())
    n = procedure.repetitions
    results: list[RigPoint] = []
    try:
        for number, set_point in enumerate(procedure.point, start=1):
            label = f"{set_point.value:g} {set_point.unit}"
            if set_point.frequency is not None:
                label += f", {set_point.frequency:g} Hz"
            progress(f"[{number}/{len(procedure.point)}] set point {label}")
            if source is None:
                await prompter.ask(f"Set the source to {label}, then press Enter: ")
            else:
                await source.set_output(
                    set_point.value, set_point.unit, frequency=set_point.frequency
                )
                await source.operate()
            await asyncio.sleep(procedure.settle)
            dut_indications: list[float] = []
            reference_indications: list[float] = []
            for repetition in range(1, n + 1):
                # Simultaneous: both reads are in flight together.
                dut_indication, reference_indication = await asyncio.gather(
                    _read_dut(dut, prompter, f"  DUT indication {repetition}/{n} at {label}: "),
                    _read(reference),
                )
                dut_indications.append(dut_indication)
                reference_indications.append(reference_indication)
                progress(
                    f"  {repetition}/{n}: DUT {dut_indication!r} {procedure.unit}, "
                    f"reference {reference_indication!r} {procedure.unit}"
                )
            point = evaluate_point(
                nominal=set_point.value,
                unit=procedure.unit,
                dut_indications=dut_indications,
                reference_indications=reference_indications,
                reference=reference_standard,
                dut_resolution=procedure.dut.resolution,
                mpe=mpe,
                decision_rule=procedure.decision_rule,
            )
            progress(_summary(point))
            if not point.tur_sufficient:
                progress(
                    f"  WARNING: TUR {point.tur:.2f} < {TUR_MINIMUM:g}: the reference's U "
                    f"{point.reference_expanded_uncertainty:.3g} {point.unit} is too large "
                    f"for an MPE of {point.mpe:.3g} {point.unit}"
                )
            results.append(point)
    finally:
        if source is not None:
            await source.standby()
            progress("source in STANDBY")
    return results


def certificate_toml(
    cert: Certificate,
    points: Sequence[RigPoint],
    procedure: Procedure,
    *,
    accreditation: str = "",
) -> str:
    """Return `cert` as a station file's ``[[certificate]]`` table, with its record as comments."""
    reference = procedure.reference
    lines = [
        (
            f"# Calibration certificate {cert.certificate_id}, written by metrogate "
            f"{__version__} (procedure {procedure.name!r})."
        ),
        f"# Device under test: {_describe(procedure.dut)}",
        f"# Reference standard: {_describe(reference)}",
        f"# traceable_to = {json.dumps(reference.certificate_id)}",
        f"# Decision rule: {points[0].decision_rule}",
        "# x (mean DUT indication) | E | U | k | nu_eff | MPE | TUR | decision",
    ]
    lines += [
        f"#   {p.dut_mean!r} | {p.error:.6g} | {p.expanded_uncertainty:.3g} | "
        f"{p.coverage_factor:.3f} | {_dof(p.budget.dof)} | {p.mpe:.3g} | {p.tur:.2f}"
        f"{'' if p.tur_sufficient else ' (< 3)'} | {'pass' if p.passed else 'FAIL'}"
        for p in points
    ]
    lines += [
        "[[certificate]]",
        f"id = {json.dumps(cert.certificate_id)}",
        f"kind = {json.dumps(cert.kind)}",
        f"issuer = {json.dumps(cert.issuer)}",
        f"accreditation = {json.dumps(accreditation)}",
        f"valid_from = {cert.valid_from.date().isoformat()}  # UTC days, inclusive",
        f"valid_until = {cert.valid_until.date().isoformat()}",
        f"unit = {json.dumps(cert.unit)}",
        'abscissa = "indication"',
        'convention = "error"             # c is the error E = indication - reference',
        "points = [",
        *(
            f"  {{ x = {p.indication!r}, c = {p.error!r}, U = {p.expanded_uncertainty!r}, "
            f"k = {p.coverage_factor!r} }},"
            for p in cert.points
        ),
        "]",
    ]
    return "\n".join(lines) + "\n"


def register_toml(cert: Certificate, procedure: Procedure) -> str:
    """Return `cert` as a register file entry linked to the reference standard (made_with).

    Imported with ``metrogate certs import``, the new certificate joins the chain: the device
    under test's later readings carry it and the reference's certificates above it.
    """
    meta, reference = procedure.certificate, procedure.reference
    lines = [
        (
            f"# Register entry for certificate {cert.certificate_id}, written by metrogate "
            f"{__version__} (procedure {procedure.name!r})."
        ),
        "[[certificate]]",
        f"id = {json.dumps(cert.certificate_id)}",
        f"kind = {json.dumps(cert.kind)}",
        f"issuer = {json.dumps(cert.issuer)}",
        f"accreditation = {json.dumps(meta.accreditation)}",
        f"route = {json.dumps(meta.route)}",
        f"subject = {json.dumps(meta.subject)}",
        f"made_with = [{json.dumps(reference.standard)}]",
        f"procedure = {json.dumps(procedure.name)}",
        f"valid_from = {cert.valid_from.date().isoformat()}",
        f"valid_until = {cert.valid_until.date().isoformat()}",
        f"unit = {json.dumps(cert.unit)}",
        f"range = [{cert.calibrated_range[0]!r}, {cert.calibrated_range[1]!r}]",
        'abscissa = "indication"',
        'convention = "error"',
        "points = [",
        *(
            f"  {{ x = {p.indication!r}, c = {p.error!r}, U = {p.expanded_uncertainty!r}, "
            f"k = {p.coverage_factor!r} }},"
            for p in cert.points
        ),
        "]",
    ]
    return "\n".join(lines) + "\n"


async def calibrate(
    procedure: Procedure,
    *,
    prompter: Prompter,
    progress: Callable[[str], None],
) -> list[RigPoint]:
    """Open the rig's instruments, run `procedure` on them and close them again.

    Raises:
        DriverError: an instrument failed or is missing.
        CalibrationError: see `run_procedure`.
    """
    async with AsyncExitStack() as stack:
        source: Calibrator | None = None
        if procedure.source.kind == "visa":
            assert procedure.source.resource is not None  # noqa: S101 -- validated
            link = await stack.enter_async_context(
                await open_visa(
                    procedure.source.resource,
                    library=procedure.source.library,
                    timeout=procedure.source.timeout,
                )
            )
            source = Calibrator(link)
            await source.standby()
        reference = await _open_dmm(stack, procedure.reference)
        dut = None if procedure.dut.kind == "prompt" else await _open_dmm(stack, procedure.dut)
        return await run_procedure(
            procedure,
            source=source,
            reference=reference,
            dut=dut,
            prompter=prompter,
            progress=progress,
        )


def cmd_calibrate(
    args: argparse.Namespace, *, stdin: IO[str] | None = None, stdout: IO[str] | None = None
) -> int:
    """Run ``calibrate``: 0 when every point passed, 1 on failure or any failed point."""
    answers, out = stdin or sys.stdin, stdout or sys.stdout
    try:
        procedure = load_procedure(args.procedure)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"metrogate: {exc}\n")
        return 1
    prompter = Prompter(answers, out)

    def progress(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async def run() -> list[RigPoint] | None:
        if procedure.source.kind == "visa" and not args.yes:
            highest = max(abs(point.value) for point in procedure.point)
            answer = await prompter.ask(
                f"The source {procedure.source.resource} will output up to {highest:g} "
                f"{procedure.point[0].unit}. Connect DUT and reference; continue? [y/N] "
            )
            if answer.lower() not in {"y", "yes"}:
                return None
        return await calibrate(procedure, prompter=prompter, progress=progress)

    started = datetime.now(UTC)
    try:
        points = asyncio.run(run())
    except (DriverError, CalibrationError, EOFError) as exc:
        sys.stderr.write(f"metrogate: calibration stopped: {exc}\n")
        return 1
    if points is None:
        sys.stderr.write("metrogate: calibration not started\n")
        return 1
    meta = procedure.certificate
    cert = rig_certificate(
        points,
        certificate_id=meta.id,
        issuer=meta.issuer,
        kind=meta.kind,
        valid_from=datetime.combine(started.date(), time(0), tzinfo=UTC),
        # The last day counts in full, as a station file's dates do.
        valid_until=datetime.combine(meta.valid_until, time(0), tzinfo=UTC)
        + timedelta(days=1, microseconds=-1),
    )
    for point in points:
        progress(format_budget(point.budget))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    toml_path = out_dir / f"{meta.id}.toml"
    toml_path.write_text(
        certificate_toml(cert, points, procedure, accreditation=meta.accreditation),
        encoding="utf-8",
    )
    progress(f"certificate written to {toml_path}")
    if meta.subject is not None and procedure.reference.standard is not None:
        register_path = out_dir / f"{meta.id}.register.toml"
        register_path.write_text(register_toml(cert, procedure), encoding="utf-8")
        progress(
            f"register entry written to {register_path} (made with "
            f"{procedure.reference.standard}): metrogate certs import {register_path}"
        )
    if args.dcc:
        dcc_path = out_dir / f"{meta.id}.dcc.xml"
        dcc_path.write_bytes(_dcc(cert, procedure))
        progress(f"DCC written to {dcc_path}")
    failed = [point for point in points if not point.passed]
    progress(
        f"{len(points) - len(failed)}/{len(points)} points conform ({points[0].decision_rule})"
    )
    return 1 if failed else 0


def add_calibrate_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``calibrate`` subcommand to the ``metrogate`` command's subparsers."""
    calibrate_parser = commands.add_parser(
        "calibrate", help="run a comparison calibration on a test rig from a procedure file"
    )
    calibrate_parser.add_argument("--procedure", required=True, help="procedure file (TOML)")
    calibrate_parser.add_argument(
        "--out", default=".", help="directory for <certificate id>.toml (default: .)"
    )
    calibrate_parser.add_argument(
        "--dcc", action="store_true", help="also write <certificate id>.dcc.xml (PTB DCC)"
    )
    calibrate_parser.add_argument(
        "--yes", action="store_true", help="do not ask before switching the source on"
    )
    calibrate_parser.set_defaults(handler=cmd_calibrate)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """``calibrate`` on its own: ``main(["calibrate", "--procedure", FILE])``."""
    parser = argparse.ArgumentParser(prog="metrogate")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return cmd_calibrate(args, stdin=stdin, stdout=stdout)


async def _open_dmm(stack: AsyncExitStack, section: _Dmm) -> ScpiDmm:
    assert section.resource is not None  # noqa: S101 -- validated
    link = await stack.enter_async_context(
        await open_visa(section.resource, library=section.library, timeout=section.timeout)
    )
    dmm = ScpiDmm(link, function=section.function, range=section.range, nplc=section.nplc)
    await dmm.configure()
    return dmm


async def _read(dmm: ScpiDmm) -> float:
    (reading,) = await dmm.read()
    return reading.indication


async def _read_dut(dut: ScpiDmm | None, prompter: Prompter, question: str) -> float:
    return await prompter.number(question) if dut is None else await _read(dut)


def _reference_standard(section: ReferenceSection) -> ReferenceStandard:
    if not section.points:
        return ReferenceStandard(
            certificate_id=section.certificate_id,
            resolution=section.resolution,
            expanded_uncertainty=section.expanded_uncertainty,
            coverage_factor=section.coverage_factor,
        )
    # The dates do not matter here: the station checks the reference's validity.
    anytime = datetime(1970, 1, 1, tzinfo=UTC)
    certificate = Certificate.from_points(
        certificate_id=section.certificate_id,
        unit="-",
        issuer="-",
        kind="calibration",
        valid_from=anytime,
        valid_until=anytime,
        abscissa=section.abscissa,
        convention=section.convention,
        points=[(point.x, point.c, point.U, point.k) for point in section.points],
    )
    return ReferenceStandard(
        certificate_id=section.certificate_id,
        resolution=section.resolution,
        certificate=certificate,
    )


def _summary(point: RigPoint) -> str:
    return (
        f"  E = {point.error:.6g} {point.unit}, U = {point.expanded_uncertainty:.3g} "
        f"{point.unit} (k = {point.coverage_factor:.3f}, nu_eff = {_dof(point.budget.dof)}), "
        f"s = {point.error_std:.3g}, MPE = {point.mpe:.3g}, TUR = {point.tur:.2f}: "
        f"{'pass' if point.passed else 'FAIL'}"
    )


def _dof(dof: float) -> str:
    return "inf" if math.isinf(dof) else f"{dof:.1f}"


def _describe(section: _Dmm) -> str:
    parts = [section.manufacturer, section.model, section.name]
    text = " ".join(part for part in parts if part) or "unnamed"
    if section.serial:
        text += f", serial {section.serial}"
    if section.resource:
        text += f" ({section.resource})"
    return text


def _dcc(cert: Certificate, procedure: Procedure) -> bytes:
    meta, dut, reference = procedure.certificate, procedure.dut, procedure.reference
    return certificate_to_dcc(
        cert,
        coverage_probability=COVERAGE_PROBABILITY_K2,
        item=DccItem(
            name=dut.name or "device under test",
            manufacturer=dut.manufacturer or "unknown",
            model=dut.model or None,
            identifications=(
                DccIdentification(issuer="manufacturer", value=dut.serial or "unknown"),
            ),
        ),
        customer=DccContact(name=meta.customer or meta.issuer),
        responsible_persons=[meta.responsible_person or meta.issuer],
        software_release=__version__,
        country_code=meta.country_code,
        laboratory_code=meta.accreditation or None,
        standards=[
            DccEquipment(
                name=reference.name or "reference standard",
                ref_types=("basic_standardUsed",),
                manufacturer=reference.manufacturer or None,
                model=reference.model or None,
                certificate_id=reference.certificate_id,
            )
        ],
    )
