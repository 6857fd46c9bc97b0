# SPDX-License-Identifier: Apache-2.0
"""Two real collector processes on one MQTT v5 shared subscription, a private mosquitto and
PostgreSQL; a publisher sends several stations' stamped readings as stations do, with
re-sends and replays. Every reading must land in PostgreSQL exactly once, verified.
"""

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from gateway.stamp import Stamped, Stamper, published_payload, verify_chain
from tests.gateway.factories import measured
from tests.services import Mosquitto

PREFIX = "metrogate/v1"
STATIONS = ("plant-a", "plant-b", "plant-c")
PER_STATION = 600
PER_MESSAGE = 20


@pytest.fixture
def db_url(postgres_url: str) -> Iterator[str]:
    admin = "postgresql://" + postgres_url.split("://", 1)[1]
    name = f"collectors_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


class PostgresProxy:
    """A TCP relay to PostgreSQL that can freeze: queries then hang, as on a cut network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "PostgresProxy":
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cut every relayed connection: PostgreSQL rolls back what they had begun."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()


@dataclass
class Collectors:
    """Collector processes of one test, all in one shared-subscription group."""

    broker: Mosquitto
    db: str
    workdir: Path
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def keys(self) -> Path:
        directory = self.workdir / "keys"
        if not directory.exists():
            directory.mkdir()
            private = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
            public = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            for station in STATIONS:
                (directory / f"{station}.pub").write_text(public.hex() + "\n")
        return directory

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    async def start(self, name: str, *, db: str | None = None) -> None:
        log = self.log(name)
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as sink:
            self.processes[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import sys; from gateway.collector import main; sys.exit(main(sys.argv[1:]))",
                "collect", "--broker", self.broker.url, "--db", db or self.db,
                "--keys", str(self.keys()), "--group", "test-collectors", "--client-id", name,
                "--batch-max", "200",
                stderr=sink,
            )  # fmt: skip
        async with asyncio.timeout(20):
            while b"collecting from" not in log.read_bytes()[offset:]:
                assert self.processes[name].returncode is None, log.read_text()
                await asyncio.sleep(0.05)

    async def kill(self, name: str) -> None:
        self.processes[name].kill()
        await self.processes[name].wait()

    async def stop_all(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return {name: await process.wait() for name, process in self.processes.items()}


@contextlib.asynccontextmanager
async def collectors(
    mosquitto: Mosquitto, db_url: str, tmp_path: Path
) -> AsyncIterator[Collectors]:
    running = Collectors(mosquitto, db_url, tmp_path)
    try:
        yield running
    finally:
        for process in running.processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()


def station_messages() -> tuple[dict[str, list[Stamped]], list[tuple[str, bytes]]]:
    """Every station's readings, and their messages interleaved as stations publish them."""
    readings = {
        station: Stamper(station).stamp(
            [measured(100.0 + i, instrument=f"balance-{i % 2}") for i in range(PER_STATION)]
        )
        for station in STATIONS
    }
    queues = []
    for station, stamped in readings.items():
        queue = []
        for start in range(0, PER_STATION, PER_MESSAGE):
            chunk = stamped[start : start + PER_MESSAGE]
            for instrument in ("balance-0", "balance-1"):  # one message per instrument
                part = [s for s in chunk if s.measured.instrument == instrument]
                topic = f"{PREFIX}/{station}/{instrument}/readings"
                queue.append((topic, published_payload((s.hash, s.body) for s in part)))
        queues.append(queue)
    return readings, [message for round_ in zip(*queues, strict=True) for message in round_]


