# SPDX-License-Identifier: Apache-2.0
"""`metrogate calibrate` (gateway.rig) end to end against the pyvisa-sim instruments.

The reference and the DUT are two resources of one pyvisa-sim file (copied per test for a
fresh state): TCPIP0::192.168.0.10::INSTR and ASRL1::INSTR. ``SIM:READ`` fixes what each
reads, so the error the rig computes is known: DUT 10.00005 V, reference 10.0 V whose
certificate corrects it by -10 µV at 10 V -> E = 10.00005 - 9.99999 = 60 µV.
"""

import asyncio
import io
import math
import shutil
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from calibration.dcc import parse_dcc
from calibration.rig import DECISION_RULES
from drivers.errors import InstrumentError
from drivers.reading import RawReading
from drivers.scpi.calibrator import Calibrator
from drivers.scpi.dmm import ScpiDmm
from drivers.sim.visa import (
    CALIBRATOR_RESOURCE,
    DMM_RESOURCE,
    DMM_SERIAL_RESOURCE,
    instruments_yaml,
    sim_library,
)
from drivers.transports.visa import VisaLink, open_visa
from gateway.cli import main as cli_main
from gateway.config import CertificateConfig
from gateway.rig import Procedure, Prompter, load_procedure, main, run_procedure

REFERENCE_RESOURCE = DMM_RESOURCE
DUT_RESOURCE = DMM_SERIAL_RESOURCE
# u_c² = (U/k)² + (1 µV/(2√3))² + (10 µV/(2√3))², s = 0 (the simulators read constant values).
EXPECTED_U = 2.0 * math.sqrt(10e-6**2 + 1e-6**2 / 12 + 10e-6**2 / 12)


def _procedure_text(library: str, *, source: str = "visa", dut: str = "visa") -> str:
    source_lines = (
        f'kind = "visa"\nresource = "{CALIBRATOR_RESOURCE}"\nlibrary = "{library}"'
        if source == "visa"
        else 'kind = "prompt"'
    )
    dut_lines = (
        f'kind = "visa"\nresource = "{DUT_RESOURCE}"\nlibrary = "{library}"\nrange = 10.0'
        if dut == "visa"
        else 'kind = "prompt"'
    )
    return f"""
name = "test DCV"
unit = "V"
repetitions = 3
settle = 0
decision_rule = "guard-band"

[source]
{source_lines}
timeout = 1.0

[reference]
resource = "{REFERENCE_RESOURCE}"
library = "{library}"
range = 10.0
nplc = 10
resolution = 1e-6
certificate_id = "CAL-REF-1"
name = "reference DMM"
points = [{{ x = 0.0, c = 0.0, U = 1e-6, k = 2 }}, {{ x = 10.0, c = -1e-5, U = 2e-5, k = 2 }}]

[dut]
{dut_lines}
resolution = 1e-5
name = "DMM"
manufacturer = "Keysight"
model = "34465A"
serial = "MY59000001"

[mpe]
percent_of_reading = 0.0035
percent_of_range = 0.0005
full_scale = 10.0

[[point]]
value = 10.0
unit = "V"

[certificate]
id = "CAL-DUT-1"
issuer = "Test lab"
valid_until = 2099-12-31
responsible_person = "T. Tester"
"""


@pytest.fixture
def library(tmp_path: Path) -> str:
    # A copy per test: pyvisa-sim keeps one simulator state per definitions file.
    return sim_library(Path(shutil.copy(instruments_yaml(), tmp_path / "instruments.yaml")))


