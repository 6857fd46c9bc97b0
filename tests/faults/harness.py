# SPDX-License-Identifier: Apache-2.0
"""The fault-injection bench: simulators, a private mosquitto, the real daemon, a subscriber.

Everything is real: simulators speak the real bytes on ptys and loopback TCP, mosquitto is
Debian's binary with persistence, the daemon is ``python -m gateway.cli run`` in its own
process, signals are real signals. A scenario declares its instruments, starts the bench,
does harm, and ends with `FaultBench.finish`, which stops the daemon cleanly, waits for the
upstream subscriber to catch up, counts, checks the contracts and records the counts:

```python
async def test_something(bench: FaultBench) -> None:
    await bench.balance("balance-1", poll_interval=0.05)
    await bench.start()
    await bench.wait_stored(50)
    await bench.kill_daemon()            # or bench.broker.freeze(), bench.kill_broker(), ...
    await bench.start_daemon()
    await bench.finish("something", kills=1)
```

The counts (`Counts`), from the store and from what the subscriber received:

- produced: readings the station acquired and committed, i.e. the highest stored seq (the
  stamper hands out seqs 1, 2, 3, ... and a seq exists only once its commit succeeded);
- stored: rows in the store;
- delivered: distinct seqs received upstream;
- lost: stored seqs never delivered, plus seqs missing from the store (produced - stored);
- duplicated: copies received beyond the first of each seq (normal with at-least-once).

`finish` asserts lost == 0, seqs 1..produced all stored, the hash chain valid (and
`metrogate verify` exit 0 on the store, checkpoint signatures included), every delivered
reading identical to the stored one and every duplicate an exact copy, so that de-duplication
by seq leaves exactly one of each. It writes the counts before asserting, so a failing run
still reports what it saw.
"""

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from drivers.sim.dlt645 import Dlt645Simulator
from drivers.sim.modbus_line import ModbusLineSimulator
from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sbi import SbiSimulator
from drivers.sim.sdm630 import Sdm630Simulator
from gateway.stamp import verify_chain
from gateway.status import read_status
from tests.services import Mosquitto, spawn_daemon
from tests.subscriber import Collected, subscribed

STATION_ID = "fault-station"
T = TypeVar("T")
RESULTS_ENV = "METROGATE_FAULT_RESULTS"
DEFAULT_RESULTS = Path(__file__).parent / "results"
# Generous: two shared cores, and another engineer's tests may be running.
DELIVERY_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0

#: The [upstream] keys every scenario starts from (a scenario may override any).
UPSTREAM: dict[str, object] = {
    "status_interval": 0.5,
    "flush_timeout": 60.0,
    "reconnect_min": 0.1,
    "reconnect_max": 1.0,
    "publish_timeout": 5.0,
    "keepalive": 10,
}


