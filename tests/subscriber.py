# SPDX-License-Identifier: Apache-2.0
"""An upstream subscriber for tests: collects readings, checkpoints and status from a broker."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson


@dataclass
class Collected:
    readings: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    # For each checkpoint, the highest seq up to which every reading had arrived before it.
    received_before: list[int] = field(default_factory=list)
    # Every readings and checkpoints payload as received (a capture for `metrogate verify`).
    payloads: list[bytes] = field(default_factory=list)
    messages: int = 0

    def by_seq(self) -> dict[int, dict[str, Any]]:
        return {int(r["seq"]): r for r in self.readings}

    def contiguous(self) -> int:
        """The highest seq up to which every reading has arrived."""
        received, seq = self.by_seq(), 0
        while seq + 1 in received:
            seq += 1
        return seq

    async def wait_for_seq(self, seq: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while seq not in self.by_seq():
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def subscribed(
    port: int, topic: str = "metrogate/v1/#", *, identifier: str = "test-collector"
) -> AsyncIterator[Collected]:
    """Subscribe (QoS 1, persistent session) and collect until the block ends.

    The session survives broker restarts as long as the broker keeps it; the collector
    reconnects by itself.
    """
    collected = Collected()
    ready = asyncio.Event()

    async def listen() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", port, identifier=identifier, clean_session=False
                ) as client:
                    await client.subscribe(topic, qos=1)
                    ready.set()
                    async for message in client.messages:
                        raw = bytes(message.payload)
                        payload = orjson.loads(raw)
                        name = str(message.topic)
                        if name.endswith("/readings"):
                            collected.messages += 1
                            collected.payloads.append(raw)
                            collected.readings.extend(payload)
                        elif name.endswith("/checkpoints"):
                            collected.payloads.append(raw)
                            collected.checkpoints.append(payload)
                            collected.received_before.append(collected.contiguous())
                        elif name.endswith("/status"):
                            collected.status.append(payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    task = asyncio.create_task(listen())
    async with asyncio.timeout(10):
        await ready.wait()
    try:
        yield collected
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
