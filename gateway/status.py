# SPDX-License-Identifier: Apache-2.0
"""The station's status file: what `metrogate status` shows without a broker.

The daemon rewrites ``DATA_DIR/status.json`` every ``status_interval`` seconds and when it
stops (write to a temporary file, then rename: a reader never sees half a file). It holds the
same health the retained MQTT status topic carries, plus the store's counters.
"""

import contextlib
import errno
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


def write_status(data_dir: Path, status: Mapping[str, Any]) -> bool:
    """Atomically replace the status file; False (logged once by the caller) on failure.

    On a full disk (the alarm the status must carry) the new status is written over the old
    file in place instead, within the blocks the file already holds: a reader may then, for
    a moment, see a torn file (`read_status` returns None for it), never a stale alarm.
    """
    path = data_dir / STATUS_FILE
    temporary = path.with_suffix(".json.tmp")
    data = orjson.dumps(status, option=orjson.OPT_INDENT_2)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if exc.errno == errno.ENOSPC and _overwrite(path, data):
            return True
        log.debug("cannot write %s: %s", path, exc)
        return False
    return True


def _overwrite(path: Path, data: bytes) -> bool:
    """Write `data` over the existing file `path` without allocating; False if it cannot."""
    try:
        with path.open("r+b") as file:
            file.write(data)
            file.truncate()
    except OSError:
        return False
    return True


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The last status the daemon wrote, or None when there is none."""
    try:
        decoded = orjson.loads((data_dir / STATUS_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def parse_rfc3339(text: object) -> datetime | None:
    """A time as the station writes it (``gateway.pipeline.rfc3339``), or None if not one."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(f"{text}+0000", "%Y-%m-%dT%H:%M:%S.%fZ%z")
    except ValueError:
        return None


def age_of(status: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds since the status was written, or None if it carries no readable time."""
    written = parse_rfc3339(status.get("time"))
    if written is None:
        return None
    return ((now or datetime.now(UTC)) - written).total_seconds()


def format_status(status: Mapping[str, Any], *, stale_after: float) -> list[str]:
    """Human-readable lines for `metrogate status`."""
    age = age_of(status)
    state = status.get("state", "?")
    if state == "running" and (age is None or age > stale_after):
        state = f"not responding (last status {age:.0f} s ago)" if age else "unknown"
    lines = [
        f"station {status.get('station')}: {state}; written {status.get('time')}",
        (
            f"readings: last seq {status.get('last_seq')}, forwarded up to "
            f"{status.get('forwarded_seq')}, backlog {status.get('backlog')}; broker "
            f"{'connected' if status.get('broker_connected') else 'not connected'}"
        ),
    ]
    if status.get("alarm"):
        lines.append(f"ALARM: {status['alarm']}")
    clock = status.get("clock") or {}
    if clock.get("behind"):
        lines.append(
            f"ALARM: the system clock stepped back (to {clock.get('behind_by', 0):.3f} s behind "
            "the latest reading); readings are flagged CLOCK_STEPPED_BACK until it catches up"
        )
    lines += [
        "",
        (
            f"{'instrument':<20} {'state':<9} {'polls':>8} {'good':>8} {'skipped':>8} "
            f"{'errors':<28} {'last good reading':<28} last error"
        ),
    ]
    for name, health in sorted(dict(status.get("instruments", {})).items()):
        errors = ", ".join(f"{k} {v}" for k, v in sorted(health.get("errors", {}).items()))
        lines.append(
            f"{name:<20} {health.get('state', '?'):<9} {health.get('polls', 0):>8} "
            f"{health.get('good', 0):>8} {health.get('skipped', 0):>8} {errors or '-':<28} "
            f"{health.get('last_good') or '-':<28} {health.get('last_error') or '-'}"
        )
    dates = status.get("register_dates") or {}
    if dates.get("next_change"):
        lines.append(
            f"register: next validity date {dates['next_change']} (the chains are resolved "
            f"again then; {dates.get('chains_resolved_again', 0)} times so far)"
        )
    soon = list(status.get("expiring", []))
    if soon:
        lines.append("")
        lines.append(f"certificates expiring soon ({len(soon)}):")
        lines.extend(
            f"  {item.get('certificate')} ({item.get('subject')}) expires {item.get('expires')}"
            for item in soon
        )
    return lines
