"""The floor: what the kernel and the CNI plugins take for one pod, with no gRPC and no crishim state.

Pods get a network namespace pinned by crishim's own `pin_namespaces` (a fresh thread, unshare, bind mount:
the cheapest correct way, and the one crishim pays; `ip netns add` would add a process start and make the
floor look slower than it is), then the conflist ADD through our `cni` library; teardown is DEL and
`release_namespaces`. This module runs as its own process inside the test node
(`nsenter --net=NODE python -m bench.floor PARAMS`), exactly like crishim's server, so the plugins start in
the node's namespace without an extra `nsenter` per plugin call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cni
from bench.measure import drive
from crishim.network.podnet import POD_ANNOTATIONS_CAPABILITY, POD_IFNAME
from crishim.sandbox.namespaces import PodNamespaces, pin_namespaces, release_namespaces
from tests.harness import CNI_BIN_DIR

STEPS = ("pin", "add", "setup", "del", "unpin", "teardown")


@dataclass(frozen=True)
class FloorParams:
    conflist: str
    netns_dir: str
    cache_dir: str
    pods: int
    concurrency: list[int]
    warmup: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class FloorPod:
    """One attachment, with the same CNI_ARGS and capability args crishim sends for a plain pod."""

    netns: PodNamespaces
    rt: cni.RuntimeConf
    pinned: bool = False
    added: bool = False

    @classmethod
    def make(cls, netns_dir: str, tag: str, index: int) -> FloorPod:
        pod_id = secrets.token_hex(32)
        args = cni.kubernetes_args("default", f"{tag}-{index}", pod_id, str(uuid.uuid4()))
        netns = f"{netns_dir}/floor-{uuid.uuid4()}"
        rt = cni.RuntimeConf(container_id=pod_id, netns=netns, ifname=POD_IFNAME, args=args,
                             capability_args={POD_ANNOTATIONS_CAPABILITY: {}})
        return cls(PodNamespaces(net=netns), rt)


@dataclass
class FloorCycle:
    client: cni.CNIConfig
    net: cni.NetworkConfigList
    samples: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in STEPS})

    async def set_up(self, pod: FloorPod) -> None:
        t0 = time.perf_counter()
        await pin_namespaces(pod.netns, "")
        pod.pinned = True
        t1 = time.perf_counter()
        await self.client.add_network_list(self.net, pod.rt)
        pod.added = True
        t2 = time.perf_counter()
        self._record(pin=t1 - t0, add=t2 - t1, setup=t2 - t0)

    async def tear_down(self, pod: FloorPod) -> None:
        t0 = time.perf_counter()
        await self.client.del_network_list(self.net, pod.rt)
        pod.added = False
        t1 = time.perf_counter()
        await release_namespaces(pod.netns)
        pod.pinned = False
        t2 = time.perf_counter()
        self._record(**{"del": t1 - t0, "unpin": t2 - t1, "teardown": t2 - t0})

    def _record(self, **durations: float) -> None:
        for step, seconds in durations.items():
            self.samples[step].append(seconds)

    async def abandon(self, pods: list[FloorPod]) -> None:
        """Best-effort teardown of whatever an interrupted cycle left behind."""
        for pod in pods:
            if pod.added:
                with contextlib.suppress(cni.CNIError):
                    await self.client.del_network_list(self.net, pod.rt)
            if pod.pinned:
                await release_namespaces(pod.netns)


async def run_cycle(client: cni.CNIConfig, net: cni.NetworkConfigList, params: FloorParams, pods: int,
                    concurrency: int) -> dict[str, Any]:
    """All pods set up with `concurrency` in flight, then all torn down the same way; raw samples."""
    cycle = FloorCycle(client, net)
    batch = [FloorPod.make(params.netns_dir, f"floor-c{concurrency}", i) for i in range(pods)]
    try:
        create_wall = await drive(batch, concurrency, cycle.set_up)
        delete_wall = await drive(batch, concurrency, cycle.tear_down)
    finally:
        await asyncio.shield(cycle.abandon(batch))
    return {"samples": cycle.samples, "count": pods, "create_wall_s": create_wall,
            "delete_wall_s": delete_wall}


async def measure(params: FloorParams, net: cni.NetworkConfigList) -> dict[str, Any]:
    client = cni.CNIConfig([CNI_BIN_DIR], cache_dir=params.cache_dir)
    if params.warmup:
        await run_cycle(client, net, params, params.warmup, 1)
    return {str(c): await run_cycle(client, net, params, params.pods, c) for c in params.concurrency}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.floor PARAMS_JSON (started by `python -m bench`)", file=sys.stderr)
        return 2
    params = FloorParams(**json.loads(argv[0]))
    net = cni.parse_network_config_list(Path(params.conflist).read_bytes(), params.conflist)
    Path(params.netns_dir).mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(measure(params, net))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
