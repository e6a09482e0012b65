"""`crishim pod run|delete|logs|status`.

How `delete` finds a running `run`: every runner keeps a state file `<pod run dir>/<namespace>_<name>.json`
holding its pid (and the pid's start time, so a recycled pid is not mistaken for it), the pod uid and its
last status report. `delete` writes the grace period it wants next to it (`….delete`) and sends the
runner SIGTERM, which deletes the pod exactly as Ctrl-C does, then waits for the runner to exit. With no
live runner (it was SIGKILLed, or the machine rebooted), `delete` finds the pod by kubelet's CRI labels
(io.kubernetes.pod.name/namespace via ListPodSandbox) and deletes it from what the labels and annotations
hold, as kubelet does for pods it no longer has a spec for (restoreSpecsFromContainerLabels).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet import node as nodefs
from crishim.kubelet.cri import REQUEST_TIMEOUT, Cri
from crishim.kubelet.logrotate import LogPolicy
from crishim.kubelet.manifest import Container, ExecAction, ManifestError, Pod, load_pod
from crishim.kubelet.requests import (
    CONTAINER_NAME_LABEL,
    POD_UID_LABEL,
    PRE_STOP_HANDLER,
    QOS_CLASSES,
    TERMINATION_GRACE,
    Node,
    qos_cgroup_parent,
)
from crishim.kubelet.worker import PodWorker, WorkerOptions

EXIT_USAGE = 2


@dataclass(frozen=True)
class RunOptions:
    endpoint: str
    run_dir: str
    log_root: str = "/var/log/pods"
    root_dir: str = "/var/lib/kubelet"
    cgroup_root: str = "/"
    resolv_conf: str = "/etc/resolv.conf"
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    runtime_handler: str = ""
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    logs: LogPolicy = field(default_factory=LogPolicy)


def _print(line: str) -> None:
    print(line, flush=True)


def _fail(message: str, code: int = 1) -> int:
    print(f"crishim pod: {message}", file=sys.stderr)
    return code


# ---- state files --------------------------------------------------------------------------------------

def state_path(run_dir: str, namespace: str, name: str) -> Path:
    return Path(run_dir) / f"{namespace}_{name}.json"


def _start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat: with the pid, identifies one process over pid reuse. A zombie (its
    parent has not reaped it yet) counts as gone: it holds nothing any more."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] == "Z" else fields[19]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.rename(path)


def read_state(run_dir: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The runner's state if the runner still lives; a stale file is removed."""
    path = state_path(run_dir, namespace, name)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _start_time(int(state.get("pid", 0))) != state.get("start_time"):
        path.unlink(missing_ok=True)
        return None
    return state


# ---- run ------------------------------------------------------------------------------------------------

def run(manifest: str, options: RunOptions) -> int:
    try:
        pod = load_pod(Path(manifest).read_text())
    except OSError as exc:
        return _fail(f"{manifest}: {exc.strerror}", EXIT_USAGE)
    except ManifestError as exc:
        return _fail(f"{manifest}: {exc}", EXIT_USAGE)
    return asyncio.run(_run(pod, options))


async def _run(pod: Pod, options: RunOptions) -> int:
    await asyncio.to_thread(Path(options.run_dir).mkdir, parents=True, exist_ok=True)
    if (other := read_state(options.run_dir, pod.namespace, pod.name)) is not None:
        return _fail(f"pod {pod.namespace}/{pod.name} is already run by pid {other['pid']}")
    node = await asyncio.to_thread(nodefs.node_facts, options.log_root, options.root_dir, options.cgroup_root,
                                   options.resolv_conf, options.cluster_dns, options.cluster_domain,
                                   options.runtime_handler)
    path = state_path(options.run_dir, pod.namespace, pod.name)
    state: dict[str, Any] = {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "uid": pod.uid,
                             "name": pod.name, "namespace": pod.namespace, "endpoint": options.endpoint,
                             "status": {}}
    _write_json(path, state)

    def on_report(summary: dict[str, Any]) -> None:
        if summary != state["status"]:
            state["status"] = summary
            _write_json(path, state)

    stop = asyncio.Event()
    try:
        async with Cri(options.endpoint) as cri:
            worker = PodWorker(pod, cri, WorkerOptions(node=node, backoff_base=options.backoff_base,
                                                       backoff_max=options.backoff_max, announce=_print,
                                                       on_report=on_report, logs=options.logs))

            def on_signal() -> None:
                worker.deletion_grace = _requested_grace(path)
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, on_signal)
            try:
                await cri.wait_ready(10)
            except grpc.aio.AioRpcError as exc:
                return _fail(f"cannot reach {options.endpoint}: {exc.details()}")
            _print(f"pod {pod.namespace}/{pod.name} uid {pod.uid}: running against {options.endpoint}")
            await worker.run(stop)
    finally:
        path.unlink(missing_ok=True)
        path.with_suffix(".delete").unlink(missing_ok=True)
    return 0


