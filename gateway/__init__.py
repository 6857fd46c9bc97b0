# SPDX-License-Identifier: Apache-2.0
"""The metrogate station daemon and everything around it.

instrument → `drivers` → raw readings → `calibration` → `gateway.stamp` → `gateway.store`
(durable) → `gateway.forward` (MQTT, QoS 1). See DESIGN.md and the README.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
