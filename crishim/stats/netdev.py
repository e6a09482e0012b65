"""Per-interface network counters of a pod, read from inside its network namespace.

/proc/net/dev shows the namespace of the reading task; /proc/self follows the process (whose main thread
stays in the node's namespace), so the read goes through /proc/thread-self on a fresh thread that joined
the pod's namespace and ends afterwards (see crishim.threads.run_in_thread).
"""

from __future__ import annotations

from dataclasses import dataclass

from crishim.sandbox.namespaces import PodNamespaces, enter_namespaces
from crishim.threads import run_in_thread


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


def parse_net_dev(text: str) -> list[InterfaceCounters]:
    """Parse /proc/net/dev: two header lines, then "name: 8 receive fields, 8 transmit fields"."""
    found = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16:
            continue
        values = [int(f) for f in fields]
        found.append(InterfaceCounters(name=name.strip(), rx_bytes=values[0], rx_packets=values[1],
                                       rx_errors=values[2], rx_dropped=values[3], tx_bytes=values[8],
                                       tx_packets=values[9], tx_errors=values[10], tx_dropped=values[11]))
    return found


def _read_in(netns_path: str) -> list[InterfaceCounters]:
    enter_namespaces(PodNamespaces(net=netns_path))
    with open("/proc/thread-self/net/dev") as f:
        return parse_net_dev(f.read())


async def read_pod_interfaces(netns_path: str) -> list[InterfaceCounters]:
    """Counters of every interface in the namespace pinned at `netns_path`, loopback excluded."""
    counters = await run_in_thread(lambda: _read_in(netns_path))
    return [c for c in counters if c.name != "lo"]
