# SPDX-License-Identifier: Apache-2.0
"""The daemon SIGKILLed at random moments under load, and restarted each time.

Some kills land while it starts (before or while it opens the store; on a slow machine even
the first start may be killed before it created the database), most while it polls,
commits and publishes at once. After each kill the store passes ``PRAGMA integrity_check``
and its head (seq and hash) is noted; at the end every noted head is still there unchanged
(no seq reused), seqs run from 1 without a gap and every one of them arrived upstream.
"""

import asyncio
import itertools
import os
import random

import pytest

from tests.faults.harness import FaultBench

KILLS = int(os.environ.get("FAULTS_KILLS", "20"))
SOAK_KILLS = int(os.environ.get("FAULTS_SOAK_KILLS", "200"))
# A fresh seed each run explores new moments; FAULTS_SEED=N replays a run.
SEED = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(2**32))
# s from spawning the daemon to killing it: it starts in about a second on a quiet machine.
EARLIEST, LATEST = 0.3, 4.0


async def kill_at_random_moments(bench: FaultBench, scenario: str, kills: int) -> None:
    print(f"[faults] {scenario}: seed {SEED} (FAULTS_SEED={SEED} replays it)")  # noqa: T201
    rng = random.Random(SEED)
    await bench.balance("balance-1", poll_interval=0.01)
    await bench.tcp_meter("meter-1", poll_interval=0.01)
    await bench.rtu_meter("meter-3", poll_interval=0.02)
    await bench.dlt645_meter("meter-2", poll_interval=0.05)
    await bench.start()
    heads: list[tuple[int, str]] = []
    integrity: list[str] = []
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(EARLIEST, LATEST))
        await bench.kill_daemon()
        verdict = bench.integrity()
        if verdict == "no store" and "ok" not in integrity:
            verdict = "not created yet"  # killed before its first start created the database
        integrity.append(verdict)
        heads.append(bench.head())
        await bench.start_daemon()
    await bench.wait_stored(bench.stored_seq() + 50)  # a last run long enough to catch up
    counts = await bench.finish(
        scenario,
        kills=kills,
        seed=SEED,
        kill_after_s=f"{EARLIEST}..{LATEST}",
        commits_between_kills=f"{min(_gains(heads))}..{max(_gains(heads))}",
    )
    # Sound after every kill; only kills before the database first existed find none (a
    # store that vanished later would be "no store" and fail).
    assert set(integrity) <= {"ok", "not created yet"}, integrity
    assert integrity.count("ok") >= kills // 2, integrity
    rows = {seq: hash_ for seq, hash_, _body in bench.rows()}
    assert [(seq, rows[seq]) for seq, _hash in heads if seq] == [h for h in heads if h[0]]
    assert counts.delivered == counts.stored


def _gains(heads: list[tuple[int, str]]) -> list[int]:
    seqs = [0, *(seq for seq, _hash in heads)]
    return [after - before for before, after in itertools.pairwise(seqs)]


async def test_daemon_killed_at_random_moments(bench: FaultBench) -> None:
    await kill_at_random_moments(bench, "daemon-sigkill", KILLS)


@pytest.mark.soak
async def test_soak_daemon_killed_many_times(bench: FaultBench) -> None:
    await kill_at_random_moments(bench, "soak-daemon-sigkill", SOAK_KILLS)
