# SPDX-License-Identifier: Apache-2.0
"""The station's wall clock, watched for steps backwards.

Every acquisition time comes from `StationClock.now`, called on the event loop's thread, so
the times it hands out never decrease — unless the system clock is stepped back (an
operator's `date -s`, an NTP step after a long outage, a virtual machine restored from a
snapshot). The clock then answers with the real (earlier) time and says that it is behind
the latest time already handed out (or stored before a restart); the pipeline flags such
readings ``CLOCK_STEPPED_BACK``. They keep their place in seq order and the hash chain: only
their timestamps are not to be trusted for ordering. The flag stops when the clock has
caught up with the latest time handed out before the step.

A time is never invented or clamped: the reading says what the clock said, and that the
clock went back.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StationClock:
    """Hands out acquisition times and notices when the system clock steps back.

    Args:
        not_before: the latest time known to have been handed out already (the newest
            stored reading's time at start-up), or None.
        wall: the clock to read (the system's UTC clock; injectable for tests).
    """

    def __init__(
        self,
        not_before: datetime | None = None,
        *,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._wall = wall
        self._high = not_before
        self._behind_by: float | None = None
        self.steps = 0
        self.flagged_polls = 0

    @property
    def behind(self) -> bool:
        """Whether the clock is now behind a time it handed out before."""
        return self._behind_by is not None

    def now(self) -> tuple[datetime, bool]:
        """The current UTC time, and whether it lies before a time handed out earlier."""
        moment = self._wall()
        high = self._high
        if high is None or moment >= high:
            if self._behind_by is not None:
                log.warning("the system clock has caught up with the readings' times")
                self._behind_by = None
            self._high = moment
            return moment, False
        behind_by = (high - moment).total_seconds()
        if self._behind_by is None:
            self.steps += 1
            log.error(
                "ALARM: the system clock stepped back by %.6f s (now %s, readings up to %s); "
                "readings are flagged CLOCK_STEPPED_BACK until it catches up",
                behind_by,
                moment.isoformat(),
                high.isoformat(),
            )
        self._behind_by = behind_by
        self.flagged_polls += 1
        return moment, True

    def snapshot(self) -> dict[str, Any]:
        """For the status: steps seen, acquisitions flagged, and how far behind it is now."""
        return {
            "steps_back": self.steps,
            "flagged_polls": self.flagged_polls,
            "behind": self.behind,
            "behind_by": self._behind_by or 0.0,
        }
