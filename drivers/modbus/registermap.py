# SPDX-License-Identifier: Apache-2.0
"""Modbus register maps: which registers hold which value, read from one TOML file per model.

Reference: Modbus Application Protocol V1.1b3 (0-based protocol addresses, FC 03 holding and
FC 04 input registers, at most 125 registers per read); each map file names the vendor
document its addresses come from (e.g. the Eastron SDM630 Modbus protocol). The file format
is documented in the header of ``drivers/modbus/maps/sdm630.toml``.

Maps are data, not code, so that a corrected or new model is a data change. Loading reads
one file; nothing here talks to a device. Besides register entries a map may declare combined
entries (``sum_of``): values the driver computes after decoding, such as a flowmeter's
totalizer sent as an integer part and a fraction in separate registers.
"""

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

from drivers.modbus.codec import (
    MAX_READ_REGISTERS,
    RegisterSpan,
    RegisterTable,
    RegisterType,
    WordOrder,
    register_count,
)

__all__ = [
    "CombinedEntry",
    "RegisterEntry",
    "RegisterMap",
    "RegisterMapError",
    "builtin_map_names",
    "load_builtin_map",
    "load_map",
    "parse_register_map",
]

_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_MAP_KEYS: Final = frozenset({"model", "reference", "word_order", "max_registers", "max_gap"})
_ENTRY_KEYS: Final = frozenset(
    {"table", "address", "type", "unit", "quantity", "scale", "word_order", "description"}
)
_COMBINED_KEYS: Final = frozenset({"sum_of", "unit", "quantity", "description"})
_MIN_PARTS: Final = 2
_ADDRESS_SPACE: Final = 0x10000
_BUILTIN_PACKAGE: Final = "drivers.modbus"
_E = TypeVar("_E", bound=StrEnum)