async def publish(port: int, messages: Sequence[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"publisher-{uuid.uuid4()}") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def rows(url: str, text: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(text.encode(), params).fetchall()


async def wait_stored(url: str, count: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while rows(url, "SELECT coalesce(sum(readings), 0) FROM stations") != [(count,)]:
            await asyncio.sleep(0.1)


def check_stored_once(url: str, readings: dict[str, list[Stamped]]) -> None:
    """Every reading stored exactly once, as the station made it, every chain whole."""
    total = len(STATIONS) * PER_STATION
    assert rows(url, "SELECT count(*), count(DISTINCT id) FROM readings") == [(total, total)]
    assert rows(url, "SELECT count(*) FROM quarantine") == [(0,)]
    states = rows(url, "SELECT station, head_seq, tail_seq, open_gaps, flagged FROM stations")
    assert sorted(states) == [
        (station, PER_STATION, PER_STATION, 0, False) for station in STATIONS
    ]
    for station, stamped in readings.items():
        stored = rows(
            url,
            "SELECT id::text, hash, body FROM readings WHERE station = %s ORDER BY seq",
            station,
        )
        assert [(id_, hash_) for id_, hash_, _ in stored] == [(s.id, s.hash) for s in stamped]
        objects = [{"hash": hash_, **orjson.loads(body)} for _, hash_, body in stored]
        assert list(verify_chain(objects)) == []


async def test_two_collectors_share_the_stations_and_store_each_reading_once(
    mosquitto: Mosquitto, db_url: str, tmp_path: Path
) -> None:
    readings, messages = station_messages()
    async with collectors(mosquitto, db_url, tmp_path) as running:
        await asyncio.gather(running.start("collector-1"), running.start("collector-2"))
        # At-least-once from the stations: a window published twice after a reconnect,
        # then a whole replay of the first hundred messages.
        resent = messages[40:60]
        await publish(mosquitto.port, [*messages[:60], *resent, *messages[60:], *messages[:100]])
        await wait_stored(db_url, len(STATIONS) * PER_STATION)
        await asyncio.sleep(0.5)  # the last duplicates are committed too
        assert await running.stop_all() == {"collector-1": 0, "collector-2": 0}
    check_stored_once(db_url, readings)
    shares = dict(rows(db_url, "SELECT client_id, readings FROM collectors"))
    assert set(shares) == {"collector-1", "collector-2"}
    assert all(share > 0 for share in shares.values()), shares  # both took part of the load
    assert sum(shares.values()) == len(STATIONS) * PER_STATION
    [(duplicates,)] = rows(db_url, "SELECT sum(duplicates) FROM stations")
    assert duplicates == (len(resent) + 100) * PER_MESSAGE // 2


async def test_a_collector_killed_before_its_commit_loses_nothing(
    mosquitto: Mosquitto, db_url: str, tmp_path: Path
) -> None:
    """Messages are acknowledged only once committed: SIGKILL loses none of them.

    collector-1 reaches PostgreSQL through a relay that freezes, so its commits hang while
    MQTT messages keep arriving; then it is killed. Had it acknowledged messages on
    receipt, the broker would have forgotten them and the readings would be missing; its
    persistent session gets them again when it comes back under the same client id.
    """
    readings, messages = station_messages()
    total = len(STATIONS) * PER_STATION
    port = int(db_url.rsplit(":", 1)[1].split("/", 1)[0])
    async with (
        PostgresProxy(port) as proxy,
        collectors(mosquitto, db_url, tmp_path) as running,
    ):
        relayed = db_url.replace(f":{port}/", f":{proxy.port}/")
        await running.start("collector-1", db=relayed)
        await running.start("collector-2")
        proxy.flowing.clear()
        await publish(mosquitto.port, messages)
        await asyncio.sleep(2.0)  # collector-2 stores what it can; collector-1 hangs
        [(stored,)] = rows(db_url, "SELECT coalesce(sum(readings), 0) FROM stations")
        assert stored < total
        await running.kill("collector-1")
        await proxy.close()  # PostgreSQL rolls back its open transaction, freeing the lock
        await running.start("collector-1")  # same client id: the same persistent session
        await wait_stored(db_url, total)
        assert (await running.stop_all())["collector-2"] == 0
    check_stored_once(db_url, readings)
    [(share,)] = rows(db_url, "SELECT readings FROM collectors WHERE client_id = 'collector-1'")
    assert share > 0  # what it had received but not acknowledged came back to it
