# SPDX-License-Identifier: Apache-2.0
"""The station file: one TOML file per station, validated with pydantic.

Every problem is reported at once, each with the file, the line where the key stands (when it
can be found), the key path (``instrument[2].poll_interval``, indexes 0-based as in the file's
order) and what is expected. Unknown keys and TOML syntax errors are problems like any other,
never a traceback. `config/station.example.toml` documents every key.
"""

import math
import re
import tomllib
from collections.abc import Generator, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from gateway.errors import ConfigError, ConfigProblem
from gateway.secrets import SecretFileError, check_private_file

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Identifier = Annotated[str, Field(pattern=_ID_PATTERN)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class StationSection(_Model):
    """``[station]``: who this station is."""

    id: Identifier
    name: str = ""
    data_dir: Path = Path("/var/lib/metrogate")


class StoreSection(_Model):
    """``[store]``: where readings are made durable."""

    url: str | None = None
    batch_max: int = Field(default=5000, ge=1, le=100_000)
    batch_latency: float = Field(default=0.05, ge=0, le=10)
    # Retention: forwarded readings older than this many days are deleted (None: kept for
    # ever); unforwarded ones never. Checked every `prune_interval` seconds.
    retain_days: float | None = Field(default=None, gt=0, le=36_500)
    prune_interval: PositiveSeconds = 3600.0

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite:///", "postgresql")):
            msg = "expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            raise ValueError(msg)
        return url


class UpstreamSection(_Model):
    """``[upstream]``: the MQTT broker readings are forwarded to."""

    broker: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None
    protocol: Literal[5, 311] = 5
    topic_prefix: str = "metrogate/v1"
    keepalive: int = Field(default=30, ge=5, le=3600)
    max_readings_per_message: int = Field(default=500, ge=1, le=10_000)
    max_inflight: int = Field(default=16, ge=1, le=256)
    publish_timeout: PositiveSeconds = 10.0
    flush_timeout: PositiveSeconds = 10.0
    status_interval: PositiveSeconds = 30.0
    reconnect_min: PositiveSeconds = 0.5
    reconnect_max: PositiveSeconds = 30.0
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, broker: str) -> str:
        parts = urlsplit(broker)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            msg = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            raise ValueError(msg)
        return broker

    @property
    def host(self) -> str:
        """The broker's host name."""
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        """The broker's TCP port (1883, or 8883 for mqtts, unless given)."""
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return urlsplit(self.broker).scheme == "mqtts"


class RegisterSection(_Model):
    """``[register]``: how the station watches its register of certificates."""

    expiry_warning_days: float = Field(default=30.0, ge=0, le=3650)


class SigningSection(_Model):
    """``[signing]``: the station key and how often it signs a checkpoint of the chain.

    A checkpoint is signed once `checkpoint_every` readings have been committed since the
    last one, or `checkpoint_interval` seconds after it when readings are waiting, and once
    more on a clean stop (see `gateway.checkpoints`).
    """

    key_dir: Path | None = None
    checkpoint_every: int = Field(default=1000, ge=1, le=10_000_000)
    checkpoint_interval: PositiveSeconds = 60.0


class SerialBus(_Model):
    """A serial line (RS-232, or RS-485 through an adapter)."""

    id: Identifier
    kind: Literal["serial"]
    port: str
    baudrate: int = Field(default=9600, gt=0)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    xonxoff: bool = False
    timeout: PositiveSeconds = 1.0


class ModbusTcpBus(_Model):
    """A Modbus TCP connection (a meter, or a TCP-to-RTU gateway with several unit ids)."""

    id: Identifier
    kind: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, gt=0, lt=65536)
    timeout: PositiveSeconds = 1.0


class ModbusRtuBus(_Model):
    """A Modbus RTU line (RS-485): several devices, one request at a time."""

    id: Identifier
    kind: Literal["modbus-rtu"]
    port: str
    baudrate: int = Field(default=9600, gt=0)
    bytesize: Literal[8] = 8  # RTU frames are 8-bit; 7 bits is Modbus ASCII
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout: PositiveSeconds = 1.0


