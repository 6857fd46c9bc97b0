# SPDX-License-Identifier: Apache-2.0
"""From the station file to live objects: links for buses, drivers for instruments.

This is the one place that knows which driver class serves which ``driver = "…"`` name and
which transport serves which bus kind; adding a family means adding a line here.
"""

import math
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal, cast

from calibration import (
    CalibrationError,
    Certificate,
    Component,
    MeasurementResult,
    Mpe,
    VerificationCertificate,
    balance_mpe,
    calibrated_ratio,
    correct,
    energy_meter_mpe,
    phase_error_factor,
    transformer_mpe,
    verify,
    within,
)
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
    BalanceRule,
    CertificateConfig,
    Channel,
    EnergyMeterRule,
    Instrument,
    LinearRule,
    ModbusRtuBus,
    MpeRule,
    SerialBus,
    StationConfig,
    TransformerConfig,
    TransformerRule,
    VisaBus,
    phase_limit,
)
from gateway.config import ModbusTcpBus as ModbusTcpBusConfig
from gateway.pipeline import ChannelChain, ChannelModel, ChannelSpec, Factor

__all__ = [
    "Link",
    "RegisterMapError",
    "certificate_model",
    "channel_specs",
    "link_opener",
    "make_driver",
    "mpe_from_rule",
    "mpe_model",
    "resolve_register_map",
    "transformer_factor",
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


def certificate_model(cert: CertificateConfig) -> Certificate | VerificationCertificate:
    """Build the model of a configured certificate: points to correct with, or an MPE.

    Raises:
        CalibrationError: the certificate's numbers do not make a model (the message says
            which certificate and why).
    """
    if cert.kind == "verification":
        return VerificationCertificate(
            certificate_id=cert.id,
            unit=cert.unit,
            issuer=cert.issuer,
            valid_from=cert.valid_from_utc,
            valid_until=cert.valid_until_utc,
            mpe=within(mpe_model(cert), cert.range),
            passed=bool(cert.passed),
        )
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


def mpe_model(cert: CertificateConfig) -> Mpe:
    """The MPE rule a verification certificate states, in its unit.

    Raises:
        CalibrationError: no rule, or a class the tables do not know.
    """
    return mpe_from_rule(
        cert.mpe, certificate_id=cert.id, unit=cert.unit, reference=cert.procedure
    )


def mpe_from_rule(
    rule: MpeRule | float | None, *, certificate_id: str, unit: str, reference: str = ""
) -> Mpe:
    """The `Mpe` of a verification's ``mpe`` value: a rule table or a constant in `unit`.

    The one place the station file's and the register's ``mpe`` become a model, so that a
    certificate bounds a channel the same way wherever it is kept.

    Args:
        rule: the parsed ``mpe`` value (`gateway.config.MpeValue`), or None.
        certificate_id: the certificate's number, for descriptions and errors.
        unit: the certificate's unit (that of a constant MPE).
        reference: the procedure followed (a constant's or linear rule's reference).

    Raises:
        CalibrationError: no rule, a constant that is not finite and > 0, or a class the
            tables do not know.
    """
    match rule:
        case EnergyMeterRule():
            return energy_meter_mpe(
                rule.accuracy_class,
                current=rule.current,
                power_factor=rule.power_factor,
                connection=rule.connection,
            )
        case BalanceRule():
            return balance_mpe(
                rule.accuracy_class,
                scale_interval=rule.e,
                capacity=rule.max,
                in_service=rule.in_service,
            )
        case TransformerRule():
            return transformer_mpe(rule.kind, rule.accuracy_class, load=rule.load)
        case LinearRule():
            return Mpe(
                description=f"stated MPE of {certificate_id}",
                absolute=rule.absolute,
                percent_of_reading=rule.percent_of_reading,
                percent_of_range=rule.percent_of_range,
                full_scale=rule.full_scale,
                reference=reference,
            )
        case None:
            raise CalibrationError(f"verification certificate {certificate_id!r} states no MPE")
        case _:
            if not (math.isfinite(rule) and rule > 0.0):
                raise CalibrationError(
                    f"verification certificate {certificate_id!r}: a constant MPE must be "
                    f"finite and > 0, got {rule!r}"
                )
            return Mpe(
                description=f"MPE {rule:g} {unit} of {certificate_id}",
                absolute=float(rule),
                reference=reference,
            )


def transformer_factor(
    transformer: TransformerConfig,
    name: str,
    certificates: Mapping[str, CertificateConfig],
    register: Mapping[str, Certificate | VerificationCertificate] | None = None,
) -> tuple[Factor, Certificate | VerificationCertificate | None]:
    """The ratio of a CT (`name` "ct") or VT ("vt") as a factor of the channel's product.

    With `class`: K_n with the class's ratio-error MPE (rectangular; 检定, no correction).
    With a verification certificate: K_n with that certificate's MPE. With a calibration
    certificate in % (x = load in % of rated, ratio error ε): K = K_n/(1 + ε/100) at
    `load`, with the certificate's u(ε) (`calibration.calibrated_ratio`). The certificate is
    the station file's (`certificates`), else the register's model of it (`register`, as
    `gateway.register.resolve_channel_chains` loaded it); the file's wins.

    Returns:
        The factor and the model of the certificate it rests on (None with a class alone,
        or with a class and a certificate known neither to the file nor to the register).

    Raises:
        CalibrationError: no class and the certificate is in neither place, or a calibration
            certificate that does not cover `load`.
    """
    quantity = f"{name.upper()} ratio"
    ratio = transformer.rated_ratio
    number = transformer.certificate
    named = certificates.get(number) if number else None
    model = certificate_model(named) if named else (register or {}).get(number or "")
    certificate_id = number or f"{name.upper()} class"
    if transformer.accuracy_class is not None:
        kind: Literal["current", "voltage"] = "current" if name == "ct" else "voltage"
        mpe = transformer_mpe(kind, transformer.accuracy_class, load=transformer.load)
        result = verify(ratio, mpe, unit="1", certificate_id=certificate_id, quantity=quantity)
    elif model is None:
        raise CalibrationError(
            f"{quantity}: no class, and certificate {number} is neither in the station file "
            "nor in the register"
        )
    elif isinstance(model, VerificationCertificate):
        # The file's rule as stated (not narrowed to a range: a CT's range is not its ratio).
        mpe = mpe_model(named) if named else model.mpe
        result = verify(
            ratio, mpe, unit="1", certificate_id=model.certificate_id, quantity=quantity
        )
    else:
        result = _calibrated_ratio(ratio, transformer.load, model, quantity)
    ids = (number,) if number else ()
    return Factor(result=result, certificate_ids=ids), model


def _calibrated_ratio(
    ratio: float, load: float, model: Certificate, quantity: str
) -> MeasurementResult:
    """K at `load` (I/In) from a certificate of ratio errors in % at loads in % of rated."""
    at_load = correct(100.0 * load, model, resolution=0.0)
    number = model.certificate_id
    if not bool(at_load.in_range):
        low, high = model.calibrated_range
        raise CalibrationError(
            f"{quantity}: certificate {number} covers loads {low:g} to {high:g} % of rated, "
            f"not {100.0 * load:g} %"
        )
    ratio_error = -float(at_load.value - 100.0 * load)  # ε = E = -C
    return calibrated_ratio(
        ratio,
        ratio_error_percent=ratio_error,
        components=[
            Component(
                name=f"certificate {number}",
                standard_uncertainty=float(at_load.standard_uncertainty),
            )
        ],
        quantity=quantity,
        certificate_id=number,
    )


def channel_model(
    config: StationConfig, channel: Channel, chain: ChannelChain | None
) -> ChannelModel:
    """What corrects `channel`: its certificate (the file's, else the register's) and factors.

    A CT's or VT's certificate is likewise the file's, else the register's (carried by the
    chain, `ChannelChain.transformer_certificates`). A transformer without class whose
    certificate is in neither place leaves the channel without a certificate (its readings
    are flagged ``NO_CERTIFICATE``; the register's loader logged why at start).

    Raises:
        CalibrationError: a certificate or transformer cannot be built (check-config reports
            the same problems for the file's, so a validated file does not raise).
    """
    certificates = {cert.id: cert for cert in config.certificate}
    named = certificates.get(channel.certificate) if channel.certificate else None
    certificate: Certificate | VerificationCertificate | None = None
    if named is not None:
        certificate = certificate_model(named)
    elif chain is not None:
        certificate = chain.certificate
    register = (
        {model.certificate_id: model for model in chain.transformer_certificates}
        if chain is not None
        else {}
    )
    factors: list[Factor] = []
    dated: list[Certificate | VerificationCertificate] = []
    for name in ("ct", "vt"):
        transformer: TransformerConfig | None = getattr(channel, name)
        if transformer is None:
            continue
        number = transformer.certificate
        if (
            transformer.accuracy_class is None
            and number not in certificates
            and number not in register
        ):
            return ChannelModel(certificate=None)
        factor, model = transformer_factor(transformer, name, certificates, register)
        factors.append(factor)
        if model is not None:
            dated.append(model)
    phase = phase_factor(channel, certificates)
    if phase is not None:
        factors.append(phase)
    return ChannelModel(certificate=certificate, factors=tuple(factors), dated=tuple(dated))


def phase_factor(channel: Channel, certificates: Mapping[str, CertificateConfig]) -> Factor | None:
    """The factor 1 + (δ_I - δ_U)·tan φ at the channel's `power_factor`, or None at cos φ = 1.

    δ_I and δ_U lie within the CT's and VT's phase displacement limits (rectangular; a
    missing transformer contributes nothing): `calibration.phase_error_factor`.

    Raises:
        CalibrationError: a transformer states no phase displacement limit (check-config
            reports it for the file).
    """
    phase = channel.phase
    if phase is None or phase[0] == 1.0 or (channel.ct is None and channel.vt is None):
        return None
    cos_phi, lagging = phase
    limits: dict[str, float] = {}
    for name in ("ct", "vt"):
        transformer: TransformerConfig | None = getattr(channel, name)
        if transformer is None:
            limits[name] = 0.0
            continue
        limit = phase_limit(transformer, name, certificates)
        if limit is None:
            raise CalibrationError(
                f"power_factor {channel.power_factor}: the {name.upper()} states no phase "
                "displacement limit (give phase_mpe or a class that states one)"
            )
        limits[name] = limit
    result = phase_error_factor(
        cos_phi,
        current_phase_mpe_min=limits["ct"],
        voltage_phase_mpe_min=limits["vt"],
        inductive=lagging,
    )
    return Factor(result=result)


def channel_specs(
    config: StationConfig,
    instrument: Instrument,
    chains: Mapping[str, ChannelChain] | None = None,
) -> dict[str, list[ChannelSpec]]:
    """Map each source name of `instrument` to the channels fed from it.

    `chains` holds the calibration chains resolved from the register, by
    ``instrument/channel``; a channel missing there has its certificate alone as its chain.
    A channel whose certificate is not in the station file takes the register's model
    carried by its chain (`ChannelChain.certificate`); without one it has no certificate.
    """
    specs: dict[str, list[ChannelSpec]] = {}
    for channel in instrument.channel:
        chain = (chains or {}).get(f"{instrument.id}/{channel.id}")
        model = channel_model(config, channel, chain)
        spec = ChannelSpec(
            instrument=instrument.id,
            channel=channel.id,
            quantity=channel.quantity,
            unit=channel.unit,
            resolution=channel.resolution,
            certificate_id=channel.certificate,
            certificate=model.certificate,
            coverage_factor=channel.coverage_factor,
            chain=chain,
            factors=model.factors,
            dated=model.dated,
        )
        specs.setdefault(_source(instrument, channel.source), []).append(spec)
    return specs
