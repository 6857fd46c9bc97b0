# SPDX-License-Identifier: Apache-2.0
"""Verification-mode and composite (meter, CT, VT) channels, from the station file to readings.

A verified channel (检定) is not corrected: value = indication, u = MPE/√3 (DOMAIN.md §1);
a composite channel multiplies by the transformers' ratios with GUM 5.1.2 propagation. The
uncertainties are checked against GTC, and the composite against DOMAIN.md §1 case 3.
"""

import math
from datetime import UTC, datetime

import pytest
from GTC import type_b, ureal

from gateway.config import StationConfig, config_warnings, parse_config
from gateway.errors import ConfigError
from gateway.instruments import channel_specs
from gateway.pipeline import Acquired, ChannelSpec, measure
from gateway.stamp import Measured

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

STATION = """\
[station]
id = "plant-1"

[[bus]]
id = "rs485"
kind = "serial"
port = "/dev/ttyUSB0"

[[bus]]
id = "com1"
kind = "serial"
port = "/dev/ttyUSB1"

[[instrument]]
id = "meter-1"
bus = "rs485"
driver = "dlt645"
address = "000102030425"

  [[instrument.channel]]
  id = "import-energy"
  source = "import_active_energy"
  quantity = "active energy"
  unit = "kWh"
  resolution = 0.0
  certificate = "JD-METER"
    [instrument.channel.ct]
    ratio = "200/5"
    class = "0.2S"
    certificate = "JD-CT"
    [instrument.channel.vt]
    ratio = "10000/100"
    class = "0.2"

  [[instrument.channel]]
  id = "secondary-energy"
  source = "combined_active_energy"
  quantity = "active energy"
  unit = "kWh"
  resolution = 0.01
  certificate = "JD-METER"

[[instrument]]
id = "balance-1"
bus = "com1"
driver = "mtsics"

  [[instrument.channel]]
  id = "mass"
  quantity = "mass"
  unit = "g"
  resolution = 0.1
  certificate = "JD-BAL"

[[certificate]]
id = "JD-METER"
kind = "verification"
issuer = "Hubei Institute of Measurement and Testing Technology"
procedure = "JJG 596-2012"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "kWh"
passed = true
mpe = { rule = "energy-meter", class = "0.5S" }

[[certificate]]
id = "JD-CT"
kind = "verification"
valid_from = 2026-01-01
valid_until = 2026-06-30
unit = "1"
passed = true
mpe = { rule = "transformer", kind = "current", class = "0.2S" }

[[certificate]]
id = "JD-BAL"
kind = "verification"
valid_from = 2026-01-01
valid_until = 2026-12-31
unit = "g"
passed = true
range = [0.0, 2000.0]
mpe = { rule = "balance", class = "II", e = 0.1, max = 2200 }
"""


def station(text: str = STATION) -> StationConfig:
    return parse_config(text, file="station.toml")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="station.toml")
    return [str(problem) for problem in caught.value.problems]


def specs(config: StationConfig, instrument: int = 0) -> dict[str, ChannelSpec]:
    found = channel_specs(config, config.instrument[instrument])
    return {spec.channel: spec for group in found.values() for spec in group}


def read(spec: ChannelSpec, *indications: float, time: datetime = NOW) -> list[Measured]:
    return measure(
        [
            Acquired(spec=spec, indication=x, unit=spec.unit, stable=True, time=time)
            for x in indications
        ]
    )


def test_a_verified_meter_is_not_corrected_and_u_is_mpe_over_sqrt3() -> None:
    meter = specs(station())["secondary-energy"]
    readings = read(meter, 1206.42, 88.0)
    for reading, x in zip(readings, (1206.42, 88.0), strict=True):
        expected = ureal(x, type_b.uniform(0.005 * x)) + ureal(0.0, type_b.uniform(0.005))
        assert reading.value == x
        assert reading.indication == x
        assert reading.u == pytest.approx(expected.u, rel=1e-12)
        assert reading.expanded_u == pytest.approx(2.0 * expected.u, rel=1e-12)
        assert reading.k == 2.0
        assert reading.flags == ()
        assert reading.certificate == "JD-METER"
        assert reading.chain == ("JD-METER",)


