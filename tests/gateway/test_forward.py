# SPDX-License-Identifier: Apache-2.0
"""Forwarding through a real mosquitto: PUBACK before marking, buffering, reconnection."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.config import UpstreamSection
from gateway.forward import Forwarder, group_messages
from gateway.stamp import Stamper, verify_chain
from gateway.store import AsyncStore, Pending
from tests.gateway.factories import measured
from tests.services import Mosquitto
from tests.subscriber import subscribed


def upstream(broker: Mosquitto, **overrides: object) -> UpstreamSection:
    settings = {
        "broker": broker.url,
        "reconnect_min": 0.1,
        "reconnect_max": 0.5,
        "publish_timeout": 2.0,
        "max_readings_per_message": 7,
        **overrides,
    }
    return UpstreamSection.model_validate(settings)


async def commit(store: AsyncStore, stamper: Stamper, count: int, instrument: str = "b1") -> int:
    batch = stamper.stamp([measured(float(i), instrument=instrument) for i in range(count)])
    await store.call(store.store.append, batch)
    stamper.advance(batch)
    return stamper.last_seq


@contextlib.asynccontextmanager
async def forwarding(forwarder: Forwarder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(forwarder.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def forwarded(forwarder: Forwarder, seq: int, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        await forwarder.wait_forwarded(seq)


def test_messages_group_runs_per_instrument_in_order() -> None:
    window = [Pending(i, "a" if i % 3 else "b", "h", b"{}") for i in range(1, 21)]
    messages = group_messages(window, 5)
    assert all(len(items) <= 5 for _, items in messages)
    seqs_a = [p.seq for name, items in messages if name == "a" for p in items]
    assert seqs_a == [i for i in range(1, 21) if i % 3]
    assert sorted(p.seq for _, items in messages for p in items) == list(range(1, 21))


async def test_every_committed_reading_arrives_and_is_marked(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    stamper = Stamper("lab-1")
    forwarder = Forwarder(upstream(mosquitto), "lab-1", store, forwarded_seq=0)
    async with subscribed(mosquitto.port) as collected, forwarding(forwarder):
        await commit(store, stamper, 30, "b1")
        forwarder.notify()
        last = await commit(store, stamper, 25, "m1")
        forwarder.notify()
        await forwarded(forwarder, last, 10)
        await collected.wait_for_seq(last)
    assert await store.call(store.store.forwarded_seq) == 55
    readings = sorted(collected.by_seq().values(), key=lambda r: r["seq"])
    assert list(verify_chain(readings)) == []
    assert {r["instrument"] for r in readings} == {"b1", "m1"}
    assert collected.status[0]["state"] == "online"
    await store.aclose()


async def test_broker_down_means_buffering_then_delivery(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    stamper = Stamper("lab-1")
    mosquitto.stop()
    forwarder = Forwarder(upstream(mosquitto), "lab-1", store, forwarded_seq=0)
    async with forwarding(forwarder):
        last = await commit(store, stamper, 40)
        forwarder.notify()
        await asyncio.sleep(1.0)
        assert forwarder.forwarded_seq == 0  # nothing acknowledged, nothing marked
        assert forwarder.reconnects >= 1
        mosquitto.start()
        async with subscribed(mosquitto.port) as collected:
            # Readings committed while the broker was down are delivered after it returns.
            await forwarded(forwarder, last, 15)
            more = await commit(store, stamper, 10)
            forwarder.notify()
            await forwarded(forwarder, more, 10)
            await collected.wait_for_seq(more)
    assert sorted(collected.by_seq())[-10:] == list(range(41, 51))
    await store.aclose()


async def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    stamper = Stamper("lab-1")
    forwarder = Forwarder(upstream(mosquitto), "lab-1", store, forwarded_seq=0)
    total = 0
    async with forwarding(forwarder):
        async with subscribed(mosquitto.port) as first:
            total = await commit(store, stamper, 20)
            forwarder.notify()
            await forwarded(forwarder, total, 10)
            await first.wait_for_seq(total)
        mosquitto.stop()
        total = await commit(store, stamper, 20)
        forwarder.notify()
        mosquitto.start()
        async with subscribed(mosquitto.port) as second:
            total = await commit(store, stamper, 20)
            forwarder.notify()
            await forwarded(forwarder, total, 15)
            await second.wait_for_seq(total)
    received = first.by_seq() | second.by_seq()
    assert sorted(received) == list(range(1, total + 1))
    ordered = [received[seq] for seq in sorted(received)]
    assert list(verify_chain(ordered)) == []
    await store.aclose()


async def test_clean_stop_says_offline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    forwarder = Forwarder(
        upstream(mosquitto),
        "lab-1",
        store,
        forwarded_seq=0,
        health=lambda: {"b1": {"state": "ok"}},
    )
    async with subscribed(mosquitto.port, "metrogate/v1/lab-1/status") as collected:
        async with forwarding(forwarder):
            async with asyncio.timeout(5):
                while not collected.status:
                    await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while collected.status[-1]["state"] != "offline":
                await asyncio.sleep(0.02)
    assert collected.status[0]["instruments"] == {"b1": {"state": "ok"}}
    await store.aclose()


async def test_from_memory_while_keeping_up_from_the_store_after_falling_behind(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    stamper = Stamper("lab-1")
    forwarder = Forwarder(upstream(mosquitto), "lab-1", store, forwarded_seq=0, window=5)

    async def commit_and_hand_over(count: int) -> int:
        batch = stamper.stamp([measured(float(i)) for i in range(count)])
        await store.call(store.store.append, batch)
        stamper.advance(batch)
        forwarder.notify(batch)
        return stamper.last_seq

    async with subscribed(mosquitto.port) as collected, forwarding(forwarder):
        last = await commit_and_hand_over(12)  # kept in memory (bound: 20 windows = 100)
        await forwarded(forwarder, last, 10)
        await collected.wait_for_seq(last)
        mosquitto.stop()
        for _ in range(30):  # 300 readings while the broker is away: beyond the bound
            last = await commit_and_hand_over(10)
        assert len(forwarder._recent) < 100
        mosquitto.start()
        last = await commit_and_hand_over(7)
        await forwarded(forwarder, last, 20)
        await collected.wait_for_seq(last)
    received = collected.by_seq()
    assert sorted(received) == list(range(1, last + 1))
    assert list(verify_chain(received[seq] for seq in sorted(received))) == []
    await store.aclose()
