# SPDX-License-Identifier: Apache-2.0
"""Faults of the station itself: its disk fills up, its clock steps back, it is reloaded.

- disk full: the data directory is a small tmpfs; when it is full acquisition pauses with an
  ALARM (log, status file), nothing committed is touched, and once the operator makes room
  (the tmpfs is grown) acquisition resumes by itself;
- clock stepped back: the daemon runs under libfaketime, its clock first 20 s ahead, then set
  right (a step back of 20 s, as an NTP step does); readings acquired while the clock is
  behind are flagged CLOCK_STEPPED_BACK, seq order and the hash chain are untouched;
- SIGHUP reload: an instrument is added, one removed and one changed while others keep
  polling; a broken file changes nothing; no reading is lost or repeated.
"""

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.harness import FaultBench

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)"
)
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
CLOCK_AHEAD = 20  # s the daemon's clock runs ahead before it is set right


def readings(bench: FaultBench) -> Iterator[dict[str, Any]]:
    for seq, _hash, body in bench.rows():
        yield {"seq": seq, **orjson.loads(body)}


def moment(reading: dict[str, Any]) -> datetime:
    return datetime.strptime(f"{reading['time']}+0000", "%Y-%m-%dT%H:%M:%S.%fZ%z")


def acquisition(bench: FaultBench, state: str) -> dict[str, Any] | None:
    """The status file when it says acquisition is `state`."""
    status = bench.status()
    return status if status.get("acquisition") == state else None


async def mount(*args: str) -> None:
    process = await asyncio.create_subprocess_exec("mount", *args)
    assert await process.wait() == 0


@asynccontextmanager
async def small_filesystem(path: Path, size: str) -> AsyncIterator[None]:
    path.mkdir(parents=True)  # noqa: ASYNC240 - before anything runs
    await mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield
    finally:
        umount = await asyncio.create_subprocess_exec("umount", "-l", str(path))
        await umount.wait()


@needs_root
async def test_disk_full_pauses_and_resumes(bench: FaultBench) -> None:
    async with small_filesystem(bench.data_dir, "512k"):
        await bench.balance("balance-1", poll_interval=0.01)
        await bench.tcp_meter("meter-1", poll_interval=0.02)
        bench.store_settings["batch_latency"] = 0.0
        await bench.start()
        await bench.until(lambda: "ALARM: acquisition paused" in bench.log(), "the pause alarm")
        assert "database or disk is full" in bench.log()
        paused = await bench.until(lambda: acquisition(bench, "paused"), "the alarm in the status")
        assert paused is not None
        committed_before = bench.rows()
        await asyncio.sleep(3.0)  # paused: nothing moves, and nothing is dropped meanwhile
        assert bench.rows() == committed_before
        assert bench.process is not None
        assert bench.process.returncode is None
        await mount("-o", "remount,size=32m", str(bench.data_dir))  # room made
        await bench.until(lambda: "acquisition resumed" in bench.log(), "the resume")
        await bench.wait_stored(len(committed_before) + 200)
        running = await bench.until(lambda: acquisition(bench, "running"), "the alarm cleared")
        assert running is not None
        assert running["alarm"] is None
        counts = await bench.finish(
            "disk-full",
            filesystem="tmpfs 512 KiB, grown to 32 MiB",
            paused_with_backlog=paused["backlog"],
            committed_when_full=len(committed_before),
        )
        assert bench.rows()[: len(committed_before)] == committed_before  # untouched
    assert counts.delivered == counts.stored


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (apt-get install faketime)")
async def test_clock_stepped_back(bench: FaultBench) -> None:
    offset = bench.tmp / "faketime"
    offset.write_text(f"+{CLOCK_AHEAD}\n")
    bench.daemon_prefix = [
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME_TIMESTAMP_FILE={offset}",
        "FAKETIME_NO_CACHE=1",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ]
    await bench.balance("balance-1", poll_interval=0.05)
    await bench.tcp_meter("meter-1", poll_interval=0.1)
    await bench.start()
    await bench.wait_stored(100)
    # The clock is set right: a step back of CLOCK_AHEAD seconds. Replaced by a rename, as
    # libfaketime reads the file at every clock call and must never see it half written.
    (bench.tmp / "faketime.new").write_text("+0\n")
    (bench.tmp / "faketime.new").replace(offset)
    stepped_at = bench.stored_seq()
    await bench.until(
        lambda: (bench.status().get("clock") or {}).get("behind"), "the clock alarm in the status"
    )
    await bench.until(
        lambda: "has caught up" in bench.log(), "the clock catching up", timeout=CLOCK_AHEAD + 30
    )
    caught_up_at = bench.stored_seq()
    await bench.wait_stored(caught_up_at + 100)
    status = bench.status()
    counts = await bench.finish("clock-back", step_back_s=CLOCK_AHEAD, how="libfaketime")
    rows = list(readings(bench))
    flagged = [r for r in rows if "CLOCK_STEPPED_BACK" in r["flags"]]
    assert "ALARM: the system clock stepped back" in bench.log()
    assert status["clock"]["steps_back"] == 1
    assert len(flagged) > 0
    first_flagged = min(r["seq"] for r in flagged)
    newest_before = max(moment(r) for r in rows if r["seq"] < first_flagged)
    # The flagged readings are timed before a time already handed out.
    assert all(moment(r) < newest_before for r in flagged)
    assert all(r["seq"] > stepped_at for r in flagged)
    later = [r for r in rows if r["seq"] > caught_up_at + 20]
    assert later
    assert not any("CLOCK_STEPPED_BACK" in r["flags"] for r in later)
    assert counts.delivered == counts.stored


