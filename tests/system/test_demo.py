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
            "4",
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
