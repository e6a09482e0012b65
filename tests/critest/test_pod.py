"""critest's PodSandbox specs (pkg/validate/pod.go, pod_linux.go) and the sandbox and container ones of
its Idempotence specs (idempotence.go), sent as critest sends them, through a real `crishim serve`."""

from __future__ import annotations

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.container.criutil import Cri, cri
from tests.critest import framework
from tests.harness import CrishimServer
from tests.telemetry.test_cri_metrics import EXPECTED

pytestmark = pytest.mark.root
__all__ = ["cri"]


def pod_status(server: CrishimServer, pod_id: str) -> api_pb2.PodSandboxStatus:
    return server.runtime().PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status


def listed(server: CrishimServer, pod_id: str) -> list[api_pb2.PodSandbox]:
    """listPodSandboxForID: a list filtered by the full id."""
    return list(server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest(
        filter=api_pb2.PodSandboxFilter(id=pod_id))).items)


def stop_pod(server: CrishimServer, pod_id: str) -> None:
    """testStopPodSandbox: the stop succeeds and the pod is then NOTREADY."""
    server.runtime().StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert pod_status(server, pod_id).state == api_pb2.SANDBOX_NOTREADY


def test_runtime_should_support_running_pod_sandbox(server: CrishimServer) -> None:
    """runtime should support running PodSandbox [Conformance]"""
    pod_id = framework.run_pod(server, framework.pod_config(server, "PodSandbox-for-create-test-"))
    assert pod_status(server, pod_id).state == api_pb2.SANDBOX_READY
    assert [p.id for p in listed(server, pod_id)] == [pod_id]
    framework.cleanup_pod(server, pod_id)


def test_runtime_should_support_stopping_pod_sandbox(server: CrishimServer) -> None:
    """runtime should support stopping PodSandbox [Conformance]"""
    pod_id = framework.run_pod(server, framework.pod_config(server, "PodSandbox-for-test-stop-"))
    stop_pod(server, pod_id)
    framework.cleanup_pod(server, pod_id)


def test_runtime_should_support_removing_pod_sandbox(server: CrishimServer) -> None:
    """runtime should support removing PodSandbox [Conformance]"""
    pod_id = framework.run_pod(server, framework.pod_config(server, "PodSandbox-for-test-remove-"))
    rt = server.runtime()
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert listed(server, pod_id) == []


def test_runtime_should_support_preserving_pod_sandbox_attributes(server: CrishimServer) -> None:
    """runtime should support preserving PodSandbox attributes [Conformance]"""
    name = "PodSandbox-with-attributes-" + framework.new_uuid()
    metadata = framework.pod_metadata(name)
    labels = {"foo": "bar", "io.kubernetes.pod.name": name,
              "io.kubernetes.pod.namespace": metadata.namespace, "io.kubernetes.pod.uid": metadata.uid}
    annotations = {"abc": "def"}
    config = api_pb2.PodSandboxConfig(metadata=metadata, labels=labels, annotations=annotations)
    config.linux.cgroup_parent = framework.cgroup_parent(server)
    pod_id = framework.run_pod(server, config)

    status = pod_status(server, pod_id)
    (pod,) = listed(server, pod_id)
    for got in (status, pod):
        assert got.metadata == metadata
        assert labels.items() <= dict(got.labels).items()
        assert annotations.items() <= dict(got.annotations).items()
    framework.cleanup_pod(server, pod_id)


SYSCTL_CASES = [
    pytest.param("kernel.shm_rmid_forced", "/proc/sys/kernel/shm_rmid_forced", "1",
                 "container-shm-rmid-forced", id="should support safe sysctls"),
    pytest.param("fs.mqueue.msg_max", "/proc/sys/fs/mqueue/msg_max", "100",
                 "container-fs-mqueue-msg-max", id="should support unsafe sysctls"),
]


@pytest.mark.parametrize(("sysctl", "path", "value", "prefix"), SYSCTL_CASES)
def test_should_support_sysctls(cri: Cri, sysctl: str, path: str, value: str, prefix: str) -> None:
    """should support safe sysctls / should support unsafe sysctls (the context "runtime should support
    sysctls"): the pod's sysctl is what its container reads."""
    server = cri.server
    config = framework.pod_config(server, "pod-sandbox-with-sysctls-")
    config.linux.sysctls[sysctl] = value
    pod_id = framework.run_pod(server, config)
    container_id = framework.create_container(server, pod_id, config,
                                              framework.container_config(prefix, cri.image))
    framework.start_container(server, container_id)
    result = framework.exec_sync(server, container_id, "cat", path)
    assert (result.exit_code, result.stdout.decode().strip()) == (0, value)
    framework.cleanup_pod(server, pod_id)


def test_stop_pod_sandbox_should_not_return_an_error_if_not_found(server: CrishimServer) -> None:
    """StopPodSandbox should not return an error if not found (Idempotence)"""
    server.runtime().StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=framework.new_uuid()))


