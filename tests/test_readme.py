# SPDX-License-Identifier: Apache-2.0
"""The README's promises: its verification snippet works, its two commands exist."""

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.stamp import Stamper, published_payload
from tests.gateway.factories import measured

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_verify() -> Any:
    snippet = re.search(r"```python\n(import hashlib.*?)```", README, re.DOTALL)
    assert snippet, "the README's verification snippet is missing"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - our own README, run as a reader would
    return namespace["verify"]


def test_readme_snippet_verifies_and_catches_tampering() -> None:
    verify = readme_verify()
    stamper = Stamper("lab-1")
    stamped = stamper.stamp([measured(1000.0 + i / 100) for i in range(20)])
    readings = orjson.loads(published_payload((s.hash, s.body) for s in stamped))
    verify(readings)
    readings[7]["value"] = 1.0
    with pytest.raises(AssertionError, match="seq 8 was altered"):
        verify(readings)


def test_quick_start_has_exactly_two_commands() -> None:
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", README, re.DOTALL)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["./scripts/demo.sh", "./scripts/test.sh"]
    for command in ("scripts/demo.sh", "scripts/test.sh"):
        assert (ROOT / command).stat().st_mode & 0o111
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
