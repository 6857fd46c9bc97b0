# SPDX-License-Identifier: Apache-2.0
"""Balances: one module per protocol (Mettler Toledo MT-SICS, Sartorius SBI)."""

from drivers.balances.mtsics import MtSicsBalance, WeightReply, parse_weight
from drivers.balances.sbi import SbiBalance, SbiReply, parse_reply

__all__ = ["MtSicsBalance", "SbiBalance", "SbiReply", "WeightReply", "parse_reply", "parse_weight"]
