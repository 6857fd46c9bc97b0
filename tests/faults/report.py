# SPDX-License-Identifier: Apache-2.0
"""Render the fault scenarios' counts as a markdown table, optionally into README.md.

``python -m tests.faults.report DIR [--readme README.md]`` reads every ``DIR/*.json`` that
`tests.faults.harness.record` wrote and prints the table; with ``--readme`` it replaces
what lies between ``<!-- faults:begin -->`` and ``<!-- faults:end -->`` and nothing else.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

BEGIN = "<!-- faults:begin -->"
END = "<!-- faults:end -->"
COLUMNS = ("scenario", "duration", "produced", "stored", "delivered", "lost", "duplicated")


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def render(results: Sequence[dict[str, Any]]) -> str:
    """The markdown table of `results`, one row per scenario, in name order."""
    lines = [
        (
            "| scenario | duration | produced | stored | delivered | lost | duplicated "
            "| fault parameters | run |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for result in sorted(results, key=lambda r: str(r["scenario"])):
        parameters = "; ".join(
            f"{key} {_cell(value)}" for key, value in dict(result["parameters"]).items()
        )
        cells = [f"`{result['scenario']}`", f"{result['duration']:.0f} s"]
        cells += [str(result[column]) for column in COLUMNS[2:]]
        cells += [parameters, str(result["date"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load(directory: Path) -> list[dict[str, Any]]:
    """Every scenario's counts found in `directory`."""
    return [orjson.loads(path.read_bytes()) for path in sorted(directory.glob("*.json"))]


def replace_between_markers(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        msg = f"README has no {BEGIN} ... {END} section"
        raise ValueError(msg)
    return text[: start + len(BEGIN)] + "\n" + table + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report", description=__doc__)
    parser.add_argument("directory", type=Path, help="where the scenarios wrote their JSON")
    parser.add_argument("--readme", type=Path, help="write the table into this README")
    args = parser.parse_args(argv)
    results = load(args.directory)
    if not results:
        print(f"no fault results in {args.directory}", file=sys.stderr)  # noqa: T201
        return 1
    table = render(results)
    if args.readme is None:
        sys.stdout.write(table)
        return 0
    readme: Path = args.readme
    try:
        readme.write_text(replace_between_markers(readme.read_text(), table))
    except ValueError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 1
    print(f"{len(results)} scenarios written into {readme}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
