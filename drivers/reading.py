# SPDX-License-Identifier: Apache-2.0
"""What a driver hands to the gateway: raw indications, nothing corrected.

Instrument and channel ids, the acquisition time and everything metrological are added
downstream (`gateway.scheduler`, `calibration`); a driver only says what it read.
"""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class RawReading:
    """One raw indication of one quantity of an instrument.

    Attributes:
        source: the instrument's name for the quantity, e.g. ``"weight"`` for a balance or a
            register-map entry such as ``"voltage_l1"`` for a meter.
        indication: the value as indicated, in `unit`; never corrected, never clipped.
        unit: the unit the instrument reported (or its register map declares).
        stable: False when the instrument says the value is not yet stable.
    """

    source: str
    indication: float
    unit: str
    stable: bool = True


class Instrument(Protocol):
    """A driver: one poll returns the raw readings of every configured source."""

    async def read(self) -> list[RawReading]:
        """Poll the instrument once; raise a `DriverError` on failure."""
        ...
