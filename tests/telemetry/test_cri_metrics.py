"""ListMetricDescriptors and ListPodSandboxMetrics through a real `crishim serve`, checked as critest
(pkg/validate/pod.go) checks them, and the values against what the pod and container really do."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, CrishimServer, TestNode, poll, run
from tests.image_fixtures import TestImages
from tests.sandbox.podutil import pod_config, run_pod, status
from tests.telemetry.conftest import CGROUP_ROOT, remove_cgroup_dir

pytestmark = pytest.mark.root

MiB = 1024 * 1024
SECOND = 1_000_000_000

# critest's expectedMetricDescriptorNames (kubelet with cAdvisor, Kubernetes 1.37).
EXPECTED = (
    "container_blkio_device_usage_total", "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total", "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total", "container_file_descriptors", "container_fs_inodes_free",
    "container_fs_inodes_total", "container_fs_limit_bytes", "container_fs_reads_bytes_total",
    "container_fs_reads_total", "container_fs_usage_bytes", "container_fs_writes_bytes_total",
    "container_fs_writes_total", "container_hugetlb_max_usage_bytes", "container_hugetlb_usage_bytes",
    "container_last_seen", "container_memory_cache", "container_memory_failcnt",
    "container_memory_failures_total", "container_memory_kernel_usage", "container_memory_mapped_file",
    "container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap",
    "container_memory_usage_bytes", "container_memory_working_set_bytes",
    "container_network_receive_bytes_total", "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total", "container_network_receive_packets_total",
    "container_network_transmit_bytes_total", "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total", "container_network_transmit_packets_total",
    "container_oom_events_total", "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total", "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total", "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total", "container_processes", "container_sockets",
    "container_spec_cpu_period", "container_spec_cpu_quota", "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes", "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes", "container_start_time_seconds", "container_threads",
    "container_threads_max", "container_ulimits_soft",
)
# Values that need I/O to reach a block device (critest's optional ones) or a hugetlb controller in the
# container's cgroup, which this machine's hybrid cgroup2 mount does not enable.
BLOCK_IO = {"container_blkio_device_usage_total", "container_fs_reads_bytes_total",
            "container_fs_reads_total", "container_fs_writes_bytes_total", "container_fs_writes_total"}
HUGETLB = {"container_hugetlb_max_usage_bytes", "container_hugetlb_usage_bytes"}
# cAdvisor's convention, independent of our table: counters end in _total (but the inode count, a gauge),
# failcnt is one too.
COUNTERS = ({n for n in EXPECTED if n.endswith("_total")} | {"container_memory_failcnt"}) - {
    "container_fs_inodes_total"}
NETWORK = {n for n in EXPECTED if n.startswith("container_network_")}
FILESYSTEM = {"container_fs_inodes_free", "container_fs_inodes_total", "container_fs_limit_bytes",
              "container_fs_usage_bytes"}

# A shell that serves on a socket (a second process) and burns CPU.
WORKLOAD = "httpd -p 8080; while :; do :; done"
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x" * 100, (sys.argv[1], 9))
"""

Metrics = dict[tuple[str, tuple[str, ...]], api_pb2.Metric]


