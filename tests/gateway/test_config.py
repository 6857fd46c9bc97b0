# SPDX-License-Identifier: Apache-2.0
"""The station file: valid files load; every problem names file, line, key path and fix."""

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import config_warnings, load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
[station]
id = "lab-1"

[[bus]]
id = "com1"
kind = "serial"
port = "/dev/ttyUSB0"

[[instrument]]
id = "balance-1"
bus = "com1"
driver = "mtsics"
poll_interval = 1.0

[[instrument.channel]]
id = "mass"
quantity = "mass"
unit = "g"
resolution = 0.01
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="station.toml")
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("name", ["station.example.toml", "demo.toml"])
def test_shipped_files_are_valid(name: str) -> None:
    config = load_config(ROOT / "config" / name)
    assert config.instrument
    # Nothing to warn of but certificates deliberately left to the register.
    warned = [message for _where, message in config_warnings(config)]
    assert all("register" in message for message in warned), warned


def test_minimal_file_loads_with_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.station.id == "lab-1"
    assert config.store_url == "sqlite:////var/lib/metrogate/metrogate.db"
    assert config.upstream.port == 1883
    assert config.instrument[0].channel[0].coverage_factor == 2.0


def test_wrong_type_names_line_and_key_path() -> None:
    text = MINIMAL.replace("poll_interval = 1.0", 'poll_interval = "fast"')
    assert problems_of(text) == [
        (
            "station.toml:13: instrument[0].poll_interval: Input should be a valid number, "
            "unable to parse string as a number (got 'fast')"
        )
    ]


def test_unknown_key_is_an_error_with_its_line() -> None:
    text = MINIMAL.replace('unit = "g"', 'unit = "g"\nresolutoin = 0.1')
    found = problems_of(text)
    assert len(found) == 1
    assert found[0].startswith("station.toml:19: instrument[0].channel[0].resolutoin: unknown key")


def test_every_problem_is_reported_at_once() -> None:
    text = MINIMAL.replace('id = "lab-1"', 'id = "lab 1!"').replace(
        "poll_interval = 1.0", "poll_interval = -1"
    )
    found = problems_of(text)
    assert len(found) == 2
    assert any(p.startswith("station.toml:2: station.id:") for p in found)
    assert any("instrument[0].poll_interval: Input should be greater than 0" in p for p in found)


def test_toml_syntax_error_names_the_line() -> None:
    found = problems_of(MINIMAL.replace('port = "/dev/ttyUSB0"', "port = /dev/ttyUSB0"))
    assert len(found) == 1
    assert found[0].startswith("station.toml:7: TOML syntax:")


def test_missing_key() -> None:
    found = problems_of(MINIMAL.replace('quantity = "mass"\n', ""))
    assert found == ["station.toml:15: instrument[0].channel[0].quantity: required key is missing"]


def test_references_are_checked() -> None:
    text = MINIMAL.replace('bus = "com1"', 'bus = "com9"').replace(
        "resolution = 0.01", 'resolution = 0.01\ncertificate = "CAL-1"'
    )
    found = problems_of(text)
    assert found == ['station.toml:11: instrument[0].bus: no bus "com9" (known: com1)']


def test_a_certificate_not_in_the_file_is_a_warning_for_the_register(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "station.toml"
    path.write_text(
        MINIMAL.replace("resolution = 0.01", 'resolution = 0.01\ncertificate = "CAL-1"')
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        f'warning: {path}:20: instrument[0].channel[0].certificate: no certificate "CAL-1" '
        "in this file: the daemon will look it up in the station's register"
    ) in out
    assert f"{path}: OK" in out


def test_modbus_source_must_exist_in_the_register_map() -> None:
    text = (
        MINIMAL
        + """
[[bus]]
id = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"

[[instrument]]
id = "meter-1"
bus = "lan"
driver = "modbus"
register_map = "sdm630"

[[instrument.channel]]
id = "v"
source = "voltage_l9"
quantity = "voltage"
unit = "V"
resolution = 0.1
"""
    )
    found = problems_of(text)
    assert len(found) == 1
    assert found[0].startswith('station.toml:34: instrument[1].channel[0].source: "voltage_l9"')


def test_driver_needs_the_right_bus_kind() -> None:
    text = MINIMAL.replace(
        'kind = "serial"\nport = "/dev/ttyUSB0"', 'kind = "modbus-tcp"\nhost = "127.0.0.1"'
    )
    found = problems_of(text)
    assert found == [
        (
            'station.toml:11: instrument[0].bus: driver "mtsics" needs a serial bus, '
            '"com1" is modbus-tcp'
        )
    ]


def test_certificate_unit_must_match_channel() -> None:
    text = (
        MINIMAL.replace("resolution = 0.01", 'resolution = 0.01\ncertificate = "C1"')
        + """
[[certificate]]
id = "C1"
valid_from = 2026-01-01
valid_until = 2025-01-01
unit = "kg"
points = [{ x = 1.0, c = 0.0, U = 0.1 }]
"""
    )
    found = problems_of(text)
    assert "station.toml:25: certificate[0].valid_until: must not be before valid_from" in found
    assert any("instrument[0].channel[0].unit" in p and '"kg"' in p for p in found)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    assert main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("poll_interval = 1.0", "poll_interval = 0"))
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:13: instrument[0].poll_interval: Input should be greater than 0" in err
    assert "Traceback" not in err

    assert main(["check-config", str(tmp_path / "absent.toml")]) == 1
    assert "cannot read file" in capsys.readouterr().err
