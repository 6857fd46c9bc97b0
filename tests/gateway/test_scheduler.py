# SPDX-License-Identifier: Apache-2.0
"""Bus workers against the real simulators over the real transports: no mocks.

A balance (`MtSicsSimulator` on a pty, through `SerialStream`) and an SDM630 meter
(`Sdm630Simulator` on loopback, through `ModbusTcpBus`) are polled by `BusWorker`s built
exactly as the daemon builds them (`link_opener`, `make_driver`, `channel_specs`). Every wait
is a bounded condition; counts that depend on timing are checked against wide margins.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pymodbus.pdu import ModbusPDU

from drivers.sim.mtsics import Fault as BalanceFault
from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sdm630 import Fault as MeterFault
from drivers.sim.sdm630 import Sdm630Simulator
from drivers.transports.modbus import ModbusTcpBus as ModbusTcpLink
from drivers.transports.serial import open_serial
from gateway.config import Instrument, ModbusTcpBus, SerialBus
from gateway.pipeline import rfc3339
from gateway.scheduler import DOWN_AFTER
from tests.gateway.buses import STOP, Bench, Sink, closed, float32

# Loopback and a pty answer within a millisecond; these leave room for a loaded CI machine
# while keeping the timeout cases short.
TIMEOUT = 0.3
BALANCE_INTERVAL = 0.1
METER_INTERVAL = 0.1
# How long a worker may take to reach a state it reaches in well under a second, and to
# recover after a fault whose exponential backoff has grown for about 1.5 s.
SETTLE = 3.0
RECOVERY = 6.0
METER_CHANNELS: tuple[dict[str, Any], ...] = (
    {"id": "u1", "source": "voltage_l1", "quantity": "voltage", "unit": "V", "resolution": 0.1},
    {"id": "f", "source": "frequency", "quantity": "frequency", "unit": "Hz", "resolution": 0.01},
)


def balance_config(
    port: str, *, poll_interval: float = BALANCE_INTERVAL
) -> tuple[SerialBus, Instrument]:
    bus = SerialBus.model_validate(
        {"id": "rs232-1", "kind": "serial", "port": port, "timeout": TIMEOUT}
    )
    instrument = Instrument.model_validate(
        {
            "id": "balance",
            "bus": bus.id,
            "driver": "mtsics",
            "poll_interval": poll_interval,
            "channel": [{"id": "mass", "quantity": "mass", "unit": "g", "resolution": 0.01}],
        }
    )
    return bus, instrument


def meter_config(
    port: int, *, channels: Sequence[dict[str, Any]] = METER_CHANNELS
) -> tuple[ModbusTcpBus, Instrument]:
    bus = ModbusTcpBus.model_validate(
        {"id": "tcp-1", "kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout": 0.2}
    )
    instrument = Instrument.model_validate(
        {
            "id": "meter",
            "bus": bus.id,
            "driver": "modbus",
            "register_map": "sdm630",
            "poll_interval": METER_INTERVAL,
            "channel": list(channels),
        }
    )
    return bus, instrument


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    bench = Bench()
    yield bench
    await bench.stop()  # a no-op when the test stopped its workers itself


async def test_healthy_balance_delivers_what_was_served_in_order(bench: Bench) -> None:
    async with MtSicsSimulator(weight_g=1000.0, noise_g=0.2, seed=7) as sim:
        sink = Sink()
        bench.start(*balance_config(sim.port, poll_interval=0.05), sink)
        await bench.until(lambda: len(sink.items) >= 8, "8 readings", timeout=SETTLE)
        await bench.stop()
        # The worker closed its port: the exclusive lock (flock) is free again.
        async with await open_serial(sim.port, timeout=TIMEOUT):
            pass
        assert len(bench.links) == 1

    indications = [item.indication for item in sink.items]
    served = [value for value, _unit, _stable in sim.served]
    assert indications == served[: len(indications)]
    assert len(served) - len(indications) in {0, 1}  # a poll cancelled after the reply
    assert len(set(indications)) > 1  # the noise makes the order check mean something
    assert all(len(batch) == 1 for batch in sink.batches)
    assert {(item.spec.instrument, item.spec.channel) for item in sink.items} == {
        ("balance", "mass")
    }
    assert {(item.unit, item.stable) for item in sink.items} == {("g", True)}
    times = [item.time for item in sink.items]
    assert times == sorted(times)
    health = bench.health["balance"]
    assert health.state == "ok"
    assert health.good == len(indications)
    assert health.last_good == rfc3339(sink.items[-1].time)
    assert not health.errors
    assert (health.consecutive_failures, health.last_error) == (0, None)


async def test_healthy_meter_delivers_one_reading_per_channel_per_poll(bench: Bench) -> None:
    # A second channel fed from voltage_l1: the meter reads it once, both channels get it.
    channels = (
        *METER_CHANNELS,
        {"id": "u1-check", "source": "voltage_l1", "quantity": "voltage", "unit": "V",
         "resolution": 0.1},
    )  # fmt: skip
    async with Sdm630Simulator() as sim:
        sim.set("voltage_l1", 231.5)
        sim.set("frequency", 49.98)
        sink = Sink()
        bench.start(*meter_config(sim.port, channels=channels), sink)
        await bench.until(lambda: len(sink.batches) >= 3, "3 polls", timeout=SETTLE)
        await bench.stop()

    expected = {
        "u1": (float32(231.5), "V"),
        "f": (float32(49.98), "Hz"),
        "u1-check": (float32(231.5), "V"),
    }
    for batch in sink.batches:
        assert len(batch) == len(channels)
        assert {item.spec.channel: (item.indication, item.unit) for item in batch} == expected
        assert len({item.time for item in batch}) == 1
        assert all(item.spec.instrument == "meter" and item.stable for item in batch)
    health = bench.health["meter"]
    assert health.state == "ok"
    assert health.good == len(sink.batches)
    assert not health.errors


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("silent", "timeout"), ("garbage", "protocol"), ("overload", "instrument")],
)
async def test_failing_balance_never_slows_the_meter_and_recovers(
    fault: BalanceFault,
    kind: str,
    bench: Bench,
    transitions: Callable[[str], list[str]],
) -> None:
    window = 1.5
    loop = asyncio.get_running_loop()
    async with MtSicsSimulator(weight_g=500.0) as balance_sim, Sdm630Simulator() as meter_sim:
        balance_sink, meter_sink = Sink(), Sink()
        bench.start(*balance_config(balance_sim.port), balance_sink)
        bench.start(*meter_config(meter_sim.port), meter_sink)
        balance, meter = bench.health["balance"], bench.health["meter"]
        await bench.until(
            lambda: balance.state == meter.state == "ok", "both instruments ok", timeout=SETTLE
        )

        balance_sim.fault = fault
        start, meter_good, balance_polls = loop.time(), meter.good, balance.polls
        await bench.until(lambda: balance.state == "down", "balance down", timeout=SETTLE)
        await asyncio.sleep(max(0.0, start + window - loop.time()))
        elapsed = loop.time() - start
        meter_polls, balance_polls = meter.good - meter_good, balance.polls - balance_polls

        assert meter_polls >= 0.8 * elapsed / METER_INTERVAL
        # The failing balance is retried with a growing backoff, not at its poll interval.
        assert balance_polls <= 0.6 * elapsed / BALANCE_INTERVAL
        assert meter.state == "ok"
        assert not meter.errors
        assert balance.consecutive_failures >= DOWN_AFTER
        assert dict(balance.errors) == {kind: balance.consecutive_failures}
        assert balance.last_error is not None
        assert balance.last_error.startswith(f"{kind}: ")
        assert transitions("balance") == ["degraded", "down"]

        balance_sim.fault = None
        balance_sim.weight_g = 612.34
        resumed_from = len(balance_sink.items)
        await bench.until(
            lambda: balance.state == "ok" and len(balance_sink.items) >= resumed_from + 2,
            "balance recovers and readings resume",
            timeout=RECOVERY,
        )
        await bench.stop()

    # No weight was served while the fault lasted: every reply became exactly one reading.
    indications = [item.indication for item in balance_sink.items]
    served = [value for value, _unit, _stable in balance_sim.served]
    assert indications == served[: len(indications)]
    assert {*indications[:resumed_from]} == {500.0}
    assert {*indications[resumed_from:]} == {612.34}
    assert balance.consecutive_failures == 0
    assert transitions("balance") == ["degraded", "down", "recovered"]
    assert transitions("meter") == []
    assert not meter.errors


@pytest.mark.parametrize(("fault", "kind"), [("exception", "instrument"), ("silent", "timeout")])
async def test_meter_fault_is_classified_and_recovered(
    fault: MeterFault,
    kind: str,
    bench: Bench,
    transitions: Callable[[str], list[str]],
) -> None:
    async with Sdm630Simulator() as sim:
        sink = Sink()
        bench.start(*meter_config(sim.port), sink)
        meter = bench.health["meter"]
        await bench.until(lambda: meter.state == "ok", "meter ok", timeout=SETTLE)

        sim.fault = fault
        await bench.until(lambda: meter.errors[kind] >= 1, f"a {kind} error", timeout=SETTLE)
        assert meter.state in {"degraded", "down"}
        assert set(meter.errors) == {kind}
        assert meter.last_error is not None
        assert meter.last_error.startswith(f"{kind}: ")
        assert transitions("meter")[0] == "degraded"

        sim.fault = None
        sim.set("voltage_l1", 228.25)
        await bench.until(
            lambda: (
                meter.state == "ok"
                and any(item.indication == float32(228.25) for item in sink.items)
            ),
            "recovery with the new voltage",
            timeout=RECOVERY,
        )
        await bench.stop()

    assert set(meter.errors) == {kind}
    assert meter.consecutive_failures == 0
    assert transitions("meter")[-1] == "recovered"


async def test_meter_link_that_vanishes_is_reopened(
    bench: Bench, transitions: Callable[[str], list[str]]
) -> None:
    sink = Sink()
    async with Sdm630Simulator() as first:
        port = first.port
        bench.start(*meter_config(port), sink)
        meter = bench.health["meter"]
        await bench.until(lambda: meter.good >= 2, "two good polls", timeout=SETTLE)
    # The meter is gone (server shut down, its connections closed) while the worker runs.
    await bench.until(lambda: meter.state == "down", "meter down", timeout=SETTLE)
    # Down on the DOWN_AFTER-th failure (the poll, then two opens 0.5 s apart); the next
    # open is a 1 s link backoff away.
    assert meter.consecutive_failures == DOWN_AFTER
    assert set(meter.errors) <= {"transport", "timeout"}
    assert meter.errors.total() == DOWN_AFTER
    assert bench.running
    [broken] = bench.links
    assert closed(broken)
    # Reopening waits out the link backoff instead of hammering the port (free: the next
    # open is due 1 s after going down anyway).
    await asyncio.sleep(0.3)
    assert meter.errors.total() <= DOWN_AFTER + 1

    async with Sdm630Simulator(port=port) as second:
        second.set("voltage_l1", 225.5)
        await bench.until(
            lambda: any(item.indication == float32(225.5) for item in sink.items),
            "readings from the restarted meter",
            timeout=RECOVERY,
        )
        assert meter.state == "ok"
        # One more open, at the backoff's next step: retries are spaced, not hammered.
        assert len(bench.links) == 2
        assert meter.errors.total() <= DOWN_AFTER + 1
        await bench.stop()
    assert transitions("meter") == ["degraded", "down", "recovered"]


async def test_worker_stops_when_cancelled_as_a_reply_arrives(bench: Bench) -> None:
    # Python 3.11's asyncio.wait_for, with which pymodbus awaits each reply, returns the reply
    # instead of raising when it arrived just before the cancellation (CPython gh-86296). The
    # client's trace hook runs as the reply is decoded, which is exactly that moment.
    async with Sdm630Simulator() as sim:
        sink = Sink()
        bench.start(*meter_config(sim.port), sink)
        await bench.until(lambda: len(sink.batches) >= 1, "a first poll", timeout=SETTLE)
        [link] = bench.links
        assert isinstance(link, ModbusTcpLink)
        task = bench.tasks["tcp-1"]
        cancelled: list[bool] = []

        def cancel_on_reply(sending: bool, pdu: ModbusPDU) -> ModbusPDU:  # noqa: FBT001
            if not sending and not cancelled:
                cancelled.append(task.cancel())
            return pdu

        link._client.ctx.trace_pdu = cancel_on_reply
        done, _pending = await asyncio.wait([task], timeout=STOP)
        assert cancelled == [True]
        assert task in done, "the worker polled on after being cancelled"
        assert task.cancelled()
        assert link.closed


async def test_serial_port_that_does_not_exist_yet_is_retried(
    bench: Bench, tmp_path: Path, transitions: Callable[[str], list[str]]
) -> None:
    # A symlink stands for a USB adapter that is plugged in while the gateway runs.
    port = tmp_path / "ttyUSB-balance"
    async with MtSicsSimulator(weight_g=250.0) as sim:
        sink = Sink()
        bench.start(*balance_config(str(port)), sink)
        balance = bench.health["balance"]
        await bench.until(
            lambda: balance.errors["transport"] >= 2, "a second open attempt", timeout=SETTLE
        )
        # Attempts at 0, 0.5 and 1.5 s (link backoff): still short of DOWN_AFTER failures.
        assert balance.state == "degraded"
        assert set(balance.errors) == {"transport"}
        assert balance.last_error is not None
        assert str(port) in balance.last_error
        assert balance.good == 0
        assert bench.running
        # Reopening waits out the link backoff instead of hammering the port (free: the third
        # attempt is due 1.5 s after the first anyway).
        await asyncio.sleep(0.3)
        assert balance.errors["transport"] <= 3

        port.symlink_to(sim.port)
        await bench.until(
            lambda: balance.state == "ok" and len(sink.items) >= 1,
            "the port opened and read",
            timeout=RECOVERY,
        )
        # Opened at the backoff's next step (1.5 s), not hammered meanwhile.
        assert len(bench.links) == 1
        assert balance.errors["transport"] <= 3
        await bench.stop()
    assert sink.items[0].indication == 250.0
    assert transitions("balance")[0] == "degraded"
    assert transitions("balance")[-1] == "recovered"


async def test_polls_due_while_the_bus_is_busy_are_skipped_not_queued(bench: Bench) -> None:
    interval, held = 0.05, 0.5
    loop = asyncio.get_running_loop()
    async with MtSicsSimulator(weight_g=100.0) as sim:
        sink = Sink()
        started = loop.time()
        bench.start(*balance_config(sim.port, poll_interval=interval), sink)
        balance = bench.health["balance"]
        await bench.until(lambda: len(sink.batches) >= 2, "two polls", timeout=SETTLE)

        sink.hold = release = asyncio.Event()
        await asyncio.wait_for(sink.holding.wait(), timeout=SETTLE)
        await asyncio.sleep(held)
        released = loop.time()
        release.set()
        await asyncio.sleep(held)
        elapsed = loop.time() - started
        polls, skipped = balance.polls, balance.skipped
        await bench.stop()

    intervals = elapsed / interval
    assert skipped >= 0.5 * held / interval
    # Every due instant was either polled or skipped, never both, never twice...
    assert polls + skipped <= intervals + 2
    # ...so far fewer polls were made than instants came due,
    assert polls <= intervals + 1 - 0.5 * held / interval
    # and the bus did not catch up in a burst once it was free again.
    assert sum(released <= moment < released + 2 * interval for moment in sink.times) <= 4
    assert balance.state == "ok"
