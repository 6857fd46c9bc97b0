# SPDX-License-Identifier: Apache-2.0
"""Verification certificates with MPE rules in the register, and upgrading an older register.

A register file's ``mpe`` takes the station file's forms (a constant, or an energy-meter,
balance, transformer or linear rule). ``metrogate certs import`` stores the rule; a channel
resting on the register's entry is then bounded exactly as by the same entry in the station
file. A database created before the rule column existed is upgraded when opened, on SQLite
and on PostgreSQL.
"""

import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, inspect, text

from calibration import balance_mpe, energy_meter_mpe
from gateway.cli import main
from gateway.config import StationConfig, parse_config
from gateway.daemon import Station
from gateway.instruments import channel_specs
from gateway.models import CertificateRow
from gateway.pipeline import Acquired, ChannelChain, ChannelSpec, measure
from gateway.register import channel_certificate, open_register
from gateway.stamp import Measured
from gateway.store import AsyncStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SQRT3 = math.sqrt(3.0)
RULES = text("SELECT number, mpe_rule FROM register_certificates")

# Lines only a register entry has; the rest of each entry is valid station-file text.
REGISTER_ONLY = ("subject", "route", "made_with", "accreditation")

UPSTREAM = """
[[standard]]
id = "NIM"
level = "national-primary"

[[standard]]
id = "WS"
level = "enterprise-highest"

[[certificate]]
id = "C-WS"
subject = "WS"
issuer = "Provincial Institute"
route = "legal metrology institute"
accreditation = "(国)法计(2020)01001号"
made_with = ["NIM"]
valid_from = 2026-01-01
valid_until = 2027-12-31
unit = "g"
"""

CERTIFICATES = """
[[certificate]]
id = "JD-METER"
kind = "verification"
subject = "meter-1"
route = "legal metrology institute"
accreditation = "(鄂)法计(2021)01001号"
made_with = ["WS"]
issuer = "Hubei Institute of Measurement and Testing Technology"
procedure = "JJG 596-2012"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "kWh"
passed = true
mpe = { rule = "energy-meter", class = "0.5S", current = 0.5 }

[[certificate]]
id = "JD-BAL"
kind = "verification"
issuer = "County Verification Station"
accreditation = "(鄂)法计(2021)01002号"
subject = "balance-1"
route = "legal metrology institute"
made_with = ["WS"]
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "g"
passed = true
range = [0.0, 2000.0]
mpe = { rule = "balance", class = "II", e = 0.1, max = 2200, in_service = true }

[[certificate]]
id = "JD-LIN"
kind = "verification"
issuer = "County Verification Station"
accreditation = "(鄂)法计(2021)01002号"
subject = "dmm-1"
route = "legal metrology institute"
made_with = ["WS"]
procedure = "JJG 315-1983"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "V"
passed = true
range = [0.0, 10.0]
mpe = { rule = "linear", absolute = 0.002, percent_of_reading = 0.01 }

[[certificate]]
id = "JD-CONST"
kind = "verification"
issuer = "County Verification Station"
accreditation = "(鄂)法计(2021)01002号"
subject = "balance-2"
route = "legal metrology institute"
made_with = ["WS"]
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "g"
passed = true
range = [0.0, 200.0]
mpe = 0.5
"""

STATION = """\
[station]
id = "lab-1"
data_dir = "{data_dir}"

[[bus]]
id = "rs485"
kind = "serial"
port = "/dev/ttyUSB0"

[[bus]]
id = "gpib"
kind = "visa"
resource = "GPIB0::22::INSTR"

[[instrument]]
id = "meter-1"
bus = "rs485"
driver = "dlt645"
address = "000102030425"
  [[instrument.channel]]
  id = "energy"
  source = "import_active_energy"
  quantity = "active energy"
  unit = "kWh"
  resolution = 0.01
  certificate = "JD-METER"

[[instrument]]
id = "balance-1"
bus = "rs485"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.1
  certificate = "JD-BAL"

[[instrument]]
id = "dmm-1"
bus = "gpib"
driver = "scpi-dmm"
  [[instrument.channel]]
  id = "voltage"
  quantity = "voltage"
  unit = "V"
  resolution = 1e-5
  certificate = "JD-LIN"

[[instrument]]
id = "balance-2"
bus = "rs485"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.01
  certificate = "JD-CONST"
"""

