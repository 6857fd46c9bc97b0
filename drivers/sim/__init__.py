# SPDX-License-Identifier: Apache-2.0
"""Simulators that speak the real bytes; used by tests and the demo, never by the daemon."""

from drivers.sim.dlt645 import Dlt645Simulator
from drivers.sim.modbus_line import ModbusLineSimulator
from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sbi import SbiSimulator
from drivers.sim.sdm630 import Sdm630Simulator

__all__ = [
    "Dlt645Simulator",
    "ModbusLineSimulator",
    "MtSicsSimulator",
    "SbiSimulator",
    "Sdm630Simulator",
]
