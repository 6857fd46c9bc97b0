# SPDX-License-Identifier: Apache-2.0
"""A CT's or VT's certificate found in the register when the station file does not state it.

``[instrument.channel.ct] certificate = "ID"`` (and vt) is looked up like the meter's
certificate: the daemon's `Station._chains` loads the register's entry at start and the
channel multiplies by the ratio it gives, exactly as with the same entry in the station file.
The register also knows the transformer certificate's own chain up to the national
standards; it is walked and joined to the channel's (the readings rest on it).
"""

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import StationConfig, config_warnings, parse_config
from gateway.daemon import Station
from gateway.instruments import channel_specs
from gateway.pipeline import Acquired, ChannelChain, ChannelSpec, measure
from gateway.register import open_register, resolve_channel_chains
from gateway.stamp import Measured
from gateway.store import AsyncStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)  # JD-CT expired on 2026-06-30

REGISTER_ONLY = ("subject", "route", "made_with", "accreditation")

TRANSFORMERS = """
[[certificate]]
id = "JD-CT"
kind = "verification"
subject = "CT-A"
route = "legal metrology institute"
accreditation = "(鄂)法计(2021)01001号"
made_with = ["{ct_standard}"]
issuer = "Hubei Institute of Measurement and Testing Technology"
procedure = "JJG 313-2010"
valid_from = 2026-01-01
valid_until = 2026-06-30
unit = "1"
passed = true
mpe = { rule = "transformer", kind = "current", class = "0.2S", load = 0.5 }

[[certificate]]
id = "CAL-VT"
subject = "VT-A"
route = "ILAC-MRA accredited lab"
accreditation = "CNAS L1234"
made_with = ["CN-VT-PRIMARY"]
issuer = "Provincial Institute"
valid_from = 2026-01-01
valid_until = 2027-12-31
unit = "%"
convention = "error"
points = [
  { x = 80.0, c = 0.05, U = 0.04 },
  { x = 100.0, c = 0.04, U = 0.04 },
  { x = 120.0, c = 0.06, U = 0.05 },
]
"""

# The standards the transformers' certificates were made with: the CT's through a provincial
# public standard (calibrated in turn against the national primary), the VT's directly.
STANDARDS = """
[[standard]]
id = "CN-CT-PRIMARY"
level = "national-primary"
name = "national primary standard of current ratio"

[[standard]]
id = "CN-VT-PRIMARY"
level = "national-primary"
name = "national primary standard of voltage ratio"

[[standard]]
id = "HB-CT-STD"
level = "public"
name = "provincial standard current transformer"
assessment_certificate = "[2024]鄂量标证字第0042号"
assessment_valid_until = 2029-03-31

[[certificate]]
id = "NIM-CT-2025"
subject = "HB-CT-STD"
route = "NMI-CIPM-MRA"
issuer = "National Institute of Metrology, China"
made_with = ["CN-CT-PRIMARY"]
valid_from = 2025-03-01
valid_until = 2027-02-28
unit = "%"
convention = "error"
points = [{ x = 100.0, c = 0.002, U = 0.002 }]
"""

STATION = """\
[station]
id = "plant-1"
data_dir = "{data_dir}"

[[bus]]
id = "rs485"
kind = "serial"
port = "/dev/ttyUSB0"

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
    [instrument.channel.ct]
    ratio = "200/5"
    load = 0.5
    certificate = "{ct}"
    [instrument.channel.vt]
    ratio = "10000/100"
    certificate = "CAL-VT"

[[certificate]]
id = "JD-METER"
kind = "verification"
procedure = "JJG 596-2012"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "kWh"
passed = true
mpe = { rule = "energy-meter", class = "0.5S" }
"""


def station_text(data_dir: Path, ct: str, text: str = STATION) -> str:
    """The station file with its data directory and the CT's certificate id filled in."""
    return text.replace("{data_dir}", str(data_dir)).replace("{ct}", ct)


def station_form(register_text: str) -> str:
    return "\n".join(
        line for line in register_text.splitlines() if not line.startswith(REGISTER_ONLY)
    )


def register_text(ct_standard: str = "HB-CT-STD") -> str:
    return TRANSFORMERS.replace("{ct_standard}", ct_standard)


async def started(
    tmp_path: Path, *, ct: str = "JD-CT", ct_standard: str = "HB-CT-STD"
) -> tuple[StationConfig, ChannelSpec]:
    """The channel's spec after the daemon resolved its chains at NOW from the register."""
    config = parse_config(station_text(tmp_path, ct), file="station.toml")
    register = tmp_path / "register.toml"
    register.write_text(STANDARDS + register_text(ct_standard), encoding="utf-8")
    assert main(["certs", "import", str(register), "--db", config.store_url]) == 0
    store = await AsyncStore.open(config.store_url, station="plant-1")
    try:
        chains = await Station(config)._chains(store, at=NOW)
    finally:
        await store.aclose()
    return config, spec_of(config, chains)


