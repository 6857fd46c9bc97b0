# SPDX-License-Identifier: Apache-2.0
"""The real daemon (`metrogate run`, a separate process) with both simulators and mosquitto.

The simulators run in the test's event loop (a pty pair for the balance, a pymodbus server for
the meter); the daemon talks to them through its real transports and forwards to a private
mosquitto; a subscriber in the test collects what arrives upstream.
"""

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from sqlalchemy import create_engine, text

from drivers.sim.mtsics import MtSicsSimulator
from drivers.sim.sdm630 import Sdm630Simulator
from gateway.cli import main as cli_main
from gateway.stamp import verify_chain
from gateway.status import read_status
from gateway.store import Store
from tests.services import Mosquitto, spawn_daemon
from tests.subscriber import Collected, subscribed

STATION = """\
[station]
id = "e2e-station"
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

[[bus]]
id = "com1"
kind = "serial"
port = "{pty}"
timeout = 0.3

[[bus]]
id = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {modbus_port}
timeout = 0.3

[[instrument]]
id = "balance-1"
bus = "com1"
driver = "mtsics"
command = "SI"
poll_interval = 0.1

[[instrument.channel]]
id = "mass"
quantity = "mass"
unit = "g"
resolution = 0.01
certificate = "CAL-1"

[[instrument]]
id = "meter-1"
bus = "lan"
driver = "modbus"
register_map = "sdm630"
poll_interval = 0.2

[[instrument.channel]]
id = "voltage-l1"
source = "voltage_l1"
quantity = "voltage"
unit = "V"
resolution = 0.01

[[instrument.channel]]
id = "power"
source = "total_power"
quantity = "active power"
unit = "W"
resolution = 0.1

[[certificate]]
id = "CAL-1"
issuer = "Provincial Institute"
valid_from = 2026-01-01
valid_until = 2099-12-31
unit = "g"
points = [{{ x = 500.0, c = -0.10, U = 0.06 }}, {{ x = 1500.0, c = -0.20, U = 0.08 }}]
"""


SCHEMA = orjson.loads((Path(__file__).parents[2] / "schema" / "readings.schema.json").read_bytes())


def float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


