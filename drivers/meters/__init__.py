# SPDX-License-Identifier: Apache-2.0
"""Energy meters with a protocol of their own: DL/T 645-2007 for now.

Modbus meters live in `drivers.modbus`, which reads them through register maps.
"""

from drivers.meters.dlt645 import (
    ITEMS,
    DataItem,
    Dlt645Meter,
    Frame,
    encode_read,
    encode_read_address,
    find_frame,
    parse_address_reply,
    parse_frame,
    parse_read_reply,
    read_address,
)

__all__ = [
    "ITEMS",
    "DataItem",
    "Dlt645Meter",
    "Frame",
    "encode_read",
    "encode_read_address",
    "find_frame",
    "parse_address_reply",
    "parse_frame",
    "parse_read_reply",
    "read_address",
]
