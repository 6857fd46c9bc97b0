# SPDX-License-Identifier: Apache-2.0
"""``metrogate demo``: the real daemon against bundled simulators, with live readings shown.

It starts one simulator per bus of the demo station file (an MT-SICS balance on a pty pair for
each serial bus, an SDM630 Modbus TCP server for each Modbus bus), an embedded MQTT broker
(amqtt) unless ``--broker`` names one, the station daemon on ``DATA_DIR/metrogate.db``, and
a subscriber that prints every reading as it arrives upstream. The station file is used as
written except for what only exists at run time: the pty path, the simulator's TCP port,
the broker's address and the data directory.
"""

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from drivers.sim.dlt645 import Dlt645Simulator
from drivers.sim.modbus_line import ModbusLineSimulator
from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sbi import SbiSimulator
from drivers.sim.sdm630 import Sdm630Simulator
from drivers.sim.visa import sim_library
from gateway.config import (
    ModbusRtuBus,
    ModbusTcpBus,
    SerialBus,
    StationConfig,
    UpstreamSection,
    VisaBus,
    load_config,
)
from gateway.daemon import Station, install_signal_handlers
from gateway.errors import ConfigError
from gateway.forward import status_topic
from gateway.store import Store

log = logging.getLogger(__name__)


def bundled_config() -> Path:
    """The demo station file: ``config/demo.toml`` of a checkout, or the installed copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "config" / "demo.toml", here / "_config" / "demo.toml"):
        if candidate.is_file():
            return candidate
    msg = "config/demo.toml not found; pass --config"
    raise FileNotFoundError(msg)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def embedded_broker() -> AsyncIterator[str]:
    """Run an amqtt broker on a free loopback port; yield its mqtt:// URL."""
    from amqtt.broker import Broker  # noqa: PLC0415 - only the demo needs it

    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()


def _line(reading: dict[str, Any]) -> str:
    uncertainty = "" if reading["U"] is None else f" ± {reading['U']:.2g} (k={reading['k']:g})"
    flags = ",".join(reading["flags"]) or "traceable"
    name = f"{reading['instrument']}/{reading['channel']}"
    return (
        f"{reading['time'][11:23]}  seq {reading['seq']:>6}  {name:<22} "
        f"{reading['value']:>12.8g} {reading['unit']:<4}{uncertainty:<22} "
        f"{reading['certificate'] or '-':<14} {flags}"
    )