class RegisterMapError(ValueError):
    """A register-map file is malformed; the message names the file and the entry.

    Attributes:
        source: the file (path, or ``builtin:<name>``) the map came from.
        entry: the offending entry's name, or None for a problem with the file as a whole.
    """

    def __init__(self, source: str, problem: str, *, entry: str | None = None) -> None:
        self.source = source
        self.entry = entry
        where = source if entry is None else f"{source}: entry {entry!r}"
        super().__init__(f"register map {where}: {problem}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterEntry:
    """One value of a register map.

    Attributes:
        name: the value's name, used as the reading's source, e.g. ``"voltage_l1"``.
        table: the register table it is read from.
        address: 0-based protocol address of its first register.
        register_type: how it is stored.
        word_order: byte order across its registers (the map's default unless overridden).
        scale: value in `unit` = stored number * scale.
        unit: the unit of the scaled value, e.g. ``"V"``; ``""`` for a pure number.
        quantity: what is measured, e.g. ``"voltage"`` or ``"active_energy"``.
        description: free text from the vendor's map.
    """

    name: str
    table: RegisterTable
    address: int
    register_type: RegisterType
    word_order: WordOrder
    scale: float
    unit: str
    quantity: str
    description: str = ""

    @property
    def count(self) -> int:
        """Number of registers the value occupies."""
        return register_count(self.register_type)

    @property
    def span(self) -> RegisterSpan:
        """The registers to read for this value."""
        return RegisterSpan(self.table, self.address, self.count)


@dataclass(frozen=True, slots=True, kw_only=True)
class CombinedEntry:
    """A value computed from register entries after they are decoded: the sum of its parts.

    Some devices send one quantity in two parts, e.g. a totalizer as an int32
    integer part plus a float32 fraction, because a float32 alone would lose the last digits
    of a large total. Decoding each part and adding them in double precision keeps them.

    Attributes:
        name: the value's name, used as the reading's source, e.g. ``"totalizer"``.
        parts: the register entries added, at least two, all in `unit`.
        unit: the unit of the sum (the unit of every part).
        quantity: what is measured, e.g. ``"volume"``.
        description: free text.
    """

    name: str
    parts: tuple[str, ...]
    unit: str
    quantity: str
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterMap:
    """The register map of one meter model.

    Attributes:
        model: the model described, e.g. ``"Eastron SDM630"``.
        reference: the document the addresses come from.
        word_order: the default byte order of multi-register values.
        max_registers: most registers the device answers in one read (1..125).
        max_gap: most unlisted registers one read may span to join two entries.
        entries: the register entries by name, in file order (a read-only mapping).
        source: where the map was loaded from (a path, or ``builtin:<name>``).
        combined: the combined (``sum_of``) entries by name, in file order (read-only).
    """

    model: str
    reference: str
    word_order: WordOrder
    max_registers: int
    max_gap: int
    # A read-only view; left out of the hash because mapping views are unhashable.
    entries: Mapping[str, RegisterEntry] = field(hash=False)
    source: str
    combined: Mapping[str, CombinedEntry] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    @property
    def names(self) -> tuple[str, ...]:
        """Every value a driver can read: register entries, then combined ones, in file order."""
        return (*self.entries, *self.combined)

    def entry(self, name: str) -> RegisterEntry:
        """Return the register entry called `name`.

        Raises:
            KeyError: no such register entry; the message lists the valid names.
        """
        try:
            return self.entries[name]
        except KeyError:
            valid = ", ".join(self.entries)
            raise KeyError(f"{self.model} has no register {name!r}; valid: {valid}") from None

    def value(self, name: str) -> RegisterEntry | CombinedEntry:
        """Return the register or combined entry called `name`.

        Raises:
            KeyError: no such entry; the message lists the valid names.
        """
        if name in self.combined:
            return self.combined[name]
        if name in self.entries:
            return self.entries[name]
        valid = ", ".join(self.names)
        raise KeyError(f"{self.model} has no value {name!r}; valid: {valid}")


@dataclass(frozen=True, slots=True)
class _Where:
    """The file and entry being read, to name them in errors."""

    source: str
    entry: str | None = None
    table: str = ""  # "[map]" for the header; entries are named by `entry`

    def error(self, problem: str) -> RegisterMapError:
        prefix = f"{self.table} " if self.table else ""
        return RegisterMapError(self.source, prefix + problem, entry=self.entry)


def _check_keys(table: dict[str, object], allowed: frozenset[str], where: _Where) -> None:
    if unknown := sorted(set(table) - allowed):
        raise where.error(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _text(table: dict[str, object], key: str, where: _Where, *, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise where.error(f"missing key {key!r}")
    if not isinstance(value, str):
        raise where.error(f"{key} must be text, not {value!r}")
    return value


def _integer(
    table: dict[str, object], key: str, where: _Where, *, default: int | None = None
) -> int:
    value = table.get(key, default)
    if value is None:
        raise where.error(f"missing key {key!r}")
    # bool is an int in Python, but `address = true` is a typo, not an address.
    if not isinstance(value, int) or isinstance(value, bool):
        raise where.error(f"{key} must be an integer, not {value!r}")
    return value


def _choice(
    table: dict[str, object], key: str, kind: type[_E], where: _Where, *, default: _E | None = None
) -> _E:
    text = _text(table, key, where, default=None if default is None else default.value)
    try:
        return kind(text)
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise where.error(f"{key} {text!r} is not one of {valid}") from None


def _scale(table: dict[str, object], where: _Where) -> float:
    value = table.get("scale", 1.0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise where.error(f"scale must be a number, not {value!r}")
    if not math.isfinite(value) or value == 0:
        raise where.error(f"scale must be finite and non-zero, not {value!r}")
    return float(value)


def _table(value: object, where: _Where) -> dict[str, object]:
    if value is None:
        raise where.error("is missing")
    if not isinstance(value, dict):
        raise where.error(f"must be a table, not {value!r}")
    return value


def _named(name: str, source: str) -> _Where:
    where = _Where(source, name)
    if not _NAME.fullmatch(name):
        raise where.error("names are lower case letters, digits and '_', starting with a letter")
    return where


def _parse_entry(
    name: str, raw: object, default_order: WordOrder, max_registers: int, source: str
) -> RegisterEntry:
    where = _named(name, source)
    table = _table(raw, where)
    _check_keys(table, _ENTRY_KEYS, where)
    entry = RegisterEntry(
        name=name,
        table=_choice(table, "table", RegisterTable, where),
        address=_integer(table, "address", where),
        register_type=_choice(table, "type", RegisterType, where),
        word_order=_choice(table, "word_order", WordOrder, where, default=default_order),
        scale=_scale(table, where),
        unit=_text(table, "unit", where),
        quantity=_text(table, "quantity", where),
        description=_text(table, "description", where, default=""),
    )
    if entry.address < 0 or entry.address + entry.count > _ADDRESS_SPACE:
        raise where.error(
            f"address {entry.address:#06x} + {entry.count} registers is outside 0x0000..0xFFFF"
        )
    if entry.count > max_registers:
        raise where.error(
            f"needs {entry.count} registers, more than max_registers {max_registers}"
        )
    return entry


def _parse_combined(
    name: str, table: dict[str, object], entries: Mapping[str, RegisterEntry], source: str
) -> CombinedEntry:
    where = _named(name, source)
    _check_keys(table, _COMBINED_KEYS, where)
    parts = table["sum_of"]
    if (
        not isinstance(parts, list)
        or len(parts) < _MIN_PARTS
        or not all(isinstance(part, str) for part in parts)
    ):
        raise where.error(f"sum_of must be a list of at least two entry names, not {parts!r}")
    names = tuple(str(part) for part in parts)
    if len(set(names)) != len(names):
        raise where.error(f"sum_of repeats an entry: {list(names)}")
    if unknown := [part for part in names if part not in entries]:
        # Combined entries are not parts: one level keeps the sum obvious to a reader.
        raise where.error(
            f"sum_of names {', '.join(map(repr, unknown))}, which are not register entries;"
            f" valid: {', '.join(entries)}"
        )
    unit = _text(table, "unit", where)
    if mismatched := [part for part in names if entries[part].unit != unit]:
        raise where.error(
            f"unit {unit!r} differs from the unit of {', '.join(map(repr, mismatched))}"
            " (a sum needs one unit)"
        )
    return CombinedEntry(
        name=name,
        parts=names,
        unit=unit,
        quantity=_text(table, "quantity", where),
        description=_text(table, "description", where, default=""),
    )


def parse_register_map(text: str, *, source: str) -> RegisterMap:
    """Parse the TOML text of a register map.

    Args:
        text: the file's content (format: see the header of ``maps/sdm630.toml``).
        source: where the text came from, to name in errors and in `RegisterMap.source`.

    Returns:
        The validated map.

    Raises:
        RegisterMapError: the text is not TOML, or a key is missing, unknown or invalid.
    """
    where = _Where(source)
    try:
        document: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Duplicate entry names land here too: TOML forbids redefining a table.
        raise where.error(f"not valid TOML: {exc}") from exc
    _check_keys(document, frozenset({"map", "registers"}), where)
    map_where = _Where(source, table="[map]")
    header = _table(document.get("map"), map_where)
    _check_keys(header, _MAP_KEYS, map_where)
    max_registers = _integer(header, "max_registers", map_where, default=MAX_READ_REGISTERS)
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise map_where.error(
            f"max_registers must be 1..{MAX_READ_REGISTERS}, not {max_registers}"
        )
    max_gap = _integer(header, "max_gap", map_where, default=0)
    if max_gap < 0:
        raise map_where.error(f"max_gap must be >= 0, not {max_gap}")
    word_order = _choice(header, "word_order", WordOrder, map_where, default=WordOrder.ABCD)
    registers_where = _Where(source, table="[registers]")
    raw_entries = _table(document.get("registers"), registers_where)
    if not raw_entries:
        raise registers_where.error("has no [registers.<name>] entries")
    combined_tables: dict[str, dict[str, object]] = {}
    entries: dict[str, RegisterEntry] = {}
    for name, raw in raw_entries.items():
        # An entry with `sum_of` is combined; its parts may come later in the file.
        if isinstance(raw, dict) and "sum_of" in raw:
            combined_tables[name] = raw
        else:
            entries[name] = _parse_entry(name, raw, word_order, max_registers, source)
    combined = {
        name: _parse_combined(name, table, entries, source)
        for name, table in combined_tables.items()
    }
    return RegisterMap(
        model=_text(header, "model", map_where),
        reference=_text(header, "reference", map_where, default=""),
        word_order=word_order,
        max_registers=max_registers,
        max_gap=max_gap,
        entries=MappingProxyType(entries),
        source=source,
        combined=MappingProxyType(combined),
    )


def load_map(path: str | PathLike[str]) -> RegisterMap:
    """Load a register map from a TOML file anywhere (e.g. the user's config directory).

    Args:
        path: the file.

    Returns:
        The validated map; its `source` is the path.

    Raises:
        RegisterMapError: the file is not UTF-8 TOML or not a valid map (names file and entry).
        OSError: the file cannot be read (the exception names it).
    """
    file = Path(path)
    source = str(file)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegisterMapError(source, f"not UTF-8 text: {exc}") from exc
    return parse_register_map(text, source=source)


def builtin_map_names() -> tuple[str, ...]:
    """Return the names of the register maps shipped with metrogate, e.g. ``("sdm630",)``."""
    folder = resources.files(_BUILTIN_PACKAGE) / "maps"
    return tuple(
        sorted(
            item.name.removesuffix(".toml")
            for item in folder.iterdir()
            if item.name.endswith(".toml")
        )
    )


def load_builtin_map(name: str) -> RegisterMap:
    """Load a register map shipped in ``drivers/modbus/maps/<name>.toml``.

    Args:
        name: the map's name, e.g. ``"sdm630"``.

    Returns:
        The validated map; its `source` is ``builtin:<name>``.

    Raises:
        RegisterMapError: no such built-in map (the message lists them), or it is invalid.
    """
    source = f"builtin:{name}"
    # The name becomes a file name: letters, digits and '_' only, so never a path.
    if not _NAME.fullmatch(name) or name not in builtin_map_names():
        raise RegisterMapError(
            source, f"no such built-in map; available: {', '.join(builtin_map_names())}"
        )
    resource = resources.files(_BUILTIN_PACKAGE) / "maps" / f"{name}.toml"
    return parse_register_map(resource.read_text(encoding="utf-8"), source=source)
