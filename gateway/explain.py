# SPDX-License-Identifier: Apache-2.0
"""The uncertainty budget of a stored reading, recomputed from the station file.

A reading carries u, U and k; an auditor asks where they come from. This rebuilds the GUM
budget of one reading (certificate, interpolation, resolution, each named with its share of
u_c²) from its indication and its channel's certificate as the station file states them now
(a verification certificate's MPE; a CT's and a VT's ratio for a composite channel), or as
the register holds them when the file does not state them (the chains the daemon resolves,
`gateway.register.resolve_channel_chains`), and says so when that no longer reproduces the
stored value (the file or the register changed since).
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from calibration import Budget, format_budget
from gateway.config import StationConfig
from gateway.instruments import channel_model
from gateway.pipeline import ChannelChain, ChannelSpec, channel_result

__all__ = ["explain_reading"]

_NOT_CORRECTED = {
    "NO_CERTIFICATE": "the channel names no certificate: the reading is not corrected",
    "OUT_OF_CALIBRATED_RANGE": "the indication lies outside the calibrated range: not corrected",
    "UNIT_MISMATCH": "the instrument reported another unit than the channel's: not corrected",
}


def explain_reading(
    config: StationConfig,
    reading: dict[str, Any],
    chains: Mapping[str, ChannelChain] | None = None,
) -> tuple[Budget | None, str]:
    """Return the reading's budget (or None) and a text for people.

    Args:
        config: the station file.
        reading: a stored reading object as published (see `Store.reading`).
        chains: the channels' chains resolved from the register, by ``instr/channel``, which
            carry the register's models of certificates the file does not state; None (or
            no entry) when the register is not read: then only the file's certificates.
    """
    head = (
        f"seq {reading['seq']}: {reading['instrument']}/{reading['channel']} "
        f"{reading['quantity']}, indication {reading['indication']} {reading['unit']}, "
        f"value {reading['value']} {reading['unit']}, flags {reading['flags'] or 'none'}"
    )
    for flag, why in _NOT_CORRECTED.items():
        if flag in reading["flags"]:
            return None, f"{head}\nno budget: {why}"
    instrument = next((i for i in config.instrument if i.id == reading["instrument"]), None)
    channel = (
        next((c for c in instrument.channel if c.id == reading["channel"]), None)
        if (instrument is not None)
        else None
    )
    if channel is None or channel.certificate is None:
        return (
            None,
            f"{head}\nno budget: the station file no longer has this channel's certificate",
        )
    chain = (chains or {}).get(f"{reading['instrument']}/{channel.id}")
    in_file = any(cert.id == channel.certificate for cert in config.certificate)
    if not in_file and (chain is None or chain.certificate is None):
        return (
            None,
            (
                f"{head}\nno budget: certificate {channel.certificate} is neither in the station "
                "file nor usable from the register (see metrogate certs show)"
            ),
        )
    model = channel_model(config, channel, chain)
    if model.certificate is None:
        return (
            None,
            (
                f"{head}\nno budget: a CT's or VT's certificate of this channel is neither in the "
                "station file nor usable from the register"
            ),
        )
    spec = ChannelSpec(
        instrument=reading["instrument"],
        channel=channel.id,
        quantity=channel.quantity,
        unit=channel.unit,
        resolution=channel.resolution,
        certificate_id=channel.certificate,
        certificate=model.certificate,
        coverage_factor=channel.coverage_factor,
        chain=chain,
        factors=model.factors,
        dated=model.dated,
    )
    result = channel_result(spec, np.float64(reading["indication"]))
    budget = result.budget()
    text = f"{head}\n{format_budget(budget)}"
    if not np.isclose(
        budget.value, reading["value"], rtol=0, atol=1e-12 * max(1.0, abs(reading["value"]))
    ):
        text += (
            "\nnote: the certificate as the station file or the register now states it no longer "
            "reproduces the stored value "
            f"({budget.value!r} != {reading['value']!r}); it was changed since"
        )
    return budget, text
