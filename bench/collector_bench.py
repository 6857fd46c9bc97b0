# SPDX-License-Identifier: Apache-2.0
"""Benchmark: verified readings per second from MQTT into PostgreSQL, 1 and 2 collectors.

Run:  .venv/bin/python bench/collector_bench.py [--readings 200000] [--stations 8]
      [--per-message 500] [--db postgresql://…/postgres] [--fsync on|off]

Without --db it starts a private PostgreSQL (Debian's binaries, on a free loopback port,
``fsync`` as asked: on by default); it always starts a private mosquitto. Readings are
stamped beforehand with `gateway.stamp.Stamper` for several stations, published as the
station publishes (JSON arrays on ``metrogate/v1/<station>/<instrument>/readings``, QoS 1),
and collected by 1, then 2 ``metrogate collect`` processes sharing one subscription group,
each run into a fresh database. The clock runs from the first publish until every reading
is committed (the sum of the stations' stored counts reaches N). Then each stage alone, in
this process: triage (JSON parse, canonical JSON, SHA-256, field checks), the store's apply
(COPY, chain bookkeeping, commit) and MQTT delivery with no work behind it.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.collector import load_trusted_keys, triage_readings
from gateway.collector_store import CollectorStore
from gateway.stamp import Measured, Stamper, published_payload
from gateway.tuning import keep_heap, settle

PREFIX = "metrogate/v1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(port)


@contextlib.contextmanager
def _mosquitto(workdir: Path) -> Iterator[int]:
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
        "max_inflight_messages 100\nmax_queued_messages 1000000\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(5)


@contextlib.contextmanager
def _postgres(workdir: Path, *, fsync: str) -> Iterator[str]:
    """A throwaway cluster (as ``postgres`` when run as root: PostgreSQL refuses root)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    initdb, pg_ctl = (str(bins[0] / name) for name in ("initdb", "pg_ctl"))
    datadir, port = workdir / "pgdata", _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        workdir.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    init = [*prefix, initdb, "-D", str(datadir), "-A", "trust", "-U", "postgres"]
    subprocess.run(init, check=True, capture_output=True)
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync={fsync}"
    log = str(workdir / "pg.log")
    start = [*prefix, pg_ctl, "-D", str(datadir), "-l", log, "-w", "-o", options, "start"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [*prefix, pg_ctl, "-D", str(datadir), "-m", "fast", "stop"]
        subprocess.run(stop, check=False, capture_output=True)


def _fresh_database(base_url: str, name: str) -> str:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return base_url.rsplit("/", 1)[0] + "/" + name


def _messages(readings: int, stations: int, per_message: int) -> list[tuple[str, bytes]]:
    """Stamped messages of every station, interleaved as stations publishing at once."""
    per_station = readings // stations
    queues: list[list[tuple[str, bytes]]] = []
    for number in range(stations):
        station = f"bench-{number:02d}"
        stamper = Stamper(station)
        measured = [
            Measured(
                instrument=f"balance-{i % 4}", channel="mass", quantity="mass",
                indication=100.0 + (i % 1800) + 0.01 * (i % 7), value=99.9 + (i % 1800),
                unit="g", u=0.04, expanded_u=0.08, k=2.0, certificate="CAL-BENCH",
                chain=("CAL-BENCH",), time="2026-11-27T00:28:49.806211Z", flags=(),
            )
            for i in range(per_station)
        ]  # fmt: skip
        stamped = stamper.stamp(measured)
        queue = []
        for start in range(0, per_station, per_message):
            chunk = stamped[start : start + per_message]
            # one instrument per topic, as the forwarder groups them
            topic = f"{PREFIX}/{station}/{chunk[0].measured.instrument}/readings"
            queue.append((topic, published_payload((s.hash, s.body) for s in chunk)))
        queues.append(queue)
    return [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]


def _keys(workdir: Path, stations: int) -> Path:
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    public = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for number in range(stations):
        (keys / f"bench-{number:02d}.pub").write_text(raw.hex() + "\n")
    return keys


async def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-publisher", max_inflight_messages=40
    ) as client:
        client.pending_calls_threshold = 100
        window = asyncio.Semaphore(40)

        async def one(topic: str, payload: bytes) -> None:
            async with window:
                await client.publish(topic, payload, qos=1)

        async with asyncio.TaskGroup() as group:
            for topic, payload in messages:
                group.create_task(one(topic, payload))


def _stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(readings), 0) FROM stations").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Setup:
    port: int
    base_url: str
    keys: Path
    messages: list[tuple[str, bytes]]
    total: int
    workdir: Path


