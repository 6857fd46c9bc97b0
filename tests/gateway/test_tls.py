# SPDX-License-Identifier: Apache-2.0
"""The secure upstream on real parts: mosquitto over TLS, client certificates, passwords.

A throwaway CA, a server certificate for 127.0.0.1 and localhost and a client certificate
are made here with `cryptography`; mosquitto gets a TLS listener that requires the client
certificate and a password (``mosquitto_passwd -b``). Refusals are retried, never lost.
"""

import asyncio
import contextlib
import functools
import ipaddress
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli import main
from gateway.config import StationConfig, UpstreamSection
from gateway.daemon import Station
from gateway.forward import Forwarder
from gateway.secrets import SecretFileError, check_private_file, read_secret
from gateway.stamp import Stamper
from gateway.store import AsyncStore
from tests.gateway.test_forward import commit, forwarded, forwarding
from tests.services import Mosquitto, MosquittoTls, find_binary, running_mosquitto

PASSWORD = "Zq7-not-in-any-log-4hX"  # noqa: S105 - a throwaway broker's test password
USERNAME = "lab-1"

# --- a throwaway PKI ---------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast, and OpenSSL 3 takes it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)  # mosquitto runs as root here ("user root"), so 0600 is readable


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> "Authority":
        key = _key()
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self,
        common_name: str,
        *,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _write_certificate(certificate: x509.Certificate, path: Path) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    authority, stranger = Authority.create("metrogate test CA"), Authority.create("other CA")
    server_key, server_cert = authority.issue(
        "127.0.0.1",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key, client_cert = authority.issue(USERNAME, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "station.pem",
        client_key=directory / "station.key",
    )
    _write_certificate(authority.certificate, pki.ca)
    _write_certificate(stranger.certificate, pki.other_ca)
    _write_certificate(server_cert, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_certificate(client_cert, pki.client_cert)
    _write_key(client_key, pki.client_key)
    return pki


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    """A mosquitto whose TLS listener wants the client certificate and the password."""
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-c", "-b", str(passwords), USERNAME, PASSWORD],
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    tls = MosquittoTls(
        cafile=pki.ca, certfile=pki.server_cert, keyfile=pki.server_key, password_file=passwords
    )
    broker = Mosquitto(workdir, tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def password_file(tmp_path: Path, password: str = PASSWORD, mode: int = 0o600) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(f"{password}\n", encoding="utf-8")
    path.chmod(mode)
    return path


def upstream(broker: Mosquitto, pki: Pki, secret: Path, **overrides: object) -> UpstreamSection:
    settings = {
        "broker": broker.tls_url,
        "username": USERNAME,
        "password_file": secret,
        "ca_file": pki.ca,
        "cert_file": pki.client_cert,
        "key_file": pki.client_key,
        "reconnect_min": 0.1,
        "reconnect_max": 0.3,
        "publish_timeout": 2.0,
        **overrides,
    }
    return UpstreamSection.model_validate(settings)


@contextlib.asynccontextmanager
async def tls_subscriber(broker: Mosquitto, pki: Pki) -> AsyncIterator[dict[int, object]]:
    """Collect readings by seq over the TLS listener, with the station's own credentials."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    readings: dict[int, object] = {}
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.tls_port,
        identifier="test-tls-collector",
        username=USERNAME,
        password=PASSWORD,
        tls_context=context,
    ) as client:
        await client.subscribe("metrogate/v1/+/+/readings", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                for reading in orjson.loads(bytes(message.payload)):
                    readings[int(reading["seq"])] = reading

        task = asyncio.create_task(listen())
        try:
            yield readings
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def arrived(readings: dict[int, object], last: int, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while set(range(1, last + 1)) - readings.keys():
            await asyncio.sleep(0.02)


def assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records  # the check below would pass on an empty log
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in str(record.args) for record in caplog.records)


# --- secret files ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_secret_is_read(tmp_path: Path, mode: int) -> None:
    secret = password_file(tmp_path, mode=mode)
    assert read_secret(secret) == PASSWORD
    secret.chmod(0o600)  # so that tmp_path can be cleaned


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_secret_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret = password_file(tmp_path, mode=mode)
    with pytest.raises(SecretFileError) as refused:
        read_secret(secret)
    message = str(refused.value)
    assert f"{secret} has mode {mode:04o}" in message
    assert f"chmod 600 {secret}" in message
    assert PASSWORD not in message


def test_missing_or_odd_secret_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match=r"cannot read the TLS client key .*absent"):
        check_private_file(tmp_path / "absent", "TLS client key")
    with pytest.raises(SecretFileError, match="is not a regular file"):
        check_private_file(tmp_path, "password file")
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret(password_file(tmp_path, password=""))


# --- forwarding over TLS -----------------------------------------------------------------


async def test_readings_go_over_tls_with_client_certificate_and_password(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    stamper = Stamper("lab-1")
    settings = upstream(broker, pki, password_file(tmp_path))
    forwarder = Forwarder(settings, "lab-1", store, forwarded_seq=0)
    async with tls_subscriber(broker, pki) as readings, forwarding(forwarder):
        last = await commit(store, stamper, 25)
        forwarder.notify()
        await forwarded(forwarder, last, 10)
        await arrived(readings, last)
    assert forwarder.reconnects == 0
    assert await store.call(store.store.forwarded_seq) == last
    assert_no_secret(caplog)
    await store.aclose()


async def refused_then_fixed(
    tmp_path: Path,
    broker: Mosquitto,
    pki: Pki,
    settings: UpstreamSection,
    fix: Callable[[], object],
) -> Forwarder:
    """Forward with `settings`: nothing is marked while refused; all arrives once fixed."""
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    stamper = Stamper("lab-1")
    forwarder = Forwarder(settings, "lab-1", store, forwarded_seq=0)
    async with forwarding(forwarder):
        last = await commit(store, stamper, 15)
        forwarder.notify()
        async with asyncio.timeout(5):
            while forwarder.reconnects < 2:
                await asyncio.sleep(0.02)
        assert forwarder.forwarded_seq == 0  # nothing acknowledged, nothing marked
        assert not forwarder.connected
        assert await store.call(store.store.forwarded_seq) == 0
        fix()
        async with tls_subscriber(broker, pki) as readings:
            await forwarded(forwarder, last, 10)
            await arrived(readings, last)
    await store.aclose()
    return forwarder


async def test_unknown_server_ca_is_refused_and_retried(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.other_ca.read_bytes())
    settings = upstream(broker, pki, password_file(tmp_path), ca_file=ca_file)
    fix = functools.partial(ca_file.write_bytes, pki.ca.read_bytes())
    await refused_then_fixed(tmp_path, broker, pki, settings, fix)
    assert "certificate verify failed" in caplog.text
    assert_no_secret(caplog)


# aiomqtt 2.5 leaves paho's socket open when the broker refuses the CONNECT (CONNACK "not
# authorized"); it is closed when the dropped client is collected, which Python reports as
# an unraisable ResourceWarning. No descriptor outlives the refused attempt.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
async def test_wrong_password_is_refused_and_retried(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = password_file(tmp_path, password="wrong-password")  # noqa: S106
    settings = upstream(broker, pki, secret)
    fix = functools.partial(secret.write_text, f"{PASSWORD}\n")
    await refused_then_fixed(tmp_path, broker, pki, settings, fix)
    assert "buffering in the store, retrying" in caplog.text
    assert "wrong-password" not in caplog.text
    assert_no_secret(caplog)


async def test_exposed_password_file_is_refused_and_retried(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = password_file(tmp_path, mode=0o644)
    settings = upstream(broker, pki, secret)
    await refused_then_fixed(tmp_path, broker, pki, settings, lambda: secret.chmod(0o600))
    assert f"{secret} has mode 0644" in caplog.text
    assert f"chmod 600 {secret}" in caplog.text
    assert_no_secret(caplog)


async def test_exposed_client_key_is_refused(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "station.key"
    key_file.write_bytes(pki.client_key.read_bytes())
    key_file.chmod(0o640)
    settings = upstream(broker, pki, password_file(tmp_path), key_file=key_file)
    await refused_then_fixed(tmp_path, broker, pki, settings, lambda: key_file.chmod(0o600))
    assert f"TLS client key {key_file} has mode 0640" in caplog.text


# --- check-config and start-up -------------------------------------------------------------


def station_toml(tmp_path: Path, secret: Path, key_file: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(
        "[station]\n"
        'id = "lab-1"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "[upstream]\n"
        'broker = "mqtts://127.0.0.1:8883"\n'
        f'username = "{USERNAME}"\n'
        f'password_file = "{secret}"\n'
        f'cert_file = "{tmp_path / "station.pem"}"\n'
        f'key_file = "{key_file}"\n',
        encoding="utf-8",
    )
    return path


def test_check_config_reports_exposed_or_missing_secrets_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = password_file(tmp_path, mode=0o644)
    config = station_toml(tmp_path, secret, tmp_path / "absent.key")
    assert main(["check-config", str(config)]) == 1
    captured = capsys.readouterr()
    assert (
        f"{config}:7: upstream.password_file: password file {secret} has mode 0644; "
        f"it must be readable and writable by its owner only (chmod 600 {secret})"
    ) in captured.err
    assert f"{config}:9: upstream.key_file: cannot read the TLS client key" in captured.err
    assert PASSWORD not in captured.out + captured.err

    secret.chmod(0o600)
    key_file = tmp_path / "station.key"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    key_file.chmod(0o600)
    assert main(["check-config", str(station_toml(tmp_path, secret, key_file))]) == 0
    captured = capsys.readouterr()
    assert "OK" in captured.out
    assert PASSWORD not in captured.out + captured.err


async def test_daemon_refuses_to_start_with_an_exposed_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = password_file(tmp_path, mode=0o604)
    # Validated without check_references, as a caller handing a config over would do.
    config = StationConfig.model_validate(
        {
            "station": {"id": "lab-1", "data_dir": str(tmp_path / "data")},
            "upstream": {"broker": "mqtts://127.0.0.1:8883", "password_file": str(secret)},
        }
    )
    station = Station(config)
    assert await station.run(asyncio.Event()) == 1
    assert f"cannot start: upstream.password_file: password file {secret} has mode 0604" in (
        caplog.text
    )
    assert not (tmp_path / "data").exists()  # refused before the store or any bus is opened
    assert not station.ready.is_set()
    assert_no_secret(caplog)


def test_plain_helper_is_unchanged(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as plain:
        conf = (tmp_path / "mosquitto.conf").read_text()
        assert plain.tls is None
    assert "per_listener_settings" not in conf
    assert conf.startswith(f"listener {plain.port} 127.0.0.1\nallow_anonymous true\n")
