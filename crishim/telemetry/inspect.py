"""`crishim inspect POD`: why is this pod slow or broken, without reading logs.

Asks the running crishim (over its CRI socket, like crictl) for the pod's verbose status and prints the
network set-up timeline: every plugin call in order, when it started, how long it took, how it ended.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO, TypeVar, cast

import grpc
from google.protobuf.message import Message

from crishim.api.runtime.v1 import api_pb2
from crishim.config import Config

_STATES = {api_pb2.SANDBOX_READY: "READY", api_pb2.SANDBOX_NOTREADY: "NOTREADY"}
_TIMEOUT = 10.0

M = TypeVar("M", bound=Message)


class PodLookupError(Exception):
    """No pod, or more than one, matches what the user typed."""


def _call(channel: grpc.Channel, method: str, request: Message, response: type[M]) -> M:
    rpc = channel.unary_unary(f"/runtime.v1.RuntimeService/{method}",
                              request_serializer=type(request).SerializeToString,
                              response_deserializer=response.FromString)
    return cast(M, rpc(request, timeout=_TIMEOUT))


def _find(channel: grpc.Channel, wanted: str) -> str:
    """A pod id from an id, an id prefix, "name" or "namespace/name"."""
    pods = _call(channel, "ListPodSandbox", api_pb2.ListPodSandboxRequest(),
                 api_pb2.ListPodSandboxResponse).items
    namespace, _, name = wanted.rpartition("/")
    by_id = [p for p in pods if p.id.startswith(wanted)]
    by_name = [p for p in pods if p.metadata.name == name and namespace in ("", p.metadata.namespace)]
    matches = by_id or by_name
    if not matches:
        raise PodLookupError(f"no pod sandbox has an id starting with or a name equal to {wanted!r}")
    if len(matches) > 1:
        listed = ", ".join(f"{p.metadata.namespace}/{p.metadata.name} ({p.id[:13]})" for p in matches)
        raise PodLookupError(f"{wanted!r} matches several pods: {listed}; give more of the id")
    return str(matches[0].id)


def render(status: api_pb2.PodSandboxStatus, info: dict[str, Any], out: TextIO) -> None:
    meta = status.metadata
    ips = [status.network.ip, *(ip.ip for ip in status.network.additional_ips)] if status.network.ip else []
    print(f"pod        {meta.namespace}/{meta.name} (attempt {meta.attempt})", file=out)
    print(f"id         {status.id}", file=out)
    print(f"state      {_STATES.get(status.state, str(status.state))}", file=out)
    print(f"ips        {', '.join(ips) or '-'}", file=out)
    print(f"netns      {info.get('netnsPath') or '- (host network)'}", file=out)
    print(f"network    {info.get('network') or '-'}", file=out)
    if info.get("teardownPending") and status.state != api_pb2.SANDBOX_READY:
        print("teardown   owed: a CNI DEL has not succeeded yet and will be retried", file=out)
    if info.get("lastError"):
        print(f"last error {info['lastError']}", file=out)
    timeline = info.get("timeline") or []
    print(f"\nnetwork timeline ({len(timeline)} plugin calls)", file=out)
    if not timeline:
        print("  (none recorded)", file=out)
        return
    origin = min(t["started"] for t in timeline)
    for t in timeline:
        offset_ms = (t["started"] - origin) * 1000
        outcome = f"FAILED: {t['error']}" if t.get("error") else "ok"
        print(f"  +{offset_ms:9.1f} ms  {t['verb']:<6} {t['plugin']:<14} "
              f"{t['durationMs']:9.1f} ms  {outcome}", file=out)
    total = sum(t["durationMs"] for t in timeline)
    slowest = max(timeline, key=lambda t: t["durationMs"])
    print(f"\n  plugins ran {total:.1f} ms in all; slowest: {slowest['verb']} {slowest['plugin']} "
          f"({slowest['durationMs']:.1f} ms)", file=out)


def inspect(config: Config, pod_id_or_name: str, out: TextIO = sys.stdout) -> int:
    """Print the pod's status and network timeline; 0 on success, 1 with a message on stderr otherwise."""
    with grpc.insecure_channel(f"unix:{config.socket}") as channel:
        try:
            pod_id = _find(channel, pod_id_or_name)
            response = _call(channel, "PodSandboxStatus",
                             api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                             api_pb2.PodSandboxStatusResponse)
        except PodLookupError as exc:
            print(f"crishim inspect: {exc}", file=sys.stderr)
            return 1
        except grpc.RpcError as exc:
            print(f"crishim inspect: cannot ask crishim at {config.socket}: {exc.code().name}: "
                  f"{exc.details()}", file=sys.stderr)
            return 1
    render(response.status, json.loads(response.info.get("info", "{}")), out)
    return 0
