# SPDX-License-Identifier: Apache-2.0
"""An unplugged USB-serial adapter: the port disappears while the gateway runs, then comes back.

Real parts only: an `MtSicsSimulator` on a pty stands for the balance behind the adapter,
reached through a symlink in ``tmp_path`` as udev gives ``/dev/serial/by-id/...`` names; an
`Sdm630Simulator` on loopback is a second bus that must keep its schedule meanwhile. The bus
workers are built as the daemon builds them (`link_opener`, `make_driver`, `channel_specs`).
Pulling the adapter closes the pty (reads, writes and flushes on the open port fail) and
removes the by-id name (reopening fails); plugging it back is a new pty behind the same name.
Every wait is a bounded condition; counts that depend on timing have wide margins.

It found that pyserial's flush on a vanished port raises `termios.error` (EIO), not an
`OSError`; `drivers.transports.serial` now maps both to `TransportError`.
"""

import asyncio
import logging
import re
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sdm630 import Sdm630Simulator
from drivers.transports.modbus import ModbusTcpBus as ModbusTcpLink
from drivers.transports.serial import SerialStream
from gateway.config import Instrument, ModbusTcpBus, SerialBus, StationConfig
from gateway.instruments import Link, channel_specs, link_opener, make_driver
from gateway.pipeline import Acquired
from gateway.scheduler import DOWN_AFTER, BusWorker, InstrumentHealth

BALANCE_INTERVAL = 0.05
BALANCE_TIMEOUT = 0.3
METER_INTERVAL = 0.1
METER_TIMEOUT = 0.2
# How long the adapter stays unplugged: the balance is down after the failed poll and two
# failed opens (0.5 s), and the next open is 1.5 s after the first, so the replug falls
# between two attempts and the reopen follows within about 0.5 s (or 2 s more on a slow
# machine, as the backoff doubles).
OUTAGE = 1.2
SETTLE = 3.0  # s for a state reached in well under a second
RECOVERY = 8.0  # s: the first open after the replug is at most 4 s of backoff away
STOP = 2.0
STATION = StationConfig.model_validate({"station": {"id": "vanish"}})
BY_ID = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"


def balance_config(port: Path) -> tuple[SerialBus, Instrument]:
    bus = SerialBus.model_validate(
        {"id": "usb-balance", "kind": "serial", "port": str(port), "timeout": BALANCE_TIMEOUT}
    )
    instrument = Instrument.model_validate(
        {
            "id": "balance",
            "bus": bus.id,
            "driver": "mtsics",
            "poll_interval": BALANCE_INTERVAL,
            "channel": [{"id": "mass", "quantity": "mass", "unit": "g", "resolution": 0.01}],
        }
    )
    return bus, instrument


def meter_config(port: int) -> tuple[ModbusTcpBus, Instrument]:
    bus = ModbusTcpBus.model_validate(
        {
            "id": "tcp-meter",
            "kind": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout": METER_TIMEOUT,
        }
    )
    instrument = Instrument.model_validate(
        {
            "id": "meter",
            "bus": bus.id,
            "driver": "modbus",
            "register_map": "sdm630",
            "poll_interval": METER_INTERVAL,
            "channel": [
                {"id": "f", "source": "frequency", "quantity": "frequency", "unit": "Hz",
                 "resolution": 0.01},
            ],
        }
    )  # fmt: skip
    return bus, instrument


class Sink:
    """Stands where the pipeline stands: keeps every `Acquired` submitted."""

    def __init__(self) -> None:
        self.items: list[Acquired] = []

    async def submit(self, items: Sequence[Acquired]) -> None:
        self.items.extend(items)


