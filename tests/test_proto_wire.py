"""Pins our CRI v1 schema to the published wire format.

The expected bytes are built by hand from the field numbers of the published
k8s.io/cri-api runtime/v1 api.proto, so a renumbered or retyped field in proto/
fails here even if the generated code is self-consistent.
"""

from google.protobuf.descriptor import EnumDescriptor

from crishim.api.runtime.v1 import api_pb2

VARINT, LEN = 0, 2


def varint(value: int) -> bytes:
    """Base-128 varint; negatives as 64-bit two's complement like protobuf int64."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def num(field: int, value: int) -> bytes:
    return varint(field << 3 | VARINT) + varint(value)


def blob(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | LEN) + varint(len(payload)) + payload


def text(field: int, value: str) -> bytes:
    return blob(field, value.encode())


def sub(field: int, *parts: bytes) -> bytes:
    return blob(field, b"".join(parts))


def string_map(field: int, entries: dict[str, str]) -> bytes:
    """map<string,string> as repeated entries; deterministic output sorts by key."""
    return b"".join(sub(field, text(1, k), text(2, v)) for k, v in sorted(entries.items()))


LABELS = {"tier": "test", "app": "web"}
ANNOTATIONS = {"io.kubernetes.pod/note": "x", "a": "b"}


def test_run_pod_sandbox_request_bytes() -> None:
    msg = api_pb2.RunPodSandboxRequest(
        config=api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name="web", uid="uid-1", namespace="default", attempt=2
            ),
            hostname="web-host",
            log_directory="/var/log/pods/default_web_uid-1",
            dns_config=api_pb2.DNSConfig(
                servers=["10.96.0.10"], searches=["svc.local"], options=["ndots:5"]
            ),
            port_mappings=[
                api_pb2.PortMapping(
                    protocol=api_pb2.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"
                ),
                api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=80, host_port=8080),
            ],
            labels=LABELS,
            annotations=ANNOTATIONS,
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent="/kubepods/pod-uid-1"),
        ),
        runtime_handler="runc",
    )
    expected = sub(
        1,
        sub(1, text(1, "web"), text(2, "uid-1"), text(3, "default"), num(4, 2)),
        text(2, "web-host"),
        text(3, "/var/log/pods/default_web_uid-1"),
        sub(4, text(1, "10.96.0.10"), text(2, "svc.local"), text(3, "ndots:5")),
        sub(5, num(1, 1), num(2, 53), num(3, 5353), text(4, "127.0.0.1")),
        sub(5, num(2, 80), num(3, 8080)),
        string_map(6, LABELS),
        string_map(7, ANNOTATIONS),
        sub(8, text(1, "/kubepods/pod-uid-1")),
    ) + text(2, "runc")
    assert msg.SerializeToString(deterministic=True) == expected
    assert api_pb2.RunPodSandboxRequest.FromString(expected) == msg


def test_pod_sandbox_status_response_bytes() -> None:
    created = 1_795_855_292_012_762_500
    msg = api_pb2.PodSandboxStatusResponse(
        status=api_pb2.PodSandboxStatus(
            id="f00d",
            metadata=api_pb2.PodSandboxMetadata(name="web", uid="uid-1", namespace="default"),
            state=api_pb2.SANDBOX_NOTREADY,
            created_at=created,
            network=api_pb2.PodSandboxNetworkStatus(
                ip="10.99.0.5", additional_ips=[api_pb2.PodIP(ip="fd00::5")]
            ),
            linux=api_pb2.LinuxPodSandboxStatus(
                namespaces=api_pb2.Namespace(
                    options=api_pb2.NamespaceOption(
                        network=api_pb2.NODE, pid=api_pb2.CONTAINER, ipc=api_pb2.POD
                    )
                )
            ),
            labels=LABELS,
        ),
        info={"info": '{"pid": 42}'},
    )
    expected = sub(
        1,
        text(1, "f00d"),
        sub(2, text(1, "web"), text(2, "uid-1"), text(3, "default")),
        num(3, 1),
        num(4, created),
        sub(5, text(1, "10.99.0.5"), sub(2, text(1, "fd00::5"))),
        # ipc=POD is the zero value and so absent from the wire.
        sub(6, sub(1, sub(2, num(1, 2), num(2, 1)))),
        string_map(7, LABELS),
    ) + string_map(2, {"info": '{"pid": 42}'})
    assert msg.SerializeToString(deterministic=True) == expected
    assert api_pb2.PodSandboxStatusResponse.FromString(expected) == msg


def test_negative_int64_is_ten_byte_varint() -> None:
    """int64 (not sint64): a negative oom_score_adj must use two's complement."""
    msg = api_pb2.LinuxContainerResources(oom_score_adj=-998)
    assert msg.SerializeToString() == num(5, -998)
    assert len(varint(-998)) == 10


