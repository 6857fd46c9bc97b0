# SPDX-License-Identifier: Apache-2.0
"""The only code in metrogate that does I/O with instruments (serial, TCP, Modbus, VISA)."""

from drivers.transports.modbus import ModbusRtuBus, ModbusTcpBus, open_modbus_rtu, open_modbus_tcp
from drivers.transports.serial import SerialStream, open_serial
from drivers.transports.visa import VisaLink, open_visa

__all__ = [
    "ModbusRtuBus",
    "ModbusTcpBus",
    "SerialStream",
    "VisaLink",
    "open_modbus_rtu",
    "open_modbus_tcp",
    "open_serial",
    "open_visa",
]
