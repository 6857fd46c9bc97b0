# SPDX-License-Identifier: Apache-2.0
"""A network namespace joined to the host by a veth pair: a cable the test can cut.

The daemon runs inside the namespace (``ip netns exec``) and reaches the broker at the
host's end of the pair. `cut` sets the host's end down: the namespace's end keeps its
address and route but loses its carrier, so whatever the daemon sends vanishes with no RST
or FIN, as when a cable is pulled or a router dies. `restore` sets it up again. Needs root
(CAP_NET_ADMIN); `tc netem` would do the same, but the sch_netem module is not always there.
"""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Cable:
    """The veth pair between the host and namespace `namespace`."""

    namespace: str
    host_end: str
    host_address: str
    inner_address: str

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        _ip("link", "set", self.host_end, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_end, "up")


@contextlib.contextmanager
def cable() -> Iterator[Cable]:
    """Create the namespace and the pair (names and a /30 unique to this process)."""
    tag = os.getpid() % 100_000
    subnet = f"10.{200 + tag % 50}.{tag % 250}"
    found = Cable(f"mgfaults{tag}", f"mgh{tag}", f"{subnet}.1", f"{subnet}.2")
    inner_end = f"mgn{tag}"
    _ip("netns", "add", found.namespace)
    try:
        _ip("link", "add", found.host_end, "type", "veth", "peer", "name", inner_end)
        _ip("link", "set", inner_end, "netns", found.namespace)
        _ip("addr", "add", f"{found.host_address}/30", "dev", found.host_end)
        _ip("link", "set", found.host_end, "up")
        inside = ["netns", "exec", found.namespace, "ip"]
        _ip(*inside, "addr", "add", f"{found.inner_address}/30", "dev", inner_end)
        _ip(*inside, "link", "set", inner_end, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield found
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", found.host_end)
        _ip("netns", "del", found.namespace)
