# SPDX-License-Identifier: Apache-2.0
"""The error tree of the gateway package.

```
GatewayError
├── ConfigError        the station file is missing, malformed or inconsistent (lists problems)
├── StoreError         the database cannot be opened or written; acquisition must stop
├── StampError         a reading cannot be stamped (a non-finite number): a bug upstream
└── ForwardError       the upstream broker refused or lost a publication
```
"""

from dataclasses import dataclass


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a station file.

    Attributes:
        file: the path of the file, as given.
        path: the key path, e.g. ``instrument[2].poll_interval``; empty for the whole file.
        message: what is wrong and what is expected.
        line: the 1-based line in the file where the key stands, when it can be found.
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(GatewayError):
    """The station file cannot be used; `problems` lists everything found wrong."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class StoreError(GatewayError):
    """The reading store cannot be opened or written."""


class StampError(GatewayError, ValueError):
    """A reading cannot be stamped, e.g. it holds NaN or an infinity."""


class ForwardError(GatewayError):
    """Publishing to the upstream broker failed."""
