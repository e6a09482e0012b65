"""kubelet's request shapes (shared/design/kubelet-calls.md), built from parsed manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet.manifest import DNSConfig, parse_pod
from crishim.kubelet.requests import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    ContainerConfigError,
    ImageUser,
    Node,
    container_config,
    container_mounts,
    expand,
    managed_hosts,
    parse_resolv_conf,
    pod_dns,
    sandbox_config,
)

UID = "0b9a4c1e-5f7d-4a0e-9c3b-2d6e8f1a7b40"
NODE = Node(log_root="/var/log/pods", root_dir="/var/lib/kubelet", cgroup_root="/",
            host_dns=DNSConfig(("10.255.255.53",), ("node.example",), (("timeout", "2"),)),
            node_name="node-1", node_ip="192.0.2.10", memory_capacity=8 << 30, hugepage_sizes=("2MB", "1GB"))


def make(*containers: dict[str, Any], **spec: Any) -> Any:
    return parse_pod({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "web", "namespace": "shop", "uid": UID, "labels": {"app": "web"},
                                   "annotations": {"note": "x"}},
                      "spec": {"containers": list(containers) or [{"name": "app", "image": "busybox:1"}],
                               **spec}})


def test_sandbox_config_shape() -> None:
    pod = make({"name": "app", "image": "busybox:1", "ports": [{"containerPort": 80, "hostPort": 8080},
                                                              {"containerPort": 53, "protocol": "UDP"}]})
    config = sandbox_config(pod, 2, NODE, {"note": "x", "kubernetes.io/config.source": "file"})
    assert config.metadata == api_pb2.PodSandboxMetadata(name="web", namespace="shop", uid=UID, attempt=2)
    assert config.hostname == "web"
    assert config.log_directory == f"/var/log/pods/shop_web_{UID}"
    assert dict(config.labels) == {"app": "web", "io.kubernetes.pod.name": "web",
                                   "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.uid": UID}
    assert dict(config.annotations) == {"note": "x", "kubernetes.io/config.source": "file"}
    assert list(config.port_mappings) == [
        api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=80, host_port=8080),
        api_pb2.PortMapping(protocol=api_pb2.UDP, container_port=53)]
    assert config.linux.cgroup_parent == f"/kubepods/besteffort/pod{UID}"
    sc = config.linux.security_context
    assert sc.namespace_options == api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER,
                                                           ipc=api_pb2.POD)
    assert sc.seccomp.profile_type == api_pb2.SecurityProfile.Unconfined
    assert not sc.privileged and not sc.HasField("run_as_user")


def test_sandbox_for_host_network_shared_pid_privileged() -> None:
    pod = make({"name": "app", "image": "x", "securityContext": {"privileged": True}},
               hostNetwork=True, shareProcessNamespace=True,
               securityContext={"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000],
                                "sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]})
    config = sandbox_config(pod, 0, Node(cgroup_root="/crishim-test"), {})
    assert config.hostname == ""  # a hostNetwork pod keeps the node's
    sc = config.linux.security_context
    assert (sc.namespace_options.network, sc.namespace_options.pid) == (api_pb2.NODE, api_pb2.POD)
    assert sc.privileged and sc.run_as_user.value == 1000 and list(sc.supplemental_groups) == [2000, 3000]
    assert dict(config.linux.sysctls) == {"net.ipv4.ip_forward": "1"}
    assert config.linux.cgroup_parent == f"/crishim-test/kubepods/besteffort/pod{UID}"


@pytest.mark.parametrize(("resources", "parent"), [
    ({"limits": {"cpu": "1", "memory": "1Gi"}}, f"/kubepods/pod{UID}"),
    ({"requests": {"cpu": "100m"}}, f"/kubepods/burstable/pod{UID}"),
    ({}, f"/kubepods/besteffort/pod{UID}")])
def test_cgroup_parent_follows_qos(resources: dict[str, Any], parent: str) -> None:
    pod = make({"name": "app", "image": "x", "resources": resources})
    assert sandbox_config(pod, 0, NODE, {}).linux.cgroup_parent == parent


def dns(pod: Any, node: Node = NODE) -> tuple[list[str], list[str], list[str]]:
    config = pod_dns(pod, node)
    return list(config.servers), list(config.searches), list(config.options)


def test_dns_policies() -> None:
    cluster = Node(cluster_dns=("10.96.0.10",), host_dns=NODE.host_dns)
    assert dns(make(), cluster) == (["10.96.0.10"], ["shop.svc.cluster.local", "svc.cluster.local",
                                                     "cluster.local", "node.example"], ["ndots:5"])
    host = (["10.255.255.53"], ["node.example"], ["timeout:2"])
    assert dns(make()) == host  # ClusterFirst without a cluster DNS falls back to Default
    assert dns(make(hostNetwork=True), cluster) == host
    assert dns(make(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), cluster)[0] == ["10.96.0.10"]
    assert dns(make(dnsPolicy="Default")) == host
    custom = {"nameservers": ["1.1.1.1"], "searches": ["a.test"], "options": [{"name": "ndots", "value": "2"},
                                                                            {"name": "edns0"}]}
    assert dns(make(dnsPolicy="None", dnsConfig=custom)) == (["1.1.1.1"], ["a.test"], ["ndots:2", "edns0"])
    assert dns(make(dnsConfig=custom), cluster) == (
        ["10.96.0.10", "1.1.1.1"],
        ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "node.example", "a.test"],
        ["ndots:2", "edns0"])


def test_parse_resolv_conf() -> None:
    parsed = parse_resolv_conf("# c\nnameserver 1.1.1.1\nsearch a b\nsearch c .\nnameserver 8.8.8.8 ; x\n"
                               "options ndots:3 rotate\n")
    assert parsed == DNSConfig(("1.1.1.1", "8.8.8.8"), ("c",), (("ndots", "3"), ("rotate", None)))


def config_for(container: dict[str, Any], restart: int = 0, user: ImageUser | None = None,
               **spec: Any) -> api_pb2.ContainerConfig:
    pod = make(container, **spec)
    return container_config(pod, pod.containers[0], restart_count=restart, image_ref="sha256:" + "1" * 64,
                            image_user=user or ImageUser(uid=0), node=NODE, pod_ip="10.99.0.7", mounts=[])


def test_container_config_shape() -> None:
    config = config_for({
        "name": "app", "image": "busybox:1", "command": ["sh", "-c", "echo $(GREETING) $$(HOME) $(NOPE)"],
        "args": ["$(POD_IP)"], "workingDir": "/srv",
        "env": [{"name": "WHO", "value": "world"}, {"name": "GREETING", "value": "hello $(WHO)"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 80, "hostPort": 8080}],
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}}}}, restart=3)
    assert config.metadata == api_pb2.ContainerMetadata(name="app", attempt=3)
    assert config.image == api_pb2.ImageSpec(image="sha256:" + "1" * 64, user_specified_image="busybox:1")
    assert list(config.command) == ["sh", "-c", "echo hello world $(HOME) $(NOPE)"]
    assert list(config.args) == ["10.99.0.7"] and config.working_dir == "/srv"
    assert [(e.key, e.value) for e in config.envs] == [
        ("WHO", "world"), ("GREETING", "hello world"), ("POD_IP", "10.99.0.7"), ("POD", "web")]
    assert config.log_path == "app/3.log"
    assert dict(config.labels) == {"io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "shop",
                                   "io.kubernetes.pod.uid": UID, "io.kubernetes.container.name": "app"}
    annotations = dict(config.annotations)
    assert annotations.pop("io.kubernetes.container.hash").isalnum()
    assert annotations == {
        "io.kubernetes.container.restartCount": "3",
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "30",
        "io.kubernetes.container.preStopHandler": '{"exec":{"command":["sh","-c","sleep 1"]}}',
        "io.kubernetes.container.ports":
            '[{"name":"http","hostPort":8080,"containerPort":80,"protocol":"TCP"}]'}
    sc = config.linux.security_context
    assert list(sc.masked_paths) == list(DEFAULT_MASKED_PATHS)
    assert list(sc.readonly_paths) == list(DEFAULT_READONLY_PATHS)
    assert sc.run_as_user.value == 0 and sc.seccomp.profile_type == api_pb2.SecurityProfile.Unconfined
    assert not sc.no_new_privs


def test_container_hash_changes_with_the_spec() -> None:
    one = config_for({"name": "app", "image": "busybox:1"}).annotations["io.kubernetes.container.hash"]
    two = config_for({"name": "app", "image": "busybox:2"}).annotations["io.kubernetes.container.hash"]
    assert one != two


@pytest.mark.parametrize(("resources", "expected"), [
    ({}, {"cpu_shares": 2, "oom_score_adj": 1000}),
    ({"limits": {"cpu": "500m", "memory": "64Mi"}},
     {"cpu_shares": 512, "cpu_period": 100000, "cpu_quota": 50000, "memory_limit_in_bytes": 64 << 20,
      "oom_score_adj": -997}),
    ({"requests": {"cpu": "250m", "memory": "1Gi"}}, {"cpu_shares": 256, "oom_score_adj": 875}),
    ({"requests": {"cpu": "1m"}, "limits": {"cpu": "5m"}},
     {"cpu_shares": 2, "cpu_period": 100000, "cpu_quota": 1000, "oom_score_adj": 999})])
def test_linux_resources(resources: dict[str, Any], expected: dict[str, int]) -> None:
    res = config_for({"name": "app", "image": "x", "resources": resources}).linux.resources
    got = {field.name: value for field, value in res.ListFields() if field.name != "hugepage_limits"}
    assert got == expected
    assert [(h.page_size, h.limit) for h in res.hugepage_limits] == [("2MB", 0), ("1GB", 0)]


def test_security_context_merging_and_run_as_non_root() -> None:
    config = config_for({"name": "app", "image": "x", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}},
        securityContext={"runAsUser": 1000, "runAsGroup": 1000})
    sc = config.linux.security_context
    assert sc.no_new_privs and sc.readonly_rootfs
    assert (sc.run_as_user.value, sc.run_as_group.value) == (1000, 1000)
    assert list(sc.capabilities.add_capabilities) == ["NET_ADMIN"]
    assert list(sc.capabilities.drop_capabilities) == ["ALL"]
    assert sc.seccomp.profile_type == api_pb2.SecurityProfile.RuntimeDefault
    privileged = config_for({"name": "app", "image": "x", "securityContext": {"privileged": True}})
    assert not privileged.linux.security_context.masked_paths
    named = config_for({"name": "app", "image": "x"}, user=ImageUser(username="app"))
    assert named.linux.security_context.run_as_username == "app"
    with pytest.raises(ContainerConfigError, match="runAsNonRoot and image will run as root"):
        config_for({"name": "app", "image": "x", "securityContext": {"runAsNonRoot": True}})
    with pytest.raises(ContainerConfigError, match="non-numeric user"):
        config_for({"name": "app", "image": "x", "securityContext": {"runAsNonRoot": True}},
                   user=ImageUser(username="app"))


def test_mounts() -> None:
    pod = make({"name": "app", "image": "x", "volumeMounts": [
        {"name": "data", "mountPath": "/data", "readOnly": True, "mountPropagation": "HostToContainer"},
        {"name": "data", "mountPath": "/sub", "subPath": "a/b"}]},
        volumes=[{"name": "data", "emptyDir": {}}])
    mounts = container_mounts(pod.containers[0], {"data": "/pods/x/volumes/data"}, "/pods/x/etc-hosts",
                              "/pods/x/containers/app/0a1b2c3d")
    assert [(m.container_path, m.host_path, m.readonly, m.propagation) for m in mounts] == [
        ("/data", "/pods/x/volumes/data", True, api_pb2.PROPAGATION_HOST_TO_CONTAINER),
        ("/sub", "/pods/x/volumes/data/a/b", False, api_pb2.PROPAGATION_PRIVATE),
        ("/etc/hosts", "/pods/x/etc-hosts", False, api_pb2.PROPAGATION_PRIVATE),
        ("/dev/termination-log", "/pods/x/containers/app/0a1b2c3d", False, api_pb2.PROPAGATION_PRIVATE)]
    own = make({"name": "app", "image": "x", "volumeMounts": [{"name": "h", "mountPath": "/etc/hosts"}]},
               volumes=[{"name": "h", "hostPath": {"path": "/etc/hosts"}}])
    assert [m.container_path for m in container_mounts(own.containers[0], {"h": "/etc/hosts"}, "/x", "")] == [
        "/etc/hosts"]


def test_managed_hosts() -> None:
    content = managed_hosts(make(hostname="front", subdomain="svc1"), ["10.99.0.7"], NODE, "")
    assert content.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert content.endswith("10.99.0.7\tfront.svc1.shop.svc.cluster.local\tfront\n")
    assert managed_hosts(make(), ["10.99.0.7"], NODE, "").endswith("10.99.0.7\tweb\n")
    host = managed_hosts(make(hostNetwork=True), [], NODE, "127.0.0.1 localhost\n")
    assert host == "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n"


@pytest.mark.parametrize(("text", "out"), [
    ("$(A)", "1"), ("$$(A)", "$(A)"), ("$(B)", "$(B)"), ("x$(A)y$(A)", "x1y1"), ("$(A", "$(A"), ("$", "$"),
    ("$$", "$"), ("$A", "$A"), ("$()", "$()"), ("naïve $(A)", "naïve 1")])
def test_expand(text: str, out: str) -> None:
    assert expand(text, {"A": "1"}) == out


def test_ports_annotation_is_valid_json() -> None:
    config = config_for({"name": "app", "image": "x", "ports": [{"containerPort": 80, "hostIP": "127.0.0.1",
                                                                 "hostPort": 81}]})
    assert json.loads(config.annotations["io.kubernetes.container.ports"]) == [
        {"hostPort": 81, "containerPort": 80, "protocol": "TCP", "hostIP": "127.0.0.1"}]


def test_the_client_imports_no_server_code() -> None:
    """crishim/kubelet is a CRI client: only the crishim.api stubs, so imports flow one way."""
    code = ("import sys, crishim.kubelet.commands; "
            "print(sorted(m for m in sys.modules if m.startswith('crishim.') "
            "and not m.startswith(('crishim.kubelet', 'crishim.api'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