INDICATIONS = {
    "meter-1": (0.0, 1234.5, 125000.0),
    "balance-1": (0.0, 49.9, 50.0, 1999.0, 2100.0, -3.0),
    "dmm-1": (0.5, 9.99, 10.5),
    "balance-2": (150.0, 250.0),
}


def station_form(register_text: str) -> str:
    """The register's certificates as the station file states them (no chain keys)."""
    return "\n".join(
        line for line in register_text.splitlines() if not line.startswith(REGISTER_ONLY)
    )


async def chains_of(config: StationConfig) -> dict[str, ChannelChain]:
    store = await AsyncStore.open(config.store_url, station="lab-1")
    try:
        return await Station(config)._chains(store, at=NOW)
    finally:
        await store.aclose()


def spec_of(
    config: StationConfig, chains: dict[str, ChannelChain], instrument: str
) -> ChannelSpec:
    found = next(i for i in config.instrument if i.id == instrument)
    (spec,) = (s for group in channel_specs(config, found, chains).values() for s in group)
    return spec


def read(spec: ChannelSpec, indications: tuple[float, ...]) -> list[Measured]:
    return measure([Acquired(spec, x, spec.unit, stable=True, time=NOW) for x in indications])


@pytest.fixture
def register_file(tmp_path: Path) -> Path:
    path = tmp_path / "register.toml"
    path.write_text(UPSTREAM + CERTIFICATES, encoding="utf-8")
    return path


async def test_register_rules_bound_channels_exactly_as_the_station_file_does(
    tmp_path: Path, register_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = parse_config(STATION.format(data_dir=tmp_path), file="station.toml")
    assert main(["certs", "import", str(register_file), "--db", config.store_url]) == 0
    assert "5 certificates" in capsys.readouterr().out
    chains = await chains_of(config)
    in_file = parse_config(
        STATION.format(data_dir=tmp_path / "other") + station_form(CERTIFICATES), file="s.toml"
    )
    for instrument, indications in INDICATIONS.items():
        from_register = read(spec_of(config, chains, instrument), indications)
        from_file = read(spec_of(in_file, {}, instrument), indications)
        for ours, theirs in zip(from_register, from_file, strict=True):
            assert ours.value == theirs.value
            assert ours.u == theirs.u
            assert ours.expanded_u == theirs.expanded_u
            assert ours.k == theirs.k
            assert ours.flags == theirs.flags
        assert from_register[0].chain[-1] == "C-WS"  # the register's chain, checked
    # The rules themselves took effect, from the class tables (not some constant).
    energy = read(spec_of(config, chains, "meter-1"), (125000.0,))[0]
    meter = energy_meter_mpe("0.5S", current=0.5).at(125000.0)
    assert energy.u == pytest.approx(math.hypot(meter / SQRT3, 0.01 / (2 * SQRT3)), rel=1e-12)
    rule = balance_mpe("II", scale_interval=0.1, capacity=2200.0, in_service=True)
    light, heavy = read(spec_of(config, chains, "balance-1"), (49.9, 1999.0))
    assert light.u is not None
    assert heavy.u is not None
    assert heavy.u > light.u  # a step of the balance rule lies between
    for reading, x in ((light, 49.9), (heavy, 1999.0)):
        expected = math.hypot(rule.at(x) / SQRT3, 0.1 / (2 * SQRT3))
        assert reading.u == pytest.approx(expected, rel=1e-12)
    outside = read(spec_of(config, chains, "balance-1"), (2100.0,))[0]
    assert outside.flags == ("OUT_OF_CALIBRATED_RANGE",)


def test_the_rule_is_stored_as_given_and_shown(
    tmp_path: Path, register_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'metrogate.db'}"
    assert main(["certs", "import", str(register_file), "--db", db]) == 0
    engine = open_register(db)
    with engine.connect() as connection:
        stored = {row[0]: row[1] for row in connection.execute(RULES)}
        constant = connection.execute(
            text("SELECT mpe FROM register_certificates WHERE number = 'JD-CONST'")
        ).scalar_one()
    engine.dispose()
    assert json.loads(stored["JD-BAL"]) == {
        "rule": "balance",
        "class": "II",
        "e": 0.1,
        "max": 2200.0,
        "in_service": True,
    }
    assert json.loads(stored["JD-METER"])["current"] == 0.5
    assert json.loads(stored["JD-CONST"]) == 0.5
    assert constant == 0.5
    assert stored["C-WS"] is None  # a calibration states no MPE
    capsys.readouterr()
    assert main(["certs", "show", "JD-METER", "--db", db]) == 0
    assert '"class": "0.5S"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mpe", "message"),
    [
        ('{ rule = "energy-meter", class = "0.3" }', "energy meter class 0.3"),
        ('{ rule = "balance", class = "V", e = 0.1 }', "balance class 'V'"),
        ('{ rule = "sometimes" }', "rule"),
        ("0.0", "a constant MPE must be finite and > 0"),
        ("-1.0", "a constant MPE must be finite and > 0"),
    ],
)
def test_an_unusable_mpe_is_refused_at_import(
    tmp_path: Path, mpe: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        CERTIFICATES.split("[[certificate]]")[1].replace(
            'mpe = { rule = "energy-meter", class = "0.5S", current = 0.5 }', f"mpe = {mpe}"
        ),
        encoding="utf-8",
    )
    path.write_text("[[certificate]]" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["certs", "import", str(path), "--db", f"sqlite:///{tmp_path / 'm.db'}"]) == 1
    assert message in capsys.readouterr().err