def test_stop_pod_sandbox_should_not_return_an_error_if_already_stopped(server: CrishimServer) -> None:
    """StopPodSandbox should not return an error if already stopped (Idempotence)"""
    pod_id = framework.run_pod(server, framework.pod_config(server, "idempotence-pod-"))
    stop_pod(server, pod_id)
    stop_pod(server, pod_id)
    server.runtime().RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_remove_pod_sandbox_should_not_return_an_error_if_not_found(server: CrishimServer) -> None:
    """RemovePodSandbox should not return an error if not found (Idempotence)"""
    server.runtime().RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=framework.new_uuid()))


def test_stop_container_should_not_return_an_error_if_not_found(server: CrishimServer) -> None:
    """StopContainer should not return an error if not found (Idempotence)"""
    server.runtime().StopContainer(api_pb2.StopContainerRequest(container_id=framework.new_uuid(),
                                                                timeout=0))


def test_stop_container_should_not_return_an_error_if_already_stopped(cri: Cri) -> None:
    """StopContainer should not return an error if already stopped (Idempotence): a pause container
    stopped (it exits within the 60 s critest gives), then removed twice."""
    server = cri.server
    rt = server.runtime()
    config = framework.pod_config(server, "create-PodSandbox-for-container-")
    pod_id = framework.run_pod(server, config)
    container_id = framework.create_container(server, pod_id, config, framework.container_config(
        "idempotence-container-", cri.image, framework.PAUSE_COMMAND))
    framework.start_container(server, container_id)
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=60), timeout=60)
    state = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id)).status.state
    assert state == api_pb2.CONTAINER_EXITED
    for _ in range(2):
        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    framework.cleanup_pod(server, pod_id)


def test_remove_container_should_not_return_an_error_if_not_found(server: CrishimServer) -> None:
    """RemoveContainer should not return an error if not found (Idempotence)"""
    server.runtime().RemoveContainer(api_pb2.RemoveContainerRequest(container_id=framework.new_uuid()))


def test_remove_image_should_not_return_an_error_if_not_found(server: CrishimServer) -> None:
    """RemoveImage should not return an error if not found (Idempotence): an id that names no image,
    removed twice."""
    for _ in range(2):
        server.images().RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image="0" * 64)))


# pod.go's lists beside expectedMetricDescriptorNames (tests/telemetry/test_cri_metrics.py: EXPECTED).
UNIMPLEMENTED_METRICS = {
    "container_hugetlb_max_usage_bytes", "container_hugetlb_usage_bytes",
    "container_pressure_cpu_stalled_seconds_total", "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total", "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total", "container_pressure_memory_waiting_seconds_total",
    "container_spec_cpu_quota", "container_spec_memory_reservation_limit_bytes", "container_ulimits_soft"}
OPTIONAL_METRIC_VALUES = {
    "container_blkio_device_usage_total", "container_fs_reads_bytes_total", "container_fs_reads_total",
    "container_fs_writes_bytes_total", "container_fs_writes_total"}
INODE_WORKLOAD = ("mkdir -p /var/lib/mydisktest && for i in $(seq 1 10); do echo hi >> "
                  "/var/lib/mydisktest/inode_test_file_$i; done; sync")


def test_runtime_should_support_listing_pod_sandbox_metrics(cri: Cri) -> None:
    """runtime should support listing pod sandbox metrics [Conformance]: a pod without a cgroup parent
    (cgroupfs), a `top` container with CPU and memory limits that wrote files; every expected series has
    values for the pod or its container, with as many label values as its descriptor has keys."""
    server = cri.server
    rt = server.runtime()
    config = framework.pod_config(server, "create-PodSandbox-for-container-")
    pod_id = framework.run_pod(server, config)
    container = framework.container_config("container-for-metrics-", cri.image)
    container.linux.resources.CopyFrom(api_pb2.LinuxContainerResources(
        cpu_period=100000, cpu_quota=20000, cpu_shares=1024, memory_limit_in_bytes=64 * 1024 * 1024,
        memory_swap_limit_in_bytes=64 * 1024 * 1024))
    container_id = framework.create_container(server, pod_id, config, container)
    framework.start_container(server, container_id)
    written = framework.exec_sync(server, container_id, "/bin/sh", "-c", INODE_WORKLOAD)
    assert written.exit_code == 0, written.stderr

    descriptors = rt.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest()).descriptors
    (pod,) = [p for p in rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest()).pod_metrics
              if p.pod_sandbox_id == pod_id]
    found: dict[str, list[str]] = {}
    for metric in [*pod.metrics, *(m for c in pod.container_metrics for m in c.metrics)]:
        if not found.get(metric.name):
            found[metric.name] = list(metric.label_values)
    excused = OPTIONAL_METRIC_VALUES | UNIMPLEMENTED_METRICS
    missing = {name for name in EXPECTED if not found.get(name)} - excused
    assert not missing, sorted(missing)
    mismatched = [d.name for d in descriptors
                  if (d.name in found and len(found[d.name]) != len(d.label_keys))
                  or (d.name not in found and d.name not in excused)]
    assert not mismatched
    framework.cleanup_pod(server, pod_id)
