# SPDX-License-Identifier: Apache-2.0
"""Real services for tests: a private mosquitto and a private PostgreSQL, on loopback.

Each is started from Debian's binaries in a temporary directory on a free port, so tests
never touch a system-wide instance and can stop, freeze or restart their broker at will.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


async def spawn_daemon(
    config: Path,
    log: Path,
    *extra: str,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """``metrogate run --config CONFIG`` as a subprocess, its output appended to `log`.

    `prefix` runs it under another command (``ip netns exec …``, ``faketime``); `env` adds
    to this process's environment.
    """
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(config),
            *extra,
            stdout=out,
            stderr=out,
            env=None if env is None else {**os.environ, **env},
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    msg = f"nothing listens on 127.0.0.1:{port} after {timeout} s"
    raise TimeoutError(msg)


def find_binary(name: str, *candidates: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if Path(candidate).exists():
            return candidate
    msg = (
        f"{name} is not installed; run .ci/run or scripts/test.sh, which install it "
        f"(Debian: apt-get install {name})"
    )
    raise RuntimeError(msg)


@dataclass(frozen=True)
class MosquittoTls:
    """A second, TLS listener: server certificate, client CA and optionally passwords.

    `password_file` is mosquitto's own (made with ``mosquitto_passwd -b``); with it,
    anonymous clients are refused on this listener.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True
    password_file: Path | None = None

    def listener(self, port: int) -> str:
        """The mosquitto.conf lines of the listener (with ``per_listener_settings true``)."""
        lines = [
            f"listener {port} 127.0.0.1",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {str(self.require_certificate).lower()}",
        ]
        if self.password_file is not None:
            lines += [f"password_file {self.password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        return "".join(f"{line}\n" for line in lines)


@dataclass
class Mosquitto:
    """A mosquitto broker of the test's own; with `tls`, a TLS listener on `tls_port` too.

    `extra_conf` is appended to mosquitto.conf as it is (another listener, autosave).
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    tls: MosquittoTls | None = None
    tls_port: int = field(default_factory=free_port)
    extra_conf: str = ""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        # Authentication per listener only with TLS: the plain listener stays anonymous.
        per_listener = "per_listener_settings true\n" if self.tls is not None else ""
        tls_listener = self.tls.listener(self.tls_port) if self.tls is not None else ""
        conf.write_text(
            f"{per_listener}"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"{tls_listener}"
            # As root, mosquitto would drop to user "mosquitto", which cannot write the
            # persistence file in the test's directory; then sessions die with a restart.
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_inflight_messages 100\n"
            "max_queued_messages 100000\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            f"{self.extra_conf}"
        )
        binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        wait_for_port(self.port)
        if self.tls is not None:
            wait_for_port(self.tls_port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the broker dies at once, keeping only what it had saved to disk."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def running_mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _pg_bin(name: str) -> str:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return find_binary(name)


@contextlib.contextmanager
def running_postgres(workdir: Path) -> Iterator[str]:
    """Start a throwaway PostgreSQL cluster; yield its SQLAlchemy URL.

    PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user
    that Debian's package creates.
    """
    if url := os.environ.get("METROGATE_TEST_POSTGRES_URL"):
        yield url
        return
    datadir = workdir / "pgdata"
    datadir.mkdir(parents=True)
    port = free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(datadir, "postgres")
        workdir.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *prefix,
            _pg_bin("initdb"),
            "-D",
            str(datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    log = workdir / "postgres.log"
    subprocess.run(
        [
            *prefix,
            _pg_bin("pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, _pg_bin("pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