def enum_values(enum: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


def test_enum_numbers() -> None:
    assert enum_values(api_pb2.PodSandboxState.DESCRIPTOR) == {
        "SANDBOX_READY": 0,
        "SANDBOX_NOTREADY": 1,
    }
    assert enum_values(api_pb2.ContainerState.DESCRIPTOR) == {
        "CONTAINER_CREATED": 0,
        "CONTAINER_RUNNING": 1,
        "CONTAINER_EXITED": 2,
        "CONTAINER_UNKNOWN": 3,
    }
    assert enum_values(api_pb2.NamespaceMode.DESCRIPTOR) == {
        "POD": 0,
        "CONTAINER": 1,
        "NODE": 2,
        "TARGET": 3,
    }
    assert enum_values(api_pb2.Protocol.DESCRIPTOR) == {"TCP": 0, "UDP": 1, "SCTP": 2}
    assert enum_values(api_pb2.ContainerEventType.DESCRIPTOR) == {
        "CONTAINER_CREATED_EVENT": 0,
        "CONTAINER_STARTED_EVENT": 1,
        "CONTAINER_STOPPED_EVENT": 2,
        "CONTAINER_DELETED_EVENT": 3,
    }
    assert enum_values(api_pb2.CgroupDriver.DESCRIPTOR) == {"SYSTEMD": 0, "CGROUPFS": 1}
    assert api_pb2.SIGKILL == 13 and api_pb2.SIGTERM == 23 and api_pb2.SIGRTMAX == 65


RUNTIME_RPCS = {
    "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
    "ListPodSandbox", "StreamPodSandboxes", "CreateContainer", "StartContainer",
    "StopContainer", "RemoveContainer", "ListContainers", "StreamContainers",
    "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog", "ExecSync", "Exec",
    "Attach", "PortForward", "ContainerStats", "ListContainerStats", "StreamContainerStats",
    "PodSandboxStats", "ListPodSandboxStats", "StreamPodSandboxStats", "UpdateRuntimeConfig",
    "Status", "CheckpointContainer", "GetContainerEvents", "ListMetricDescriptors",
    "ListPodSandboxMetrics", "StreamPodSandboxMetrics", "RuntimeConfig",
    "UpdatePodSandboxResources",
}  # fmt: skip
IMAGE_RPCS = {
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
}
SERVER_STREAMING = {
    "StreamPodSandboxes", "StreamContainers", "StreamContainerStats", "StreamPodSandboxStats",
    "GetContainerEvents", "StreamPodSandboxMetrics", "StreamImages",
}  # fmt: skip


def test_services_and_streaming() -> None:
    """The method paths (/runtime.v1.Service/Method) and stream shapes are wire-visible too."""
    services = api_pb2.DESCRIPTOR.services_by_name
    assert {s.full_name for s in services.values()} == {
        "runtime.v1.RuntimeService",
        "runtime.v1.ImageService",
    }
    assert set(services["RuntimeService"].methods_by_name) == RUNTIME_RPCS
    assert set(services["ImageService"].methods_by_name) == IMAGE_RPCS
    for service in services.values():
        for method in service.methods:
            assert not method.client_streaming, method.name
            assert method.server_streaming == (method.name in SERVER_STREAMING), method.name