class VisaBus(_Model):
    """A VISA resource (GPIB, USB-TMC, LAN, serial) reached through pyvisa."""

    id: Identifier
    kind: Literal["visa"]
    resource: str = Field(min_length=1)
    library: str = "@py"
    timeout: PositiveSeconds = 2.0
    read_termination: str = "\n"
    write_termination: str = "\n"


Bus = Annotated[SerialBus | ModbusTcpBus | ModbusRtuBus | VisaBus, Field(discriminator="kind")]
AnyBus = SerialBus | ModbusTcpBus | ModbusRtuBus | VisaBus


def _ratio(ratio: float | str) -> float:
    """``200/5`` → 40.0; a number as it is. Must be finite and > 0."""
    if isinstance(ratio, str):
        primary, slash, secondary = ratio.partition("/")
        try:
            value = float(primary) / float(secondary) if slash else float(primary)
        except (ValueError, ZeroDivisionError):
            msg = 'expected "PRIMARY/SECONDARY" such as "200/5", or a number'
            raise ValueError(msg) from None
    else:
        value = float(ratio)
    if not (math.isfinite(value) and value > 0):
        msg = "the ratio must be finite and > 0"
        raise ValueError(msg)
    return value


class TransformerConfig(_Model):
    """``[instrument.channel.ct]`` / ``.vt``: an instrument transformer the meter measures through.

    The channel's value is the meter's value times each transformer's ratio. The ratio's
    uncertainty comes from the transformer's accuracy class (`class`, verification mode: MPE
    of its ratio error, rectangular) or from a certificate of this file (`certificate`): a
    verification certificate with an MPE rule, or a calibration certificate in ``%`` whose
    points give the ratio error (x = load in % of rated, `convention = "error"`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    ratio: float | str
    accuracy_class: str | None = Field(default=None, alias="class", min_length=1)
    certificate: str | None = Field(default=None, min_length=1)
    load: float = Field(default=1.0, gt=0, le=2)
    # Phase displacement limit in minutes of arc, for a channel's `power_factor` below 1;
    # default: the class's (or the file's verification certificate's class) at `load`.
    phase_mpe: float | None = Field(default=None, ge=0, le=600)

    @field_validator("ratio")
    @classmethod
    def _ratio_value(cls, ratio: float | str) -> float | str:
        _ratio(ratio)
        return ratio

    @property
    def rated_ratio(self) -> float:
        """K_n = primary/secondary, e.g. 40 for 200/5."""
        return _ratio(self.ratio)


class Channel(_Model):
    """``[[instrument.channel]]``: one quantity of an instrument that becomes readings."""

    id: Identifier
    source: str | None = None
    quantity: str = Field(min_length=1)
    unit: str = Field(min_length=1)
    resolution: float = Field(ge=0)
    certificate: str | None = None
    coverage_factor: float = Field(default=2.0, gt=0, le=10)
    ct: TransformerConfig | None = None
    vt: TransformerConfig | None = None
    # cos φ of the metering point, written as the energy-meter rules write it ("1", "0.8L"
    # lagging/inductive, "0.8C" leading/capacitive): below 1 the CT's and VT's phase
    # displacements act on the energy, (δ_I - δ_U)·tan φ (`calibration.phase_error_factor`).
    power_factor: str | None = Field(default=None, pattern=r"^(1|1\.0+|0?\.[0-9]+[LC])$")

    @property
    def phase(self) -> tuple[float, bool] | None:
        """(cos φ, lagging) from `power_factor`; None when not stated."""
        text = self.power_factor
        if text is None:
            return None
        if text[-1] in "LC":
            return float(text[:-1]), text[-1] == "L"
        return float(text), True


class Instrument(_Model):
    """``[[instrument]]``: a device on a bus and the channels read from it."""

    id: Identifier
    bus: str
    driver: Literal["mtsics", "sbi", "dlt645", "modbus", "scpi-dmm", "power-analyzer"]
    poll_interval: PositiveSeconds = 1.0
    model: str = ""
    serial_number: str = ""
    command: Literal["S", "SI"] = "S"
    mode: Literal["request", "stream"] = "request"
    address: str | None = Field(default=None, pattern=r"^[0-9]{12}$")
    unit_id: int = Field(default=1, ge=0, le=247)
    register_map: str | None = None
    function: str = "VOLT:DC"
    range: float | None = Field(default=None, gt=0)
    nplc: float | None = Field(default=None, gt=0)
    element: int = Field(default=1, ge=1, le=6)
    channel: list[Channel] = Field(min_length=1)


class PointConfig(_Model):
    """One calibration point of a certificate."""

    x: float
    c: float
    U: float = Field(gt=0)
    k: float = Field(default=2.0, gt=0)


def _start_of(day: date | datetime) -> datetime:
    if isinstance(day, datetime):
        return day if day.tzinfo else day.replace(tzinfo=UTC)
    return datetime.combine(day, time(0), tzinfo=UTC)


def _end_of(day: date | datetime) -> datetime:
    if isinstance(day, datetime):
        return day if day.tzinfo else day.replace(tzinfo=UTC)
    return datetime.combine(day, time(0), tzinfo=UTC) + timedelta(days=1, microseconds=-1)


class _ClassRule(_Model):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    accuracy_class: str = Field(alias="class", min_length=1)


class EnergyMeterRule(_ClassRule):
    """``mpe = { rule = "energy-meter", class = "0.5S" }``: IEC 62053 / JJG 596 classes."""

    rule: Literal["energy-meter"]
    current: float = Field(default=1.0, gt=0)
    power_factor: str = "1"
    connection: Literal["direct", "transformer"] | None = None


class BalanceRule(_ClassRule):
    """``mpe = { rule = "balance", class = "II", e = 0.1, max = 2200 }``: OIML R 76 / JJG 1036."""

    rule: Literal["balance"]
    e: float = Field(gt=0)
    max: float | None = Field(default=None, gt=0)
    in_service: bool = False


class TransformerRule(_ClassRule):
    """``mpe = { rule = "transformer", kind = "current", class = "0.2S" }``: IEC 61869."""

    rule: Literal["transformer"]
    kind: Literal["current", "voltage"]
    load: float = Field(default=1.0, gt=0, le=2)


class LinearRule(_Model):
    """``mpe = { rule = "linear", absolute = a, percent_of_reading = p }``: a + p/100·|x|."""

    rule: Literal["linear"]
    absolute: float = Field(default=0.0, ge=0)
    percent_of_reading: float = Field(default=0.0, ge=0)
    percent_of_range: float = Field(default=0.0, ge=0)
    full_scale: float = Field(default=0.0, ge=0)


def _mpe_kind(value: Any) -> str | None:  # noqa: ANN401 - pydantic passes raw input
    """The tag of an ``mpe`` value: its ``rule``, or ``constant`` for a number."""
    if isinstance(value, dict):
        rule = value.get("rule")
        return rule if isinstance(rule, str) else None
    if isinstance(value, BaseModel):
        return str(getattr(value, "rule", None))
    return "constant"


MpeRule = EnergyMeterRule | BalanceRule | TransformerRule | LinearRule
MpeValue = Annotated[
    Annotated[float, Tag("constant")]
    | Annotated[EnergyMeterRule, Tag("energy-meter")]
    | Annotated[BalanceRule, Tag("balance")]
    | Annotated[TransformerRule, Tag("transformer")]
    | Annotated[LinearRule, Tag("linear")],
    Discriminator(
        _mpe_kind,
        custom_error_type="mpe_rule",
        custom_error_message=(
            'expected a number (a constant MPE) or a table with rule = "energy-meter", '
            '"balance", "transformer" or "linear"'
        ),
    ),
]


class CertificateConfig(_Model):
    """``[[certificate]]``: a calibration certificate given as points, or a verification.

    A calibration (or in-house calibration) states `points`; a verification (检定) states no
    points but its result `passed`, its MPE rule `mpe` (a table, or one number: a constant
    MPE in `unit`) and optionally the verified `range`. Dates are UTC days, both ends
    inclusive; a datetime with an offset is taken as given.
    """

    id: str = Field(min_length=1)
    kind: Literal["calibration", "verification", "in-house"] = "calibration"
    issuer: str = ""
    accreditation: str = ""
    valid_from: date | datetime
    valid_until: date | datetime
    unit: str = Field(min_length=1)
    abscissa: Literal["indication", "reference"] = "indication"
    convention: Literal["correction", "error"] = "correction"
    point_correlation: float = Field(default=1.0, ge=0, le=1)
    interpolation_u: float | None = Field(default=None, ge=0)
    points: list[PointConfig] = Field(default_factory=list)
    passed: bool | None = None
    range: tuple[float, float] | None = None
    mpe: MpeValue | None = None
    procedure: str = ""

    @property
    def valid_from_utc(self) -> datetime:
        """Start of validity as an aware UTC datetime."""
        return _start_of(self.valid_from)

    @property
    def valid_until_utc(self) -> datetime:
        """End of validity (inclusive) as an aware UTC datetime."""
        return _end_of(self.valid_until)


class StationConfig(_Model):
    """A whole station file."""

    station: StationSection
    store: StoreSection = StoreSection()
    upstream: UpstreamSection = UpstreamSection()
    signing: SigningSection = SigningSection()
    # Named in the file [register]; "register" itself is taken on the class (ABCMeta.register).
    register_section: RegisterSection = Field(default=RegisterSection(), alias="register")
    bus: list[Bus] = Field(default_factory=list)
    instrument: list[Instrument] = Field(default_factory=list)
    certificate: list[CertificateConfig] = Field(default_factory=list)

    @property
    def store_url(self) -> str:
        """The store URL, defaulting to ``DATA_DIR/metrogate.db``."""
        return self.store.url or f"sqlite:///{self.station.data_dir / 'metrogate.db'}"

    @property
    def key_dir(self) -> Path:
        """The key directory, defaulting to ``DATA_DIR/keys``."""
        return self.signing.key_dir or self.station.data_dir / "keys"

    def bus_by_id(self, bus_id: str) -> AnyBus:
        """Return the bus named `bus_id` (the file was validated, so it exists)."""
        return next(bus for bus in self.bus if bus.id == bus_id)

    def certificate_by_id(self, certificate_id: str) -> CertificateConfig:
        """Return the certificate named `certificate_id`."""
        return next(cert for cert in self.certificate if cert.id == certificate_id)


#: The bus kinds each driver can work on.
DRIVER_BUS_KINDS: dict[str, tuple[str, ...]] = {
    "mtsics": ("serial",),
    "sbi": ("serial",),
    "dlt645": ("serial",),
    "modbus": ("modbus-tcp", "modbus-rtu"),
    "scpi-dmm": ("visa",),
    "power-analyzer": ("visa",),
}
#: The source a channel reads when it names none (drivers with a single quantity).
DRIVER_DEFAULT_SOURCE = {"mtsics": "weight", "sbi": "weight", "scpi-dmm": "reading"}


def load_config(path: str | Path) -> StationConfig:
    """Read and validate a station file.

    Raises:
        ConfigError: listing every problem found (syntax, types, unknown keys, references).
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(file, "", f"cannot read file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(file, "", "not UTF-8 text")]) from exc
    return parse_config(text, file=file, base_dir=Path(path).parent)


def parse_config(
    text: str, *, file: str = "<string>", base_dir: Path | None = None
) -> StationConfig:
    """Validate the text of a station file; see `load_config`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError([ConfigProblem(file, "", f"TOML syntax: {message}", line)]) from exc
    lines = _KeyLines(text)
    try:
        config = StationConfig.model_validate(document)
    except ValidationError as exc:
        problems = [
            _problem(file, lines, tuple(error["loc"]), _describe(error))
            for error in exc.errors(include_url=False)
        ]
        raise ConfigError(problems) from exc
    problems = [
        _problem(file, lines, loc, message)
        for loc, message in check_references(config, base_dir or Path())
    ]
    if problems:
        raise ConfigError(problems)
    return config


def check_references(
    config: StationConfig, base_dir: Path
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield (location, message) for every inconsistency between sections."""
    yield from _duplicates("bus", [bus.id for bus in config.bus])
    yield from _duplicates("instrument", [instrument.id for instrument in config.instrument])
    yield from _duplicates("certificate", [cert.id for cert in config.certificate])
    buses = {bus.id: bus for bus in config.bus}
    certificates = {cert.id: cert for cert in config.certificate}
    for index, cert in enumerate(config.certificate):
        yield from _check_certificate(cert, ("certificate", index))
    for index, instrument in enumerate(config.instrument):
        yield from _check_instrument(
            instrument, ("instrument", index), buses, certificates, base_dir
        )
    yield from check_upstream_secrets(config.upstream)


def _power_factor_warnings(
    channel: Channel, where: tuple[Any, ...], certificates: dict[str, CertificateConfig]
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """A meter bounded at another power factor than the one its channel states."""
    named = certificates.get(channel.certificate or "")
    phase = channel.phase
    if named is None or phase is None or phase[0] == 1.0:
        return
    if isinstance(named.mpe, EnergyMeterRule) and named.mpe.power_factor == "1":
        yield (
            (*where, "power_factor"),
            (
                f"{channel.power_factor}, but the meter's MPE (certificate {named.id}) "
                'is taken at power_factor "1"; state the rule\'s power_factor for these '
                'conditions (the class tables give "0.5L" and "0.8C")'
            ),
        )


def config_warnings(config: StationConfig) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield (location, message) for what is allowed but worth saying, e.g. register lookups.

    A channel's certificate that is not in the file is looked up in the station's register
    when the daemon starts (`metrogate certs import`); check-config does not open the store
    (it may run on another machine, before the store exists), so it can only say so.
    """
    in_file = {cert.id for cert in config.certificate}
    certificates = {cert.id: cert for cert in config.certificate}
    for index, instrument in enumerate(config.instrument):
        for number, channel in enumerate(instrument.channel):
            where = ("instrument", index, "channel", number)
            yield from _power_factor_warnings(channel, where, certificates)
            if channel.certificate is not None and channel.certificate not in in_file:
                yield (
                    (*where, "certificate"),
                    (
                        f'no certificate "{channel.certificate}" in this file: the daemon will '
                        "look it up in the station's register (metrogate certs import) at start"
                    ),
                )
            for name in ("ct", "vt"):
                transformer: TransformerConfig | None = getattr(channel, name)
                if (
                    transformer is not None
                    and transformer.certificate is not None
                    and transformer.certificate not in in_file
                    and transformer.accuracy_class is None
                ):
                    yield (
                        (*where, name, "certificate"),
                        (
                            f'no certificate "{transformer.certificate}" in this file: the '
                            f"daemon will look it up in the station's register at start (the "
                            f"{name.upper()} has no class to fall back on)"
                        ),
                    )


def problems_with_lines(
    found: Iterator[tuple[tuple[Any, ...], str]], *, file: str, text: str
) -> list[ConfigProblem]:
    """(location, message) pairs as problems naming the file and the line of each key."""
    lines = _KeyLines(text)
    return [_problem(file, lines, loc, message) for loc, message in found]


def _check_certificate(
    cert: CertificateConfig, where: tuple[Any, ...]
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield problems of one ``[[certificate]]``: dates, points or verification data."""
    if cert.valid_until_utc < cert.valid_from_utc:
        yield (*where, "valid_until"), "must not be before valid_from"
    if cert.range is not None and not cert.range[0] <= cert.range[1]:
        yield (*where, "range"), f"[low, high] with low <= high, got {list(cert.range)}"
    if cert.kind != "verification":
        yield from _check_calibration(cert, where)
        return
    if cert.points:
        yield (
            (*where, "points"),
            (
                "a verification certificate states no corrections (检定: the indication is used "
                "as it is, bounded by the MPE); remove the points or make it kind calibration"
            ),
        )
    if cert.passed is None:
        yield (*where, "passed"), "required for a verification certificate: true or false"
    elif not cert.passed:
        # A failed verification (不合格) bounds nothing: the error exceeded the MPE somewhere,
        # so u = MPE/sqrt(3) would understate it. Readings must not rest on it at all.
        yield (
            (*where, "passed"),
            (
                "a failed verification cannot support readings (the instrument's error exceeds "
                "its MPE); remove the certificate and the channels' reference to it"
            ),
        )
    if cert.mpe is None:
        yield (
            (*where, "mpe"),
            (
                "required for a verification certificate: a rule table such as { rule = "
                '"energy-meter", class = "0.5S" }, or a constant MPE in the certificate\'s unit'
            ),
        )
        return
    if isinstance(cert.mpe, float | int) and not (math.isfinite(cert.mpe) and cert.mpe > 0):
        yield (*where, "mpe"), f"a constant MPE must be finite and > 0, got {cert.mpe!r}"
        return
    yield from _buildable(cert, (*where, "mpe"))


def _check_calibration(
    cert: CertificateConfig, where: tuple[Any, ...]
) -> Iterator[tuple[tuple[Any, ...], str]]:
    for key in ("passed", "mpe"):
        if getattr(cert, key) is not None:
            yield (*where, key), f'only for kind "verification" (this is a {cert.kind})'
    if not cert.points:
        yield (*where, "points"), f"required for a {cert.kind} certificate: at least one point"
        return
    xs = [point.x for point in cert.points]
    if len(set(xs)) != len(xs):
        yield (*where, "points"), "two points have the same x"
        return
    yield from _buildable(cert, (*where, "points"))


def _buildable(
    cert: CertificateConfig, where: tuple[Any, ...]
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Build the certificate's model as the daemon will; yield its refusal, if any."""
    from calibration import CalibrationError  # noqa: PLC0415 - only when certificates exist
    from gateway.instruments import certificate_model  # noqa: PLC0415 - imports this module

    try:
        certificate_model(cert)
    except CalibrationError as exc:
        yield where, str(exc)


def check_upstream_secrets(upstream: UpstreamSection) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield (location, message) for a missing or exposed password file or TLS client key.

    The paths are checked as the forwarder opens them (relative ones from the working
    directory). Messages name the file and its mode, never its content.
    """
    secrets = (("password_file", "password file"), ("key_file", "TLS client key"))
    for key, what in secrets:
        path = getattr(upstream, key)
        if path is None:
            continue
        try:
            check_private_file(path, what)
        except SecretFileError as exc:
            yield ("upstream", key), str(exc)
    if upstream.key_file is not None and upstream.cert_file is None:
        yield ("upstream", "key_file"), "given without cert_file (the client certificate)"


def _check_instrument(
    instrument: Instrument,
    where: tuple[Any, ...],
    buses: dict[str, AnyBus],
    certificates: dict[str, CertificateConfig],
    base_dir: Path,
) -> Iterator[tuple[tuple[Any, ...], str]]:
    bus = buses.get(instrument.bus)
    if bus is None:
        known = ", ".join(sorted(buses)) or "none defined"
        yield (*where, "bus"), f'no bus "{instrument.bus}" (known: {known})'
    elif bus.kind not in DRIVER_BUS_KINDS[instrument.driver]:
        kinds = " or ".join(DRIVER_BUS_KINDS[instrument.driver])
        yield (
            (*where, "bus"),
            f'driver "{instrument.driver}" needs a {kinds} bus, "{bus.id}" is {bus.kind}',
        )
    if instrument.driver == "dlt645" and instrument.address is None:
        yield (
            (*where, "address"),
            "required for driver dlt645 (the 12-digit nameplate address)",
        )
    sources = yield from _sources(instrument, where, base_dir)
    yield from _duplicates((*where, "channel"), [channel.id for channel in instrument.channel])
    for number, channel in enumerate(instrument.channel):
        at = (*where, "channel", number)
        source = channel.source or DRIVER_DEFAULT_SOURCE.get(instrument.driver)
        if source is None:
            yield (
                (*at, "source"),
                "required for this driver (the register-map entry or data item to read)",
            )
        elif sources is not None and source not in sources:
            yield (*at, "source"), f'"{source}" unknown; expected one of {sorted(sources)}'
        elif sources is not None and sources[source] not in {None, channel.unit}:
            yield (
                (*at, "unit"),
                (
                    f'"{channel.unit}" differs from the unit the instrument reports for '
                    f'"{source}": "{sources[source]}"'
                ),
            )
        for name in ("ct", "vt"):
            transformer = getattr(channel, name)
            if transformer is not None:
                yield from _check_transformer(transformer, name, (*at, name), certificates)
        yield from _check_power_factor(channel, at, certificates)
        named = certificates.get(channel.certificate) if channel.certificate else None
        if named is not None and named.unit != channel.unit:
            yield (
                (*at, "unit"),
                f'"{channel.unit}" differs from certificate {named.id} unit "{named.unit}"',
            )


def _check_power_factor(
    channel: Channel, where: tuple[Any, ...], certificates: dict[str, CertificateConfig]
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """`power_factor` needs a CT or VT, and below 1 each one's phase displacement limit."""
    phase = channel.phase
    if phase is None:
        return
    cos_phi, _lagging = phase
    if not 0.0 < cos_phi <= 1.0:
        yield (*where, "power_factor"), f"cos φ must lie in (0, 1], got {cos_phi:g}"
        return
    if channel.ct is None and channel.vt is None:
        yield (
            (*where, "power_factor"),
            (
                "applies to a channel measuring through a CT or VT (their phase "
                "displacement); this channel has neither"
            ),
        )
        return
    if cos_phi == 1.0:
        return
    for name in ("ct", "vt"):
        transformer: TransformerConfig | None = getattr(channel, name)
        if transformer is not None and phase_limit(transformer, name, certificates) is None:
            yield (
                (*where, name),
                (
                    f"power_factor {channel.power_factor} needs the {name.upper()}'s phase "
                    "displacement limit: give phase_mpe (minutes of arc), or a class that "
                    "states one"
                ),
            )


def phase_limit(
    transformer: TransformerConfig, name: str, certificates: Mapping[str, CertificateConfig]
) -> float | None:
    """A CT's or VT's phase displacement limit in minutes, or None where nothing states one.

    `phase_mpe` when given; else the limit of its `class` at its `load`, or of the class of
    its verification certificate in this file (``mpe = { rule = "transformer", … }``).
    """
    if transformer.phase_mpe is not None:
        return transformer.phase_mpe
    from calibration import CalibrationError, transformer_limits  # noqa: PLC0415

    kind: Literal["current", "voltage"] = "current" if name == "ct" else "voltage"
    accuracy_class, load = transformer.accuracy_class, transformer.load
    named = certificates.get(transformer.certificate) if transformer.certificate else None
    if accuracy_class is None and named is not None and isinstance(named.mpe, TransformerRule):
        accuracy_class, load = named.mpe.accuracy_class, named.mpe.load
    if accuracy_class is None:
        return None
    try:
        return transformer_limits(kind, accuracy_class, load=load)[1]
    except CalibrationError:
        return None  # the class itself is reported by `_check_transformer`


def _check_transformer(
    transformer: TransformerConfig,
    name: str,
    where: tuple[Any, ...],
    certificates: dict[str, CertificateConfig],
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """A CT or VT needs a class or a certificate (of this file or the register) for its ratio."""
    named = certificates.get(transformer.certificate) if transformer.certificate else None
    if transformer.accuracy_class is not None:
        from calibration import CalibrationError, transformer_limits  # noqa: PLC0415

        kind: Literal["current", "voltage"] = "current" if name == "ct" else "voltage"
        try:
            transformer_limits(kind, transformer.accuracy_class, load=transformer.load)
        except CalibrationError as exc:
            yield (*where, "class"), str(exc)
        if named is not None and named.kind != "verification":
            yield (
                (*where, "certificate"),
                (
                    f"{named.id} is a {named.kind} certificate: give class or a calibration "
                    "certificate, not both"
                ),
            )
        return
    if transformer.certificate is None:
        yield where, 'needs class (e.g. "0.2S") or certificate (an id in this file)'
    elif named is None:
        return  # looked up in the register at start (a warning: `config_warnings`)
    elif named.kind != "verification" and named.unit != "%":
        yield (
            (*where, "certificate"),
            (
                f'{named.id}: a transformer calibration certificate is in "%" (ratio error at '
                f'loads in % of rated), not "{named.unit}"'
            ),
        )


def _sources(  # noqa: PLR0911 - one answer per driver family
    instrument: Instrument, where: tuple[Any, ...], base_dir: Path
) -> Generator[tuple[tuple[Any, ...], str], None, dict[str, str | None] | None]:
    """Yield driver problems; return the sources the driver offers.

    Each source comes with the unit it reports when that is fixed (None: the instrument
    says which). The whole answer is None when it cannot be checked.
    """
    match instrument.driver:
        case "mtsics" | "sbi":
            return {"weight": None}
        case "scpi-dmm":
            from drivers.scpi.dmm import FUNCTION_UNITS  # noqa: PLC0415

            unit = FUNCTION_UNITS.get(instrument.function)
            if unit is None:
                yield (
                    (*where, "function"),
                    f'"{instrument.function}" unknown; expected one of {sorted(FUNCTION_UNITS)}',
                )
            return None if unit is None else {"reading": unit}
        case "power-analyzer":
            from drivers.scpi.power_analyzer import ITEMS as ANALYZER_ITEMS  # noqa: PLC0415

            return {source: unit for source, _function, unit in ANALYZER_ITEMS}
        case "dlt645":
            from drivers.meters.dlt645 import ITEMS  # noqa: PLC0415 - data table, loaded on use

            return {name: item.unit for name, item in ITEMS.items()}
    if instrument.register_map is None:
        yield (*where, "register_map"), 'required for driver modbus (e.g. "sdm630" or a path)'
        return None
    from gateway.instruments import RegisterMapError, resolve_register_map  # noqa: PLC0415

    try:
        register_map = resolve_register_map(instrument.register_map, base_dir)
    except RegisterMapError as exc:
        yield (*where, "register_map"), str(exc)
        return None
    return {name: register_map.value(name).unit for name in register_map.names}


def _duplicates(
    where: str | tuple[Any, ...], ids: Sequence[str]
) -> Iterator[tuple[tuple[Any, ...], str]]:
    prefix = (where,) if isinstance(where, str) else where
    seen: set[str] = set()
    for index, item in enumerate(ids):
        if item in seen:
            yield (*prefix, index, "id"), f'duplicate id "{item}"'
        seen.add(item)


def _describe(error: Any) -> str:  # noqa: ANN401 - pydantic's ErrorDetails is a TypedDict
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling against config/station.example.toml)"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"kind must be one of {error['ctx']['expected_tags']}"
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"{error['msg']}{shown}"


def _problem(file: str, lines: "_KeyLines", loc: tuple[Any, ...], message: str) -> ConfigProblem:
    loc = tuple(part for part in loc if part not in _BUS_KIND_TAGS)
    return ConfigProblem(file, format_path(loc), message, lines.find(loc))


_BUS_KIND_TAGS = {"serial", "modbus-tcp", "modbus-rtu", "visa"}


def format_path(loc: Sequence[Any]) -> str:
    """Render a location tuple as ``instrument[2].channel[0].unit``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _KeyLines:
    """Where keys stand in the TOML text, so problems can name a line.

    A light scan, not a TOML parser: it follows ``[table]`` and ``[[array.of.tables]]``
    headers and ``key =`` lines, which is how station files are written. Keys inside inline
    tables resolve to the line of the key that holds them.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        counters: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if header := self._HEADER.match(line):
                table = self._resolve(header.group(2).split("."), counters)
                if header.group(1) == "[[":
                    counters[table] = counters.get(table, -1) + 1
                    table = (*table, counters[table])
                self._lines.setdefault(table, number)
            elif key := self._KEY.match(line):
                self._lines.setdefault((*table, key.group(1)), number)

    @staticmethod
    def _resolve(names: list[str], counters: dict[tuple[Any, ...], int]) -> tuple[Any, ...]:
        """Path of a header, entering the current element of every array of tables on it."""
        path: tuple[Any, ...] = ()
        for depth, name in enumerate(names, start=1):
            path = (*path, name)
            if path in counters and depth < len(names):
                path = (*path, counters[path])
        return path

    def find(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), 0, -1):
            if (line := self._lines.get(loc[:end])) is not None:
                return line
        return None