def spec_of(config: StationConfig, chains: dict[str, ChannelChain]) -> ChannelSpec:
    (spec,) = channel_specs(config, config.instrument[0], chains)["import_active_energy"]
    return spec


def read(spec: ChannelSpec, *indications: float, time: datetime = NOW) -> list[Measured]:
    return measure([Acquired(spec, x, "kWh", stable=True, time=time) for x in indications])


async def test_register_ct_and_vt_certificates_scale_as_the_station_files_do(
    tmp_path: Path,
) -> None:
    _config, from_register = await started(tmp_path)
    in_file = parse_config(
        station_text(tmp_path / "other", "JD-CT") + station_form(register_text()),
        file="s.toml",
    )
    assert list(config_warnings(in_file)) == []
    from_file = spec_of(in_file, {})  # the file's certificates alone: no register chain
    assert from_register.scale == from_file.scale
    assert from_register.scale != 40.0 * 100.0  # the VT's calibrated ratio, not K_n
    assert from_file.chain_ids == ("JD-METER", "JD-CT", "CAL-VT")
    # The register adds the certificate the CT's standard rests on.
    assert from_register.chain_ids == ("JD-METER", "JD-CT", "NIM-CT-2025", "CAL-VT")
    for moment in (NOW, LATER):
        ours = read(from_register, 0.0, 1250.0, time=moment)
        theirs = read(from_file, 0.0, 1250.0, time=moment)
        for mine, expected in zip(ours, theirs, strict=True):
            assert mine.value == expected.value
            assert mine.u == expected.u
            assert mine.expanded_u == expected.expanded_u
    # The register's CT certificate's dates count: it expired on 2026-06-30, and with it
    # the chain the register knows (the file alone knows only the certificate's dates).
    assert read(from_register, 1250.0)[0].flags == ()
    assert read(from_file, 1250.0, time=LATER)[0].flags == ("CERT_EXPIRED",)
    assert read(from_register, 1250.0, time=LATER)[0].flags == ("CERT_EXPIRED", "CHAIN_BROKEN")


async def test_a_transformer_whose_own_chain_is_broken_breaks_the_channels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The CT was verified against a standard the register does not hold: the meter's
    # readings rest on an untraceable ratio.
    with caplog.at_level(logging.WARNING, logger="gateway.daemon"):
        _config, spec = await started(tmp_path, ct_standard="HB-CT-UNKNOWN")
    assert spec.chain is not None
    assert spec.chain.broken
    assert "CT " in spec.chain.problem
    assert "'HB-CT-UNKNOWN' is not in the register" in spec.chain.problem
    assert "meter-1/energy: chain JD-METER → JD-CT → CAL-VT BROKEN (CT" in caplog.text
    (reading,) = read(spec, 1250.0)
    assert reading.flags == ("CHAIN_BROKEN",)
    assert reading.chain == ("JD-METER", "JD-CT", "CAL-VT")


def test_check_config_warns_instead_of_refusing_a_transformer_certificate_not_in_the_file(
    tmp_path: Path,
) -> None:
    config = parse_config(station_text(tmp_path, "JD-CT"), file="station.toml")
    warned = dict(config_warnings(config))
    ct = warned[("instrument", 0, "channel", 0, "ct", "certificate")]
    vt = warned[("instrument", 0, "channel", 0, "vt", "certificate")]
    assert 'no certificate "JD-CT" in this file' in ct
    assert "register" in ct
    assert 'no certificate "CAL-VT"' in vt
    # With a class, the certificate is only the chain's id: nothing to warn of.
    with_class = STATION.replace("load = 0.5\n", 'load = 0.5\n    class = "0.2S"\n')
    config = parse_config(station_text(tmp_path, "JD-CT", with_class), file="station.toml")
    assert ("instrument", 0, "channel", 0, "ct", "certificate") not in dict(
        config_warnings(config)
    )


async def test_a_transformer_certificate_in_neither_place_leaves_the_channel_uncorrected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.register"):
        _config, spec = await started(tmp_path, ct="JD-NOWHERE")
    assert "JD-NOWHERE is neither in the station file nor in the register" in caplog.text
    (reading,) = read(spec, 1250.0)
    assert reading.flags == ("NO_CERTIFICATE",)
    assert reading.u is None


