# SPDX-License-Identifier: Apache-2.0
"""A CT's or VT's certificate found in the register when the station file does not state it.

``[instrument.channel.ct] certificate = "ID"`` (and vt) is looked up like the meter's
certificate: the daemon's `Station._chains` loads the register's entry at start and the
channel multiplies by the ratio it gives, exactly as with the same entry in the station file.
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


async def started(tmp_path: Path, *, ct: str = "JD-CT") -> tuple[StationConfig, ChannelSpec]:
    config = parse_config(station_text(tmp_path, ct), file="station.toml")
    register = tmp_path / "register.toml"
    register.write_text(TRANSFORMERS, encoding="utf-8")
    assert main(["certs", "import", str(register), "--db", config.store_url]) == 0
    store = await AsyncStore.open(config.store_url, station="plant-1")
    try:
        chains = await Station(config)._chains(store)
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
        station_text(tmp_path / "other", "JD-CT") + station_form(TRANSFORMERS),
        file="s.toml",
    )
    assert list(config_warnings(in_file)) == []
    from_file = spec_of(in_file, {})
    assert from_register.scale == from_file.scale
    assert from_register.scale != 40.0 * 100.0  # the VT's calibrated ratio, not K_n
    assert from_register.chain_ids == ("JD-METER", "JD-CT", "CAL-VT") == from_file.chain_ids
    for moment in (NOW, LATER):
        ours = read(from_register, 0.0, 1250.0, time=moment)
        theirs = read(from_file, 0.0, 1250.0, time=moment)
        for mine, expected in zip(ours, theirs, strict=True):
            assert mine.value == expected.value
            assert mine.u == expected.u
            assert mine.expanded_u == expected.expanded_u
            assert mine.flags == expected.flags
            assert mine.chain == expected.chain
    # The register's CT certificate's dates count: it expired on 2026-06-30.
    assert read(from_register, 1250.0)[0].flags == ()
    assert read(from_register, 1250.0, time=LATER)[0].flags == ("CERT_EXPIRED",)


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
    register = TRANSFORMERS.replace('unit = "%"', 'unit = "1"')
    config = parse_config(station_text(tmp_path, "JD-CT"), file="station.toml")
    path = tmp_path / "register.toml"
    path.write_text(register, encoding="utf-8")
    assert main(["certs", "import", str(path), "--db", config.store_url]) == 0
    store = await AsyncStore.open(config.store_url, station="plant-1")
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.register"):
            chains = await Station(config)._chains(store)
    finally:
        await store.aclose()
    assert 'CAL-VT: a transformer calibration certificate is in "%"' in caplog.text
    (reading,) = read(spec_of(config, chains), 1250.0)
    assert reading.flags == ("NO_CERTIFICATE",)
