# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: real services (mosquitto, PostgreSQL) started per test or session."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Mosquitto, running_mosquitto, running_postgres


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto of this test's own (it may stop, freeze or restart it)."""
    with running_mosquitto(tmp_path) as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the whole session."""
    with (
        tempfile.TemporaryDirectory(prefix="metrogate-pg-") as workdir,
        running_postgres(Path(workdir)) as url,
    ):
        yield url
