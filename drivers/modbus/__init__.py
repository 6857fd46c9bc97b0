# SPDX-License-Identifier: Apache-2.0
"""Modbus meters and flowmeters.

A pure register codec, register maps as data files, and one generic driver
(`ModbusInstrument`) that reads whatever a map names.
"""

from drivers.modbus.instrument import ModbusInstrument
from drivers.modbus.registermap import (
    CombinedEntry,
    RegisterEntry,
    RegisterMap,
    RegisterMapError,
    builtin_map_names,
    load_builtin_map,
    load_map,
)

__all__ = [
    "CombinedEntry",
    "ModbusInstrument",
    "RegisterEntry",
    "RegisterMap",
    "RegisterMapError",
    "builtin_map_names",
    "load_builtin_map",
    "load_map",
]
