# SPDX-License-Identifier: Apache-2.0
"""From the station file to live objects: links for buses, drivers for instruments.

This is the one place that knows which driver class serves which ``driver = "…"`` name and
which transport serves which bus kind; adding a family means adding a line here.
"""

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import cast

from calibration import Certificate
from drivers.balances.mtsics import MtSicsBalance
from drivers.balances.sbi import SbiBalance
from drivers.meters.dlt645 import Dlt645Meter
from drivers.modbus.instrument import ModbusInstrument
from drivers.modbus.registermap import RegisterMap, RegisterMapError, load_builtin_map, load_map
from drivers.reading import Instrument as Driver
from drivers.scpi.dmm import ScpiDmm
from drivers.scpi.power_analyzer import PowerAnalyzer
from drivers.transport import ByteStream, MessageLink, RegisterBus
from drivers.transports.modbus import open_modbus_rtu, open_modbus_tcp
from drivers.transports.serial import open_serial
from drivers.transports.visa import open_visa
from gateway.config import (
    DRIVER_DEFAULT_SOURCE,
    AnyBus,
    CertificateConfig,
    Instrument,
    ModbusRtuBus,
    SerialBus,
    StationConfig,
    VisaBus,
)
from gateway.config import ModbusTcpBus as ModbusTcpBusConfig
from gateway.pipeline import ChannelChain, ChannelSpec

__all__ = [
    "Link",
    "RegisterMapError",
    "certificate_model",
    "channel_specs",
    "link_opener",
    "make_driver",
    "resolve_register_map",
]

Link = ByteStream | RegisterBus | MessageLink


def resolve_register_map(name: str, base_dir: Path) -> RegisterMap:
    """Find a register map by name.

    `name` is a path ending in ``.toml`` (relative to the config directory), the name of a
    ``NAME.toml`` file dropped into the config directory, or a map shipped with metrogate.

    Raises:
        RegisterMapError: not found or malformed.
    """
    candidate = base_dir / name
    if name.endswith(".toml"):
        return load_map(candidate)
    dropped = base_dir / f"{name}.toml"
    if dropped.is_file():
        return load_map(dropped)
    return load_builtin_map(name)


def link_opener(bus: AnyBus) -> Callable[[], Awaitable[Link]]:
    """Return a coroutine function that opens (or re-opens) the link of `bus`."""

    async def open_link() -> Link:
        match bus:
            case SerialBus():
                return await open_serial(
                    bus.port,
                    baudrate=bus.baudrate,
                    bytesize=bus.bytesize,
                    parity=bus.parity,
                    stopbits=bus.stopbits,
                    xonxoff=bus.xonxoff,
                    timeout=bus.timeout,
                )
            case ModbusTcpBusConfig():
                return await open_modbus_tcp(bus.host, bus.port, timeout=bus.timeout)
            case ModbusRtuBus():
                return await open_modbus_rtu(
                    bus.port,
                    baudrate=bus.baudrate,
                    bytesize=bus.bytesize,
                    parity=bus.parity,
                    stopbits=bus.stopbits,
                    timeout=bus.timeout,
                )
            case VisaBus():
                return await open_visa(
                    bus.resource,
                    library=bus.library,
                    timeout=bus.timeout,
                    read_termination=bus.read_termination,
                    write_termination=bus.write_termination,
                )

    return open_link


def make_driver(instrument: Instrument, link: Link, base_dir: Path) -> Driver:
    """Create the driver of `instrument` on an open `link` of the right kind.

    The station file was validated, so the link is of the kind the driver needs
    (`gateway.config.DRIVER_BUS_KINDS`); the casts below only tell the type checker so.
    """
    sources = list(dict.fromkeys(_source(instrument, c.source) for c in instrument.channel))
    match instrument.driver:
        case "mtsics":
            return MtSicsBalance(cast("ByteStream", link), command=instrument.command)
        case "sbi":
            unit = instrument.channel[0].unit
            return SbiBalance(cast("ByteStream", link), unit=unit, mode=instrument.mode)
        case "dlt645":
            return Dlt645Meter(
                cast("ByteStream", link), address=str(instrument.address), sources=sources
            )
        case "modbus":
            register_map = resolve_register_map(str(instrument.register_map), base_dir)
            return ModbusInstrument(
                cast("RegisterBus", link),
                register_map,
                device_id=instrument.unit_id,
                sources=sources,
            )
        case "scpi-dmm":
            return ScpiDmm(
                cast("MessageLink", link),
                function=instrument.function,
                range=instrument.range,
                nplc=instrument.nplc,
            )
        case "power-analyzer":
            return PowerAnalyzer(cast("MessageLink", link), element=instrument.element)


def _source(instrument: Instrument, source: str | None) -> str:
    return source or DRIVER_DEFAULT_SOURCE[instrument.driver]


def certificate_model(cert: CertificateConfig) -> Certificate:
    """Build the calibration model of a configured certificate."""
    return Certificate.from_points(
        certificate_id=cert.id,
        unit=cert.unit,
        issuer=cert.issuer,
        kind=cert.kind,
        valid_from=cert.valid_from_utc,
        valid_until=cert.valid_until_utc,
        abscissa=cert.abscissa,
        convention=cert.convention,
        points=[(point.x, point.c, point.U, point.k) for point in cert.points],
        point_correlation=cert.point_correlation,
        interpolation_u=cert.interpolation_u,
    )


def channel_specs(
    config: StationConfig,
    instrument: Instrument,
    chains: Mapping[str, ChannelChain] | None = None,
) -> dict[str, list[ChannelSpec]]:
    """Map each source name of `instrument` to the channels fed from it.

    `chains` holds the calibration chains resolved from the register, by
    ``instrument/channel``; a channel missing there has its certificate alone as its chain.
    """
    models = {cert.id: certificate_model(cert) for cert in config.certificate}
    specs: dict[str, list[ChannelSpec]] = {}
    for channel in instrument.channel:
        spec = ChannelSpec(
            instrument=instrument.id,
            channel=channel.id,
            quantity=channel.quantity,
            unit=channel.unit,
            resolution=channel.resolution,
            certificate_id=channel.certificate,
            certificate=models.get(channel.certificate) if channel.certificate else None,
            coverage_factor=channel.coverage_factor,
            chain=(chains or {}).get(f"{instrument.id}/{channel.id}"),
        )
        specs.setdefault(_source(instrument, channel.source), []).append(spec)
    return specs
