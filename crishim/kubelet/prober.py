"""Probes: one asyncio task per (container, probe kind), kubelet's prober worker (pkg/kubelet/prober/worker.go
doProbe) with its exec and tcpSocket runners (prober.go runProbe). Results are kept per container id, as
kubelet's results managers do: readiness starts at Failure, liveness at Success, startup at Unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet.actions import EXITED, RUNNING, PodSnapshot
from crishim.kubelet.cri import REQUEST_TIMEOUT, Cri
from crishim.kubelet.manifest import Container, Pod, Probe
from crishim.kubelet.requests import expand

SUCCESS, FAILURE, UNKNOWN = "Success", "Failure", "Unknown"
LIVENESS, READINESS, STARTUP = "liveness", "readiness", "startup"
INITIAL = {READINESS: FAILURE, LIVENESS: SUCCESS, STARTUP: UNKNOWN}


@dataclass
class ProbeResults:
    """Per kind: container id -> last result that crossed its threshold."""

    by_kind: dict[str, dict[str, str]] = field(
        default_factory=lambda: {LIVENESS: {}, READINESS: {}, STARTUP: {}})

    def get(self, kind: str, container_id: str) -> str | None:
        return self.by_kind[kind].get(container_id)

    def failed(self, kind: str) -> set[str]:
        return {cid for cid, result in self.by_kind[kind].items() if result == FAILURE}

    def started(self, container: Container, container_id: str) -> bool:
        """A running container without a startup probe has started; with one, once it succeeded."""
        return container.startup_probe is None or self.get(STARTUP, container_id) == SUCCESS

    def ready(self, container: Container, container_id: str) -> bool:
        if not self.started(container, container_id):
            return False
        return container.readiness_probe is None or self.get(READINESS, container_id) == SUCCESS


def _probe_port(container: Container, port: int | str) -> int | None:
    """prober.go findPortByName: a named port is looked up among the container's ports."""
    if isinstance(port, int):
        return port
    return next((p.container_port for p in container.ports if p.name == port), None)


async def run_probe(cri: Cri, probe: Probe, container: Container, container_id: str,
                    host: str) -> tuple[str, str]:
    """prober.go runProbe for exec and tcpSocket: (result, output or reason)."""
    if probe.exec is not None:
        env = {v.name: v.value for v in container.env if not v.field_ref}
        command = [expand(part, env) for part in probe.exec.command]  # ExpandContainerCommandOnlyStatic
        try:
            response = await cri.runtime.ExecSync(api_pb2.ExecSyncRequest(
                container_id=container_id, cmd=command, timeout=probe.timeout_seconds),
                timeout=REQUEST_TIMEOUT + probe.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return FAILURE, f"command {command!r} timed out"
            return UNKNOWN, f"exec failed: {exc.details()}"
        output = (response.stdout + response.stderr).decode(errors="replace").strip()
        if response.exit_code == 0:
            return SUCCESS, output
        return FAILURE, f"command {command!r} exited with {response.exit_code}: {output}"
    assert probe.tcp_socket is not None
    port = _probe_port(container, probe.tcp_socket.port)
    if port is None:
        return UNKNOWN, f"no container port named {probe.tcp_socket.port!r}"
    target = probe.tcp_socket.host or host
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), probe.timeout_seconds)
    except (OSError, TimeoutError) as exc:
        return FAILURE, f"dial tcp {target}:{port}: {exc or 'timeout'}"
    writer.close()
    return SUCCESS, ""


class ProbeWorker:
    """worker.go: probes one container every periodSeconds while the pod runs; new container id = fresh
    state at the kind's initial value; Failure/Success only after failureThreshold/successThreshold in a
    row; a liveness or startup Failure puts the worker on hold until the container is replaced."""

    def __init__(self, kind: str, pod: Pod, container: Container, probe: Probe, cri: Cri,
                 results: ProbeResults, status: Callable[[], PodSnapshot], host: Callable[[], str],
                 changed: Callable[[str, str, str], None]) -> None:
        self.kind, self.pod, self.container, self.probe, self.cri = kind, pod, container, probe, cri
        self.results, self.status, self.host, self.changed = results, status, host, changed
        self.container_id = ""
        self.last_result = ""
        self.run_length = 0
        self.on_hold = False

    async def run(self) -> None:
        """worker.go run: a probe now, then one every periodSeconds (no start-up jitter)."""
        keep_going = True
        while keep_going:
            keep_going = await self.do_probe()
            await asyncio.sleep(self.probe.period_seconds)

    def _set(self, result: str, detail: str = "") -> None:
        store = self.results.by_kind[self.kind]
        if store.get(self.container_id) != result:
            initial = self.container_id not in store
            store[self.container_id] = result
            self.changed(self.kind, self.container.name, "" if initial else
                         f"{result}{': ' + detail if detail else ''}")

    async def do_probe(self) -> bool:
        latest = self.status().latest(self.container.name)
        if latest is None:
            return True
        if latest.id != self.container_id:
            self.results.by_kind[self.kind].pop(self.container_id, None)
            self.container_id = latest.id
            self._set(INITIAL[self.kind])
            self.on_hold = False
            self.last_result, self.run_length = "", 0
        if self.on_hold:
            return True
        if latest.state != RUNNING:
            self._set(FAILURE)
            return latest.state != EXITED or self.pod.restart_policy != "Never"
        if time.time() - latest.started_at / 1e9 < self.probe.initial_delay_seconds:
            return True
        started = self.results.started(self.container, latest.id)
        if started != (self.kind != STARTUP):
            return True  # startup probes stop once started; the others wait for it
        result, detail = await run_probe(self.cri, self.probe, self.container, latest.id, self.host())
        if result == UNKNOWN:
            return True  # a prober error: the result is thrown away
        if result == self.last_result:
            self.run_length += 1
        else:
            self.last_result, self.run_length = result, 1
        if (result == FAILURE and self.run_length < self.probe.failure_threshold) or \
                (result == SUCCESS and self.run_length < self.probe.success_threshold):
            return True
        self._set(result, detail if result == FAILURE else "")
        if self.kind in (LIVENESS, STARTUP) and result == FAILURE:
            self.on_hold, self.run_length = True, 0
        return True
