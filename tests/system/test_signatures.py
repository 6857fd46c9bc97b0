# SPDX-License-Identifier: Apache-2.0
"""The real daemon signs checkpoints: they arrive upstream and verify with the shown key.

One MT-SICS balance simulator on a pty, a private mosquitto, `metrogate run` as a separate
process with ``checkpoint_every = 10``, and a subscriber in the test that keeps every
message as it arrived (as a collector would save them).
"""

import asyncio
import contextlib
import itertools
import signal
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from drivers.sim.mtsics import MtSicsSimulator
from gateway.keys import parse_public_keys
from tests.gateway.test_checkpoints import readme_verify_checkpoint
from tests.services import Mosquitto, spawn_daemon
from tests.subscriber import Collected, subscribed

STATION = "sig-station"
CONFIG = """\
[station]
id = "{station}"
data_dir = "{data_dir}"

[store]
batch_latency = 0.02

[upstream]
broker = "{broker}"
status_interval = 0.5
flush_timeout = 10.0
reconnect_min = 0.1
reconnect_max = 0.5
publish_timeout = 2.0

[signing]
checkpoint_every = 10
checkpoint_interval = 30.0

[[bus]]
id = "com1"
kind = "serial"
port = "{pty}"
timeout = 0.3

[[instrument]]
id = "balance-1"
bus = "com1"
driver = "mtsics"
command = "SI"
poll_interval = 0.05

[[instrument.channel]]
id = "mass"
quantity = "mass"
unit = "g"
resolution = 0.01
"""


@dataclass
class Bench:
    tmp: Path
    config: Path
    broker: Mosquitto
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "data" / "metrogate.db"

    async def start(self) -> asyncio.subprocess.Process:
        process = await spawn_daemon(self.config, self.tmp / "daemon.log")
        self.processes.append(process)
        return process

    async def stop(self, process: asyncio.subprocess.Process) -> None:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
        assert code == 0, self.log()

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def stored(self) -> int:
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        return 0

    async def wait_stored(self, count: int) -> None:
        async with asyncio.timeout(30):
            while not self.db.exists() or self.stored() < count:
                await asyncio.sleep(0.1)


async def metrogate(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def bench(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Bench]:
    async with MtSicsSimulator(weight_g=1000.0, noise_g=0.05, seed=3) as balance:
        config = tmp_path / "station.toml"
        config.write_text(
            CONFIG.format(
                station=STATION, data_dir=tmp_path / "data", broker=mosquitto.url, pty=balance.port
            )
        )
        bench = Bench(tmp_path, config, mosquitto)
        try:
            yield bench
        finally:  # a failed test must not leave a daemon behind
            for process in bench.processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def wait_for_checkpoint(upstream: Collected, seq: int) -> None:
    async with asyncio.timeout(20):
        while not any(c["seq"] == seq for c in upstream.checkpoints):
            await asyncio.sleep(0.05)


def last_seq(bench: Bench) -> int:
    with sqlite3.connect(bench.db) as conn:
        return int(conn.execute("SELECT max(seq) FROM readings").fetchone()[0])


async def test_checkpoints_arrive_verify_and_tampering_is_named(bench: Bench) -> None:
    verify_checkpoint = readme_verify_checkpoint()
    async with subscribed(
        bench.broker.port, f"metrogate/v1/{STATION}/#", identifier="sig-collector"
    ) as upstream:
        process = await bench.start()
        await bench.wait_stored(35)
        await bench.stop(process)
        last = last_seq(bench)
        await wait_for_checkpoint(upstream, last)  # the final one covers the last reading
    key_file = bench.tmp / "data" / "keys" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "created the station's signing key" in bench.log()

    code, shown, err = await metrogate("keys", "show", "--config", str(bench.config))
    assert code == 0, err
    public_keys = parse_public_keys(shown)
    assert len(public_keys) == 1
    trusted = bench.tmp / "trusted"
    trusted.mkdir()
    (trusted / f"{STATION}.pub").write_text(shown)

    unique = {c["signature"]: c for c in upstream.checkpoints}  # delivery is at-least-once
    seqs = [c["seq"] for c in unique.values()]
    assert seqs == sorted(seqs)
    assert seqs[-1] == last
    assert len(seqs) >= 3  # every 10 readings, and the final one
    assert all(b - a >= 10 for a, b in itertools.pairwise(seqs[:-1]))
    for checkpoint, received in zip(upstream.checkpoints, upstream.received_before, strict=True):
        assert set(checkpoint) == {"station", "seq", "hash", "time", "key", "signature"}
        assert checkpoint["station"] == STATION
        verify_checkpoint(checkpoint, public_keys, upstream.by_seq())
        assert received >= checkpoint["seq"]  # published after the readings it covers

    code, out, err = await metrogate("verify", "--config", str(bench.config))
    assert code == 0, out + err
    assert f"readings     {last} (seq 1..{last})" in out
    assert f"signed       up to seq {last} (the last)" in out

    capture = bench.tmp / "captured.jsonl"
    capture.write_bytes(b"\n".join(upstream.payloads) + b"\n")
    code, out, err = await metrogate("verify", "--file", str(capture), "--keys", str(trusted))
    assert code == 0, out + err

    with sqlite3.connect(bench.db) as conn:
        (body,) = conn.execute("SELECT body FROM readings WHERE seq = 17").fetchone()
        document = orjson.loads(body)
        document["value"] += 1.0
        conn.execute("UPDATE readings SET body = ? WHERE seq = 17", (orjson.dumps(document),))
    code, out, err = await metrogate("verify", "--config", str(bench.config))
    assert code == 1, out + err
    assert "hash       seq 17: content does not match its hash" in out
    assert "FAILED: 1 problems" in out


async def test_restart_and_rotation_keep_everything_verifiable(bench: Bench) -> None:
    async with subscribed(
        bench.broker.port, f"metrogate/v1/{STATION}/#", identifier="sig-collector"
    ) as upstream:
        process = await bench.start()
        await bench.wait_stored(15)
        await bench.stop(process)
        first_last = last_seq(bench)
        await wait_for_checkpoint(upstream, first_last)
        code, out, err = await metrogate("keys", "rotate", "--config", str(bench.config))
        assert code == 0, err
        process = await bench.start()
        await bench.wait_stored(first_last + 15)
        await bench.stop(process)
        last = last_seq(bench)
        await wait_for_checkpoint(upstream, last)
    assert "created the station's signing key" in bench.log()  # once, at the first start
    code, shown, _err = await metrogate("keys", "show", "--config", str(bench.config))
    public_keys = parse_public_keys(shown)
    assert len(public_keys) == 2  # the signing key first, then the earlier one
    assert parse_public_keys(out) == public_keys  # what `keys rotate` printed
    verify_checkpoint = readme_verify_checkpoint()
    used = set()
    for checkpoint in upstream.checkpoints:
        verify_checkpoint(checkpoint, public_keys, upstream.by_seq())
        used.add(checkpoint["key"])
    assert len(used) == 2
    code, out, err = await metrogate("verify", "--config", str(bench.config), "--json")
    assert code == 0, out + err
    report = orjson.loads(out)["reports"][0]
    assert (report["first_seq"], report["last_seq"], report["covered_seq"]) == (1, last, last)
    assert report["readings"] == last
