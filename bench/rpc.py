"""crishim through its gRPC socket, the way kubelet drives it: many pods in flight on one channel."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.measure import Summary, drive, summarise
from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from tests.sandbox.podutil import pod_config

RPCS = ("run", "status", "stop", "remove", "stop_remove")


def channel(socket: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix:{socket}")


def runtime_stub(ch: grpc.aio.Channel | grpc.Channel) -> Any:
    """The generated stub is untyped; its calls are typed by the request and response messages."""
    return api_pb2_grpc.RuntimeServiceStub(ch)  # type: ignore[no-untyped-call]


@dataclass
class Cycle:
    """One concurrency level: samples per RPC and the RPC errors seen (a failed Run is not retried)."""

    rt: Any
    samples: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    async def call(self, name: str, fn: Callable[[Any], Awaitable[Any]], request: Any) -> Any | None:
        t0 = time.perf_counter()
        try:
            response = await fn(request)
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"{name}: {exc.code().name}: {exc.details()}")
            return None
        self.samples[name].append(time.perf_counter() - t0)
        return response

    async def run(self, config: api_pb2.PodSandboxConfig) -> None:
        response = await self.call("run", self.rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=config))
        if response is not None:
            self.ids.append(response.pod_sandbox_id)

    async def status(self, sandbox_id: str) -> None:
        await self.call("status", self.rt.PodSandboxStatus,
                        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))

    async def stop_remove(self, sandbox_id: str) -> None:
        t0 = time.perf_counter()
        stopped = await self.call("stop", self.rt.StopPodSandbox,
                                  api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        removed = await self.call("remove", self.rt.RemovePodSandbox,
                                  api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        if stopped is not None and removed is not None:
            self.samples["stop_remove"].append(time.perf_counter() - t0)


def configs(tag: str, count: int) -> list[api_pb2.PodSandboxConfig]:
    return [pod_config(f"{tag}-{i}", namespace="bench") for i in range(count)]


async def lifecycle(socket: str, pods: int, concurrency: int, tag: str) -> dict[str, Any]:
    """Run all pods, Status each, then Stop+Remove each, every phase with `concurrency` in flight."""
    async with channel(socket) as ch:
        cycle = Cycle(runtime_stub(ch))
        create_wall = await drive(configs(tag, pods), concurrency, cycle.run)
        await drive(list(cycle.ids), concurrency, cycle.status)
        delete_wall = await drive(list(cycle.ids), concurrency, cycle.stop_remove)
    return {"samples": {rpc: cycle.samples[rpc] for rpc in RPCS}, "count": len(cycle.ids),
            "create_wall_s": create_wall, "delete_wall_s": delete_wall, "errors": cycle.errors}


async def populate(socket: str, count: int, concurrency: int, tag: str) -> list[str]:
    """Create `count` READY pods; any failure aborts, since the scale figures would be meaningless."""
    async with channel(socket) as ch:
        cycle = Cycle(runtime_stub(ch))
        await drive(configs(tag, count), concurrency, cycle.run)
    if cycle.errors:
        raise RuntimeError(f"{len(cycle.errors)} of {count} RunPodSandbox calls failed, "
                           f"e.g. {cycle.errors[0]}")
    return cycle.ids


async def read_paths(socket: str, ids: list[str], lists: int, statuses: int) -> dict[str, Summary]:
    """ListPodSandbox and PodSandboxStatus (random pods) one at a time, as kubelet's relist does."""
    async with channel(socket) as ch:
        cycle = Cycle(runtime_stub(ch))
        for _ in range(lists):
            await cycle.call("list", cycle.rt.ListPodSandbox, api_pb2.ListPodSandboxRequest())
        picks = random.Random(0)
        for _ in range(statuses if ids else 0):
            await cycle.status(picks.choice(ids))
    if cycle.errors:
        raise RuntimeError(f"read path failed: {cycle.errors[0]}")
    return {"list": summarise(cycle.samples["list"]), "status": summarise(cycle.samples["status"])}


async def count_ready(socket: str) -> int:
    async with channel(socket) as ch:
        response = await runtime_stub(ch).ListPodSandbox(api_pb2.ListPodSandboxRequest())
    return sum(1 for item in response.items if item.state == api_pb2.SANDBOX_READY)

