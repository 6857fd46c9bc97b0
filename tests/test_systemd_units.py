# SPDX-License-Identifier: Apache-2.0
"""The systemd units' sandboxing, as `systemd-analyze security` rates it.

The README states the exposure figure of each unit; this keeps the units at or below it.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: The exposure the README states for each unit (lower is better; 10 is unprotected).
STATED = {"metrogate.service": 1.5, "metrogate-collector.service": 1.5}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", sorted(STATED))
def test_exposure_is_at_most_the_stated_figure(unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(ROOT / "systemd" / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= STATED[unit]
    readme = (ROOT / "README.md").read_text()
    assert f"`{unit}`: {STATED[unit]}" in readme


def test_the_daemon_unit_reloads_with_sighup_and_runs_as_its_own_user() -> None:
    text = (ROOT / "systemd" / "metrogate.service").read_text()
    for line in (
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=metrogate",
        "SupplementaryGroups=dialout",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/metrogate",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ):
        assert line in text.splitlines(), line