@dataclass
class Bench:
    """Simulators, broker and a station file pointing at them."""

    tmp: Path
    balance: MtSicsSimulator
    meter: Sdm630Simulator
    broker: Mosquitto
    config: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    def configure(self, **replacements: str) -> None:
        """Edit the station file: each key's whole line becomes ``key = value``."""
        lines = self.config.read_text().splitlines()
        for key, value in replacements.items():
            lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in lines]
        self.config.write_text("\n".join(lines) + "\n")

    async def daemon(
        self, *extra: str, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        process = await spawn_daemon(self.config, self.tmp / "daemon.log", *extra, env=env)
        self.processes.append(process)
        return process

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def store(self) -> Store:
        return Store.open(
            f"sqlite:///{self.tmp / 'data' / 'metrogate.db'}", station="e2e-station", create=False
        )


@pytest.fixture
async def bench(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Bench]:
    async with (
        MtSicsSimulator(weight_g=1000.0, noise_g=0.05, seed=7) as balance,
        Sdm630Simulator(host="127.0.0.1", port=0) as meter,
    ):
        meter.set("voltage_l1", 231.2)
        meter.set("total_power", 1534.5)
        config = tmp_path / "station.toml"
        config.write_text(
            STATION.format(
                data_dir=tmp_path / "data",
                broker=mosquitto.url,
                pty=balance.port,
                modbus_port=meter.port,
            )
        )
        bench = Bench(tmp_path, balance, meter, mosquitto, config)
        try:
            yield bench
        finally:  # a failed test must not leave a daemon behind
            for process in bench.processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def stop(process: asyncio.subprocess.Process, bench: Bench) -> int:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        code = await process.wait()
    assert code == 0, bench.log()
    return code


async def wait_stored(bench: Bench, count: int, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            with contextlib.suppress(Exception):
                store = bench.store()
                try:
                    if store.count() >= count:
                        return
                finally:
                    store.close()
            await asyncio.sleep(0.1)


def stored(bench: Bench) -> tuple[list[dict[str, Any]], int]:
    store = bench.store()
    try:
        return store.readings(ascending=True), store.forwarded_seq()
    finally:
        store.close()


def check_upstream(collected: Collected, rows: list[dict[str, Any]]) -> None:
    """Every stored reading arrived upstream exactly as stored, and the chain verifies."""
    received = collected.by_seq()
    assert sorted(received) == [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        published = received[row["seq"]]
        assert published["hash"] == row["hash"]
        assert {k: v for k, v in published.items() if k != "hash"} == orjson.loads(row["body"])
        assert published == {k: v for k, v in row.items() if k != "body"}
    assert list(verify_chain(received[seq] for seq in sorted(received))) == []
    jsonschema.validate(collected.readings, SCHEMA)


async def test_every_reading_served_arrives_upstream_unchanged(bench: Bench) -> None:
    async with subscribed(bench.broker.port) as collected:
        process = await bench.daemon()
        await wait_stored(bench, 30)
        await stop(process, bench)
        rows, forwarded = stored(bench)
        await collected.wait_for_seq(len(rows))
    assert forwarded == len(rows)  # SIGTERM flushed everything committed
    check_upstream(collected, rows)

    # The balance: what the simulator served, in order, is what was stored (SIGTERM may
    # interrupt the very last exchange).
    masses = [r for r in rows if r["instrument"] == "balance-1"]
    served = [(value, unit) for value, unit, _stable in bench.balance.served]
    assert [(r["indication"], r["unit"]) for r in masses] == served[: len(masses)]
    assert len(masses) >= len(served) - 1
    assert all(r["certificate"] == "CAL-1" and r["U"] is not None for r in masses)
    unstable = {i for i, (_v, _u, stable) in enumerate(bench.balance.served) if not stable}
    assert all(("UNSTABLE" in r["flags"]) == (i in unstable) for i, r in enumerate(masses))

    # The meter: float32 values from the registers, flagged as uncertified.
    volts = [r for r in rows if r["channel"] == "voltage-l1"]
    watts = [r for r in rows if r["channel"] == "power"]
    assert volts
    assert len(volts) == len(watts)
    assert {r["indication"] for r in volts} == {float32(231.2)}
    assert {r["indication"] for r in watts} == {float32(1534.5)}
    assert all(r["flags"] == ["NO_CERTIFICATE"] for r in volts)
    statuses = [s["state"] for s in collected.status]
    assert statuses[0] == "online"
    assert statuses[-1] == "offline"


async def test_broker_restart_mid_run_loses_nothing(bench: Bench) -> None:
    async with subscribed(bench.broker.port) as collected:
        process = await bench.daemon()
        await wait_stored(bench, 10)
        bench.broker.stop()
        await asyncio.sleep(1.5)  # readings keep being acquired and committed meanwhile
        bench.broker.start()
        await asyncio.sleep(1.0)
        await stop(process, bench)
        rows, forwarded = stored(bench)
        await collected.wait_for_seq(len(rows))
    assert forwarded == len(rows)
    check_upstream(collected, rows)
    assert "buffering in the store" in bench.log()


async def test_sigkill_then_restart_delivers_everything_committed(bench: Bench) -> None:
    async with subscribed(bench.broker.port) as collected:
        process = await bench.daemon()
        await wait_stored(bench, 15)
        process.kill()
        await process.wait()
        async with asyncio.timeout(10):  # the broker publishes the last will
            while not collected.status or collected.status[-1]["state"] != "offline":
                await asyncio.sleep(0.05)
        before, _ = stored(bench)
        process = await bench.daemon()
        await wait_stored(bench, len(before) + 10)
        await stop(process, bench)
        rows, forwarded = stored(bench)
        await collected.wait_for_seq(len(rows))
    assert forwarded == len(rows)
    check_upstream(collected, rows)  # seq never reused or skipped across the kill


async def test_garbage_from_one_instrument_does_not_stall_the_other(bench: Bench) -> None:
    bench.balance.fault = "garbage"
    async with subscribed(bench.broker.port) as collected:
        process = await bench.daemon()
        await wait_stored(bench, 16)  # meter readings keep coming
        async with asyncio.timeout(10):
            while not any(
                s.get("instruments", {}).get("balance-1", {}).get("state") == "down"
                for s in collected.status
            ):
                await asyncio.sleep(0.05)
        bench.balance.fault = None  # the balance recovers by itself
        async with asyncio.timeout(15):
            while not any(r["instrument"] == "balance-1" for r in collected.readings):
                await asyncio.sleep(0.05)
        await stop(process, bench)
    health = next(
        s
        for s in collected.status
        if s.get("instruments", {}).get("balance-1", {}).get("state") == "down"
    )
    assert health["instruments"]["balance-1"]["errors"]["protocol"] >= 3
    assert health["instruments"]["meter-1"]["state"] == "ok"
    log = bench.log()
    assert "instrument balance-1 degraded" in log
    assert "instrument balance-1 recovered" in log
    assert "Traceback" not in log


async def test_restart_continues_the_chain(bench: Bench) -> None:
    for _ in range(2):
        process = await bench.daemon()
        before, _ = stored(bench) if (bench.tmp / "data" / "metrogate.db").exists() else ([], 0)
        await wait_stored(bench, len(before) + 5)
        await stop(process, bench)
    rows, _ = stored(bench)
    objects = [{"hash": r["hash"], **orjson.loads(r["body"])} for r in rows]
    assert [o["seq"] for o in objects] == list(range(1, len(rows) + 1))
    assert list(verify_chain(objects)) == []


async def test_readings_command_shows_stamps_and_forwarding(bench: Bench) -> None:
    process = await bench.daemon()
    await wait_stored(bench, 8)
    await stop(process, bench)
    result = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "readings",
        "--config",
        str(bench.config),
        "--instrument",
        "balance-1",
        "--limit",
        "3",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await result.communicate()
    assert result.returncode == 0, err.decode()
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert all(line["forwarded"] for line in lines)
    assert all(line["reading"]["instrument"] == "balance-1" for line in lines)
    table = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "readings",
        "--config",
        str(bench.config),
        stdout=asyncio.subprocess.PIPE,
    )
    text = (await table.communicate())[0].decode()
    assert "balance-1/mass" in text
    assert "meter-1/voltage-l1" in text


async def test_unwritable_database_stops_with_a_clear_message(bench: Bench) -> None:
    (bench.tmp / "data").write_text("a file where the data directory should be")
    process = await bench.daemon()
    async with asyncio.timeout(20):
        code = await process.wait()
    assert code == 1
    assert "cannot start: cannot open store" in bench.log()
    assert "Traceback" not in bench.log()


async def test_malformed_config_is_refused_clearly(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[station]\nid = "x"\n\n[[instrument]]\nid = "b"\nbus = "nowhere"\n'
        'driver = "mtsics"\npoll_interval = "often"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await process.communicate()
    text = err.decode()
    assert process.returncode == 1
    assert f"{config}:8: instrument[0].poll_interval: Input should be a valid number" in text
    assert f"{config}:4: instrument[0].channel: required key is missing" in text
    assert "Traceback" not in text


async def test_systemd_notify_and_watchdog(bench: Bench) -> None:
    address = bench.tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.setblocking(False)  # noqa: FBT003 - the stdlib's signature
        loop = asyncio.get_running_loop()
        process = await bench.daemon(
            env={"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}
        )
        messages: list[str] = []
        async with asyncio.timeout(20):
            while messages.count("WATCHDOG=1") < 3:
                messages.append((await loop.sock_recv(sock, 4096)).decode())
        assert messages[0] == "READY=1\nSTATUS=polling"  # READY comes before any watchdog ping
        await stop(process, bench)
        async with asyncio.timeout(5):
            while "STOPPING=1" not in messages:
                messages.append((await loop.sock_recv(sock, 4096)).decode())


async def test_postgresql_store(bench: Bench, postgres_url: str) -> None:
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS metrogate_e2e"))
        conn.execute(text("CREATE DATABASE metrogate_e2e"))
    engine.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/metrogate_e2e"
    bench.configure(batch_latency=f'0.02\nurl = "{url}"')
    async with subscribed(bench.broker.port) as collected:
        process = await bench.daemon()
        async with asyncio.timeout(20):
            while len(collected.readings) < 10:
                await asyncio.sleep(0.05)
        await stop(process, bench)
        store = Store.open(url, station="e2e-station", create=False)
        try:
            rows, forwarded = store.readings(ascending=True), store.forwarded_seq()
        finally:
            store.close()
        await collected.wait_for_seq(len(rows))
    assert forwarded == len(rows) >= 10
    check_upstream(collected, rows)


async def _mount(*args: str) -> None:
    process = await asyncio.create_subprocess_exec("mount", *args)
    assert await process.wait() == 0


@pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)"
)
async def test_full_disk_pauses_acquisition_and_resumes_by_itself(bench: Bench) -> None:
    data = bench.tmp / "data"
    data.mkdir()
    await _mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(data))
    try:
        bench.configure(poll_interval="0.01", batch_latency="0.0")
        async with subscribed(bench.broker.port) as collected:
            process = await bench.daemon()
            async with asyncio.timeout(60):
                while "ALARM: acquisition paused" not in bench.log():
                    assert process.returncode is None, bench.log()
                    await asyncio.sleep(0.1)
            assert "database or disk is full" in bench.log()
            async with asyncio.timeout(20):  # the alarm reaches the status file, in place;
                while True:  # acquisition goes on into memory (bounded) meanwhile
                    status = read_status(data) or {}
                    if status.get("acquisition") == "paused" and status["backlog"] > 0:
                        break
                    await asyncio.sleep(0.1)
            assert "disk is full" in status["alarm"]
            paused_at, _ = stored(bench)
            await asyncio.sleep(1.0)
            assert process.returncode is None  # paused, not stopped
            await _mount("-o", "remount,size=16m", str(data))  # the operator frees space
            async with asyncio.timeout(30):
                while "acquisition resumed" not in bench.log():
                    await asyncio.sleep(0.1)
            await wait_stored(bench, len(paused_at) + 50)
            async with asyncio.timeout(20):
                while (read_status(data) or {}).get("acquisition") != "running":
                    await asyncio.sleep(0.1)
            await stop(process, bench)
            rows, forwarded = stored(bench)
            await collected.wait_for_seq(len(rows))
        log = bench.log()
        assert "Traceback" not in log
        assert rows[: len(paused_at)] == paused_at  # nothing committed was touched
        assert forwarded == len(rows)
        check_upstream(collected, rows)  # seq contiguous, every reading delivered, chain ok
    finally:
        umount = await asyncio.create_subprocess_exec("umount", "-l", str(data))
        await umount.wait()


async def metrogate(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_status_command_shows_health_while_running_and_after(bench: Bench) -> None:
    code, _out, err = await metrogate("status", "--config", str(bench.config))
    assert code == 1
    assert "no status" in err
    bench.balance.fault = "silent"
    process = await bench.daemon()
    await wait_stored(bench, 6)  # the meter keeps going
    async with asyncio.timeout(15):
        while True:
            code, out, _err = await metrogate("status", "--config", str(bench.config), "--json")
            status = orjson.loads(out) if code == 0 else {}
            if status.get("instruments", {}).get("balance-1", {}).get("state") == "down":
                break
            await asyncio.sleep(0.2)
    assert status["state"] == "running"
    assert status["instruments"]["meter-1"]["state"] == "ok"
    assert status["instruments"]["balance-1"]["errors"]["timeout"] >= 3
    code, out, _err = await metrogate("status", "--config", str(bench.config))
    assert code == 0
    assert re.search(r"balance-1 +down .*timeout \d+", out)
    assert re.search(r"meter-1 +ok ", out)
    await stop(process, bench)
    code, out, _err = await metrogate("status", "--config", str(bench.config))
    assert "e2e-station: stopped" in out


STANDARDS = """\
[[standard]]
id = "NIM-KG"
level = "national-primary"

[[standard]]
id = "E2-SET"
level = "enterprise-highest"
"""

CAL_1 = """
[[certificate]]
id = "CAL-1"
subject = "balance-1"
issuer = "Provincial Institute"
accreditation = "CNAS L1234"
route = "ILAC-MRA accredited lab"
made_with = ["E2-SET"]
valid_from = 2026-01-01
valid_until = 2099-12-31
unit = "g"
range = [500.0, 1500.0]
"""


def e2_weights(
    number: str = "C-E2", *, valid_from: str = "2026-01-01", valid_until: str = "2099-12-31"
) -> str:
    """The certificate of the lab's E2 weights, the balance's link up to the national kilogram."""
    return f"""
[[certificate]]
id = "{number}"
subject = "E2-SET"
issuer = "Zhejiang Institute of Metrology"
accreditation = "(国)法计(2020)01001号"
route = "legal metrology institute"
made_with = ["NIM-KG"]
valid_from = {valid_from}
valid_until = {valid_until}
unit = "g"
range = [1.0, 2000.0]
"""


REGISTER = STANDARDS + CAL_1 + e2_weights()


def import_register(bench: Bench, text: str) -> None:
    """`metrogate certs import` of a register file into the station's (new) store."""
    register = bench.tmp / "register.toml"
    register.write_text(text, encoding="utf-8")
    (bench.tmp / "data").mkdir(exist_ok=True)
    assert cli_main(["certs", "import", str(register), "--config", str(bench.config)]) == 0


async def test_readings_carry_the_chain_of_the_imported_register(bench: Bench) -> None:
    import_register(bench, REGISTER)
    process = await bench.daemon()
    await wait_stored(bench, 10)
    await stop(process, bench)
    rows, _ = stored(bench)
    masses = [r for r in rows if r["instrument"] == "balance-1"]
    volts = [r for r in rows if r["channel"] == "voltage-l1"]
    assert masses
    assert volts
    assert all(r["chain"] == ["CAL-1", "C-E2"] for r in masses)
    assert all("CHAIN_BROKEN" not in r["flags"] for r in masses)
    assert all(r["chain"] == [] for r in volts)
    published = [{k: v for k, v in r.items() if k != "body"} for r in rows]
    assert list(verify_chain(published)) == []
    jsonschema.validate(published, SCHEMA)
    assert "channel balance-1/mass: chain CAL-1 → C-E2 valid until 2099-12-31" in bench.log()


async def test_certificates_about_to_expire_show_in_status(bench: Bench) -> None:
    soon = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    import_register(
        bench, REGISTER.replace("valid_until = 2099-12-31", f"valid_until = {soon}", 1)
    )
    process = await bench.daemon()
    await wait_stored(bench, 5)
    code, out, _err = await metrogate("status", "--config", str(bench.config), "--json")
    assert code == 0
    expiring = orjson.loads(out)["expiring"]
    assert [(e["certificate"], e["subject"]) for e in expiring] == [("CAL-1", "balance-1")]
    assert expiring[0]["expires"].startswith(soon)
    the_day_after = (date.fromisoformat(soon) + timedelta(days=1)).isoformat()
    dates = orjson.loads(out)["register_dates"]
    assert dates == {
        "next_change": f"{the_day_after}T00:00:00.000000Z",
        "chains_resolved_again": 0,
    }
    code, out, _err = await metrogate("status", "--config", str(bench.config))
    assert f"CAL-1 (balance-1) expires {soon}" in out
    assert f"register: next validity date {the_day_after}T00:00:00.000000Z" in out
    await stop(process, bench)


async def test_budget_of_a_stored_reading(bench: Bench) -> None:
    process = await bench.daemon()
    await wait_stored(bench, 8)
    await stop(process, bench)
    rows, _ = stored(bench)
    mass = next(r for r in rows if r["instrument"] == "balance-1" and r["U"] is not None)
    volts = next(r for r in rows if r["channel"] == "voltage-l1")
    code, out, _err = await metrogate("budget", "--config", str(bench.config), str(mass["seq"]))
    assert code == 0, out
    assert f"seq {mass['seq']}: balance-1/mass" in out
    assert re.search(r"certificate CAL-1 .*normal", out)
    assert re.search(r"resolution .*rectangular", out)
    assert f"expanded uncertainty U = {mass['U']:.3g} g" in out
    assert "no longer reproduces" not in out
    code, out, _err = await metrogate("budget", "--config", str(bench.config), str(volts["seq"]))
    assert code == 1
    assert "no budget: the channel names no certificate" in out


async def test_retention_prunes_forwarded_readings_and_verify_starts_at_the_anchor(
    bench: Bench,
) -> None:
    bench.configure(batch_latency="0.02\nretain_days = 0.00002\nprune_interval = 0.5")  # 1.7 s
    with bench.config.open("a") as file:
        file.write("\n[signing]\ncheckpoint_every = 20\ncheckpoint_interval = 0.5\n")
    process = await bench.daemon()
    async with asyncio.timeout(30):
        while "retention: deleted" not in bench.log():
            await asyncio.sleep(0.2)
    await wait_stored(bench, 10)
    await stop(process, bench)
    rows, forwarded = stored(bench)
    seqs = [row["seq"] for row in rows]
    assert seqs[0] > 1  # pruned
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # what is kept is contiguous
    assert forwarded == seqs[-1]
    code, out, _err = await metrogate("verify", "--config", str(bench.config))
    assert code == 0, out
    assert f"retention    seq 1..{seqs[0] - 1} pruned" in out


NEW_CERTIFICATE = (
    STANDARDS
    + """
[[certificate]]
id = "CAL-NEW"
subject = "balance-1"
issuer = "Provincial Institute"
accreditation = "CNAS L1234"
route = "ILAC-MRA accredited lab"
made_with = ["E2-SET"]
valid_from = 2026-01-10
valid_until = 2099-01-09
unit = "g"
points = [{ x = 0.0, c = -0.05, U = 0.04 }, { x = 2000.0, c = -0.25, U = 0.10 }]
"""
    + e2_weights()
)


async def test_a_certificate_imported_into_the_register_applies_after_a_reload(
    bench: Bench,
) -> None:
    """The technician's flow: calibrate, `certs import`, `systemctl reload`; nothing lost."""
    bench.configure(certificate='"CAL-NEW"')  # in neither the file nor the register yet
    async with subscribed(bench.broker.port) as collected:
        process = await bench.daemon()
        await wait_stored(bench, 10)
        register = bench.tmp / "cal-new.toml"
        register.write_text(NEW_CERTIFICATE)
        code, out, err = await metrogate(
            "certs", "import", str(register), "--config", str(bench.config)
        )
        assert code == 0, out + err
        reloaded_from = stored(bench)[0][-1]["seq"]
        process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(20):
            while "reload 1 applied" not in bench.log():
                await asyncio.sleep(0.1)
        await wait_stored(bench, reloaded_from + 30)
        await stop(process, bench)
        rows, _ = stored(bench)
        await collected.wait_for_seq(len(rows))
    masses = [r for r in rows if r["instrument"] == "balance-1"]
    before = [r for r in masses if r["seq"] <= reloaded_from]
    assert all(r["flags"] == ["NO_CERTIFICATE"] and r["U"] is None for r in before)
    after = masses[-5:]
    for reading in after:
        assert reading["certificate"] == "CAL-NEW"
        assert reading["chain"] == ["CAL-NEW", "C-E2"]
        assert reading["flags"] == []
        correction = -0.05 - 0.20 * reading["indication"] / 2000.0
        assert reading["value"] == pytest.approx(reading["indication"] + correction, abs=1e-9)
        assert reading["U"] > 0
    assert "restarted ['com1']" in bench.log()
    check_upstream(collected, rows)  # every reading once, seq contiguous, chain verifies


CHANGE_AHEAD = 12  # s: a register date this far ahead lies after the daemon's start-up


def renewal_register(change: datetime) -> str:
    """The register with C-E2 valid until just before `change`, its renewal from then on."""
    last_valid = change - timedelta(microseconds=1)
    return (
        STANDARDS
        + CAL_1
        + e2_weights(valid_until=last_valid.isoformat())
        + e2_weights("C-E2-RENEWED", valid_from=change.isoformat())
    )


async def test_a_renewal_in_the_register_takes_over_when_the_old_link_expires(
    bench: Bench,
) -> None:
    """The lab's E2 weights recalibrated, the renewal imported ahead of the day: no reload."""
    change = (datetime.now(UTC) + timedelta(seconds=CHANGE_AHEAD)).replace(microsecond=0)
    import_register(bench, renewal_register(change))
    process = await bench.daemon()
    async with asyncio.timeout(30):
        while "chains resolved again" not in bench.log():
            await asyncio.sleep(0.1)
    applied_from = stored(bench)[0][-1]["seq"]
    await wait_stored(bench, applied_from + 20)
    await stop(process, bench)
    rows, _ = stored(bench)
    masses = [r for r in rows if r["instrument"] == "balance-1"]
    before = [r for r in masses if datetime.fromisoformat(r["time"]) < change]
    assert before
    assert all(r["chain"] == ["CAL-1", "C-E2"] and r["flags"] == [] for r in before)
    after = [r for r in masses if r["seq"] > applied_from]
    assert after
    assert all(r["chain"] == ["CAL-1", "C-E2-RENEWED"] and r["flags"] == [] for r in after)
    # Between the instant of the change and the new chains: not traceable, said so.
    gap = [r for r in masses if r not in before and r not in after]
    assert all(
        r["flags"] == ["CHAIN_BROKEN"] or r["chain"] == ["CAL-1", "C-E2-RENEWED"] for r in gap
    ), gap
    log = bench.log()
    assert f"a certificate's validity began or ended at {change:%Y-%m-%dT%H:%M:%S}" in log
    assert "restarted ['com1']" in log  # the balance's bus; the meter's kept polling
    status = read_status(bench.tmp / "data") or {}
    assert status["register_dates"] == {
        "next_change": "2100-01-01T00:00:00.000000Z",  # the end of the 2099-12-31 certificates
        "chains_resolved_again": 1,
    }
    assert list(verify_chain([{k: v for k, v in r.items() if k != "body"} for r in rows])) == []


def break_register(bench: Bench) -> None:
    """Make the register unreadable: its certificates table becomes a view that fails."""
    engine = create_engine(f"sqlite:///{bench.tmp / 'data' / 'metrogate.db'}")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE register_certificates RENAME TO kept_aside"))
        connection.execute(
            text("CREATE VIEW register_certificates AS SELECT no_such_column FROM kept_aside")
        )
    engine.dispose()


def mend_register(bench: Bench) -> None:
    engine = create_engine(f"sqlite:///{bench.tmp / 'data' / 'metrogate.db'}")
    with engine.begin() as connection:
        connection.execute(text("DROP VIEW register_certificates"))
        connection.execute(text("ALTER TABLE kept_aside RENAME TO register_certificates"))
    engine.dispose()


async def test_an_unreadable_register_at_a_date_change_keeps_the_chains_in_use(
    bench: Bench,
) -> None:
    """Not silently unchecked: the old chain stays, and is broken from its link's expiry."""
    change = (datetime.now(UTC) + timedelta(seconds=CHANGE_AHEAD)).replace(microsecond=0)
    import_register(bench, renewal_register(change))
    process = await bench.daemon()
    await wait_stored(bench, 5)
    break_register(bench)
    assert datetime.now(UTC) < change, "the daemon started too slowly for this test's dates"
    async with asyncio.timeout(30):
        while "cannot read the register" not in bench.log():
            await asyncio.sleep(0.1)
    failed_from = stored(bench)[0][-1]["seq"]
    await wait_stored(bench, failed_from + 5)
    process.send_signal(signal.SIGHUP)  # a reload while it is unreadable keeps them too
    async with asyncio.timeout(20):
        while "reload 1 applied" not in bench.log():
            await asyncio.sleep(0.1)
    assert "the register cannot be read; the chains in use are kept" in bench.log()
    await wait_stored(bench, stored(bench)[0][-1]["seq"] + 5)
    kept_until = stored(bench)[0][-1]["seq"]
    mend_register(bench)
    process.send_signal(signal.SIGHUP)
    async with asyncio.timeout(20):
        while "reload 2 applied" not in bench.log():
            await asyncio.sleep(0.1)
    mended_from = stored(bench)[0][-1]["seq"]
    await wait_stored(bench, mended_from + 10)
    await stop(process, bench)
    masses = [r for r in stored(bench)[0] if r["instrument"] == "balance-1"]
    kept = [r for r in masses if failed_from < r["seq"] <= kept_until]
    assert kept
    assert all(r["chain"] == ["CAL-1", "C-E2"] and r["flags"] == ["CHAIN_BROKEN"] for r in kept), [
        (r["seq"], r["time"], r["chain"], r["flags"]) for r in kept
    ]
    mended = [r for r in masses if r["seq"] > mended_from]
    assert mended
    assert all(r["chain"] == ["CAL-1", "C-E2-RENEWED"] and r["flags"] == [] for r in mended)
    assert "chains resolved again" not in bench.log()
