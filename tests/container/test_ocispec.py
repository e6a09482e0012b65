"""The OCI spec builder: pure functions, no root needed."""

from __future__ import annotations

from typing import Any

import pytest

from crishim.container import ocispec, seccomp
from crishim.container.model import ContainerSpec, Mount, Resources, SeccompKind, SecurityContext
from crishim.container.ocispec import SpecInputs, build_spec, capabilities, exec_process
from crishim.container.users import User
from crishim.container.validate import validate_container
from crishim.errors import FailedPrecondition, InvalidArgument
from crishim.sandbox.model import NamespaceMode, Sandbox, SandboxSpec, SandboxState


def pod(**spec_kw: Any) -> Sandbox:
    kw: dict[str, Any] = {"name": "web", "namespace": "ns", "uid": "u", "hostname": "web-host"}
    kw.update(spec_kw)
    return Sandbox(id="s" * 64, spec=SandboxSpec(**kw), state=SandboxState.READY, created_at=0,
                   dir="/pods/s", hostname=kw["hostname"], netns_path="/run/netns/n",
                   ipc_ns_path="/pods/s/ipc", uts_ns_path="/pods/s/uts")


def build(spec: ContainerSpec | None = None, sandbox: Sandbox | None = None,
          **inputs: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {"container_id": "c" * 64, "rootfs": "/r", "user": User(0, 0),
                          "cgroups_path": "/kubepods/c", "image_config": {"Cmd": ["sh"]}}
    kw.update(inputs)
    return build_spec(spec or ContainerSpec(name="app"), sandbox or pod(), SpecInputs(**kw))


def test_process_from_image_and_request() -> None:
    image = {"Entrypoint": ["/entry"], "Cmd": ["default"], "Env": ["PATH=/x", "A=1", "B=2"],
             "WorkingDir": "/work"}
    oci = build(ContainerSpec(name="a", envs=[("B", "3"), ("C", "4")]), image_config=image)
    proc = oci["process"]
    assert proc["args"] == ["/entry", "default"]
    assert proc["env"] == ["PATH=/x", "A=1", "B=3", "HOSTNAME=web-host", "C=4"]
    assert proc["cwd"] == "/work"
    assert build(ContainerSpec(name="a", args=["x"]), image_config=image)["process"]["args"] == \
        ["/entry", "x"]
    assert build(ContainerSpec(name="a", command=["/c"]), image_config=image)["process"]["args"] \
        == ["/c"]
    assert build(ContainerSpec(name="a", command=["/c"], args=["y"], working_dir="/w"),
                 image_config=image)["process"]["cwd"] == "/w"
    with pytest.raises(InvalidArgument, match="no command"):
        build(image_config={})
    with pytest.raises(InvalidArgument, match="environment"):
        build(ContainerSpec(name="a", envs=[("A=B", "x")]))
    tty = build(ContainerSpec(name="a", tty=True))["process"]
    assert tty["terminal"] is True and "TERM=xterm" in tty["env"]


def test_oom_score_adj_never_below_our_own() -> None:
    spec = ContainerSpec(name="a", resources=Resources(oom_score_adj=-998))
    assert build(spec)["process"]["oomScoreAdj"] == 0
    assert build(spec, oom_score_adj_floor=200)["process"]["oomScoreAdj"] == 200
    spec.resources.oom_score_adj = 999
    assert build(spec, oom_score_adj_floor=200)["process"]["oomScoreAdj"] == 999


def test_capabilities() -> None:
    assert capabilities([], [], False) == ocispec.DEFAULT_CAPABILITIES
    caps = capabilities(["net_admin", "CAP_SYS_TIME"], ["NET_RAW", "mknod"], False)
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_TIME" in caps
    assert "CAP_NET_RAW" not in caps and "CAP_MKNOD" not in caps
    assert capabilities(["ALL"], ["SYS_ADMIN"], False) == \
        [c for c in ocispec.ALL_CAPABILITIES if c != "CAP_SYS_ADMIN"]
    assert capabilities(["NET_BIND_SERVICE"], ["ALL"], False) == ["CAP_NET_BIND_SERVICE"]
    assert capabilities([], ["ALL"], True) == ocispec.ALL_CAPABILITIES
    with pytest.raises(InvalidArgument, match="unknown capability"):
        capabilities(["FLY"], [], False)
    oci = build(ContainerSpec(name="a", security=SecurityContext(drop_capabilities=["ALL"])))
    assert oci["process"]["capabilities"] == {"bounding": [], "effective": [], "permitted": []}


def test_namespaces() -> None:
    ns = build()["linux"]["namespaces"]
    assert ns == [{"type": "mount"}, {"type": "network", "path": "/run/netns/n"},
                  {"type": "ipc", "path": "/pods/s/ipc"}, {"type": "uts", "path": "/pods/s/uts"},
                  {"type": "pid"}]
    host = pod(network_mode=NamespaceMode.NODE, ipc_mode=NamespaceMode.NODE)
    host.netns_path = host.ipc_ns_path = host.uts_ns_path = ""
    oci = build(ContainerSpec(name="a", security=SecurityContext(pid_mode=NamespaceMode.NODE)),
                host)
    assert oci["linux"]["namespaces"] == [{"type": "mount"}]
    assert "hostname" not in oci
    assert {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
            "options": ["rbind", "rprivate", "rw"]} in oci["mounts"]
    gone = pod()
    gone.netns_path = ""
    with pytest.raises(FailedPrecondition, match="network namespace"):
        build(sandbox=gone)
    target = ContainerSpec(name="a", security=SecurityContext(pid_mode=NamespaceMode.TARGET,
                                                              target_id="t"))
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in \
        build(target, target_pid=42)["linux"]["namespaces"]
    with pytest.raises(FailedPrecondition):
        build(target)
    shared = ContainerSpec(name="a", security=SecurityContext(pid_mode=NamespaceMode.POD))
    assert {"type": "pid", "path": "/proc/7/ns/pid"} in \
        build(shared, target_pid=7)["linux"]["namespaces"]
    with pytest.raises(FailedPrecondition, match="infra"):
        build(shared)


def test_infra_spec() -> None:
    oci = ocispec.infra_spec(pod(), "/root", "/kubepods/i", "/usr/bin/catatonit", 5)
    assert oci["process"]["args"] == [ocispec.INFRA_BINARY, "-P"]
    assert oci["process"]["oomScoreAdj"] == 5
    assert oci["root"] == {"path": "/root", "readonly": True}
    assert {"type": "pid"} in oci["linux"]["namespaces"]
    assert {"type": "network", "path": "/run/netns/n"} in oci["linux"]["namespaces"]
    assert {"destination": ocispec.INFRA_BINARY, "type": "bind", "source": "/usr/bin/catatonit",
            "options": ["rbind", "rprivate", "ro"]} in oci["mounts"]


def test_mounts() -> None:
    spec = ContainerSpec(name="a", mounts=[
        Mount("/data/sub", "/h/sub"), Mount("/data", "/h/data", readonly=True, propagation="rslave"),
        Mount("/etc/hosts", "/h/hosts")], security=SecurityContext(readonly_rootfs=True))
    oci = build(spec)
    by_dest = {m["destination"]: m for m in oci["mounts"]}
    assert by_dest["/etc/hosts"]["source"] == "/h/hosts"
    assert by_dest["/etc/resolv.conf"] == {"destination": "/etc/resolv.conf", "type": "bind",
                                           "source": "/pods/s/resolv.conf",
                                           "options": ["rbind", "rprivate", "ro"]}
    assert by_dest["/dev/shm"]["source"] == "/pods/s/shm"
    assert by_dest["/data"]["options"] == ["rbind", "rslave", "ro"]
    dests = [m["destination"] for m in oci["mounts"]]
    assert dests.index("/data") < dests.index("/data/sub")
    assert len(dests) == len(set(dests))
    assert "ro" in by_dest["/sys"]["options"]
    assert oci["root"] == {"path": "/r", "readonly": True}
    assert "rootfsPropagation" not in oci["linux"]
    shared = ContainerSpec(name="a", mounts=[Mount("/m", "/h", propagation="rshared")])
    assert build(shared)["linux"]["rootfsPropagation"] == "rshared"
    for bad in (Mount("rel", "/h"), Mount("/m", "rel"), Mount("/m", "/h", propagation="x")):
        with pytest.raises(InvalidArgument):
            validate_container(ContainerSpec(name="a", mounts=[bad]), "", True)


def test_recursive_read_only_and_image_volume_mounts() -> None:
    rro = Mount("/ro", "/h/ro", readonly=True, recursive_read_only=True)
    image = Mount("/img", "/c/image-volumes/0/rootfs/etc", readonly=True, image="busybox",
                  image_sub_path="etc", image_id="sha256:" + "a" * 64)
    oci = build(ContainerSpec(name="a", mounts=[rro, image]))
    by_dest = {m["destination"]: m for m in oci["mounts"]}
    assert by_dest["/ro"]["options"] == ["rbind", "rprivate", "rro"]
    assert by_dest["/img"] == {"destination": "/img", "type": "bind",
                               "source": "/c/image-volumes/0/rootfs/etc",
                               "options": ["rbind", "rprivate", "ro"]}
    refused = {
        "RROUnsupported": (rro, False),
        "needs readonly": (Mount("/ro", "/h", recursive_read_only=True), True),
        "needs private propagation": (Mount("/ro", "/h", readonly=True, recursive_read_only=True,
                                            propagation="rslave"), True),
        "must be readonly": (Mount("/img", "", image="busybox"), True),
        "only for an image volume": (Mount("/m", "/h", image_sub_path="etc"), True),
        "must be absolute": (Mount("/m", "h"), True),
        "mounted over the container's root": (Mount("//.", "/h"), True),
    }
    for complaint, (mount, supported) in refused.items():
        with pytest.raises(InvalidArgument, match=complaint):
            validate_container(ContainerSpec(name="a", mounts=[mount]), "", supported)
    # Before crishim mounts it, an image volume has no host path yet.
    validate_container(ContainerSpec(name="a", mounts=[Mount("/img", "", readonly=True, image="busybox")]),
                       "", False)


def test_privileged_and_paths() -> None:
    oci = build()
    assert oci["linux"]["maskedPaths"] == ocispec.DEFAULT_MASKED_PATHS
    assert oci["linux"]["readonlyPaths"] == ocispec.DEFAULT_READONLY_PATHS
    assert oci["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    custom = build(ContainerSpec(name="a", security=SecurityContext(masked_paths=["/proc/x"])))
    assert custom["linux"]["maskedPaths"] == ["/proc/x"]
    priv = build(ContainerSpec(name="a", security=SecurityContext(
        privileged=True, seccomp=SeccompKind.RUNTIME_DEFAULT)))
    assert priv["linux"]["maskedPaths"] == [] and priv["linux"]["readonlyPaths"] == []
    assert priv["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "seccomp" not in priv["linux"]
    assert priv["process"]["capabilities"]["bounding"] == ocispec.ALL_CAPABILITIES


def test_seccomp() -> None:
    assert "seccomp" not in build()["linux"]
    default = build(ContainerSpec(name="a", security=SecurityContext(
        seccomp=SeccompKind.RUNTIME_DEFAULT)))["linux"]["seccomp"]
    assert default["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = default["syscalls"][0]["names"]
    assert "mount" in denied and "kexec_load" in denied and "read" not in denied
    admin = seccomp.default_profile(["CAP_SYS_ADMIN"], "x86_64")
    assert "mount" not in admin["syscalls"][0]["names"]
    assert "kexec_load" in admin["syscalls"][0]["names"]
    profile = {"defaultAction": "SCMP_ACT_ERRNO"}
    local = ContainerSpec(name="a", security=SecurityContext(seccomp=SeccompKind.LOCALHOST,
                                                             seccomp_profile_path="/p.json"))
    assert build(local, localhost_seccomp=profile)["linux"]["seccomp"] == profile
    with pytest.raises(InvalidArgument):
        build(local)


def test_resources_and_cgroups() -> None:
    res = Resources(cpu_period=100000, cpu_quota=50000, cpu_shares=512,
                    memory_limit_in_bytes=1 << 26, cpuset_cpus="0", hugepage_limits={"2MB": 0},
                    unified={"memory.high": "1"})
    linux = build(ContainerSpec(name="a", resources=res), sandbox=pod(sysctls={"net.x": "1"}))[
        "linux"]
    assert linux["cgroupsPath"] == "/kubepods/c"
    assert linux["resources"]["cpu"] == {"shares": 512, "quota": 50000, "period": 100000,
                                         "cpus": "0"}
    assert linux["resources"]["memory"] == {"limit": 1 << 26}
    assert linux["resources"]["hugepageLimits"] == [{"pageSize": "2MB", "limit": 0}]
    assert linux["resources"]["unified"] == {"memory.high": "1"}
    assert linux["sysctl"] == {"net.x": "1"}
    assert "cpu" not in build()["linux"]["resources"]
    no_hugetlb = build(ContainerSpec(name="a", resources=res), hugetlb=False)["linux"]["resources"]
    assert "hugepageLimits" not in no_hugetlb


def test_exec_process() -> None:
    base = build(ContainerSpec(name="a", tty=True))["process"]
    proc = exec_process(base, ["ls", "-l"])
    assert proc["args"] == ["ls", "-l"] and proc["terminal"] is False
    assert proc["env"] == base["env"] and proc["user"] == base["user"]
    assert "oomScoreAdj" not in proc
    with pytest.raises(InvalidArgument):
        exec_process(base, [])
