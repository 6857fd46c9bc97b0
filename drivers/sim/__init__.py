# SPDX-License-Identifier: Apache-2.0
"""Simulators that speak the real bytes; used by tests and the demo, never by the daemon."""

from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sdm630 import Sdm630Simulator

__all__ = ["MtSicsSimulator", "Sdm630Simulator"]
