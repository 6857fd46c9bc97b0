# SPDX-License-Identifier: Apache-2.0
"""The only code in metrogate that does I/O with instruments (serial, TCP, Modbus, VISA)."""
