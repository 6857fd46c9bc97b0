# SPDX-License-Identifier: Apache-2.0
"""Benchmark: readings per second through calibrate → stamp → commit → publish (PUBACK).

Run:  .venv/bin/python bench/pipeline_bench.py [--readings 200000] [--broker mqtt://HOST:PORT]

Without --broker it starts a private mosquitto on a free loopback port (Debian's package).
The process is pinned to one CPU core. It prints the end-to-end rate (from the first reading
submitted to the broker's last PUBACK), the CPU time per reading, and each stage alone.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from calibration import Certificate
from gateway.config import UpstreamSection
from gateway.forward import Forwarder, group_messages
from gateway.pipeline import Acquired, ChannelSpec, Pipeline, measure
from gateway.stamp import Stamper, published_payload
from gateway.store import AsyncStore, Pending, Store
from gateway.tuning import keep_heap


def _certificate() -> Certificate:
    return Certificate.from_points(
        certificate_id="CAL-BENCH",
        unit="g",
        issuer="bench",
        kind="calibration",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        valid_until=datetime(2036, 1, 1, tzinfo=UTC),
        abscissa="indication",
        convention="correction",
        points=[
            (0.0, 0.0, 0.02, 2.0),
            (500.0, -0.10, 0.06, 2.0),
            (1000.0, -0.20, 0.08, 2.0),
            (2000.0, -0.35, 0.15, 2.0),
        ],
    )


def _readings(count: int, instruments: int = 20) -> list[Acquired]:
    certificate = _certificate()
    specs = [
        ChannelSpec(
            instrument=f"balance-{i}",
            channel="mass",
            quantity="mass",
            unit="g",
            resolution=0.01,
            certificate_id="CAL-BENCH",
            certificate=certificate,
        )
        for i in range(instruments)
    ]
    now = datetime.now(UTC)
    return [
        Acquired(
            spec=specs[i % instruments],
            indication=100.0 + (i % 1800) + 0.01 * (i % 7),
            unit="g",
            stable=True,
            time=now,
        )
        for i in range(count)
    ]


@contextlib.contextmanager
def _mosquitto(workdir: Path) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_inflight_messages 100\nmax_queued_messages 100000\n"
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(5)


def _stage_figures(count: int, workdir: Path) -> None:
    """Each stage alone, in the daemon's steady state: batches of 5000, CPU time."""
    batch_size = 5000
    batch = _readings(batch_size)
    stamper = Stamper("bench")
    store = Store.open(f"sqlite:///{workdir / 'stages.db'}", station="bench")
    seconds = dict.fromkeys(("calibrate", "stamp", "commit", "encode messages"), 0.0)
    rounds = max(1, count // batch_size)
    for _ in range(rounds):
        started = time.process_time()
        measured = measure(batch)
        seconds["calibrate"] += time.process_time() - started
        started = time.process_time()
        stamped = stamper.stamp(measured)
        seconds["stamp"] += time.process_time() - started
        started = time.process_time()
        store.append(stamped)
        seconds["commit"] += time.process_time() - started
        stamper.advance(stamped)
        started = time.process_time()
        pending = [Pending(s.seq, s.measured.instrument, s.hash, s.body) for s in stamped]
        for _instrument, items in group_messages(pending, 500):
            published_payload((item.hash, item.body) for item in items)
        seconds["encode messages"] += time.process_time() - started
    store.close()
    total = rounds * batch_size
    for name, spent in seconds.items():
        print(
            f"  {name:<18} {1e6 * spent / total:6.2f} µs CPU per reading "
            f"({total / spent:>10,.0f} readings/s)"
        )
    print("  (commit: SQLite in WAL mode, synchronous=FULL, one transaction per 5000 readings)")


async def _end_to_end(count: int, broker: str, workdir: Path) -> None:
    batch = _readings(count)
    store = await AsyncStore.open(f"sqlite:///{workdir / 'e2e.db'}", station="bench")
    upstream = UpstreamSection(broker=broker, max_readings_per_message=500, max_inflight=20)
    forwarder = Forwarder(upstream, "bench", store, forwarded_seq=0, window=10_000)
    pipeline = Pipeline(
        store, Stamper("bench"), batch_max=5000, batch_latency=0.02, on_commit=forwarder.notify
    )
    forward_task = asyncio.create_task(forwarder.run())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    pipeline_task = asyncio.create_task(pipeline.run())
    await pipeline.submit(batch)
    await pipeline.close()
    await pipeline_task
    committed_s = time.perf_counter() - wall0
    await forwarder.wait_forwarded(count)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    forward_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await forward_task
    await store.aclose()
    print(
        f"  committed {count:,} readings in {committed_s:.2f} s; all PUBACKed after "
        f"{wall:.2f} s ({forwarder.published_messages} messages)"
    )
    print(
        f"  end to end: {count / wall:,.0f} readings/s on one core; "
        f"CPU {1e6 * cpu / count:.1f} µs per reading"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--broker", default=None)
    args = parser.parse_args()
    keep_heap()  # as `metrogate run` does
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory(prefix="metrogate-bench-") as tmp:
        workdir = Path(tmp)
        print(
            f"metrogate pipeline benchmark: {args.readings:,} readings, Python "
            f"{sys.version.split()[0]}, pinned to one core"
        )
        print("stages alone (steady state):")
        _stage_figures(args.readings, workdir)
        print("calibrate → stamp → commit → publish with PUBACK:")
        with contextlib.ExitStack() as stack:
            broker = args.broker or stack.enter_context(_mosquitto(workdir))
            asyncio.run(_end_to_end(args.readings, broker, workdir))


if __name__ == "__main__":
    main()