async def test_sighup_reload(bench: FaultBench) -> None:
    await bench.balance("balance-1", poll_interval=0.05)  # unchanged: must keep polling
    await bench.tcp_meter("meter-1", poll_interval=0.1)  # changed
    await bench.sbi_balance("balance-2", poll_interval=0.1)  # removed
    await bench.start()
    await bench.wait_stored(100)
    bench.set_poll_interval("meter-1", 0.2)
    bench.remove_instrument("balance-2")
    await bench.dlt645_meter("meter-2", poll_interval=0.1)  # added
    bench.upstream_settings["status_interval"] = 0.6  # takes effect at the next restart
    await bench.reload()
    await bench.until(lambda: "reload 1 applied" in bench.log(), "the reload applied")
    await asyncio.sleep(1.0)  # the removed balance's last poll is committed by now
    reloaded_at = bench.stored_seq()
    await bench.until(
        lambda: any(r["instrument"] == "meter-2" for r in readings(bench)),
        "readings of the added meter",
    )
    # A broken file is refused, naming the problem; the station goes on unchanged.
    bench.config.write_text(bench.config.read_text() + "\n[[instrument]]\nid = 12\n")
    assert bench.process is not None
    bench.process.send_signal(1)  # SIGHUP
    await bench.until(lambda: "reload refused" in bench.log(), "the broken file refused")
    bench.write_config()
    await bench.wait_stored(bench.stored_seq() + 100)
    counts = await bench.finish("sighup-reload", added=1, removed=1, changed=1, refused=1)
    log = bench.log()
    assert "restarted ['bus-meter-1']" in log
    assert "added ['bus-meter-2']" in log
    assert "removed ['bus-balance-2']" in log
    assert "instrument[3].id" in log  # the refused file's problem, by key
    assert "reload: [upstream] changed; that takes effect at the next restart" in log
    rows = list(readings(bench))
    assert not [r for r in rows if r["instrument"] == "balance-2" and r["seq"] > reloaded_at]
    times = sorted(moment(r) for r in rows if r["instrument"] == "balance-1")
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert max(gaps) < 2.0  # the unchanged bus kept polling through both reloads
    assert counts.duplicated == 0  # a reload repeats nothing
    assert counts.delivered == counts.stored