def _hugetlb_in_containers() -> bool:
    """A v1 hugetlb hierarchy, or a cgroup2 root that hands the controller down."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        subtree = root / "cgroup.subtree_control"
        if subtree.exists() and "hugetlb" in subtree.read_text().split():
            return True
    return (CGROUP_ROOT / "hugetlb").is_dir()


@pytest.fixture
def pod_cgroup() -> Iterator[str]:
    """A cgroup parent for the pod, as kubelet gives one; its directories are removed once the pod is."""
    name = f"crishim-tm-{secrets.token_hex(4)}"
    yield f"/{name}"
    for hierarchy in CGROUP_ROOT.iterdir():
        path = hierarchy / name
        if path.is_dir():
            poll(lambda path=path: remove_cgroup_dir(path), what=f"cgroup {path} to be removable")


@pytest.fixture
def metrics_server(server_factory: Callable[..., CrishimServer], test_images: TestImages) -> CrishimServer:
    """A server whose store already holds the busybox image (imported, not pulled)."""
    server = server_factory(start=False)
    server.write_config()
    run([sys.executable, "-m", "crishim", "--config", str(server.config_path), "images", "import",
         str(test_images.layout)], cwd=REPO)
    return server.start()


def _container(server: CrishimServer, pod_id: str, pod: api_pb2.PodSandboxConfig, image: str,
               resources: api_pb2.LinuxContainerResources, *command: str) -> str:
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="metered-" + "x" * 60),
                                     image=api_pb2.ImageSpec(image=image), command=list(command))
    config.linux.resources.CopyFrom(resources)
    rt = server.runtime()
    container_id = rt.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    return str(container_id)


def _sample(server: CrishimServer, pod_id: str) -> tuple[Metrics, Metrics]:
    """The pod's and its one container's metrics, by name and label values."""
    (pod,) = [p for p in server.runtime().ListPodSandboxMetrics(
        api_pb2.ListPodSandboxMetricsRequest()).pod_metrics if p.pod_sandbox_id == pod_id]
    (container,) = pod.container_metrics

    def keyed(metrics: list[api_pb2.Metric]) -> Metrics:
        found: Metrics = {}
        for m in metrics:
            key = (m.name, tuple(m.label_values))
            assert key not in found, f"{key} reported twice"
            found[key] = m
        return found

    return keyed(list(pod.metrics)), keyed(list(container.metrics))


def _value(metrics: Metrics, name: str, *extra: str) -> int:
    (found,) = [m.value.value for (n, labels), m in metrics.items() if n == name and labels[3:] == extra]
    return int(found)


def test_descriptors_cover_critest_list_with_help_and_labels(metrics_server: CrishimServer) -> None:
    descriptors = metrics_server.runtime().ListMetricDescriptors(
        api_pb2.ListMetricDescriptorsRequest()).descriptors
    by_name = {d.name: d for d in descriptors}
    assert len(by_name) == len(descriptors), "a name is described twice"
    # Exactly critest's list: it fails a described series that has no values (unless it lists it as
    # optional or not yet implemented), so nothing beyond the list is described.
    assert set(by_name) == set(EXPECTED)
    for d in descriptors:
        assert d.help, d.name
        assert list(d.label_keys[:3]) == ["id", "name", "image"], d.name
        assert len(set(d.label_keys)) == len(d.label_keys), d.name
    assert list(by_name["container_memory_failures_total"].label_keys[3:]) == ["failure_type", "scope"]
    assert list(by_name["container_network_receive_bytes_total"].label_keys[3:]) == ["interface"]
    assert list(by_name["container_fs_usage_bytes"].label_keys[3:]) == ["device"]
    assert list(by_name["container_ulimits_soft"].label_keys[3:]) == ["ulimit"]


def test_pod_and_container_metrics_follow_the_workload(
        pod_cgroup: str, metrics_server: CrishimServer, node: TestNode, test_images: TestImages) -> None:
    server = metrics_server
    rt = server.runtime()
    descriptors = {d.name: d for d in rt.ListMetricDescriptors(
        api_pb2.ListMetricDescriptorsRequest()).descriptors}
    pod = pod_config("metered", namespace="tm")
    pod.linux.cgroup_parent = pod_cgroup
    pod_id = run_pod(server, pod)
    resources = api_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, cpu_shares=512,
                                                memory_limit_in_bytes=64 * MiB,
                                                memory_swap_limit_in_bytes=64 * MiB)
    container_id = _container(server, pod_id, pod, test_images.busybox.id, resources, "sh", "-c", WORKLOAD)
    started = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id)).status.started_at
    written = rt.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container_id, cmd=["sh", "-c", "head -c 1048576 /dev/zero > /big && sync"], timeout=10))
    assert written.exit_code == 0, written.stderr
    ulimit = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", "ulimit -n"],
                                                 timeout=10))
    pod_ip = status(server, pod_id).status.network.ip

    before = time.time_ns()
    pod_metrics, container_metrics = _sample(server, pod_id)
    after = time.time_ns()

    # Every value lines up with its descriptor, has the right type and a timestamp of this sample.
    for (name, labels), m in {**pod_metrics, **container_metrics}.items():
        assert len(labels) == len(descriptors[name].label_keys), name
        assert m.metric_type == (api_pb2.COUNTER if name in COUNTERS else api_pb2.GAUGE), name
        assert before - SECOND <= m.timestamp <= after, name
    assert {labels[:3] for _, labels in pod_metrics} == {(pod_id, "metered", "")}
    assert {labels[:3] for _, labels in container_metrics} == {
        (container_id, "metered-" + "x" * 60, test_images.busybox.id)}

    # critest: each expected name has values for the pod or its container (less what this node lacks).
    reported = {name for name, _ in pod_metrics} | {name for name, _ in container_metrics}
    missing = set(EXPECTED) - reported - BLOCK_IO - (set() if _hugetlb_in_containers() else HUGETLB)
    assert not missing, sorted(missing)
    # The container has every per-container series; the pod has its cgroup's and its network's.
    container_names = {name for name, _ in container_metrics}
    assert set(EXPECTED) - NETWORK - BLOCK_IO - HUGETLB <= container_names
    pod_names = {name for name, _ in pod_metrics}
    assert NETWORK | {"container_memory_usage_bytes", "container_pressure_cpu_waiting_seconds_total",
                      "container_threads", "container_start_time_seconds"} <= pod_names
    assert not (FILESYSTEM & pod_names)

    c = container_metrics
    # What CreateContainer asked for, as the cgroup holds it.
    assert _value(c, "container_spec_cpu_shares") == 512
    assert _value(c, "container_spec_cpu_period") == 100000
    assert _value(c, "container_spec_cpu_quota") == 50000
    assert _value(c, "container_spec_memory_limit_bytes") == 64 * MiB
    assert _value(c, "container_spec_memory_swap_limit_bytes") == 64 * MiB
    assert _value(c, "container_spec_memory_reservation_limit_bytes") == 0  # unlimited reads 0
    assert _value(c, "container_threads_max") == 0  # no pids limit: "infinity"
    # The shell and httpd: two processes, two threads, httpd's listening socket.
    assert _value(c, "container_processes") == 2
    assert _value(c, "container_threads") == 2
    assert _value(c, "container_sockets") >= 1
    assert _value(c, "container_file_descriptors") >= 3 + 1
    assert _value(c, "container_ulimits_soft", "max_open_files") == int(ulimit.stdout)
    assert abs(_value(c, "container_start_time_seconds") - started // SECOND) <= 1
    assert abs(_value(c, "container_last_seen") - before // SECOND) <= 1
    # Memory: usage bounds the working set, the peak bounds usage; no OOM happened.
    assert 0 < _value(c, "container_memory_working_set_bytes") <= _value(c, "container_memory_usage_bytes")
    assert _value(c, "container_memory_usage_bytes") <= _value(c, "container_memory_max_usage_bytes")
    assert _value(c, "container_oom_events_total") == 0
    assert _value(c, "container_memory_failures_total", "pgfault", "hierarchy") >= _value(
        c, "container_memory_failures_total", "pgfault", "container") > 0
    for resource in ("cpu", "memory", "io"):
        assert _value(c, f"container_pressure_{resource}_stalled_seconds_total") <= _value(
            c, f"container_pressure_{resource}_waiting_seconds_total")
    # The writable layer holds the 1 MiB file; the filesystem is larger and has free inodes.
    ((_, fs_labels),) = [k for k in c if k[0] == "container_fs_usage_bytes"]
    device = fs_labels[3]
    assert device, fs_labels
    assert MiB <= _value(c, "container_fs_usage_bytes", device) < _value(c, "container_fs_limit_bytes",
                                                                         device)
    assert 0 < _value(c, "container_fs_inodes_free", device) < _value(c, "container_fs_inodes_total", device)
    # The pod's own cgroup holds the container: at least its processes and memory.
    assert _value(pod_metrics, "container_processes") >= 2
    assert _value(pod_metrics, "container_memory_usage_bytes") >= _value(c, "container_memory_usage_bytes")
    status_created = status(server, pod_id).status.created_at
    assert _value(pod_metrics, "container_start_time_seconds") == status_created // SECOND

    # Counters move: CPU time while the loop runs, packets as they arrive on the pod's eth0.
    received = _value(pod_metrics, "container_network_receive_packets_total", "eth0")
    node.sh(sys.executable, "-c", SENDER, pod_ip, "20")
    cpu = _value(c, "container_cpu_usage_seconds_total", "total")

    def grown() -> tuple[Metrics, Metrics] | None:
        later_pod, later = _sample(server, pod_id)
        moved = (_value(later, "container_cpu_usage_seconds_total", "total") > cpu
                 and _value(later_pod, "container_network_receive_packets_total", "eth0") >= received + 20)
        return (later_pod, later) if moved else None

    later_pod, later = poll(grown, timeout=60, interval=0.5, what="CPU time and received packets to grow")
    assert _value(later, "container_cpu_user_seconds_total") + _value(
        later, "container_cpu_system_seconds_total") <= _value(later, "container_cpu_usage_seconds_total",
                                                               "total") + 1
    assert _value(later, "container_cpu_cfs_periods_total") > 0
    assert _value(later_pod, "container_network_receive_bytes_total", "eth0") >= 20 * 100


def test_swap_limit_is_reported_as_set_and_updated(pod_cgroup: str, metrics_server: CrishimServer,
                                                   test_images: TestImages) -> None:
    server = metrics_server
    rt = server.runtime()
    pod = pod_config("swapped", namespace="tm")
    pod.linux.cgroup_parent = pod_cgroup
    pod_id = run_pod(server, pod)
    asked = api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 * MiB,
                                            memory_swap_limit_in_bytes=96 * MiB)
    container_id = _container(server, pod_id, pod, test_images.busybox.id, asked, "sleep", "600")

    def reported() -> api_pb2.LinuxContainerResources:
        return server.runtime().ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id)).status.resources.linux

    assert reported().memory_swap_limit_in_bytes == 96 * MiB
    assert reported().memory_limit_in_bytes == 64 * MiB
    assert _value(_sample(server, pod_id)[1], "container_spec_memory_swap_limit_bytes") == 96 * MiB

    updated = api_pb2.LinuxContainerResources(memory_limit_in_bytes=128 * MiB,
                                              memory_swap_limit_in_bytes=256 * MiB)
    rt.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(container_id=container_id,
                                                                        linux=updated))
    assert reported().memory_swap_limit_in_bytes == 256 * MiB
    assert reported().memory_limit_in_bytes == 128 * MiB
    _, metrics = _sample(server, pod_id)
    assert _value(metrics, "container_spec_memory_swap_limit_bytes") == 256 * MiB
    assert _value(metrics, "container_spec_memory_limit_bytes") == 128 * MiB
    # The status survives a restart of crishim (it is read back from the container's record).
    server.stop()
    server.start()
    assert reported().memory_swap_limit_in_bytes == 256 * MiB
