# SPDX-License-Identifier: Apache-2.0
"""Register certificates as channel corrections, and the range a chain covers.

The register is imported with ``metrogate certs import`` into a real SQLite store; the
daemon's own `Station._chains` reads it on the store's thread, as at start.
"""

import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import StationConfig, parse_config
from gateway.daemon import Station
from gateway.instruments import channel_specs
from gateway.pipeline import Acquired, ChannelChain, ChannelSpec, measure
from gateway.stamp import Measured
from gateway.store import AsyncStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

REGISTER = """
[[standard]]
id = "NIM-KG"
level = "national-primary"

[[standard]]
id = "E2-SET"
level = "enterprise-highest"

[[certificate]]
id = "CAL-REG"
subject = "balance-1"
issuer = "Provincial Institute"
accreditation = "CNAS L1234"
route = "ILAC-MRA accredited lab"
made_with = ["E2-SET"]
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "g"
point_correlation = 0.5
points = [{ x = 500.0, c = -0.10, U = 0.06 }, { x = 1000.0, c = -0.20, U = 0.08 }]

[[certificate]]
id = "JD-REG"
kind = "verification"
subject = "balance-2"
issuer = "County Verification Station"
accreditation = "(鄂)法计(2021)01001号"
route = "legal metrology institute"
procedure = "JJG 1036-2008"
made_with = ["E2-SET"]
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "g"
range = [0.0, 200.0]
mpe = 0.5
passed = true

[[certificate]]
id = "SHARED"
subject = "balance-3"
issuer = "Provincial Institute"
accreditation = "CNAS L1234"
route = "ILAC-MRA accredited lab"
made_with = ["E2-SET"]
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "g"
points = [{ x = 0.0, c = 5.0, U = 1.0 }, { x = 2000.0, c = 5.0, U = 1.0 }]

[[certificate]]
id = "C-E2"
subject = "E2-SET"
issuer = "Zhejiang Institute of Metrology"
accreditation = "(国)法计(2020)01001号"
route = "legal metrology institute"
made_with = ["NIM-KG"]
valid_from = 2026-01-01
valid_until = 2027-12-31
unit = "g"
range = [1.0, 800.0]
"""

STATION = """\
[station]
id = "lab-1"
data_dir = "{data_dir}"

[[bus]]
id = "com1"
kind = "serial"
port = "/dev/ttyUSB0"

[[instrument]]
id = "balance-1"
bus = "com1"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.01
  certificate = "CAL-REG"

[[instrument]]
id = "balance-2"
bus = "com1"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.01
  certificate = "JD-REG"

[[instrument]]
id = "balance-3"
bus = "com1"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.01
  certificate = "SHARED"

[[instrument]]
id = "balance-4"
bus = "com1"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.01
  certificate = "NOWHERE"

[[certificate]]
id = "SHARED"
issuer = "Provincial Institute"
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "g"
points = [{{ x = 0.0, c = 0.0, U = 0.02 }}, {{ x = 2000.0, c = 0.0, U = 0.02 }}]
"""

# CAL-REG as it would stand in the station file: the register must give the same readings.
IN_FILE = """
[[certificate]]
id = "CAL-REG"
issuer = "Provincial Institute"
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "g"
point_correlation = 0.5
points = [{ x = 500.0, c = -0.10, U = 0.06 }, { x = 1000.0, c = -0.20, U = 0.08 }]
"""


@pytest.fixture
async def started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> tuple[StationConfig, dict[str, ChannelChain]]:
    config = parse_config(STATION.format(data_dir=tmp_path), file="station.toml")
    register = tmp_path / "register.toml"
    register.write_text(REGISTER, encoding="utf-8")
    assert main(["certs", "import", str(register), "--db", config.store_url]) == 0
    capsys.readouterr()
    store = await AsyncStore.open(config.store_url, station="lab-1")
    try:
        with caplog.at_level(logging.INFO):
            chains = await Station(config)._chains(store, at=NOW)
    finally:
        await store.aclose()
    return config, chains


def spec_of(
    config: StationConfig, chains: dict[str, ChannelChain], instrument: str
) -> ChannelSpec:
    found = next(i for i in config.instrument if i.id == instrument)
    return channel_specs(config, found, chains)["weight"][0]


def read(spec: ChannelSpec, *indications: float) -> list[Measured]:
    return measure([Acquired(spec, x, "g", stable=True, time=NOW) for x in indications])


async def test_a_register_calibration_corrects_exactly_as_a_station_file_one(
    started: tuple[StationConfig, dict[str, ChannelChain]],
) -> None:
    config, chains = started
    from_register = read(spec_of(config, chains, "balance-1"), 500.0, 750.0)
    in_file = parse_config(STATION.format(data_dir="/tmp") + IN_FILE, file="s.toml")
    from_file = read(spec_of(in_file, {}, "balance-1"), 500.0, 750.0)
    for register_reading, file_reading in zip(from_register, from_file, strict=True):
        assert register_reading.value == file_reading.value
        assert register_reading.u == file_reading.u
        assert register_reading.expanded_u == file_reading.expanded_u
        assert register_reading.flags == ()
        assert register_reading.chain == ("CAL-REG", "C-E2")
    assert from_register[1].value == pytest.approx(750.0 - 0.15)


async def test_the_chain_range_flags_a_reading_an_upstream_link_does_not_cover(
    started: tuple[StationConfig, dict[str, ChannelChain]],
) -> None:
    config, chains = started
    assert chains["balance-1/mass"].covered_range == (500.0, 800.0)
    inside, beyond, outside = read(spec_of(config, chains, "balance-1"), 700.0, 900.0, 1100.0)
    assert inside.flags == ()
    assert beyond.flags == ("OUT_OF_CHAIN_RANGE",)
    assert beyond.value == pytest.approx(900.0 - 0.18)
    assert beyond.u is not None
    assert outside.flags == ("OUT_OF_CALIBRATED_RANGE",)


async def test_a_register_verification_bounds_the_channel(
    started: tuple[StationConfig, dict[str, ChannelChain]],
) -> None:
    config, chains = started
    reading, outside = read(spec_of(config, chains, "balance-2"), 150.0, 250.0)
    assert reading.value == 150.0
    assert reading.u == pytest.approx(math.hypot(0.5 / math.sqrt(3), 0.01 / (2 * math.sqrt(3))))
    assert reading.flags == ()
    assert reading.chain == ("JD-REG", "C-E2")
    assert outside.flags == ("OUT_OF_CALIBRATED_RANGE",)


async def test_the_station_file_wins_and_a_missing_certificate_is_logged(
    started: tuple[StationConfig, dict[str, ChannelChain]], caplog: pytest.LogCaptureFixture
) -> None:
    config, chains = started
    logged = "\n".join(record.getMessage() for record in caplog.get_records("setup"))
    (shared,) = read(spec_of(config, chains, "balance-3"), 1000.0)
    assert shared.value == 1000.0  # the file's C = 0, not the register's C = 5 g
    assert shared.u == pytest.approx(math.hypot(0.01, 0.01 / (2 * math.sqrt(3))))
    assert "certificate SHARED: the station file's entry is used for balance-3/mass" in logged
    (missing,) = read(spec_of(config, chains, "balance-4"), 1000.0)
    assert missing.flags == ("NO_CERTIFICATE",)
    assert missing.certificate == "NOWHERE"
    assert (
        "channel balance-4/mass: certificate NOWHERE is neither in the station file nor in the "
        "register" in logged
    )
    assert "channel balance-1/mass: certificate CAL-REG loaded from the register" in logged
