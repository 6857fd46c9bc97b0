# SPDX-License-Identifier: Apache-2.0
"""Talking to instruments, nothing else.

`drivers.transports` holds the only code that does I/O; the protocol packages
(`balances`, `modbus`, ...) are sans-I/O codecs plus thin driver classes that await an
injected link; `drivers.sim` holds simulators that speak the real bytes (tests and demo).
"""

from drivers.errors import (
    DriverError,
    InstrumentError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)
from drivers.reading import Instrument, RawReading

__all__ = [
    "DriverError",
    "Instrument",
    "InstrumentError",
    "ProtocolError",
    "RawReading",
    "TransportError",
    "TransportTimeoutError",
]
