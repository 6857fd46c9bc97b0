# SPDX-License-Identifier: Apache-2.0
"""Balances: one module per protocol (MT-SICS now; Sartorius SBI to come)."""

from drivers.balances.mtsics import MtSicsBalance, WeightReply, parse_weight

__all__ = ["MtSicsBalance", "WeightReply", "parse_weight"]
