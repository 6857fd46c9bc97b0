# SPDX-License-Identifier: Apache-2.0
"""The only code in metrogate that does I/O with instruments (serial, TCP, Modbus, VISA)."""

from drivers.transports.modbus import ModbusTcpBus, open_modbus_tcp
from drivers.transports.serial import SerialStream, open_serial

__all__ = ["ModbusTcpBus", "SerialStream", "open_modbus_tcp", "open_serial"]