def toml_value(value: object) -> str:
    """A Python value as a TOML value (strings, numbers, booleans only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return repr(value)


def table(header: str, values: Mapping[str, object]) -> str:
    lines = [header, *(f"{key} = {toml_value(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Channel:
    id: str
    quantity: str
    unit: str
    resolution: float
    source: str | None = None

    def toml(self) -> str:
        values: dict[str, object] = {"id": self.id}
        if self.source is not None:
            values["source"] = self.source
        values |= {"quantity": self.quantity, "unit": self.unit, "resolution": self.resolution}
        return table("[[instrument.channel]]", values)


MASS = Channel("mass", "mass", "g", 0.01)
SDM630_CHANNELS = (
    Channel("voltage-l1", "voltage", "V", 0.01, "voltage_l1"),
    Channel("frequency", "frequency", "Hz", 0.01, "frequency"),
)
DLT645_CHANNELS = (Channel("voltage-a", "voltage", "V", 0.1, "voltage_a"),)


@dataclass
class SerialPort:
    """A pty simulator reached through a by-id symlink, as udev names a USB adapter.

    `unplug` closes the pty and removes the name (the open port fails, reopening fails);
    `replug` opens a new pty behind the same name, as plugging the adapter back does.
    """

    link: Path
    simulator: MtSicsSimulator | SbiSimulator | Dlt645Simulator

    async def unplug(self) -> None:
        self.link.unlink()
        await self.simulator.__aexit__(None, None, None)

    async def replug(self) -> None:
        await self.simulator.__aenter__()
        self.link.symlink_to(self.simulator.port)


@dataclass(frozen=True)
class Counts:
    """What one scenario produced, stored and delivered; see the module docstring."""

    scenario: str
    duration: float
    produced: int
    stored: int
    delivered: int
    lost: int
    duplicated: int
    parameters: dict[str, object]
    date: str

    def line(self) -> str:
        extra = " ".join(f"{key}={value}" for key, value in self.parameters.items())
        return (
            f"[faults] {self.scenario}: produced={self.produced} stored={self.stored} "
            f"delivered={self.delivered} lost={self.lost} duplicated={self.duplicated} "
            f"duration={self.duration:.1f}s {extra}"
        )


def results_dir() -> Path:
    """Where scenarios write their counts: $METROGATE_FAULT_RESULTS or tests/faults/results."""
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


@dataclass
class Upstream:
    """The stored rows and what the subscriber received, compared."""

    rows: list[tuple[int, str, bytes]]
    received: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    def counts(self) -> tuple[int, int, int, int, int]:
        """(produced, stored, delivered, lost, duplicated), checking copies on the way."""
        stored_seqs = {seq for seq, _hash, _body in self.rows}
        produced = max(stored_seqs, default=0)
        copies: dict[int, dict[str, Any]] = {}
        duplicated = 0
        for reading in self.received:
            seq = int(reading["seq"])
            first = copies.setdefault(seq, reading)
            if first is not reading:
                duplicated += 1
                if reading != first:
                    self.problems.append(f"seq {seq}: a duplicate differs from the first copy")
        by_seq = {seq: (hash_, body) for seq, hash_, body in self.rows}
        for seq, reading in copies.items():
            if seq not in by_seq:
                self.problems.append(f"seq {seq} received upstream but not in the store")
                continue
            hash_, body = by_seq[seq]
            published = {k: v for k, v in reading.items() if k != "hash"}
            if reading.get("hash") != hash_ or published != orjson.loads(body):
                self.problems.append(f"seq {seq}: received differs from stored")
        delivered = len(copies)
        never_delivered = len(stored_seqs - copies.keys())
        lost = never_delivered + (produced - len(stored_seqs))
        return produced, len(stored_seqs), delivered, lost, duplicated


class FaultBench:
    """Simulators, broker, daemon and subscriber of one scenario; see the module docstring."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.config = tmp / "station.toml"
        self.broker = Mosquitto(tmp / "broker")
        # Saved every second: the subscriber's persistent session survives a SIGKILLed broker.
        self.broker.extra_conf = "autosave_interval 1\n"
        self.broker_url: str | None = None  # None: the broker's loopback listener
        self.upstream_settings: dict[str, object] = dict(UPSTREAM)
        self.store_settings: dict[str, object] = {"batch_latency": 0.02}
        self.signing: dict[str, object] = {"checkpoint_every": 1000, "checkpoint_interval": 5.0}
        self.daemon_prefix: list[str] = []  # e.g. ["ip", "netns", "exec", NAME]
        self.collected = Collected()
        self.process: asyncio.subprocess.Process | None = None
        self.daemon_starts = 0
        self.started_at = 0.0
        self._buses: list[str] = []
        self._instruments: list[str] = []
        self._stack = AsyncExitStack()
        self._broker_started = False

    # -- instruments ---------------------------------------------------------------------
    def add_instrument(
        self,
        instrument: Mapping[str, object],
        channels: tuple[Channel, ...],
        bus: Mapping[str, object] | None = None,
    ) -> None:
        """Add raw [[bus]] and [[instrument]] tables to the station file."""
        if bus is not None:
            self._buses.append(table("[[bus]]", bus))
        self._instruments.append(
            table("[[instrument]]", instrument) + "".join(c.toml() for c in channels)
        )

    def remove_instrument(self, name: str) -> None:
        """Take instrument `name` (and its own bus ``bus-NAME``) out of the station file."""
        self._instruments = [t for t in self._instruments if f'id = "{name}"' not in t]
        self._buses = [t for t in self._buses if f'id = "bus-{name}"' not in t]

    def set_poll_interval(self, name: str, seconds: float) -> None:
        """Change instrument `name`'s poll interval in the station file."""
        self._instruments = [
            "\n".join(
                f"poll_interval = {seconds!r}" if line.startswith("poll_interval =") else line
                for line in t.split("\n")
            )
            if f'id = "{name}"' in t
            else t
            for t in self._instruments
        ]

    async def reload(self) -> None:
        """Write the station file again and SIGHUP the daemon (`systemctl reload`)."""
        self.write_config()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    async def _serial(
        self,
        name: str,
        simulator: MtSicsSimulator | SbiSimulator | Dlt645Simulator,
        timeout: float,
    ) -> SerialPort:
        await self._stack.enter_async_context(simulator)
        link = self.tmp / f"usb-{name}"
        link.symlink_to(simulator.port)
        port = SerialPort(link, simulator)

        async def unlink_if_unplugged() -> None:
            # The stack closes the simulator; a port left unplugged has no link to remove.
            with contextlib.suppress(FileNotFoundError):
                link.unlink()

        self._stack.push_async_callback(unlink_if_unplugged)
        self._buses.append(
            table(
                "[[bus]]", {"id": f"bus-{name}", "kind": "serial", "port": str(link),
                            "timeout": timeout}
            )
        )  # fmt: skip
        return port

    async def balance(
        self, name: str, *, poll_interval: float = 0.1, timeout: float = 0.3
    ) -> SerialPort:
        """An MT-SICS balance (command SI) alone on its own serial port."""
        port = await self._serial(name, MtSicsSimulator(weight_g=1000.0, noise_g=0.05), timeout)
        self.add_instrument(
            {"id": name, "bus": f"bus-{name}", "driver": "mtsics", "command": "SI",
             "poll_interval": poll_interval},
            (MASS,),
        )  # fmt: skip
        return port

    async def sbi_balance(
        self, name: str, *, poll_interval: float = 0.1, timeout: float = 0.3
    ) -> SerialPort:
        """A Sartorius SBI balance (print on request) alone on its own serial port."""
        port = await self._serial(name, SbiSimulator(weight_g=500.0, noise_g=0.02), timeout)
        self.add_instrument(
            {"id": name, "bus": f"bus-{name}", "driver": "sbi", "poll_interval": poll_interval},
            (MASS,),
        )
        return port

    async def dlt645_meter(
        self, name: str, *, poll_interval: float = 0.2, timeout: float = 0.5
    ) -> SerialPort:
        """A DL/T 645 meter alone on its own RS-485 line."""
        address = "000102030425"
        simulator = Dlt645Simulator({address: {"voltage_a": 229.9}})
        port = await self._serial(name, simulator, timeout)
        self.add_instrument(
            {"id": name, "bus": f"bus-{name}", "driver": "dlt645", "address": address,
             "poll_interval": poll_interval},
            DLT645_CHANNELS,
        )  # fmt: skip
        return port

    async def tcp_meter(
        self, name: str, *, poll_interval: float = 0.1, timeout: float = 0.3
    ) -> Sdm630Simulator:
        """An SDM630 on its own Modbus TCP connection (a pymodbus server on loopback)."""
        simulator = await self._stack.enter_async_context(Sdm630Simulator())
        self.add_instrument(
            {"id": name, "bus": f"bus-{name}", "driver": "modbus", "register_map": "sdm630",
             "poll_interval": poll_interval},
            SDM630_CHANNELS,
            {"id": f"bus-{name}", "kind": "modbus-tcp", "host": "127.0.0.1",
             "port": simulator.port, "timeout": timeout},
        )  # fmt: skip
        return simulator

    async def rtu_meter(
        self, name: str, *, poll_interval: float = 0.1, timeout: float = 0.3
    ) -> ModbusLineSimulator:
        """An SDM630 (device 1) alone on its own Modbus RTU line."""
        simulator = await self._stack.enter_async_context(ModbusLineSimulator({1: "sdm630"}))
        simulator.set(1, "voltage_l1", 230.5)
        simulator.set(1, "frequency", 50.01)
        self.add_instrument(
            {"id": name, "bus": f"bus-{name}", "driver": "modbus", "register_map": "sdm630",
             "unit_id": 1, "poll_interval": poll_interval},
            SDM630_CHANNELS,
            {"id": f"bus-{name}", "kind": "modbus-rtu", "port": simulator.port,
             "timeout": timeout},
        )  # fmt: skip
        return simulator

    # -- the station file, the broker, the daemon -------------------------------------
    def write_config(self) -> None:
        broker = self.broker_url or self.broker.url
        self.config.write_text(
            table("[station]", {"id": STATION_ID, "data_dir": str(self.data_dir)})
            + table("[store]", self.store_settings)
            + table("[upstream]", {"broker": broker, **self.upstream_settings})
            + table("[signing]", self.signing)
            + "".join(self._buses)
            + "".join(self._instruments)
        )

    async def start(self) -> None:
        """Start the broker, the subscriber (persistent session) and the daemon."""
        self.start_broker()
        self.collected = await self._stack.enter_async_context(
            subscribed(self.broker.port, identifier="fault-collector")
        )
        self.write_config()
        self.started_at = time.monotonic()
        await self.start_daemon()

    def start_broker(self) -> None:
        self.broker.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self._broker_started = True

    def kill_broker(self) -> None:
        """SIGKILL the broker (no clean shutdown; it keeps what it saved)."""
        self.broker.kill()

    async def start_daemon(self) -> asyncio.subprocess.Process:
        self.process = await spawn_daemon(
            self.config, self.tmp / "daemon.log", prefix=self.daemon_prefix
        )
        self.daemon_starts += 1
        return self.process

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def kill_daemon(self) -> None:
        """SIGKILL the daemon and reap it."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def stop_daemon(self) -> int:
        """SIGTERM: the daemon flushes what is committed to the broker and exits."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT):
            return await self.process.wait()

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def open_files(self) -> int:
        """How many file descriptors the daemon holds."""
        return len(list(Path(f"/proc/{self.pid}/fd").iterdir()))

    def rss_kib(self) -> int:
        """The daemon's resident set size (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        msg = f"no VmRSS for pid {self.pid}"
        raise RuntimeError(msg)

    # -- what is stored, what the daemon says -----------------------------------------
    @property
    def database(self) -> Path:
        return self.data_dir / "metrogate.db"

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.database.exists():
            return []
        connection = sqlite3.connect(self.database, timeout=30)
        try:
            return connection.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the daemon is still creating the store
                return []
            raise
        finally:
            connection.close()

    def stored_seq(self) -> int:
        """The highest committed seq (0 before the first commit)."""
        [(seq,)] = self._query("SELECT coalesce(max(seq), 0) FROM readings") or [(0,)]
        return int(seq)

    def head(self) -> tuple[int, str]:
        """The highest committed seq and its hash ((0, "") before the first commit)."""
        found = self._query("SELECT seq, hash FROM readings ORDER BY seq DESC LIMIT 1")
        return (int(found[0][0]), str(found[0][1])) if found else (0, "")

    def rows(self) -> list[tuple[int, str, bytes]]:
        return [
            (int(seq), str(hash_), bytes(body))
            for seq, hash_, body in self._query(
                "SELECT seq, hash, body FROM readings ORDER BY seq"
            )
        ]

    def integrity(self) -> str:
        """``PRAGMA integrity_check`` of the store ("ok" when sound)."""
        rows = self._query("PRAGMA integrity_check")
        return "; ".join(str(row[0]) for row in rows) if rows else "no store"

    def status(self) -> dict[str, Any]:
        return read_status(self.data_dir) or {}

    def states(self) -> dict[str, str]:
        """Each instrument's state from the status file (empty before the first status)."""
        instruments = self.status().get("instruments", {})
        return {name: str(health.get("state")) for name, health in instruments.items()}

    async def all_ok(self, timeout: float = 30.0) -> None:
        """Wait until every instrument is polled successfully."""
        await self.until(
            lambda: (s := self.states()) and set(s.values()) == {"ok"},
            "every instrument ok",
            timeout=timeout,
        )

    async def fresh_status(self, timeout: float = 30.0) -> dict[str, Any]:
        """The first status file written after this call."""
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return await self.until(
            lambda: (s := self.status()).get("time", "") > since and s, "a fresh status file",
            timeout=timeout,
        )  # fmt: skip

    async def connected(self) -> None:
        """Wait until the daemon says its forwarder is connected to the broker."""
        await self.until(lambda: self.status().get("broker_connected"), "a connected forwarder")

    async def caught_up(self, seq: int, after: str) -> None:
        """Wait until the forwarder, connected again, has forwarded up to `seq`."""
        await self.until(
            lambda: (
                (s := self.status()).get("broker_connected") and s.get("forwarded_seq", 0) >= seq
            ),
            f"the backlog forwarded {after}",
            timeout=120.0,
        )

    async def until(
        self, probe: Callable[[], T], what: str, *, timeout: float = 30.0, every: float = 0.1
    ) -> T:
        """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                msg = f"no {what} after {timeout} s; daemon log:\n{self.log()[-4000:]}"
                raise AssertionError(msg)
            await asyncio.sleep(every)

    async def wait_stored(self, seq: int, timeout: float = 60.0) -> int:
        """Wait until the store holds seq `seq`; return the highest stored seq."""
        return await self.until(
            lambda: (s := self.stored_seq()) >= seq and s, f"seq {seq} stored", timeout=timeout
        )

    async def wait_delivered(self, seq: int, timeout: float = DELIVERY_TIMEOUT) -> bool:
        """Wait until the subscriber holds every seq up to `seq`; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.collected.contiguous() < seq:
                    await asyncio.sleep(0.1)
                return True
        return False

    # -- the end of every scenario ------------------------------------------------------
    async def finish(self, scenario: str, **parameters: object) -> Counts:
        """Stop cleanly, let upstream catch up, count, record, and check the contracts."""
        code = await self.stop_daemon() if self.process is not None else 0
        duration = time.monotonic() - self.started_at
        caught_up = await self.wait_delivered(self.stored_seq())
        upstream = Upstream(self.rows(), list(self.collected.readings))
        produced, stored, delivered, lost, duplicated = upstream.counts()
        counts = Counts(
            scenario=scenario,
            duration=round(duration, 1),
            produced=produced,
            stored=stored,
            delivered=delivered,
            lost=lost,
            duplicated=duplicated,
            parameters={"daemon_starts": self.daemon_starts, **parameters},
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
        record(counts)
        log = self.log()
        assert code == 0, f"the daemon exited {code}:\n{log[-4000:]}"
        assert "Traceback" not in log, log[-8000:]
        assert "never retrieved" not in log, log[-8000:]  # an error nobody handled
        assert caught_up, f"upstream stopped at seq {self.collected.contiguous()} of {produced}"
        assert produced > 0
        assert lost == 0, counts.line()
        assert stored == produced  # seqs 1..produced, none skipped
        assert upstream.problems == []
        objects = ({"hash": hash_, **orjson.loads(body)} for _seq, hash_, body in upstream.rows)
        assert list(verify_chain(objects)) == []
        assert self.integrity() == "ok"
        verify = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "verify", "--config", str(self.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await verify.communicate()
        assert verify.returncode == 0, out.decode()
        return counts

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._stack.aclose()
        if self._broker_started:
            self.broker.stop()


def record(counts: Counts) -> None:
    """Print the counts' line and write them as JSON into the results directory."""
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{counts.scenario}.json").write_bytes(
        orjson.dumps(asdict(counts), option=orjson.OPT_INDENT_2)
    )
    print(counts.line())  # noqa: T201 - the one line each scenario reports


@contextlib.asynccontextmanager
async def fault_bench(tmp: Path) -> AsyncIterator[FaultBench]:
    bench = FaultBench(tmp)
    try:
        yield bench
    finally:
        await bench.aclose()