class _Watcher:
    """An upstream subscriber that prints readings as they arrive and counts them."""

    def __init__(self, upstream: UpstreamSection, station: str) -> None:
        self._upstream = upstream
        self._station = station
        self.seen: set[int] = set()
        self.subscribed = asyncio.Event()
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        upstream, station = self._upstream, self._station
        protocol = (
            aiomqtt.ProtocolVersion.V5
            if upstream.protocol == 5  # noqa: PLR2004
            else aiomqtt.ProtocolVersion.V311
        )
        while True:
            try:
                async with aiomqtt.Client(
                    upstream.host,
                    upstream.port,
                    protocol=protocol,
                    identifier=f"metrogate-demo-watch-{station}",
                ) as client:
                    await client.subscribe(f"{upstream.topic_prefix}/{station}/+/readings", qos=1)
                    await client.subscribe(status_topic(upstream.topic_prefix, station), qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        await self._show(orjson.loads(bytes(message.payload)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)

    async def _show(self, payload: Any) -> None:  # noqa: ANN401 - decoded JSON
        if isinstance(payload, dict):
            sys.stdout.write(f"status: {payload.get('state')}\n")
            return
        for reading in payload:
            if reading["seq"] not in self.seen:
                self.seen.add(reading["seq"])
                sys.stdout.write(_line(reading) + "\n")
        sys.stdout.flush()
        async with self._progress:
            self._progress.notify_all()

    async def wait_for(self, seq: int) -> None:
        """Return once the reading with `seq` has been received."""
        async with self._progress:
            await self._progress.wait_for(lambda: seq in self.seen)


def _demo_config(
    config: StationConfig,
    *,
    data_dir: Path,
    broker: str,
    protocol: int,
    overrides: dict[str, dict[str, Any]],
) -> StationConfig:
    return config.model_copy(
        update={
            "station": config.station.model_copy(update={"data_dir": data_dir}),
            "store": config.store.model_copy(
                update={"url": f"sqlite:///{data_dir / 'metrogate.db'}"}
            ),
            "upstream": config.upstream.model_copy(
                update={"broker": broker, "protocol": protocol}
            ),
            "bus": [bus.model_copy(update=overrides.get(bus.id, {})) for bus in config.bus],
        }
    )


def prepare(config_path: str | None, data_dir: Path) -> tuple[Path, StationConfig, Path] | str:
    """Load the demo station file and make the data directory; a message on failure."""
    path = Path(config_path) if config_path else bundled_config()
    try:
        config = load_config(path)
    except ConfigError as exc:
        return str(exc)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return path, config, data_dir


#: What the demo's simulated DL/T 645 meters show, by data item.
_DLT645_VALUES = {
    "combined_active_energy": 1206.42,
    "import_active_energy": 1206.42,
    "export_active_energy": 3.17,
    "voltage_a": 230.1,
    "voltage_b": 229.8,
    "voltage_c": 230.4,
    "current_a": 5.123,
    "current_b": 4.987,
    "current_c": 5.046,
    "total_active_power": 3.4521,
    "power_factor": 0.951,
    "frequency": 50.01,
}


#: What the demo's simulated Modbus RTU devices show, by register map and entry.
_RTU_VALUES = {
    "sdm630": {"voltage_l1": 229.7, "frequency": 49.99, "import_energy": 5321.4},
    "mfe600h": {
        "flow": 12.5,
        "velocity": 1.12,
        "totalizer_int": 123456,
        "totalizer_frac": 0.375,
        "flow_unit_code": 5,
        "totalizer_unit_code": 1,
    },
    "tuf2000m": {"flow": 3.25, "velocity": 0.82, "positive_int": 4521, "positive_frac": 0.5},
}


async def _start_simulators(
    config: StationConfig, stack: AsyncExitStack
) -> dict[str, dict[str, Any]]:
    """Start one simulator per bus; return, per bus id, the settings that point at it."""
    overrides: dict[str, dict[str, Any]] = {}
    for number, bus in enumerate(config.bus):
        members = [i for i in config.instrument if i.bus == bus.id]
        drivers = {i.driver for i in members}
        match bus:
            case SerialBus() if drivers == {"mtsics"}:
                balance = MtSicsSimulator(
                    weight_g=1000.0 + 250.0 * number, noise_g=0.03, seed=number
                )
                await stack.enter_async_context(balance)
                overrides[bus.id] = {"port": balance.port}
                _say(f"MT-SICS balance on {balance.port}", bus.id)
            case SerialBus() if drivers == {"sbi"}:
                sbi = SbiSimulator(weight_g=500.0, noise_g=0.02, seed=number)
                await stack.enter_async_context(sbi)
                overrides[bus.id] = {"port": sbi.port}
                _say(f"Sartorius SBI balance on {sbi.port}", bus.id)
            case SerialBus() if drivers == {"dlt645"}:
                meters = {
                    str(i.address): {
                        source: _DLT645_VALUES[source]
                        for source in {c.source or "" for c in i.channel}
                    }
                    for i in members
                }
                line = Dlt645Simulator(meters)
                await stack.enter_async_context(line)
                overrides[bus.id] = {"port": line.port}
                _say(f"{len(meters)} DL/T 645 meters on one line, {line.port}", bus.id)
            case ModbusTcpBus():
                meter = Sdm630Simulator(host="127.0.0.1", port=0, animate=True)
                await stack.enter_async_context(meter)
                overrides[bus.id] = {"host": "127.0.0.1", "port": meter.port}
                _say(f"SDM630 Modbus TCP server on 127.0.0.1:{meter.port}", bus.id)
            case ModbusRtuBus():
                devices = {i.unit_id: str(i.register_map) for i in members}
                rtu = ModbusLineSimulator(devices)
                await stack.enter_async_context(rtu)
                for unit_id, register_map in devices.items():
                    for name, value in _RTU_VALUES.get(register_map, {}).items():
                        rtu.set(unit_id, name, value)
                overrides[bus.id] = {"port": rtu.port}
                _say(f"Modbus RTU line with {len(devices)} devices on {rtu.port}", bus.id)
            case VisaBus():
                overrides[bus.id] = {"library": sim_library()}
                _say(f"pyvisa-sim instrument {bus.resource}", bus.id)
            case _:
                msg = f"the demo has no simulator for bus {bus.id} ({', '.join(drivers)})"
                raise ValueError(msg)
    return overrides


def _say(what: str, bus_id: str) -> None:
    sys.stdout.write(f"  {what} (bus {bus_id})\n")


async def run_demo(
    *,
    duration: float | None,
    broker: str | None,
    path: Path,
    config: StationConfig,
    data_dir: Path,
) -> int:
    """Run the demo; return the daemon's exit status."""
    async with AsyncExitStack() as stack:
        sys.stdout.write(
            f"metrogate demo: station {config.station.id}, store {data_dir / 'metrogate.db'}\n"
        )
        overrides = await _start_simulators(config, stack)
        protocol = config.upstream.protocol
        if broker is None:
            broker = await stack.enter_async_context(embedded_broker())
            protocol = 311  # amqtt speaks MQTT 3.1.1
        sys.stdout.write(f"  MQTT broker {broker}\n")
        config = _demo_config(
            config,
            data_dir=data_dir,
            broker=broker,
            protocol=protocol,
            overrides=overrides,
        )
        sys.stdout.write("Readings as an upstream subscriber receives them (Ctrl-C stops):\n")
        watcher = _Watcher(config.upstream, config.station.id)
        watch_task = asyncio.create_task(watcher.run())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await watcher.subscribed.wait()
        stop = asyncio.Event()
        install_signal_handlers(stop, lambda: None)
        station = Station(config, base_dir=path.parent)
        station_task = asyncio.create_task(station.run(stop))
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await asyncio.shield(station_task)
            stop.set()
        status = await station_task
        last = station.pipeline.last_seq if station.pipeline else 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await watcher.wait_for(last)
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        received = len(watcher.seen)
    _summary(config, received)
    return status


def _summary(config: StationConfig, received: int) -> None:
    store = Store.open(config.store_url, station=config.station.id, create=False)
    try:
        stored, forwarded = store.count(), store.forwarded_seq()
        head, _ = store.head()
    finally:
        store.close()
    sys.stdout.write(
        f"\nstored {stored} readings (seq up to {head}); broker acknowledged up to seq "
        f"{forwarded}; subscriber received {received} this run.\n"
        f"Inspect them: metrogate readings --db sqlite:///{config.store_url[10:]}\n"
    )