class Workers:
    """Runs bus workers as the daemon does, keeping every link each one opened."""

    def __init__(self) -> None:
        self.health: dict[str, InstrumentHealth] = {}
        self.links: dict[str, list[Link]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, bus: SerialBus | ModbusTcpBus, instrument: Instrument, sink: Sink) -> None:
        opener = link_opener(bus)
        opened = self.links.setdefault(bus.id, [])

        async def open_link() -> Link:
            link = await opener()
            opened.append(link)
            return link

        worker = BusWorker(
            bus.id,
            [(instrument, channel_specs(STATION, instrument))],
            open_link=open_link,
            make_driver=lambda config, link: make_driver(config, link, Path()),
            submit=sink.submit,
            health=self.health,
        )
        self._tasks.append(asyncio.create_task(worker.run(), name=f"bus {bus.id}"))

    def check_running(self) -> None:
        """Fail if a worker ended: a worker never returns, so whatever ended it is a bug."""
        for task in self._tasks:
            if task.done():
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc  # as it is, so that the failure names the escaped exception
                pytest.fail(f"{task.get_name()} ended: {task}")

    async def until(self, condition: Callable[[], bool], what: str, *, timeout: float) -> None:
        """Wait for `condition`; fail naming `what` after `timeout` s or if a worker ended."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self.check_running()
                    await asyncio.sleep(0.005)
        except TimeoutError:
            health = {key: value.snapshot() for key, value in self.health.items()}
            pytest.fail(f"not within {timeout} s: {what}; health: {health}")
        self.check_running()

    async def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel every worker and wait (bounded) until each has ended; return them."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            # A worker needs at most one reply timeout to close its link.
            _done, pending = await asyncio.wait(tasks, timeout=STOP)
            assert not pending, f"workers ignored their cancellation: {pending}"
        return tasks

    async def stop(self) -> None:
        """Cancel every worker; each must end at once, having closed every link it opened."""
        for task in await self.cancel():
            assert task.cancelled(), f"{task.get_name()} crashed: {task}"
        assert [link for links in self.links.values() for link in links if not _closed(link)] == []


def _float32(value: float) -> float:
    """What an SDM630 float32 register holds for `value`."""
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


def _closed(link: Link) -> bool:
    assert isinstance(link, SerialStream | ModbusTcpLink)
    return link.closed


@pytest.fixture
def transitions(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """The state changes the scheduler logged for an instrument, in order."""
    caplog.set_level(logging.INFO, logger="gateway.scheduler")

    def logged(instrument: str) -> list[str]:
        pattern = re.compile(rf"instrument {re.escape(instrument)} (degraded|down|recovered)\b")
        return [
            match.group(1)
            for record in caplog.records
            if record.name == "gateway.scheduler" and (match := pattern.match(record.getMessage()))
        ]

    return logged


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    workers = Workers()
    yield workers
    await workers.cancel()  # a no-op when the test stopped them itself


async def test_unplugged_adapter_is_reopened_when_plugged_back_and_other_bus_keeps_polling(
    tmp_path: Path, workers: Workers, transitions: Callable[[str], list[str]]
) -> None:
    by_id = tmp_path / BY_ID
    loop = asyncio.get_running_loop()
    balance_sink, meter_sink = Sink(), Sink()
    async with Sdm630Simulator() as meter_sim:
        meter_sim.set("frequency", 49.95)
        async with MtSicsSimulator(weight_g=1000.0) as first:
            by_id.symlink_to(first.port)
            workers.start(*balance_config(by_id), balance_sink)
            workers.start(*meter_config(meter_sim.port), meter_sink)
            balance, meter = workers.health["balance"], workers.health["meter"]
            await workers.until(
                lambda: balance.state == meter.state == "ok" and len(balance_sink.items) >= 3,
                "both instruments ok, the balance read three times",
                timeout=SETTLE,
            )
            # Pulled out: udev removes the by-id name as the tty goes away (the pty closes
            # as this block ends, with no await in between).
            by_id.unlink()
        unplugged_at, meter_good = loop.time(), meter.good
        served_before = len(first.served)

        await workers.until(lambda: balance.state == "down", "balance down", timeout=SETTLE)
        assert set(balance.errors) <= {"transport", "timeout"}
        # Reopening fails on the missing path, which the last error names.
        assert balance.last_error is not None
        assert balance.last_error.startswith("transport: ")
        assert str(by_id) in balance.last_error
        assert balance.consecutive_failures >= DOWN_AFTER
        [broken] = workers.links["usb-balance"]
        assert _closed(broken)

        await asyncio.sleep(max(0.0, unplugged_at + OUTAGE - loop.time()))
        elapsed = loop.time() - unplugged_at
        assert meter.good - meter_good >= 0.8 * elapsed / METER_INTERVAL
        assert meter.state == "ok"
        assert not meter.errors
        # No open succeeded while the adapter was out, and none was hammered: opens are
        # 0.5, 1, 2 s apart, so at most the failed poll and four opens failed.
        assert workers.links["usb-balance"] == [broken]
        assert balance.errors.total() <= 1 + 4
        assert len(first.served) == served_before

        async with MtSicsSimulator(weight_g=432.1) as second:
            resumed_from = len(balance_sink.items)
            by_id.symlink_to(second.port)  # plugged back: a new tty behind the same name
            await workers.until(
                lambda: (
                    balance.state == "ok"
                    and len(balance_sink.items) >= resumed_from + 3
                    and meter.state == "ok"
                ),
                "the balance reopened and read from the new adapter",
                timeout=RECOVERY,
            )
            # Reopened by the worker itself, once: a second link on the same path.
            reopened = workers.links["usb-balance"]
            assert [_closed(link) for link in reopened] == [True, False]
            assert isinstance(reopened[1], SerialStream)
            assert reopened[1].name == str(by_id)
            await workers.stop()

    indications = [item.indication for item in balance_sink.items]
    assert set(indications[:resumed_from]) == {1000.0}
    assert set(indications[resumed_from:]) == {432.1}
    assert (
        indications[resumed_from:]
        == [value for value, _unit, _stable in second.served][: len(indications) - resumed_from]
    )
    assert balance.consecutive_failures == 0
    assert transitions("balance") == ["degraded", "down", "recovered"]
    assert transitions("meter") == []
    assert not meter.errors
    assert {item.indication for item in meter_sink.items} == {_float32(49.95)}