@pytest.fixture
async def readings(library: str) -> AsyncIterator[tuple[VisaLink, VisaLink]]:
    """Links to the reference and the DUT that set their readings (and keep the sim loaded)."""
    async with (
        await open_visa(REFERENCE_RESOURCE, library=library, timeout=1.0) as reference,
        await open_visa(DUT_RESOURCE, library=library, timeout=1.0) as dut,
    ):
        await reference.write("SIM:READ 10.0")
        await dut.write("SIM:READ 10.00005")
        yield reference, dut


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "procedure.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.usefixtures("readings")
async def test_calibrate_writes_the_certificate_and_dcc(library: str, tmp_path: Path) -> None:
    procedure = _write(tmp_path, _procedure_text(library))
    out = io.StringIO()
    argv = ["calibrate", "--procedure", str(procedure), "--out", str(tmp_path / "out")]
    status = await asyncio.to_thread(
        main, [*argv, "--yes", "--dcc"], stdin=io.StringIO(""), stdout=out
    )
    assert status == 0, out.getvalue()
    printed = out.getvalue()
    assert "[1/1] set point 10 V" in printed
    assert "3/3: DUT 10.00005 V, reference 10.0 V" in printed
    assert "source in STANDBY" in printed
    text = (tmp_path / "out" / "CAL-DUT-1.toml").read_text(encoding="utf-8")
    assert '# traceable_to = "CAL-REF-1"' in text
    assert DECISION_RULES["guard-band"] in text
    # The station file's own schema accepts the table as written.
    (table,) = tomllib.loads(text)["certificate"]
    cert = CertificateConfig.model_validate(table)
    (point,) = cert.points
    assert (cert.id, cert.unit, cert.convention, cert.abscissa) == (
        "CAL-DUT-1", "V", "error", "indication"
    )  # fmt: skip
    assert point.x == pytest.approx(10.00005, abs=1e-12)
    assert point.c == pytest.approx(60e-6, abs=1e-12)
    assert point.U == pytest.approx(EXPECTED_U, rel=1e-9)  # noqa: SIM300 -- U is a field
    assert point.k == pytest.approx(2.0, rel=1e-12)  # nu_eff = inf: s = 0 on the simulator
    dcc = parse_dcc((tmp_path / "out" / "CAL-DUT-1.dcc.xml").read_bytes())
    assert dcc.unique_identifier == "CAL-DUT-1"


@pytest.mark.usefixtures("readings")
async def test_the_source_is_never_left_in_operate(library: str, tmp_path: Path) -> None:
    """The DUT overloads during the second set point: STANDBY follows, the error propagates."""
    calls: list[str] = []

    class RecordingCalibrator(Calibrator):
        async def operate(self) -> None:
            calls.append("operate")
            await super().operate()

        async def standby(self) -> None:
            calls.append("standby")
            await super().standby()

    procedure = load_procedure(_write(tmp_path, _procedure_text(library)))
    procedure = procedure.model_copy(update={"point": [*procedure.point, *procedure.point]})
    progress: list[str] = []

    def report(line: str) -> None:
        progress.append(line)
        if line.startswith("[2/2]"):  # before the second point's readings
            dut_sim_commands.append("SIM:READ 9.9E37")

    dut_sim_commands: list[str] = []
    async with (
        await open_visa(CALIBRATOR_RESOURCE, library=library, timeout=1.0) as source_link,
        await open_visa(REFERENCE_RESOURCE, library=library, timeout=1.0) as reference_link,
        await open_visa(DUT_RESOURCE, library=library, timeout=1.0) as dut_link,
    ):
        reference, dut = ScpiDmm(reference_link), _OverloadingDmm(dut_link, dut_sim_commands)
        with pytest.raises(InstrumentError, match="overload"):
            await run_procedure(
                procedure,
                source=RecordingCalibrator(source_link),
                reference=reference,
                dut=dut,
                prompter=Prompter(io.StringIO(""), io.StringIO()),
                progress=report,
            )
        assert await Calibrator(source_link).output() == (10.0, "V")
    assert calls == ["operate", "operate", "standby"]
    assert progress[-1] == "source in STANDBY"


class _OverloadingDmm(ScpiDmm):
    """A DMM on the simulator that first sends any pending SIM: command (a fault to inject)."""

    def __init__(self, link: VisaLink, pending: list[str]) -> None:
        super().__init__(link)
        self._sim_link = link
        self._pending = pending

    async def read(self) -> list[RawReading]:
        while self._pending:
            await self._sim_link.write(self._pending.pop())
        return await super().read()


