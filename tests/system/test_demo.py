# SPDX-License-Identifier: Apache-2.0
"""`metrogate demo`: every family, a traceable channel and an expired one, end to end."""

import re
import subprocess
import sys
from pathlib import Path

from tests.services import Mosquitto


def run_demo(tmp_path: Path, *extra: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--duration",
            "5",
            "--data-dir",
            str(tmp_path / "demo"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def check_output(out: str, tmp_path: Path) -> None:
    assert re.search(r"balance-1/mass .* g .*± .*CAL-DEMO-2026-0117 traceable", out)
    assert re.search(r"meter-1/voltage-l1 .* V .*CAL-DEMO-2024-0932 CERT_EXPIRED", out)
    assert re.search(r"meter-1/frequency .* Hz .*NO_CERTIFICATE", out)
    # every family, each through its real transport against its simulator
    families = {
        "Sartorius SBI": r"balance-2/mass +\d+\.\d+ g ",
        "DL/T 645 (two meters, one line)": r"meter-2/import-energy +1206\.42 kWh",
        "DL/T 645 second meter": r"meter-3/power +3\.4521 kW",
        "Modbus RTU SDM630": r"meter-4/voltage-l1 +229\.7 V",
        "Modbus RTU MFE600H totalizer": r"flow-1/totalizer +123456\.38 m3",
        "Modbus RTU TUF-2000M": r"flow-2/positive-total +4521\.5 m3",
        "VISA DMM": r"dmm-1/dc-voltage +1\.2345679 V",
        "VISA power analyzer": r"power-analyzer-1/power +232\.1 W",
    }
    for family, pattern in families.items():
        assert re.search(pattern, out), f"{family}: no reading in the demo output"
    summary = re.search(
        r"stored (\d+) readings \(seq up to (\d+)\); broker acknowledged up to "
        r"seq (\d+); subscriber received (\d+) this run",
        out,
    )
    assert summary, out
    stored, head, acknowledged, received = map(int, summary.groups())
    assert stored == head == acknowledged == received > 5
    assert (tmp_path / "demo" / "metrogate.db").is_file()


def test_demo_with_embedded_broker(tmp_path: Path) -> None:
    check_output(run_demo(tmp_path), tmp_path)


def test_demo_with_a_given_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    out = run_demo(tmp_path, "--broker", mosquitto.url)
    assert f"MQTT broker {mosquitto.url}" in out
    check_output(out, tmp_path)
