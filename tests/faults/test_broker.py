# SPDX-License-Identifier: Apache-2.0
"""Broker faults: frozen (SIGSTOP), killed (SIGKILL) and restarted, the network cut.

While the broker cannot take readings the daemon keeps acquiring and committing them; once
it can, the forwarder publishes the backlog from the store. Nothing committed may be lost.
"""

import asyncio
import math
import os

import pytest

from tests.faults.harness import FaultBench
from tests.faults.netns import cable
from tests.services import free_port

FREEZE = float(os.environ.get("FAULTS_FREEZE_SECONDS", "60"))
SOAK_FREEZE = float(os.environ.get("FAULTS_SOAK_FREEZE_SECONDS", "900"))
CUT = float(os.environ.get("FAULTS_CUT_SECONDS", "30"))
OUTAGE = 5.0  # s the killed broker stays down


async def readings_of_several_buses(bench: FaultBench) -> None:
    await bench.balance("balance-1", poll_interval=0.05)
    await bench.tcp_meter("meter-1", poll_interval=0.1)
    await bench.dlt645_meter("meter-2", poll_interval=0.2)


async def test_broker_killed_and_restarted(bench: FaultBench) -> None:
    await readings_of_several_buses(bench)
    await bench.start()
    await bench.wait_stored(50)
    await asyncio.sleep(2.0)  # the subscriber's session is saved (autosave_interval 1)
    bench.kill_broker()
    before = bench.stored_seq()
    await asyncio.sleep(OUTAGE)
    during = bench.stored_seq() - before
    bench.start_broker()
    await bench.wait_stored(bench.stored_seq() + 50)
    counts = await bench.finish("broker-killed", outage_s=OUTAGE, stored_during_outage=during)
    assert during > 0  # acquisition went on without the broker
    assert counts.delivered == counts.stored


async def test_broker_frozen(bench: FaultBench) -> None:
    await freeze_broker(bench, "broker-frozen", FREEZE)


@pytest.mark.soak
async def test_soak_broker_frozen(bench: FaultBench) -> None:
    await freeze_broker(bench, "soak-broker-frozen", SOAK_FREEZE)


async def freeze_broker(bench: FaultBench, scenario: str, freeze: float) -> None:
    await readings_of_several_buses(bench)
    await bench.start()
    await bench.wait_stored(50)
    await bench.connected()
    bench.broker.freeze()  # SIGSTOP: TCP stays up, nothing is answered
    try:
        before, fds = bench.stored_seq(), [bench.open_files()]
        for _ in range(math.ceil(freeze)):  # a reconnect every publish_timeout meanwhile
            await asyncio.sleep(freeze / math.ceil(freeze))
            fds.append(bench.open_files())
        during = bench.stored_seq() - before
        frozen = bench.status()
    finally:
        bench.broker.thaw()
    # After the thaw the forwarder must get going again by itself, within a few reconnects.
    await bench.caught_up(before + during, "after the thaw")
    counts = await bench.finish(
        scenario,
        freeze_s=freeze,
        publish_timeout_s=bench.upstream_settings["publish_timeout"],
        keepalive_s=bench.upstream_settings["keepalive"],
        stored_during_freeze=during,
        open_files=f"{fds[0]}..{max(fds)}",
    )
    assert during > 0
    assert frozen["broker_connected"] is False  # it noticed, by publish timeout or keepalive
    assert counts.delivered == counts.stored
    # Each reconnect attempt into the frozen broker must not leave a socket behind.
    assert max(fds) <= fds[0] + 10


@pytest.mark.skipif(
    os.geteuid() != 0, reason="a network namespace and a veth pair need root (CI runs as root)"
)
async def test_network_to_the_broker_cut(bench: FaultBench) -> None:
    with cable() as link:
        # Only serial instruments: inside the namespace, loopback TCP is not the test's.
        await bench.balance("balance-1", poll_interval=0.05)
        await bench.sbi_balance("balance-2", poll_interval=0.1)
        await bench.dlt645_meter("meter-2", poll_interval=0.2)
        inner_port = free_port()
        bench.broker.extra_conf += f"listener {inner_port} {link.host_address}\n"
        bench.broker_url = f"mqtt://{link.host_address}:{inner_port}"
        bench.daemon_prefix = link.prefix
        await bench.start()
        await bench.wait_stored(50)
        await bench.connected()
        link.cut()
        try:
            before = bench.stored_seq()
            await asyncio.sleep(CUT)
            during = bench.stored_seq() - before
            cut_off = bench.status()
        finally:
            link.restore()
        await bench.caught_up(before + during, "after the cable was restored")
        counts = await bench.finish(
            "network-cut",
            cut_s=CUT,
            how="veth down (netns)",
            publish_timeout_s=bench.upstream_settings["publish_timeout"],
            keepalive_s=bench.upstream_settings["keepalive"],
            stored_during_cut=during,
        )
    assert during > 0
    assert cut_off["broker_connected"] is False
    assert counts.delivered == counts.stored
