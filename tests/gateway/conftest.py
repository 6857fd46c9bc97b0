# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the gateway tests."""

import logging
import re
from collections.abc import Callable

import pytest


@pytest.fixture
def transitions(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """The state changes the scheduler logged for an instrument, in order."""
    caplog.set_level(logging.INFO, logger="gateway.scheduler")

    def logged(instrument: str) -> list[str]:
        pattern = re.compile(rf"instrument {re.escape(instrument)} (degraded|down|recovered)\b")
        return [
            match.group(1)
            for record in caplog.records
            if record.name == "gateway.scheduler" and (match := pattern.match(record.getMessage()))
        ]

    return logged
