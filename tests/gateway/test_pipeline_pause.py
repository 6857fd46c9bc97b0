# SPDX-License-Identifier: Apache-2.0
"""A store that refuses commits pauses acquisition; it resumes by itself, losing nothing.

SQLite's ``max_page_count`` makes a real database full (SQLITE_FULL, "database or disk is
full") without a small filesystem; raising it again is the operator freeing space.
"""

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gateway.clock import StationClock
from gateway.errors import StoreError
from gateway.pipeline import Pipeline
from gateway.stamp import Stamper, verify_chain
from gateway.store import AsyncStore
from tests.gateway.factories import NOW, acquired, balance_certificate, spec


class Limited:
    """A store whose database may grow only to `pages` pages while `limited`."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self.limited = False
        self.pages = 0
        engine = store.store._engine
        event.listen(engine, "connect", self._apply)

    def _apply(self, connection: Any, _record: object) -> None:
        if self.limited:
            connection.execute(f"PRAGMA max_page_count = {self.pages}")

    async def fill(self) -> None:
        """From now on the database cannot grow past its current size."""

        def pages() -> int:
            with self.store.store._engine.connect() as conn:
                return int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)

        self.pages = await self.store.call(pages)
        self.limited = True
        await self.store.call(self.store.store.close)  # reconnect with the limit

    async def free(self) -> None:
        self.limited = False
        await self.store.call(self.store.store.close)


async def readings(store: AsyncStore) -> list[dict[str, Any]]:
    rows = await store.call(lambda: store.store.readings(ascending=True))
    return [{k: v for k, v in r.items() if k != "body"} for r in rows]


async def test_full_store_pauses_then_resumes_without_losing_or_repeating(
    tmp_path: Path,
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    limited = Limited(store)
    pipeline = Pipeline(
        store, Stamper("lab-1"), batch_max=50, batch_latency=0.0, retry_min=0.01, retry_max=0.05
    )
    channel = spec(balance_certificate())
    task = asyncio.create_task(pipeline.run())
    await pipeline.submit([acquired(500.0 + i, channel) for i in range(20)])
    while pipeline.last_seq < 20:
        await asyncio.sleep(0.01)
    await limited.fill()
    # More than the queue holds (4 x batch_max): the submitter waits, as a bus worker does.
    submitter = asyncio.create_task(
        pipeline.submit([acquired(600.0 + i, channel) for i in range(400)])
    )
    while pipeline.alarm is None:
        await asyncio.sleep(0.01)
    assert "database or disk is full" in pipeline.alarm
    assert pipeline.pauses == 1
    held_at = pipeline.last_seq
    await asyncio.sleep(0.2)
    assert not task.done()  # paused, not failed
    assert pipeline.last_seq == held_at  # nothing moves while the store is full
    assert not submitter.done()  # backpressure: held, not dropped
    await limited.free()
    await submitter
    await pipeline.submit([acquired(700.0, channel)])
    await pipeline.close()
    await task
    assert pipeline.paused_since is None  # resumed
    rows = await readings(store)
    indications = [row["indication"] for row in rows]
    expected = [500.0 + i for i in range(20)] + [600.0 + i for i in range(400)] + [700.0]
    assert indications == expected  # every acquired reading, once, in order
    assert [row["seq"] for row in rows] == list(range(1, len(expected) + 1))
    assert list(verify_chain(rows)) == []
    await store.aclose()


async def test_stop_while_full_gives_up_naming_what_was_not_committed(tmp_path: Path) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    limited = Limited(store)
    pipeline = Pipeline(
        store,
        Stamper("lab-1"),
        batch_max=10,
        batch_latency=0.0,
        retry_min=0.01,
        retry_max=0.02,
        give_up_after=0.2,
    )
    channel = spec(balance_certificate())
    task = asyncio.create_task(pipeline.run())
    await pipeline.submit([acquired(500.0, channel)])
    while pipeline.last_seq < 1:
        await asyncio.sleep(0.01)
    await limited.fill()
    submitter = asyncio.create_task(
        pipeline.submit([acquired(600.0 + i, channel) for i in range(200)])
    )
    while pipeline.alarm is None:
        await asyncio.sleep(0.01)
    await pipeline.close()
    with pytest.raises(StoreError, match=r"stopping with \d+ acquired readings not committed"):
        await task
    submitter.cancel()  # the station cancels bus workers that are still waiting
    assert [row["seq"] for row in await readings(store)] == [1]  # what was committed stays
    await store.aclose()


def test_clock_stepped_back_is_flagged_until_it_catches_up() -> None:
    times = iter([NOW, NOW + timedelta(seconds=1), NOW - timedelta(seconds=5), NOW, NOW])
    times = iter([*times, NOW + timedelta(seconds=2)])
    clock = StationClock(wall=lambda: next(times))
    assert clock.now() == (NOW, False)
    assert clock.now() == (NOW + timedelta(seconds=1), False)
    assert clock.now() == (NOW - timedelta(seconds=5), True)  # the real time, flagged
    assert clock.behind
    assert clock.snapshot()["behind_by"] == 6.0
    assert clock.now() == (NOW, True)
    assert clock.now() == (NOW, True)
    assert clock.now() == (NOW + timedelta(seconds=2), False)  # caught up
    assert clock.snapshot() == {
        "steps_back": 1,
        "flagged_polls": 3,
        "behind": False,
        "behind_by": 0.0,
    }


def test_clock_behind_the_stored_readings_at_start_is_flagged() -> None:
    clock = StationClock(NOW, wall=lambda: NOW - timedelta(hours=1))
    assert clock.now() == (NOW - timedelta(hours=1), True)
    assert clock.steps == 1


async def test_readings_acquired_while_the_clock_is_behind_carry_the_flag(
    tmp_path: Path,
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    pipeline = Pipeline(store, Stamper("lab-1"), batch_latency=0.0)
    channel = spec(balance_certificate())
    task = asyncio.create_task(pipeline.run())
    ok = acquired(500.0, channel)
    back = acquired(501.0, channel, time=NOW - timedelta(seconds=3))._replace(clock_back=True)
    unstable = acquired(502.0, channel, stable=False)._replace(clock_back=True)
    await pipeline.submit([ok, back, unstable])
    await pipeline.close()
    await task
    rows = await readings(store)
    assert [row["flags"] for row in rows] == [
        [],
        ["CLOCK_STEPPED_BACK"],
        ["CLOCK_STEPPED_BACK", "UNSTABLE"],
    ]
    assert [row["seq"] for row in rows] == [1, 2, 3]  # seq order and chain unaffected
    assert list(verify_chain(rows)) == []
    await store.aclose()