def test_a_verified_balance_uses_steps_of_e_and_flags_outside_the_verified_range() -> None:
    balance = specs(station(), instrument=1)["mass"]
    inside, step, outside = read(balance, 499.9, 1999.9, 2100.0)
    # OIML R 76 class II on verification: 0.5 e to 5000 e, 1 e to 20 000 e (e = 0.1 g).
    assert inside.u == pytest.approx(
        math.hypot(0.05 / math.sqrt(3), 0.1 / (2 * math.sqrt(3))), rel=1e-12
    )
    assert step.u == pytest.approx(math.hypot(0.1 / math.sqrt(3), 0.1 / (2 * math.sqrt(3))))
    assert outside.flags == ("OUT_OF_CALIBRATED_RANGE",)
    assert (outside.value, outside.u, outside.expanded_u) == (2100.0, None, None)


def test_an_expired_verification_flags_and_still_bounds() -> None:
    meter = specs(station())["secondary-energy"]
    (late,) = read(meter, 10.0, time=datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    (early,) = read(meter, 10.0, time=datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    assert late.flags == ("CERT_EXPIRED",)
    assert late.u is not None
    assert early.flags == ("CERT_NOT_YET_VALID",)


def test_meter_times_ct_times_vt_matches_domain_case_3() -> None:
    energy = specs(station())["import-energy"]
    (reading,) = read(energy, 125_000.0 / 4000.0)
    # DOMAIN.md §1 case 3: E = 125 000 kWh, u = 415 kWh (0.332 %), U(k=2) = 829 kWh.
    assert reading.value == pytest.approx(125_000.0, rel=1e-12)
    assert reading.indication == 31.25
    assert round(reading.u or 0.0) == 415
    assert round(reading.expanded_u or 0.0) == 829
    assert reading.chain == ("JD-METER", "JD-CT")


def test_composite_uncertainty_agrees_with_gtc() -> None:
    energy = specs(station())["import-energy"]
    for x in (0.5, 31.25, 987.65):
        (reading,) = read(energy, x)
        meter = ureal(x, type_b.uniform(0.005 * x))
        ct = ureal(40.0, type_b.uniform(0.002 * 40.0))
        vt = ureal(100.0, type_b.uniform(0.002 * 100.0))
        primary = meter * ct * vt
        assert reading.value == pytest.approx(primary.x, rel=1e-12)
        assert reading.u == pytest.approx(primary.u, rel=1e-9)


def test_the_ct_certificate_dates_flag_the_composite_reading() -> None:
    energy = specs(station())["import-energy"]
    (reading,) = read(energy, 10.0, time=datetime(2026, 7, 1, tzinfo=UTC))
    assert reading.flags == ("CERT_EXPIRED",)
    assert reading.value == pytest.approx(40_000.0)


def test_a_calibrated_ct_corrects_the_ratio() -> None:
    text = STATION.replace(
        'class = "0.2S"\n    certificate = "JD-CT"', 'certificate = "CAL-CT"'
    ) + (
        "\n[[certificate]]\n"
        'id = "CAL-CT"\nvalid_from = 2026-01-01\nvalid_until = 2027-01-01\nunit = "%"\n'
        'convention = "error"\n'
        "points = [{ x = 20.0, c = -0.10, U = 0.04 }, { x = 100.0, c = -0.05, U = 0.02 }]\n"
    )
    energy = specs(station(text))["import-energy"]
    (reading,) = read(energy, 31.25)
    meter = ureal(31.25, type_b.uniform(0.005 * 31.25))
    epsilon = ureal(-0.05, 0.01)  # ratio error at rated load, in %
    ct = 40.0 / (1.0 + epsilon / 100.0)
    vt = ureal(100.0, type_b.uniform(0.002 * 100.0))
    primary = meter * ct * vt
    assert reading.value == pytest.approx(primary.x, rel=1e-12)
    assert reading.u == pytest.approx(primary.u, rel=1e-9)
    assert reading.chain == ("JD-METER", "CAL-CT")


def with_power_factor(power_factor: str, text: str = STATION) -> str:
    old = 'certificate = "JD-METER"\n    [instrument.channel.ct]'
    assert old in text
    new = (
        f'certificate = "JD-METER"\n  power_factor = "{power_factor}"\n    [instrument.channel.ct]'
    )
    return text.replace(old, new)


ARCMIN = math.pi / (180.0 * 60.0)


@pytest.mark.parametrize("power_factor", ["0.8L", "0.5C"])
def test_below_unit_power_factor_the_phase_displacements_count(power_factor: str) -> None:
    # E = E_meter·K_I·K_U·(1 + (δ_I - δ_U)·tan φ), δ within the classes' limits: 10' for the
    # 0.2S CT and for the 0.2 VT (IEC 61869-2/-3); the sign of tan φ does not change u.
    cos_phi = float(power_factor[:-1])
    energy = specs(station(with_power_factor(power_factor)))["import-energy"]
    (reading,) = read(energy, 31.25)
    meter = ureal(31.25, type_b.uniform(0.005 * 31.25))
    ct = ureal(40.0, type_b.uniform(0.002 * 40.0))
    vt = ureal(100.0, type_b.uniform(0.002 * 100.0))
    delta_i = ureal(0.0, type_b.uniform(10.0 * ARCMIN))
    delta_u = ureal(0.0, type_b.uniform(10.0 * ARCMIN))
    tan_phi = math.sqrt(1.0 - cos_phi**2) / cos_phi
    primary = meter * ct * vt * (1.0 + (delta_i - delta_u) * tan_phi)
    assert reading.value == pytest.approx(125_000.0, rel=1e-12)  # no correction: verified
    assert reading.u == pytest.approx(primary.u, rel=1e-9)
    (at_unity,) = read(specs(station())["import-energy"], 31.25)
    assert reading.u is not None
    assert at_unity.u is not None
    assert reading.u > at_unity.u
    # Stated as 1, the budget is DOMAIN.md case 3's.
    (stated_unity,) = read(specs(station(with_power_factor("1")))["import-energy"], 31.25)
    assert stated_unity.u == at_unity.u


def test_a_stated_phase_limit_serves_a_calibrated_ct() -> None:
    calibrated = STATION.replace(
        'class = "0.2S"\n    certificate = "JD-CT"', 'certificate = "CAL-CT"\n    phase_mpe = 5'
    ) + (
        "\n[[certificate]]\n"
        'id = "CAL-CT"\nvalid_from = 2026-01-01\nvalid_until = 2027-01-01\nunit = "%"\n'
        'convention = "error"\n'
        "points = [{ x = 20.0, c = -0.10, U = 0.04 }, { x = 100.0, c = -0.05, U = 0.02 }]\n"
    )
    energy = specs(station(with_power_factor("0.8L", calibrated)))["import-energy"]
    (reading,) = read(energy, 31.25)
    meter = ureal(31.25, type_b.uniform(0.005 * 31.25))
    ct = 40.0 / (1.0 + ureal(-0.05, 0.01) / 100.0)
    vt = ureal(100.0, type_b.uniform(0.002 * 100.0))
    phase = 1.0 + (
        ureal(0.0, type_b.uniform(5.0 * ARCMIN)) - ureal(0.0, type_b.uniform(10.0 * ARCMIN))
    ) * (0.6 / 0.8)
    primary = meter * ct * vt * phase
    assert reading.value == pytest.approx(primary.x, rel=1e-12)
    assert reading.u == pytest.approx(primary.u, rel=1e-9)
    # Without phase_mpe nothing states the calibrated CT's phase displacement.
    found = problems_of(with_power_factor("0.8L", calibrated.replace("    phase_mpe = 5\n", "")))
    assert any(
        "instrument[0].channel[0].ct: power_factor 0.8L needs the CT's phase displacement "
        "limit" in problem
        for problem in found
    ), found


@pytest.mark.parametrize(
    ("power_factor", "expected"),
    [
        ("0.8X", "instrument[0].channel[0].power_factor: String should match pattern"),
        ("1.2", "instrument[0].channel[0].power_factor: String should match pattern"),
        (".0L", "instrument[0].channel[0].power_factor: cos φ must lie in (0, 1], got 0"),
    ],
)
def test_a_malformed_power_factor_is_named(power_factor: str, expected: str) -> None:
    found = problems_of(with_power_factor(power_factor))
    assert any(expected in problem for problem in found), found


def test_a_meter_bounded_at_unit_power_factor_is_warned_of() -> None:
    warned = dict(config_warnings(station(with_power_factor("0.8L"))))
    message = warned[("instrument", 0, "channel", 0, "power_factor")]
    assert 'the meter\'s MPE (certificate JD-METER) is taken at power_factor "1"' in message
    stated = with_power_factor("0.5L").replace(
        'class = "0.5S" }', 'class = "0.5S", power_factor = "0.5L" }'
    )
    assert ("instrument", 0, "channel", 0, "power_factor") not in dict(
        config_warnings(station(stated))
    )
    assert ("instrument", 0, "channel", 0, "power_factor") not in dict(
        config_warnings(station(with_power_factor("1")))
    )


def test_a_power_factor_without_transformers_is_refused() -> None:
    text = STATION.replace(
        'source = "combined_active_energy"',
        'source = "combined_active_energy"\n  power_factor = "0.8L"',
    )
    found = problems_of(text)
    assert any(
        "instrument[0].channel[1].power_factor: applies to a channel measuring through a CT or VT"
        in problem
        for problem in found
    ), found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('mpe = { rule = "energy-meter", class = "0.5S" }', ""),
            "station.toml:55: certificate[0].mpe: required for a verification certificate",
        ),
        (
            ('class = "0.5S" }', 'class = "0.7S" }'),
            (
                "station.toml:64: certificate[0].mpe: energy meter class 0.7S, I/In = 1, PF 1: "
                "no MPE in table"
            ),
        ),
        (
            ('passed = true\nmpe = { rule = "energy', 'passed = false\nmpe = { rule = "energy'),
            (
                "station.toml:63: certificate[0].passed: a failed verification cannot support "
                "readings"
            ),
        ),
        (
            ('passed = true\nmpe = { rule = "energy', 'mpe = { rule = "energy'),
            "station.toml:55: certificate[0].passed: required for a verification certificate",
        ),
        (
            (
                'unit = "g"\npassed = true',
                'unit = "g"\npassed = true\npoints = [{ x = 1, c = 0, U = 1 }]',
            ),
            "certificate[2].points: a verification certificate states no corrections",
        ),
        (
            ("e = 0.1, max", "e = -0.1, max"),
            "certificate[2].mpe.balance.e: Input should be greater than 0",
        ),
        (
            ('class = "0.2"\n', 'class = "0.3"\n'),
            (
                "station.toml:33: instrument[0].channel[0].vt.class: voltage transformer class "
                "0.3: not in table"
            ),
        ),
        (
            ('ratio = "200/5"', 'ratio = "200:5"'),
            'instrument[0].channel[0].ct.ratio: Value error, expected "PRIMARY/SECONDARY"',
        ),
        (
            ('ratio = "10000/100"\n    class = "0.2"', 'ratio = "10000/100"'),
            "instrument[0].channel[0].vt: needs class",
        ),
    ],
)
def test_malformed_verification_data_is_named_by_file_line_and_key(
    change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in STATION
    found = problems_of(STATION.replace(old, new, 1))
    assert any(expected in problem for problem in found), found
