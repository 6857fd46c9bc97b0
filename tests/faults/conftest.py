# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the fault-injection suite: one `FaultBench` per scenario."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultBench, fault_bench


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[FaultBench]:
    """Simulators, a private mosquitto, the daemon and a subscriber; all stopped afterwards."""
    async with fault_bench(tmp_path) as bench:
        yield bench