@pytest.mark.usefixtures("readings")
async def test_prompt_mode_reads_the_dut_from_stdin(library: str, tmp_path: Path) -> None:
    procedure = _write(tmp_path, _procedure_text(library, source="prompt", dut="prompt"))
    # Enter once the source is set, then three DUT indications (one typo, asked again).
    stdin = io.StringIO("\n10.00004\nten\n10.00005\n10.00006\n")
    out = io.StringIO()
    argv = ["calibrate", "--procedure", str(procedure), "--out", str(tmp_path / "out")]
    status = await asyncio.to_thread(main, argv, stdin=stdin, stdout=out)
    assert status == 0, out.getvalue()
    assert "Set the source to 10 V, then press Enter" in out.getvalue()
    assert "'ten' is not a number" in out.getvalue()
    text = (tmp_path / "out" / "CAL-DUT-1.toml").read_text(encoding="utf-8")
    (point,) = CertificateConfig.model_validate(tomllib.loads(text)["certificate"][0]).points
    assert point.x == pytest.approx(10.00005, abs=1e-12)
    assert point.c == pytest.approx(60e-6, abs=1e-12)
    assert point.k > 2.0  # s = 10 µV with nu = 2: k = t(nu_eff)


@pytest.mark.usefixtures("readings")
async def test_nothing_is_switched_on_without_confirmation(library: str, tmp_path: Path) -> None:
    procedure = _write(tmp_path, _procedure_text(library))
    out = io.StringIO()
    argv = ["calibrate", "--procedure", str(procedure), "--out", str(tmp_path / "out")]
    status = await asyncio.to_thread(main, argv, stdin=io.StringIO("n\n"), stdout=out)
    assert status == 1
    assert "continue? [y/N]" in out.getvalue()
    assert not (tmp_path / "out").exists()


def test_the_example_procedure_is_valid() -> None:
    example = Path(__file__).parents[2] / "config" / "procedures" / "dmm-dcv.example.toml"
    procedure = load_procedure(example)
    assert isinstance(procedure, Procedure)
    assert [point.value for point in procedure.point] == [1.0, 5.0, 10.0]


def test_a_bad_procedure_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, 'name = "x"\nunit = "V"\nrepetitions = 1\n')
    assert main(["calibrate", "--procedure", str(path)]) == 1
    assert "repetitions" in capsys.readouterr().err


@pytest.mark.usefixtures("readings")
async def test_the_new_certificate_joins_the_chain(library: str, tmp_path: Path) -> None:
    """With [certificate] subject and [reference] standard, `certs import` links it upward."""
    text = (
        _procedure_text(library)
        .replace(
            'certificate_id = "CAL-REF-1"', 'certificate_id = "CAL-REF-1"\nstandard = "REF-DMM"'
        )
        .replace(
            '[certificate]\nid = "CAL-DUT-1"', '[certificate]\nid = "CAL-DUT-1"\nsubject = "dmm-7"'
        )
    )
    procedure = _write(tmp_path, text)
    out = io.StringIO()
    argv = ["calibrate", "--procedure", str(procedure), "--out", str(tmp_path / "out"), "--yes"]
    assert await asyncio.to_thread(main, argv, stdin=io.StringIO(""), stdout=out) == 0
    entry = tmp_path / "out" / "CAL-DUT-1.register.toml"
    (table,) = tomllib.loads(entry.read_text(encoding="utf-8"))["certificate"]
    assert (table["subject"], table["made_with"], table["route"]) == (
        "dmm-7", ["REF-DMM"], "in-house"
    )  # fmt: skip
    # The reference standard and its own certificate (from an accredited lab) are registered;
    # importing the rig's entry makes the chain dmm-7 -> CAL-DUT-1 -> REF-DMM -> CAL-REF-1.
    upstream = tmp_path / "upstream.toml"
    upstream.write_text(
        '[[standard]]\nid = "NIM-V"\nlevel = "national-primary"\n\n'
        '[[standard]]\nid = "REF-DMM"\nlevel = "working"\n\n'
        '[[certificate]]\nid = "CAL-REF-1"\nsubject = "REF-DMM"\nissuer = "NIM"\n'
        'route = "NMI-CIPM-MRA"\nvalid_from = 2026-01-01\nvalid_until = 2099-12-31\n'
        'unit = "V"\n',
        encoding="utf-8",
    )
    db = f"sqlite:///{tmp_path / 'register.db'}"
    assert cli_main(["certs", "import", str(upstream), "--db", db]) == 0
    assert cli_main(["certs", "import", str(entry), "--db", db]) == 0
    assert cli_main(["chain", "dmm-7", "--db", db]) == 0
