# SPDX-License-Identifier: Apache-2.0
"""Canonical JSON equals RFC 8785 (checked against the reference `rfc8785` package)."""

import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json, jcs_number
from gateway.errors import StampError

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(
    finite, st.integers(-(2**53) + 1, 2**53 - 1), st.text(), st.none(), st.booleans()
)
# Reading keys are fixed ASCII names; orjson sorts keys by UTF-8 bytes, which equals JCS's
# UTF-16 order for every key below U+E000, so the keys are drawn from that range.
keys = st.text(alphabet=st.characters(max_codepoint=0xD7FF), max_size=8)
documents = st.dictionaries(keys, st.one_of(scalars, st.lists(st.text())))


@given(documents)
@settings(max_examples=400)
def test_equals_rfc8785(document: dict[str, Any]) -> None:
    assert canonical_json(document) == rfc8785.dumps(document)


@given(finite)
@settings(max_examples=2000)
def test_numbers_equal_rfc8785(value: float) -> None:
    assert canonical_json({"v": value}) == rfc8785.dumps({"v": value})
    assert jcs_number(value) == rfc8785.dumps(value).decode()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (1e16, "10000000000000000"),
        (4.87e-6, "0.00000487"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-7"),
        (1206.42, "1206.42"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_known_numbers(value: float, text: str) -> None:
    assert canonical_json({"v": value}) == b'{"v":' + text.encode() + b"}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_is_refused(value: float) -> None:
    with pytest.raises(StampError, match="NaN and infinities"):
        canonical_json({"value": value})
