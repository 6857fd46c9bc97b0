# SPDX-License-Identifier: Apache-2.0
"""Accuracy class tables: MPE limits of energy meters, transformers and balances, as data.

The tables live in ``calibration/data/accuracy_classes.toml`` (its header documents the
layout, format 1) with their edition and sources, so that a corrected or newer edition of a
standard is a data change (DOMAIN.md §2). `parse_accuracy_classes` is pure (text in, frozen
tables out); `default_accuracy_classes` reads the packaged file once — the only file this
package reads: installed, read-only data, the same for every call. No clock.
"""

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from calibration.errors import CalibrationError

TransformerKind = Literal["current", "voltage"]
"""A measuring current transformer (CT) or voltage transformer (VT)."""

_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterLimit:
    """One row of the energy meter table: MPE in % of reading where from <= I/In < to."""

    accuracy_class: str
    current: tuple[float, float]
    power_factor: str
    connection: str | None
    mpe_percent: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformerLimit:
    """One row of a transformer table: limits from `load` (I/In or U/Un) to the next row's."""

    kind: TransformerKind
    accuracy_class: str
    load: float
    ratio_error_percent: float
    phase_displacement_min: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceLimit:
    """One row of the balance table: MPE in e for loads up to `up_to_e` e."""

    accuracy_class: str
    up_to_e: float
    mpe_e: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AccuracyClasses:
    """The parsed class tables of one edition of ``accuracy_classes.toml``.

    Attributes:
        edition: the file's edition, quoted in every MPE built from it.
        references: (family, reference, status) for each family of instruments.
        balance_in_service_factor: MPE in service / MPE on verification (OIML R 76-1 3.5.2).
        meters: the energy meter rows.
        transformers: the current and voltage transformer rows.
        balances: the balance rows.
    """

    edition: str
    references: tuple[tuple[str, str, str], ...]
    balance_in_service_factor: float
    meters: tuple[MeterLimit, ...]
    transformers: tuple[TransformerLimit, ...]
    balances: tuple[BalanceLimit, ...]

    def reference(self, family: str) -> str:
        """Return "<reference> (status: <status>; edition <edition>)" for a family."""
        for name, reference, status in self.references:
            if name == family:
                return f"{reference} (status: {status}; table edition {self.edition})"
        raise CalibrationError(f"accuracy class table has no family {family!r}")


def parse_accuracy_classes(text: str) -> AccuracyClasses:
    """Parse the TOML text of an accuracy class table (format 1; see the packaged file).

    Raises:
        CalibrationError: the text is not valid TOML or does not follow format 1; the
            message names the family, class and row.
    """
    try:
        document = tomllib.loads(text)
        if document.get("format") != _FORMAT:
            raise CalibrationError(f"accuracy class table: format must be {_FORMAT}")
        meters = tuple(
            MeterLimit(
                accuracy_class=name,
                current=(float(row["current"][0]), float(row["current"][1])),
                power_factor=str(row["power_factor"]),
                connection=row.get("connection"),
                mpe_percent=float(row["mpe_percent"]),
            )
            for name, row in _rows(
                document, "energy_meter", ("current", "power_factor", "mpe_percent")
            )
        )
        transformers = tuple(
            TransformerLimit(
                kind=kind,
                accuracy_class=name,
                load=float(row["load"]),
                ratio_error_percent=float(row["ratio_error_percent"]),
                phase_displacement_min=(
                    float(row["phase_displacement_min"])
                    if "phase_displacement_min" in row
                    else None
                ),
            )
            for kind in ("current", "voltage")
            for name, row in _rows(
                document, f"{kind}_transformer", ("load", "ratio_error_percent")
            )
        )
        balances = tuple(
            BalanceLimit(
                accuracy_class=name, up_to_e=float(row["up_to_e"]), mpe_e=float(row["mpe_e"])
            )
            for name, row in _rows(document, "balance", ("up_to_e", "mpe_e"))
        )
        references = tuple(
            (family, str(document[family]["reference"]), str(document[family]["status"]))
            for family in ("energy_meter", "current_transformer", "voltage_transformer", "balance")
        )
        return AccuracyClasses(
            edition=str(document["edition"]),
            references=references,
            balance_in_service_factor=float(document["balance"]["in_service_factor"]),
            meters=meters,
            transformers=transformers,
            balances=balances,
        )
    except (tomllib.TOMLDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"accuracy class table: {exc!r}") from exc


@functools.cache
def default_accuracy_classes() -> AccuracyClasses:
    """Return the packaged table, ``calibration/data/accuracy_classes.toml`` (read once)."""
    text = resources.files("calibration").joinpath("data/accuracy_classes.toml").read_text("utf-8")
    return parse_accuracy_classes(text)


def _rows(
    document: dict[str, Any], family: str, required: tuple[str, ...]
) -> list[tuple[str, dict[str, Any]]]:
    """Return (class, row) pairs of one family, every row a table with the required keys."""
    pairs: list[tuple[str, dict[str, Any]]] = []
    for name, entry in document[family]["classes"].items():
        for number, row in enumerate(entry["rows"], start=1):
            where = f"accuracy class table: {family} class {name} row {number}"
            if not isinstance(row, dict):
                raise CalibrationError(f"{where} is not a table")
            missing = [key for key in required if key not in row]
            if missing:
                raise CalibrationError(f"{where} lacks {', '.join(missing)}")
            pairs.append((name, row))
    return pairs