def _requested_grace(path: Path) -> int | None:
    """The grace period `crishim pod delete --grace-period` left before signalling (None: the pod's)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(path.with_suffix(".delete").read_text())["grace"])
    return None


# ---- delete ---------------------------------------------------------------------------------------------

def delete(name: str, namespace: str, options: RunOptions, grace: int | None, timeout: float) -> int:
    state = read_state(options.run_dir, namespace, name)
    if state is not None:
        path = state_path(options.run_dir, namespace, name)
        _write_json(path.with_suffix(".delete"), {"grace": grace})
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _start_time(state["pid"]) == state["start_time"]:
            if time.monotonic() > deadline:
                return _fail(f"runner pid {state['pid']} still deleting {namespace}/{name} "
                             f"after {timeout:g}s")
            time.sleep(0.1)
        print(f"pod {namespace}/{name} deleted")
        return 0
    return asyncio.run(_delete_orphan(name, namespace, options, grace))


def restore_pod(name: str, namespace: str, uid: str, statuses: list[api_pb2.ContainerStatus]) -> Pod:
    """kuberuntime_container.go restoreSpecsFromContainerLabels: enough of the pod to kill it (names,
    preStop hooks, grace period) from the labels and annotations kubelet put on its containers."""
    containers: dict[str, Container] = {}
    grace = 30
    for status in statuses:
        container_name = status.labels.get(CONTAINER_NAME_LABEL, status.metadata.name)
        pre_stop = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            pre_stop = ExecAction(tuple(json.loads(status.annotations[PRE_STOP_HANDLER])["exec"]["command"]))
        if status.annotations.get(TERMINATION_GRACE, "").isdigit():
            grace = int(status.annotations[TERMINATION_GRACE])
        containers.setdefault(container_name, Container(name=container_name, image="", pre_stop=pre_stop))
    return Pod(name=name, namespace=namespace, uid=uid, containers=tuple(containers.values()),
               termination_grace_period_seconds=grace)


async def _delete_orphan(name: str, namespace: str, options: RunOptions, grace: int | None) -> int:
    node = Node(log_root=options.log_root, root_dir=options.root_dir, cgroup_root=options.cgroup_root)
    async with Cri(options.endpoint) as cri:
        sandboxes = await cri.find_sandboxes(name, namespace)
        if not sandboxes:
            return _fail(f"pod {namespace}/{name} not found")
        for uid in dict.fromkeys(s.metadata.uid for s in sandboxes):
            listed = await cri.runtime.ListContainers(api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(label_selector={POD_UID_LABEL: uid})), timeout=REQUEST_TIMEOUT)
            statuses = [(await cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
                container_id=c.id), timeout=REQUEST_TIMEOUT)).status for c in listed.containers]
            pod = restore_pod(name, namespace, uid, statuses)
            worker = PodWorker(pod, cri, WorkerOptions(node=node, announce=_print))
            worker.deletion_grace = grace
            await worker.delete()
            for qos in QOS_CLASSES:  # the QoS class is not in the labels: every parent it may have had
                await asyncio.to_thread(nodefs.remove_pod_cgroup, qos_cgroup_parent(uid, qos, node))
    return 0


# ---- logs and status ------------------------------------------------------------------------------------

async def _containers_of(cri: Cri, name: str, namespace: str) -> tuple[str, list[api_pb2.ContainerStatus]]:
    sandboxes = await cri.find_sandboxes(name, namespace)
    if not sandboxes:
        raise LookupError(f"pod {namespace}/{name} not found")
    uid = sandboxes[0].metadata.uid
    listed = await cri.runtime.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(label_selector={POD_UID_LABEL: uid})), timeout=REQUEST_TIMEOUT)
    statuses = []
    for c in listed.containers:
        with contextlib.suppress(grpc.aio.AioRpcError):
            statuses.append((await cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
                container_id=c.id), timeout=REQUEST_TIMEOUT)).status)
    statuses.sort(key=lambda s: s.created_at, reverse=True)
    return uid, statuses


def parse_cri_log(data: bytes, timestamps: bool = False) -> bytes:
    """The CRI log format (`<RFC3339Nano> <stream> <P|F> <message>`) back to the container's output:
    partial (P) lines join the next one (pkg/kubelet/kuberuntime/logs/logs.go parseCRILog)."""
    out = bytearray()
    for line in data.split(b"\n"):
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue
        message = parts[3] if len(parts) == 4 else b""
        if timestamps and (not out or out.endswith(b"\n")):
            out += parts[0] + b" "
        out += message
        if parts[2] != b"P":
            out += b"\n"
    return bytes(out)


def logs(name: str, namespace: str, container: str | None, previous: bool, timestamps: bool,
         options: RunOptions) -> int:
    async def read() -> int:
        async with Cri(options.endpoint) as cri:
            try:
                _, statuses = await _containers_of(cri, name, namespace)
            except LookupError as exc:
                return _fail(str(exc))
        names = list(dict.fromkeys(s.metadata.name for s in reversed(statuses)))
        chosen = container
        if chosen is None:
            if not names:
                return _fail(f"pod {namespace}/{name} has no containers yet")
            chosen = names[-1] if len(names) == 1 else names[0]
            if len(names) > 1:
                print(f"Defaulted container {chosen!r} out of: {', '.join(names)}", file=sys.stderr)
        instances = [s for s in statuses if s.metadata.name == chosen]
        index = 1 if previous else 0
        if len(instances) <= index:
            what = "previous terminated container" if previous else "container"
            return _fail(f"{what} {chosen!r} in pod {namespace}/{name} not found")
        try:
            data = await asyncio.to_thread(Path(instances[index].log_path).read_bytes)
        except OSError as exc:
            return _fail(f"{instances[index].log_path}: {exc.strerror}")
        sys.stdout.buffer.write(parse_cri_log(data, timestamps))
        sys.stdout.flush()
        return 0

    return asyncio.run(read())


STATE_NAMES = {api_pb2.CONTAINER_RUNNING: "running", api_pb2.CONTAINER_EXITED: "exited",
               api_pb2.CONTAINER_CREATED: "created", api_pb2.CONTAINER_UNKNOWN: "unknown"}


def status(name: str, namespace: str, output: str, options: RunOptions) -> int:
    """The runner's last report when one runs (it knows readiness), else what the runtime holds."""
    state = read_state(options.run_dir, namespace, name)

    async def collect() -> dict[str, Any] | None:
        async with Cri(options.endpoint) as cri:
            try:
                uid, statuses = await _containers_of(cri, name, namespace)
            except LookupError:
                return None
            sandboxes = await cri.find_sandboxes(name, namespace)
        containers: dict[str, Any] = {}
        for s in statuses:  # newest first: the first instance of a name is its current one
            if s.metadata.name not in containers:
                containers[s.metadata.name] = {"state": STATE_NAMES.get(s.state, "unknown"), "id": s.id,
                                               "restarts": s.metadata.attempt, "exit_code": s.exit_code}
        return {"uid": uid, "sandbox": sandboxes[0].id,
                "sandbox_state": "ready" if sandboxes[0].state == api_pb2.SANDBOX_READY else "notready",
                "containers": containers}

    runtime_view = asyncio.run(collect())
    if runtime_view is None and state is None:
        return _fail(f"pod {namespace}/{name} not found")
    report: dict[str, Any] = {"name": name, "namespace": namespace,
                              "runner_pid": state["pid"] if state else None}
    report.update(runtime_view or {})
    if state is not None:
        report.update(state["status"])
    if output == "json":
        print(json.dumps(report, indent=1))
        return 0
    print(f"pod {namespace}/{name}: {report.get('phase', report.get('sandbox_state', '?'))}"
          f"  ready {report.get('ready', '?')}  ip {report.get('ip') or '-'}"
          f"  runner {report['runner_pid'] or 'none'}")
    for cname, c in report.get("containers", {}).items():
        extra = f" exit {c['exit_code']}" if c.get("state") == "exited" else ""
        ready = " ready" if c.get("ready") else ""
        print(f"  {cname}: {c.get('state')} restarts {c.get('restarts')}{extra}{ready}")
    return 0
