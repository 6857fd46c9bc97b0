# SPDX-License-Identifier: Apache-2.0
"""The register of standards and certificates, driven through ``metrogate`` on SQLite."""

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.register import load_records, load_standards, open_register

REPO = Path(__file__).resolve().parents[2]
DCC = REPO / "tests" / "calibration" / "data" / "metrogate_case2_3.2.0.xml"

REGISTER = """
[[standard]]
id = "NIM-T"
name = "national temperature primary standard"
level = "national-primary"

[[standard]]
id = "PROV-PRT"
level = "public"
assessment_certificate = "[2024]量标浙证字第001号"
assessment_valid_until = 2028-01-01

[[standard]]
id = "ENT-PRT"
level = "enterprise-highest"

[[standard]]
id = "WS-PT100"
level = "working"

[[certificate]]
id = "C-PROV"
subject = "PROV-PRT"
issuer = "Zhejiang Institute of Metrology"
accreditation = "(国)法计(2020)01001号"
route = "legal metrology institute"
made_with = ["NIM-T"]
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "°C"
range = [-50.0, 420.0]

[[certificate]]
id = "C-ENT"
subject = "ENT-PRT"
issuer = "Calibration Lab Co."
accreditation = "CNAS L1234"
route = "ILAC-MRA accredited lab"
made_with = ["PROV-PRT"]
valid_from = 2026-01-10
valid_until = 2026-07-01
unit = "°C"
range = [-50.0, 200.0]

[[certificate]]
id = "C-WS"
subject = "WS-PT100"
kind = "in-house"
issuer = "our lab"
route = "in-house"
procedure = "QP-CAL-07"
made_with = ["ENT-PRT"]
valid_from = 2026-02-01
interval_days = 365
unit = "°C"
points = [{ x = 0.0, c = 0.02, U = 0.05 }, { x = 100.0, c = -0.03, U = 0.06 }]

[[certificate]]
id = "C-TT1"
subject = "TT-101"
kind = "verification"
issuer = "our lab"
route = "in-house"
procedure = "JJG 229-2010"
made_with = ["WS-PT100"]
valid_from = 2026-03-01
valid_until = 2027-02-28
unit = "°C"
range = [0.0, 100.0]
accuracy_class = "A"
passed = true
"""


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'metrogate.db'}"


@pytest.fixture
def register(tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "register.toml"
    path.write_text(REGISTER, encoding="utf-8")
    assert main(["certs", "import", str(path), "--db", db]) == 0
    assert "4 standards and 4 certificates" in capsys.readouterr().out
    return db


def test_import_stores_standards_and_records(register: str) -> None:
    engine = open_register(register)
    records = {record.number: record for record in load_records(engine)}
    assert set(records) == {"C-PROV", "C-ENT", "C-WS", "C-TT1"}
    assert records["C-WS"].calibrated_range is not None
    assert records["C-WS"].calibrated_range.maximum == 100.0
    assert records["C-TT1"].passed is True
    assert load_standards(engine)["PROV-PRT"].assessment_certificate == "[2024]量标浙证字第001号"
    engine.dispose()


def test_valid_chain_exits_0_and_prints_every_link(
    register: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    status = main(["chain", "TT-101/temperature", "--db", register, "--at", "2026-04-01"])
    out = capsys.readouterr().out
    assert status == 0, out
    for subject in ("TT-101/temperature", "WS-PT100", "ENT-PRT", "PROV-PRT", "NIM-T"):
        assert subject in out
    assert "OK: traceable to NIM-T" in out
    assert "WARNING" not in out


def test_expired_link_exits_1_naming_it(register: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    status = main(["chain", "TT-101", "--db", register, "--at", "2026-08-01T00:00:00+00:00"])
    out = capsys.readouterr().out
    assert status == 1
    assert "BROKEN at ENT-PRT (C-ENT): expired 2026-07-01" in out


def test_value_outside_range_breaks_the_chain(
    register: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["chain", "TT-101", "--db", register, "--at", "2026-04-01", "--value", "150"]) == 1
    assert "BROKEN at TT-101" in capsys.readouterr().out


def test_expiry_warnings_in_chain_and_list(
    register: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["chain", "TT-101", "--db", register, "--at", "2026-06-15"]) == 0
    assert "WARNING: C-ENT (ENT-PRT) expires 2026-07-01" in capsys.readouterr().out
    assert (
        main(["certs", "list", "--db", register, "--at", "2026-06-15", "--warn-days", "20"]) == 0
    )
    out = capsys.readouterr().out
    assert "expires in 16 d" in out
    assert "1 expire within 20 days" in out
    assert main(["certs", "list", "--db", register, "--at", "2026-08-01"]) == 0
    assert "EXPIRED" in capsys.readouterr().out


def test_show_prints_the_points(register: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["certs", "show", "C-WS", "--db", register]) == 0
    out = capsys.readouterr().out
    assert "QP-CAL-07" in out
    assert "2 (indication, correction, U, k)" in out
    assert main(["certs", "show", "NOPE", "--db", register]) == 1
    assert "no certificate 'NOPE'" in capsys.readouterr().err


def test_standards_add_and_list(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["standards", "add", "NIM-M", "--level", "national-primary", "--db", db]) == 0
    args = ["standards", "add", "PROV-M", "--level", "public", "--db", db]
    args += ["--assessment-certificate", "A-1", "--assessment-valid-until", "2027-05-01"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["standards", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "NIM-M" in out
    assert "assessment A-1 until 2027-05-01" in out


def test_dcc_import_then_chain(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["standards", "add", "W-2019-07", "--level", "working", "--db", db]) == 0
    args = ["certs", "import", str(DCC), "--db", db, "--subject", "balance-1"]
    assert main([*args, "--unit", r"\gram"]) == 0
    assert "imported CAL-2026-0117 for balance-1" in capsys.readouterr().out
    assert main(["certs", "show", "CAL-2026-0117", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "CNAS L0001" in out
    assert "W-2019-07" in out
    assert main(["chain", "balance-1/mass", "--db", db, "--at", "2026-06-01"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at W-2019-07 (no certificate)" in out


def test_bad_register_file_exits_1(
    tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[certificate]]\nid = "X"\nroute = "friend"\n', encoding="utf-8")
    assert main(["certs", "import", str(path), "--db", db]) == 1
    assert "route" in capsys.readouterr().err


def test_config_gives_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nid = "s1"\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    assert main(["standards", "add", "NIM-T", "--level", "national-primary", "--config",
                 str(config)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["standards", "list", "--db", f"sqlite:///{tmp_path / 'metrogate.db'}"]) == 0
    assert "NIM-T" in capsys.readouterr().out