async def test_a_register_transformer_calibration_in_another_unit_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    register = register_text().replace('unit = "%"', 'unit = "1"')
    config = parse_config(station_text(tmp_path, "JD-CT"), file="station.toml")
    path = tmp_path / "register.toml"
    path.write_text(register, encoding="utf-8")
    assert main(["certs", "import", str(path), "--db", config.store_url]) == 0
    store = await AsyncStore.open(config.store_url, station="plant-1")
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.register"):
            chains = await Station(config)._chains(store, at=NOW)
    finally:
        await store.aclose()
    assert 'CAL-VT: a transformer calibration certificate is in "%"' in caplog.text
    (reading,) = read(spec_of(config, chains), 1250.0)
    assert reading.flags == ("NO_CERTIFICATE",)


METER_IN_REGISTER = """
[[standard]]
id = "CN-ENERGY-PRIMARY"
level = "national-primary"

[[certificate]]
id = "JD-METER"
kind = "verification"
subject = "meter-1"
route = "legal metrology institute"
accreditation = "(鄂)法计(2021)01001号"
made_with = ["CN-ENERGY-PRIMARY"]
issuer = "Hubei Institute of Measurement and Testing Technology"
procedure = "JJG 596-2012"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "kWh"
passed = true
mpe = { rule = "energy-meter", class = "0.5S" }
"""


def test_chain_command_walks_the_channels_transformers_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = tmp_path / "station.toml"
    station.write_text(station_text(tmp_path, "JD-CT"), encoding="utf-8")
    register = tmp_path / "register.toml"
    register.write_text(STANDARDS + register_text() + METER_IN_REGISTER, encoding="utf-8")
    assert main(["certs", "import", str(register), "--config", str(station)]) == 0
    capsys.readouterr()
    command = ["chain", "meter-1/energy", "--config", str(station), "--at"]
    assert main([*command, "2026-06-01"]) == 0
    out = capsys.readouterr().out
    assert "OK: traceable to CN-ENERGY-PRIMARY" in out
    assert "CT certificate JD-CT:" in out
    assert "OK   HB-CT-STD [public]: NIM-CT-2025" in out
    assert "OK: traceable to CN-CT-PRIMARY" in out
    assert "VT certificate CAL-VT:" in out
    assert "OK: traceable to CN-VT-PRIMARY" in out
    # After the CT's certificate expired the channel's chain is broken there.
    assert main([*command, "2026-10-01"]) == 1
    out = capsys.readouterr().out
    assert "OK: traceable to CN-ENERGY-PRIMARY" in out  # the meter's own chain holds
    assert "BROKEN at CT-A (JD-CT): expired 2026-06-30" in out
    # With --db only, the register does not know the channel's transformers.
    url = parse_station(station).store_url
    assert main(["chain", "meter-1/energy", "--db", url, "--at", "2026-06-01"]) == 0
    assert "CT certificate" not in capsys.readouterr().out


def test_chain_command_walks_from_the_certificate_the_channel_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A newer certificate of the same meter, issued without an authorisation number, is in
    # the register; the station file still names JD-METER, and so does the daemon's walk.
    newer = (
        METER_IN_REGISTER.split("[[certificate]]")[1]
        .replace('id = "JD-METER"', 'id = "JD-METER-2"')
        .replace('accreditation = "(鄂)法计(2021)01001号"\n', "")
        .replace("valid_from = 2026-01-01", "valid_from = 2026-05-01")
    )
    station = tmp_path / "station.toml"
    station.write_text(station_text(tmp_path, "JD-CT"), encoding="utf-8")
    register = tmp_path / "register.toml"
    register.write_text(
        STANDARDS + register_text() + METER_IN_REGISTER + "[[certificate]]" + newer,
        encoding="utf-8",
    )
    assert main(["certs", "import", str(register), "--config", str(station)]) == 0
    url = parse_station(station).store_url
    capsys.readouterr()
    assert main(["chain", "meter-1/energy", "--db", url, "--at", "2026-06-01"]) == 1
    assert "BROKEN at meter-1/energy (JD-METER-2): issuer" in capsys.readouterr().out
    command = ["chain", "meter-1/energy", "--config", str(station), "--at", "2026-06-01"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "JD-METER verification" in out
    assert "JD-METER-2" not in out
    # The daemon's resolution walks the same way.
    engine = open_register(url)
    try:
        chains = resolve_channel_chains(engine, parse_station(station), NOW)
    finally:
        engine.dispose()
    chain = chains["meter-1/energy"]
    assert not chain.broken, chain.problem
    assert "JD-METER-2" not in chain.certificate_ids


def parse_station(path: Path) -> StationConfig:
    return parse_config(path.read_text(encoding="utf-8"), file=str(path))