def test_a_rule_on_a_calibration_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        UPSTREAM.replace('unit = "g"', 'unit = "g"\nmpe = { rule = "linear", absolute = 1.0 }'),
        encoding="utf-8",
    )
    assert main(["certs", "import", str(path), "--db", f"sqlite:///{tmp_path / 'm.db'}"]) == 1
    assert "only for kind verification" in capsys.readouterr().err


# --- upgrading a register created by the previous version --------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def old_register(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store whose register tables were created without `mpe_rule`, holding one entry."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metrogate.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("register_certificates", "register_standards"):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    # The previous version's table: today's columns but the one added since.
    columns: list[Column[object]] = [
        column._copy()  # Column.copy() is deprecated; _copy is what it calls
        for column in CertificateRow.__table__.columns  # type: ignore[attr-defined]  # SQLModel
        if column.name != "mpe_rule"
    ]
    old = Table("register_certificates", MetaData(), *columns)
    old.create(engine)
    with engine.begin() as connection:
        connection.execute(
            old.insert().values(
                number="JD-OLD",
                kind="verification",
                issuer="County Verification Station",
                route="legal metrology institute",
                issued="2026-01-10T00:00:00+00:00",
                valid_until="2027-01-09T23:59:59.999999+00:00",
                subject="balance-2",
                range_min=0.0,
                range_max=200.0,
                range_unit="g",
                mpe=0.5,
                passed=True,
                unit="g",
            )
        )
    engine.dispose()
    yield url
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("register_certificates", "register_standards"):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def test_an_older_register_is_upgraded_and_its_rows_still_bound_channels(
    old_register: str,
    register_file: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine(old_register)
    before = {c["name"] for c in inspect(engine).get_columns("register_certificates")}
    engine.dispose()
    assert "mpe_rule" not in before
    with caplog.at_level(logging.INFO, logger="gateway.register"):
        assert main(["certs", "import", str(register_file), "--db", old_register]) == 0
    assert "added column register_certificates.mpe_rule" in caplog.text
    engine = open_register(old_register)  # a second open finds the column and adds nothing
    with engine.connect() as connection:
        rows = {row[0]: row[1] for row in connection.execute(RULES)}
    assert rows["JD-OLD"] is None
    assert json.loads(rows["JD-LIN"])["rule"] == "linear"
    from sqlmodel import Session  # noqa: PLC0415 - only here

    with Session(engine) as session:
        old_row = session.get(CertificateRow, "JD-OLD")
        new_row = session.get(CertificateRow, "JD-CONST")
    engine.dispose()
    assert old_row is not None
    assert new_row is not None
    # The old row's constant MPE bounds a channel as the same constant imported today does.
    old_model = channel_certificate(old_row, "g")
    new_model = channel_certificate(new_row, "g")
    assert old_model.calibrated_range == new_model.calibrated_range == (0.0, 200.0)
    assert old_model.mpe.at(150.0) == new_model.mpe.at(150.0) == 0.5  # type: ignore[union-attr]
    capsys.readouterr()
    assert main(["certs", "list", "--db", old_register, "--at", "2026-06-01"]) == 0
    assert "JD-OLD" in capsys.readouterr().out