def _run_collectors(setup: Setup, processes: int) -> None:
    url = _fresh_database(setup.base_url, f"bench_{processes}")
    CollectorStore.open(url, client_id="bench-schema").close()  # schema outside the clock
    children = []
    before = os.times()
    for number in range(processes):
        log = setup.workdir / f"collector-{processes}-{number}.log"
        argv = [
            sys.executable, "-m", "gateway.collector", "collect",
            "--broker", f"mqtt://127.0.0.1:{setup.port}", "--db", url,
            "--keys", str(setup.keys), "--group", f"bench-{processes}",
            "--client-id", f"bench-{processes}-{number}",
        ]  # fmt: skip
        with log.open("wb") as sink:
            children.append((subprocess.Popen(argv, stderr=sink), log))
    for _, log in children:  # subscribed: from now on the broker keeps their messages
        while b"collecting from" not in log.read_bytes():
            time.sleep(0.05)
    started = time.perf_counter()
    publisher = threading.Thread(target=asyncio.run, args=(_publish(setup.port, setup.messages),))
    publisher.start()
    while (stored := _stored(url)) < setup.total:
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    publisher.join()
    for child, _ in children:
        child.send_signal(signal.SIGTERM)
    for child, log in children:
        if child.wait(30) != 0:
            print(log.read_text())
    after = os.times()
    cpu = after.children_user - before.children_user
    cpu += after.children_system - before.children_system
    with psycopg.connect(url) as conn:
        shares = conn.execute(
            "SELECT client_id, readings FROM collectors "
            "WHERE client_id <> 'bench-schema' ORDER BY 1"
        ).fetchall()
        problems = conn.execute(
            "SELECT (SELECT count(*) FROM quarantine), "
            "(SELECT count(*) FROM stations WHERE head_seq <> tail_seq OR open_gaps > 0)"
        ).fetchone()
    share = ", ".join(f"{name}: {count}" for name, count in shares)
    print(
        f"{processes} collector process(es): {stored / elapsed:>9,.0f} verified readings/s "
        f"({stored} in {elapsed:.2f} s; collectors' CPU {1e6 * cpu / stored:.1f} µs/reading "
        f"including start-up; {share}; quarantined {problems[0] if problems else '?'}, "
        f"stations with gaps {problems[1] if problems else '?'})"
    )


def _stage_figures(
    base_url: str, keys_dir: Path, messages: list[tuple[str, bytes]], total: int
) -> None:
    """Triage and apply batch by batch, as a collector does, timing each on its own."""
    keys = load_trusted_keys(keys_dir)
    url = _fresh_database(base_url, "bench_stages")
    store = CollectorStore.open(url, client_id="bench-stages")
    settle()
    per_batch = max(1, 5000 // max(1, len(triage_readings(*messages[0], keys, PREFIX).readings)))
    triage_cpu = apply_cpu = apply_wall = 0.0
    for start in range(0, len(messages), per_batch):
        cpu = time.process_time()
        batch = [
            triage_readings(topic, payload, keys, PREFIX)
            for topic, payload in messages[start : start + per_batch]
        ]
        triage_cpu += time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        store.apply(batch)
        apply_wall += time.perf_counter() - wall
        apply_cpu += time.process_time() - cpu
    store.close()
    triage_us = 1e6 * triage_cpu / total
    print(f"  triage (parse, canonical JSON, SHA-256, checks): {triage_us:.2f} µs CPU/reading")
    print(
        f"  store apply (COPY + chain bookkeeping + commit, {per_batch} messages a batch, one "
        f"connection): {total / apply_wall:,.0f} readings/s; {1e6 * apply_cpu / total:.2f} µs "
        f"client CPU/reading, {1e6 * (apply_wall - apply_cpu) / total:.2f} µs/reading waiting "
        "for PostgreSQL"
    )


async def _delivery_only(port: int, messages: list[tuple[str, bytes]], total: int) -> None:
    received = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-sink", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"$share/sink/{PREFIX}/+/+/readings", qos=1)
        started = time.perf_counter()
        publisher = asyncio.create_task(_publish(port, messages))
        async for message in client.messages:
            received += bytes(message.payload).count(b'"hash"')
            if received >= total:
                break
        elapsed = time.perf_counter() - started
        await publisher
    rate = total / elapsed
    print(f"  MQTT delivery alone (publish + receive, QoS 1, no work): {rate:,.0f} readings/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--stations", type=int, default=8)
    parser.add_argument("--per-message", type=int, default=500)
    parser.add_argument("--db", default=None, help="a PostgreSQL server URL (default: private)")
    parser.add_argument("--fsync", default="on", choices=["on", "off"])
    args = parser.parse_args()
    keep_heap()
    total = (args.readings // args.stations) * args.stations
    messages = _messages(total, args.stations, args.per_message)
    print(
        f"{total} readings from {args.stations} stations, {args.per_message} per message "
        f"({len(messages)} messages); {os.cpu_count()} CPUs; PostgreSQL fsync={args.fsync}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        workdir.chmod(0o755)  # PostgreSQL's user must reach its data directory below
        keys = _keys(workdir, args.stations)
        (workdir / "mq").mkdir()
        port = stack.enter_context(_mosquitto(workdir / "mq"))
        if args.db:
            base_url = args.db
        else:
            (workdir / "pg").mkdir()
            base_url = stack.enter_context(_postgres(workdir / "pg", fsync=args.fsync))
        setup = Setup(port, base_url, keys, messages, total, workdir)
        for processes in (1, 2):
            _run_collectors(setup, processes)
        print("each stage alone, in one process:")
        _stage_figures(base_url, keys, messages, total)
        asyncio.run(_delivery_only(port, messages, total))


if __name__ == "__main__":
    main()
