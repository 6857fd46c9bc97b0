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

from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sdm630 import Sdm630Simulator
from gateway.config import ModbusTcpBus, SerialBus, StationConfig, UpstreamSection, load_config
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
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()


def _line(reading: dict[str, Any]) -> str:
    uncertainty = ("" if reading["U"] is None
                   else f" ± {reading['U']:.2g} (k={reading['k']:g})")
    flags = ",".join(reading["flags"]) or "traceable"
    name = f"{reading['instrument']}/{reading['channel']}"
    return (f"{reading['time'][11:23]}  seq {reading['seq']:>6}  {name:<22} "
            f"{reading['value']:>12.6f} {reading['unit']:<4}{uncertainty:<22} "
            f"{reading['certificate'] or '-':<14} {flags}")


async def _watch(upstream: UpstreamSection, station: str, seen: set[int],
                 subscribed: asyncio.Event) -> None:
    """Print readings as an upstream subscriber receives them."""
    topic = f"{upstream.topic_prefix}/{station}/+/readings"
    protocol = (aiomqtt.ProtocolVersion.V5 if upstream.protocol == 5  # noqa: PLR2004
                else aiomqtt.ProtocolVersion.V311)
    while True:
        try:
            async with aiomqtt.Client(upstream.host, upstream.port, protocol=protocol,
                                      identifier=f"metrogate-demo-watch-{station}") as client:
                await client.subscribe(topic, qos=1)
                await client.subscribe(status_topic(upstream.topic_prefix, station), qos=1)
                subscribed.set()
                async for message in client.messages:
                    payload = orjson.loads(bytes(message.payload))  # type: ignore[arg-type]
                    if isinstance(payload, dict):
                        sys.stdout.write(f"status: {payload.get('state')}\n")
                        continue
                    for reading in payload:
                        if reading["seq"] not in seen:
                            seen.add(reading["seq"])
                            sys.stdout.write(_line(reading) + "\n")
                    sys.stdout.flush()
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


def _demo_config(config: StationConfig, *, data_dir: Path, broker: str, protocol: int,
                 serial_ports: dict[str, str], modbus_ports: dict[str, int]) -> StationConfig:
    buses: list[SerialBus | ModbusTcpBus] = []
    for bus in config.bus:
        if isinstance(bus, SerialBus):
            buses.append(bus.model_copy(update={"port": serial_ports[bus.id]}))
        else:
            buses.append(bus.model_copy(update={"host": "127.0.0.1",
                                                "port": modbus_ports[bus.id]}))
    return config.model_copy(update={
        "station": config.station.model_copy(update={"data_dir": data_dir}),
        "store": config.store.model_copy(update={"url": f"sqlite:///{data_dir / 'metrogate.db'}"}),
        "upstream": config.upstream.model_copy(update={"broker": broker, "protocol": protocol}),
        "bus": buses,
    })


async def run_demo(*, duration: float | None, broker: str | None, data_dir: Path,
                   config_path: str | None) -> int:
    """Run the demo; return the daemon's exit status."""
    path = Path(config_path) if config_path else bundled_config()
    try:
        config = load_config(path)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        serial_ports: dict[str, str] = {}
        modbus_ports: dict[str, int] = {}
        for number, bus in enumerate(config.bus):
            if isinstance(bus, SerialBus):
                balance = MtSicsSimulator(weight_g=1000.0 + 250.0 * number, noise_g=0.03,
                                          seed=number)
                serial_ports[bus.id] = (await stack.enter_async_context(balance)).port
            else:
                meter = Sdm630Simulator(host="127.0.0.1", port=0, animate=True)
                modbus_ports[bus.id] = (await stack.enter_async_context(meter)).port
        protocol = config.upstream.protocol
        if broker is None:
            broker = await stack.enter_async_context(embedded_broker())
            protocol = 311  # amqtt speaks MQTT 3.1.1
        config = _demo_config(config, data_dir=data_dir, broker=broker, protocol=protocol,
                              serial_ports=serial_ports, modbus_ports=modbus_ports)
        sys.stdout.write(f"metrogate demo: station {config.station.id}, broker {broker}, "
                         f"store {data_dir / 'metrogate.db'}\n")
        for bus_id, port in serial_ports.items():
            sys.stdout.write(f"  MT-SICS balance simulator on {port} (bus {bus_id})\n")
        for bus_id, tcp_port in modbus_ports.items():
            sys.stdout.write(f"  SDM630 Modbus TCP simulator on 127.0.0.1:{tcp_port} "
                             f"(bus {bus_id})\n")
        sys.stdout.write("Readings as an upstream subscriber receives them "
                         "(Ctrl-C to stop):\n")
        seen: set[int] = set()
        subscribed = asyncio.Event()
        watcher = asyncio.create_task(_watch(config.upstream, config.station.id, seen,
                                             subscribed))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await subscribed.wait()
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
                while last and (max(seen, default=0) < last):
                    await asyncio.sleep(0.05)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    _summary(config, len(seen))
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
