"""What kubelet does on the node's filesystem around the CRI calls: pod directory, volumes, the managed
/etc/hosts, termination-message files, log directories, and the pod cgroup's removal. Blocking: call
these through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from crishim.kubelet.manifest import Pod, Volume
from crishim.kubelet.requests import Node, managed_hosts, parse_resolv_conf, pod_dir

EMPTY_DIR = "kubernetes.io~empty-dir"


class VolumeError(RuntimeError):
    """A volume cannot be set up (kubelet reports FailedMount and retries)."""


def node_facts(log_root: str, root_dir: str, cgroup_root: str, resolv_conf: str,
               cluster_dns: tuple[str, ...], cluster_domain: str, runtime_handler: str) -> Node:
    """The Node a kubelet on this machine would describe (cadvisor's MemTotal, hugepage sizes, hostname)."""
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    sizes = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir("/sys/kernel/mm/hugepages")):
            match = re.match(r"hugepages-(\d+)kB$", entry)
            if match:
                sizes.append(_page_size(int(match.group(1)) * 1024))
    try:
        host_dns = parse_resolv_conf(Path(resolv_conf).read_text()) if resolv_conf else None
    except OSError:
        host_dns = None
    return Node(log_root=log_root, root_dir=root_dir, cgroup_root=cgroup_root, cluster_dns=cluster_dns,
                cluster_domain=cluster_domain, node_name=socket.gethostname(), node_ip=_node_ip(),
                memory_capacity=memory, hugepage_sizes=tuple(sizes), runtime_handler=runtime_handler,
                **({"host_dns": host_dns} if host_dns else {}))


def _page_size(size: int) -> str:
    """pkg/kubelet/cm/helpers_linux.go: a page size as the CRI names it (2MB, 1GB)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def _node_ip() -> str:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the source address
        return str(sock.getsockname()[0])
    return "127.0.0.1"


def make_log_dir(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def next_restart_from_logs(log_dir: str, container: str) -> int:
    """kuberuntime_container.go calcRestartCountByLogDir: one more than the highest <n>.log left."""
    try:
        names = os.listdir(os.path.join(log_dir, container))
    except OSError:
        return 0
    counts = [int(m.group(1)) for n in names if (m := re.match(r"^(\d+)\.log", n))]
    return max(counts) + 1 if counts else 0


def _check_host_path(volume: Volume) -> None:
    """pkg/volume/hostpath: create what the type allows, else insist the path is of that kind."""
    assert volume.host_path is not None
    path, kind = volume.host_path, volume.host_path_type
    if kind == "DirectoryOrCreate":
        os.makedirs(path, mode=0o755, exist_ok=True)
    elif kind == "FileOrCreate":
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    checks = {"Directory": stat.S_ISDIR, "DirectoryOrCreate": stat.S_ISDIR, "File": stat.S_ISREG,
              "FileOrCreate": stat.S_ISREG, "Socket": stat.S_ISSOCK, "CharDevice": stat.S_ISCHR,
              "BlockDevice": stat.S_ISBLK}
    if kind:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise VolumeError(f"volume {volume.name}: hostPath {path} ({kind}): {exc.strerror}") from exc
        if not checks[kind](mode):
            raise VolumeError(f"volume {volume.name}: hostPath {path} is not a {kind}")


def setup_volumes(pod: Pod, node: Node) -> dict[str, str]:
    """The host path of every volume: emptyDirs under <pod dir>/volumes (0777, tmpfs for medium Memory),
    hostPaths as given after their type check."""
    paths: dict[str, str] = {}
    base = Path(pod_dir(pod, node)) / "volumes" / EMPTY_DIR
    for volume in pod.volumes:
        if volume.host_path is not None:
            _check_host_path(volume)
            paths[volume.name] = volume.host_path
            continue
        target = base / volume.name
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o777)
        if volume.empty_dir_medium == "Memory" and not os.path.ismount(target):
            options = "mode=0777" + (f",size={volume.size_limit}" if volume.size_limit else "")
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                                    capture_output=True, text=True, check=False)
            if result.returncode:
                raise VolumeError(f"volume {volume.name}: tmpfs mount failed: {result.stderr.strip()}")
        paths[volume.name] = str(target)
    for container in (*pod.init_containers, *pod.containers):
        for mount in container.volume_mounts:
            if mount.sub_path and pod.volume(mount.name).host_path is None:
                os.makedirs(os.path.join(paths[mount.name], mount.sub_path), mode=0o777, exist_ok=True)
    return paths


def write_hosts_file(pod: Pod, node: Node, pod_ips: list[str]) -> str:
    """kubelet_pods.go ensureHostsFile: <pod dir>/etc-hosts, rewritten for the current pod IPs."""
    path = Path(pod_dir(pod, node)) / "etc-hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    node_hosts = ""
    if pod.host_network:
        with contextlib.suppress(OSError):
            node_hosts = Path("/etc/hosts").read_text()
    tmp = path.with_name(".etc-hosts.tmp")
    tmp.write_text(managed_hosts(pod, pod_ips, node, node_hosts))
    tmp.chmod(0o644)
    tmp.rename(path)
    return str(path)


def termination_file(pod: Pod, node: Node, container: str) -> str:
    """kuberuntime_container.go: a fresh <pod dir>/containers/<name>/<8 hex> for /dev/termination-log."""
    directory = Path(pod_dir(pod, node)) / "containers" / container
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / secrets.token_hex(4)
    path.touch(mode=0o666)
    return str(path)


def remove_pod_files(pod: Pod, node: Node, log_dir: str) -> None:
    """What kubelet removes once a deleted pod's containers are gone: tmpfs volumes, the pod directory
    (kubelet_pods.go cleanupOrphanedPodDirs) and the pod log directory (kuberuntime_gc.go
    evictPodLogsDirectories)."""
    root = Path(pod_dir(pod, node))
    base = root / "volumes" / EMPTY_DIR
    for volume in pod.volumes:
        target = base / volume.name
        if volume.empty_dir_medium == "Memory" and os.path.ismount(target):
            subprocess.run(["umount", str(target)], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)


def cgroup_mounts() -> list[str]:
    """Every cgroup (v1) and cgroup2 mount point of this mount namespace."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
                found.append(left.split()[4])
    return found


def remove_pod_cgroup(cgroup_parent: str) -> list[str]:
    """pkg/kubelet/cm/pod_container_manager_linux.go Destroy: rmdir the pod cgroup (and any empty child
    the runtime left) in every hierarchy. Returns the paths that could not be removed."""
    left = []
    for mount in cgroup_mounts():
        top = Path(mount + cgroup_parent)
        if not top.is_dir():
            continue
        children = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*children, top]:
            try:
                directory.rmdir()
            except OSError:
                left.append(str(directory))
    return left
