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
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sdm630 import Sdm630Simulator
from drivers.transports.serial import SerialStream
from gateway.config import Instrument, ModbusTcpBus, SerialBus
from gateway.scheduler import DOWN_AFTER
from tests.gateway.buses import Bench, Sink, closed, float32

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


@pytest.fixture
async def workers() -> AsyncIterator[Bench]:
    workers = Bench()
    yield workers
    await workers.stop()  # a no-op when the test stopped them itself


async def test_unplugged_adapter_is_reopened_when_plugged_back_and_other_bus_keeps_polling(
    tmp_path: Path, workers: Bench, transitions: Callable[[str], list[str]]
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
        [broken] = workers.links_by_bus["usb-balance"]
        assert closed(broken)

        await asyncio.sleep(max(0.0, unplugged_at + OUTAGE - loop.time()))
        elapsed = loop.time() - unplugged_at
        assert meter.good - meter_good >= 0.8 * elapsed / METER_INTERVAL
        assert meter.state == "ok"
        assert not meter.errors
        # No open succeeded while the adapter was out, and none was hammered: opens are
        # 0.5, 1, 2 s apart, so at most the failed poll and four opens failed.
        assert workers.links_by_bus["usb-balance"] == [broken]
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
            reopened = workers.links_by_bus["usb-balance"]
            assert [closed(link) for link in reopened] == [True, False]
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
    assert {item.indication for item in meter_sink.items} == {float32(49.95)}
