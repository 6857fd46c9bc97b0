# SPDX-License-Identifier: Apache-2.0
"""The renderer of the fault scenarios' counts, and the README section it writes into."""

from dataclasses import asdict
from pathlib import Path

import orjson
import pytest

from tests.faults.harness import Counts
from tests.faults.report import BEGIN, END, main, render, replace_between_markers

ROOT = Path(__file__).resolve().parents[2]
COUNTS = Counts(
    scenario="broker-killed",
    duration=12.34,
    produced=420,
    stored=420,
    delivered=420,
    lost=0,
    duplicated=3,
    parameters={"outage_s": 5.0, "faults": "a | b"},
    date="2026-11-27 03:00 UTC",
)


def test_table_has_a_row_per_scenario_with_its_counts() -> None:
    table = render([asdict(COUNTS)])
    row = table.splitlines()[2]
    assert row == (
        "| `broker-killed` | 12 s | 420 | 420 | 420 | 0 | 3 | outage_s 5.0; faults a \\| b "
        "| 2026-11-27 03:00 UTC |"
    )


def test_only_the_part_between_the_markers_changes(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "broker-killed.json").write_bytes(orjson.dumps(asdict(COUNTS)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    assert main([str(tmp_path / "results"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# x\n\nbefore\n{BEGIN}\n| scenario |")
    assert text.endswith(f"|\n{END}\nafter\n")
    assert "old table" not in text


def test_readme_has_the_section_and_its_markers() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Fault injection" in readme
    assert replace_between_markers(readme, "T\n").count("T\n" + END) == 1
    with pytest.raises(ValueError, match="no <!-- faults:begin -->"):
        replace_between_markers("no markers", "T\n")
