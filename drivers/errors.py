# SPDX-License-Identifier: Apache-2.0
"""The error tree of the drivers package.

```
DriverError
├── TransportError (also OSError)          link missing, closed or reset; retry later
│   └── TransportTimeoutError (also TimeoutError)
├── ProtocolError (also ValueError)        bytes arrived but do not parse (frame, CRC, syntax)
└── InstrumentError                        valid reply reporting a fault (overload, busy)
```
The scheduler catches `DriverError` (and `TimeoutError`) per poll and nothing broader.
"""


class DriverError(Exception):
    """Base of every error a driver or transport raises."""


class TransportError(DriverError, OSError):
    """The link is missing, closed or reset; the poll may be retried later."""


class TransportTimeoutError(TransportError, TimeoutError):
    """No (complete) reply within the link's reply timeout."""


class ProtocolError(DriverError, ValueError):
    """Bytes arrived but do not form a valid frame or reply."""


class InstrumentError(DriverError):
    """A valid reply in which the instrument reports a fault (overload, busy, ...)."""
