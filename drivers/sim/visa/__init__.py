# SPDX-License-Identifier: Apache-2.0
"""pyvisa-sim definitions of the SCPI instruments (``instruments.yaml``), for tests and the demo.

Open them with ``open_visa(DMM_RESOURCE, library=sim_library())``. The resource names below
are those the file defines.
"""

from importlib.resources import as_file, files
from pathlib import Path
from typing import Final

__all__ = [
    "CALIBRATOR_RESOURCE",
    "CALIBRATOR_SERIAL_RESOURCE",
    "DMM_RESOURCE",
    "DMM_SERIAL_RESOURCE",
    "POWER_ANALYZER_RESOURCE",
    "instruments_yaml",
    "sim_library",
]

#: Keysight 34465A over LAN (VXI-11) and over RS-232.
DMM_RESOURCE: Final = "TCPIP0::192.168.0.10::INSTR"
DMM_SERIAL_RESOURCE: Final = "ASRL1::INSTR"
#: Yokogawa WT310 over GPIB.
POWER_ANALYZER_RESOURCE: Final = "GPIB0::1::INSTR"
#: Fluke 5520A over GPIB and over RS-232.
CALIBRATOR_RESOURCE: Final = "GPIB0::4::INSTR"
CALIBRATOR_SERIAL_RESOURCE: Final = "ASRL2::INSTR"


def instruments_yaml() -> Path:
    """Return the path of ``instruments.yaml``, which pyvisa-sim reads by file name.

    metrogate is installed unpacked (a wheel is never imported from a zip), so the path stays
    valid after `as_file` returns.
    """
    with as_file(files(__name__) / "instruments.yaml") as path:
        return path


def sim_library(path: Path | None = None) -> str:
    """Return the VISA library string for pyvisa-sim: ``"<path>@sim"``.

    Args:
        path: a definitions file; by default `instruments_yaml` (pass a copy of it for a
            fresh simulator state: pyvisa-sim keeps one state per file for as long as the
            library stays loaded).
    """
    return f"{instruments_yaml() if path is None else path}@sim"
