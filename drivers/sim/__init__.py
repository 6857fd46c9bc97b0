# SPDX-License-Identifier: Apache-2.0
"""Simulators that speak the real bytes; used by tests and the demo, never by the daemon."""
