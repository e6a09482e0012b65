"""Container log rotation as kubelet's container log manager does it (pkg/kubelet/logs/
container_log_manager.go), for the pod's running containers.

Every monitoring period: ContainerStatus for the log path; a missing log is reopened; a log of at least
the maximum size is rotated: leftovers of a failed rotation (`*.tmp`, files whose `.gz` exists) go, the
oldest rotated files go until at most max_files - 2 stay, those are gzipped, then the log is renamed to
`<log>.<YYYYMMDD-hhmmss>` (uncompressed, so readers finish it) and ReopenContainerLog makes the runtime
start a new one; if that fails the log is renamed back for the next round.
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import os
import shutil
import time
from dataclasses import dataclass

import grpc

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet.cri import REQUEST_TIMEOUT, Cri
from crishim.kubelet.requests import POD_UID_LABEL

COMPRESSED = ".gz"
TEMPORARY = ".tmp"
STAMP = "%Y%m%d-%H%M%S"  # kubelet's timestampFormat, Go's "20060102-150405"


@dataclass(frozen=True)
class LogPolicy:
    max_size: int = 10 * 1024 * 1024  # --container-log-max-size 10Mi
    max_files: int = 5  # --container-log-max-files
    period: float = 10.0  # containerLogMonitorInterval


def parse_quantity(text: str) -> int:
    """A size as kubelet's flag takes it: a number of bytes, or with a Ki/Mi/Gi (or k/M/G) suffix."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix) and text[:-len(suffix)].isdigit():
            return int(text[:-len(suffix)]) * factor
    if text.isdigit():
        return int(text)
    raise ValueError(f"{text!r} is not a size (e.g. 10Mi)")


async def rotate_pod_logs(cri: Cri, pod_uid: str, policy: LogPolicy) -> None:
    """One pass over the pod's running containers (kubelet's rotateLogs lists the node's)."""
    listed = await cri.runtime.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
        state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING),
        label_selector={POD_UID_LABEL: pod_uid})), timeout=REQUEST_TIMEOUT)
    for container in listed.containers:
        await rotate_container_log(cri, container.id, policy)


async def rotate_container_log(cri: Cri, container_id: str, policy: LogPolicy) -> None:
    """processContainer: reopen a missing log, rotate one that reached the maximum size."""
    status = (await cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=container_id), timeout=REQUEST_TIMEOUT)).status
    path = status.log_path
    if not path:
        return
    size = await asyncio.to_thread(_size, path)
    if size is None:
        await _reopen(cri, container_id)
        size = await asyncio.to_thread(_size, path)
    if size is None or size < policy.max_size:
        return
    rotated = await asyncio.to_thread(_make_room, path, policy.max_files)
    await asyncio.to_thread(os.rename, path, rotated)
    try:
        await _reopen(cri, container_id)
    except grpc.aio.AioRpcError:
        await asyncio.to_thread(os.rename, rotated, path)  # to rotate again next round
        raise


async def _reopen(cri: Cri, container_id: str) -> None:
    await cri.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=container_id),
                                         timeout=REQUEST_TIMEOUT)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _make_room(path: str, max_files: int) -> str:
    """Blocking: cleanupUnusedLogs, removeExcessLogs, compressLog; the name the log is rotated to."""
    rotated = sorted(glob.glob(glob.escape(path) + ".*"))
    for name in list(rotated):
        if name.endswith(TEMPORARY) or name + COMPRESSED in rotated:
            os.remove(name)
            rotated.remove(name)
    excess = max(len(rotated) - max(max_files - 2, 0), 0)
    for name in rotated[:excess]:  # oldest first: ongoing readers of newer ones are not cut
        os.remove(name)
    for name in rotated[excess:]:
        if not name.endswith(COMPRESSED):
            _compress(name)
    return f"{path}.{time.strftime(STAMP)}"


def _compress(name: str) -> None:
    tmp = name + TEMPORARY
    try:
        with open(name, "rb") as src, gzip.open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copymode(name, tmp)
        os.rename(tmp, name + COMPRESSED)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    os.remove(name)
