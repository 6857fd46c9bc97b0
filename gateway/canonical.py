# SPDX-License-Identifier: Apache-2.0
"""Canonical JSON of a reading: RFC 8785 (JSON Canonicalization Scheme, JCS).

JCS: object keys sorted, no insignificant whitespace, UTF-8, strings escaped minimally, numbers
as ECMAScript's Number.prototype.toString prints them (shortest round-trip digits, no ``.0``
on integral values, exponent form only below 1e-6 or from 1e21 on).

orjson (sorted keys) already prints strings, ints and most floats exactly as JCS does; it
differs on integral floats (``1.0`` where JCS wants ``1``, ``-0.0`` for ``0``, ``1e+16`` for
``10000000000000000``) and on magnitudes in [1e-6, 1e-5) (``4.87e-6`` where JCS wants
``0.00000487``). Integral floats below 2**53 are therefore passed to orjson as ints, and the
rarer object holding one of the other cases goes through a small pure-Python encoder.
NaN and infinities have no JSON form and are refused. tests/gateway/test_canonical.py checks
both paths against the reference implementation (the `rfc8785` package).

Bodies are kept (a batch being stored, the forwarder's window), so they are returned
right-sized: see `right_sized`.
"""

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from gateway.errors import StampError

_EXACT_INT_LIMIT = 2.0**53
_SORTED = orjson.OPT_SORT_KEYS


def canonical_json(
    document: Mapping[str, Any], *, float_keys: Iterable[str] | None = None
) -> bytes:
    """Return the JCS bytes of a flat reading document.

    Values may be str, int, float, bool, None or lists of those (one level deep, as readings
    are). Keys must lie below U+E000 (reading keys are ASCII): there orjson's key order
    (UTF-8 bytes) and JCS's (UTF-16 code units) agree.

    `float_keys`, when given, names the only members that may hold floats (the hot path of
    stamping, which knows its document's shape); otherwise every member is looked at.

    Raises:
        StampError: a float is NaN or infinite.
    """
    slow = False
    normalised: dict[str, Any] = dict(document)
    for key in document if float_keys is None else float_keys:
        value = normalised[key]
        if type(value) is float:
            number, big = _normalise(key, value)
            normalised[key] = number
            slow = slow or big
    if slow:
        return _encode_slow(normalised).encode("utf-8")
    return right_sized(orjson.dumps(normalised, option=_SORTED))


def right_sized(encoded: bytes) -> bytes:
    """Return a copy of `encoded` that holds no more memory than its length needs.

    orjson (3.12 on) returns a bytes object whose allocation is rounded up to at least
    4 KiB and never shrunk: a 440-byte reading body then holds 4-8 KiB for as long as it is
    kept. Bodies are kept by the thousand (the batch being committed, the forwarder's memory
    window of 20 000); under overload RSS swung by up to 95 MiB with how those lined up. The
    copy costs some 0.1 µs a body; anything kept beyond the call that made it goes through
    here.
    """
    return bytes(memoryview(encoded))


def _normalise(key: str, value: float) -> tuple[float | int, bool]:
    """Return the value orjson should see, and whether it needs the slow encoder."""
    if not math.isfinite(value):
        raise StampError(f"{key} is {value!r}: NaN and infinities cannot be stamped")
    magnitude = abs(value)
    if value.is_integer():
        if magnitude < _EXACT_INT_LIMIT:
            return int(value), False
        return value, magnitude < 1e21  # noqa: PLR2004 - where ECMAScript switches to e-form
    # orjson switches to exponent form below 1e-5, ECMAScript only below 1e-6.
    return value, 1e-6 <= magnitude < 1e-5  # noqa: PLR2004


def jcs_number(value: float) -> str:
    """Format a finite float as ECMAScript's Number::toString does (ECMA-262 §6.1.6.1.20)."""
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
        return str(int(value))
    if abs(value) >= 1e21 or abs(value) < 1e-6:  # noqa: PLR2004 - ECMA-262 thresholds
        return orjson.dumps(value).decode("ascii")
    # repr gives the shortest round-trip digits; Decimal writes them out without exponent.
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _encode_slow(value: Any) -> str:  # noqa: ANN401 - a JSON value of any type
    if isinstance(value, Mapping):
        items = sorted(value.items())
        return "{" + ",".join(f"{_encode_slow(k)}:{_encode_slow(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode_slow(item) for item in value) + "]"
    if type(value) is float:
        return jcs_number(value)
    return orjson.dumps(value).decode("utf-8")


class NeedsSlowPathError(Exception):
    """`plain_number` met a float that orjson does not write as JCS (or NaN/infinity)."""


def plain_number(value: float | None) -> float | int | None:
    """Return what orjson must be given to write `value` as JCS does.

    For the hot path of stamping; raises `NeedsSlowPathError` for the rare values that need
    `canonical_json` (which also refuses NaN and infinities with a `StampError`).
    """
    if value is None:
        return None
    if value.is_integer():
        if -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT:
            return int(value)
        raise NeedsSlowPathError
    if value - value != 0.0 or 1e-6 <= abs(value) < 1e-5:  # noqa: PLR2004 - NaN/inf, or e-form
        raise NeedsSlowPathError
    return value
