# SPDX-License-Identifier: Apache-2.0
"""``metrogate budget`` for readings whose certificates are only in the register.

Readings are produced as the daemon produces them (register imported with ``certs import``,
chains resolved by `Station._chains`, corrected by `measure`), stamped into a real SQLite
store, and explained by the real CLI, which must read the register as the daemon does.
"""

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import StationConfig, load_config
from gateway.daemon import Station
from gateway.instruments import channel_specs
from gateway.pipeline import Acquired, ChannelChain, ChannelSpec, measure
from gateway.stamp import Stamper
from gateway.store import AsyncStore, Store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

REGISTER = """
[[standard]]
id = "NIM"
level = "national-primary"

[[certificate]]
id = "CAL-REG"
subject = "balance-1"
issuer = "Provincial Institute"
accreditation = "CNAS L1234"
route = "ILAC-MRA accredited lab"
made_with = ["NIM"]
valid_from = 2026-01-10
valid_until = 2027-01-09
unit = "g"
point_correlation = 0.5
points = [{ x = 500.0, c = -0.10, U = 0.06 }, { x = 1000.0, c = -0.20, U = 0.08 }]

[[certificate]]
id = "JD-CT"
kind = "verification"
subject = "CT-A"
issuer = "Hubei Institute of Measurement and Testing Technology"
accreditation = "(鄂)法计(2021)01001号"
route = "legal metrology institute"
made_with = ["NIM"]
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "1"
passed = true
mpe = { rule = "transformer", kind = "current", class = "0.2S" }
"""

STATION = """\
[station]
id = "lab-1"
data_dir = "DATA_DIR"

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
id = "meter-1"
bus = "com1"
driver = "dlt645"
address = "000102030425"
  [[instrument.channel]]
  id = "energy"
  source = "import_active_energy"
  quantity = "active energy"
  unit = "kWh"
  resolution = 0.01
  certificate = "JD-METER"
    [instrument.channel.ct]
    ratio = "200/5"
    certificate = "JD-CT"

[[instrument]]
id = "balance-2"
bus = "com1"
driver = "mtsics"
  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.01
  certificate = "NOWHERE"

[[certificate]]
id = "JD-METER"
kind = "verification"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "kWh"
passed = true
mpe = { rule = "energy-meter", class = "0.5S" }
"""


@pytest.fixture
async def stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[int]]:
    """The station file's path and the seqs of one reading per instrument, stored."""
    path = tmp_path / "station.toml"
    path.write_text(STATION.replace("DATA_DIR", str(tmp_path)), encoding="utf-8")
    config = load_config(path)
    register = tmp_path / "register.toml"
    register.write_text(REGISTER, encoding="utf-8")
    assert main(["certs", "import", str(register), "--config", str(path)]) == 0
    capsys.readouterr()
    store = await AsyncStore.open(config.store_url, station="lab-1")
    try:
        chains = await Station(config)._chains(store, at=NOW)
    finally:
        await store.aclose()
    acquired = [
        Acquired(spec_of(config, chains, "balance-1"), 750.224, "g", stable=True, time=NOW),
        Acquired(spec_of(config, chains, "meter-1"), 1234.5, "kWh", stable=True, time=NOW),
        Acquired(spec_of(config, chains, "balance-2"), 100.0, "g", stable=True, time=NOW),
    ]
    sync_store = Store.open(config.store_url, station="lab-1")
    try:
        head_seq, head_hash = sync_store.head()
        batch = Stamper("lab-1", last_seq=head_seq, last_hash=head_hash).stamp(measure(acquired))
        sync_store.append(batch)
    finally:
        sync_store.close()
    return path, [head_seq + 1, head_seq + 2, head_seq + 3]


def spec_of(
    config: StationConfig, chains: dict[str, ChannelChain], instrument: str
) -> ChannelSpec:
    found = next(i for i in config.instrument if i.id == instrument)
    (spec,) = (s for group in channel_specs(config, found, chains).values() for s in group)
    return spec


def budget(path: Path, seq: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["budget", "--config", str(path), str(seq)])
    return code, capsys.readouterr().out


async def test_budget_of_a_reading_corrected_by_a_register_certificate(
    stored: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, (mass, _energy, _nowhere) = stored
    code, out = budget(path, mass, capsys)
    assert code == 0, out
    assert f"seq {mass}: balance-1/mass" in out
    assert re.search(r"certificate CAL-REG .*normal", out)
    assert re.search(r"resolution .*rectangular", out)
    assert "no longer reproduces" not in out


async def test_budget_of_a_composite_reading_with_a_register_ct(
    stored: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, (_mass, energy, _nowhere) = stored
    code, out = budget(path, energy, capsys)
    assert code == 0, out
    assert "MPE: CT class 0.2S" in out
    assert "MPE: energy meter class 0.5S" in out
    assert "no longer reproduces" not in out


async def test_no_budget_for_a_certificate_in_neither_place(
    stored: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, (_mass, _energy, nowhere) = stored
    code, out = budget(path, nowhere, capsys)
    assert code == 1
    assert "no budget: the channel names no certificate" in out  # flagged NO_CERTIFICATE


async def test_a_changed_register_entry_is_noticed(
    stored: tuple[Path, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, (mass, _energy, _nowhere) = stored
    changed = tmp_path / "changed.toml"
    changed.write_text(REGISTER.replace("c = -0.10", "c = -0.30"), encoding="utf-8")
    assert main(["certs", "import", str(changed), "--config", str(path)]) == 0
    capsys.readouterr()
    code, out = budget(path, mass, capsys)
    assert code == 0
    assert "no longer reproduces the stored value" in out
