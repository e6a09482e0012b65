"""Privileged containers and "add ALL capabilities" through a real `crishim serve`, as critest runs them
(security_context_linux.go, container_linux.go) on a node whose bounding set lacks CAP_SYS_RESOURCE:
"all" is what crishim itself holds, so runc can grant it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.ocispec import ALL_CAPABILITIES
from tests.container.criutil import Cri, cri
from tests.harness import run
from tests.test_e2e import container_config

__all__ = ["cri"]  # the fixture the tests below use

pytestmark = pytest.mark.root

BLOCK_SETHOSTNAME = {"defaultAction": "SCMP_ACT_ALLOW",
                     "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}


def test_crishim_lacks_a_capability_here(cri: Cri) -> None:
    """The premise: without it, every test below would pass with the old "every known name" rule."""
    assert cri.crishim_holds() != (1 << len(ALL_CAPABILITIES)) - 1


def test_privileged_container_gets_what_crishim_holds(cri: Cri) -> None:
    pod = cri.pod("priv", privileged=True)
    privileged = cri.container(pod, "priv", api_pb2.LinuxContainerSecurityContext(privileged=True))
    holds = cri.crishim_holds()
    for field in ("CapEff", "CapBnd", "CapPrm"):
        assert cri.status_field(privileged, field) == holds, field
    # critest "Privileged is true": network management works; /sys is writable.
    assert cri.sh(privileged, "brctl addbr foobar && brctl delbr foobar").exit_code == 0
    assert cri.sh(privileged, "grep ' /sys ' /proc/mounts").stdout.split()[3].startswith(b"rw")
    # ... and is refused without privileges.
    plain = cri.container(pod, "plain", api_pb2.LinuxContainerSecurityContext())
    assert cri.sh(plain, "brctl addbr foobar").exit_code != 0


def test_add_all_and_drop_one(cri: Cri) -> None:
    pod = cri.pod("caps", privileged=False)
    holds = cri.crishim_holds()
    every = cri.container(pod, "all", api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(add_capabilities=["ALL"])))
    assert cri.status_field(every, "CapBnd") == holds
    assert cri.status_field(every, "CapEff") == holds
    net_raw = 1 << ALL_CAPABILITIES.index("CAP_NET_RAW")
    all_but = cri.container(pod, "allbut", api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(add_capabilities=["ALL"], drop_capabilities=["NET_RAW"])))
    assert cri.status_field(all_but, "CapEff") == holds & ~net_raw
    assert cri.status_field(all_but, "CapBnd") == holds & ~net_raw
    # An exec gets the container's set too.
    assert cri.status_field(all_but, "CapEff", "/proc/self/status") == holds & ~net_raw
    dropped = cri.container(pod, "none", api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(drop_capabilities=["ALL"])))
    assert cri.status_field(dropped, "CapBnd") == 0


def test_add_a_capability_the_node_lacks(cri: Cri) -> None:
    pod_id, pod = cri.pod("lacking", privileged=False)
    missing = [name.removeprefix("CAP_") for bit, name in enumerate(ALL_CAPABILITIES)
               if not cri.crishim_holds() >> bit & 1]
    config = container_config("lacking", cri.image, "sleep", "600")
    config.linux.security_context.capabilities.add_capabilities.append(missing[0])
    with pytest.raises(grpc.RpcError) as err:
        cri.server.runtime().CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"CAP_{missing[0]}" in err.value.details()


def test_privileged_ignores_the_seccomp_profile(cri: Cri, tmp_path: Path) -> None:
    profile = tmp_path / "block-host-name.json"
    profile.write_text(json.dumps(BLOCK_SETHOSTNAME))
    localhost = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost,
                                        localhost_ref=str(profile))
    pod = cri.pod("seccomp", privileged=True)
    privileged = cri.container(pod, "priv", api_pb2.LinuxContainerSecurityContext(
        privileged=True, seccomp=localhost))
    assert cri.sh(privileged, "grep '^Seccomp:' /proc/self/status").stdout.split()[1] == b"0"
    assert cri.sh(privileged, "hostname ANewHostName").exit_code == 0
    # The same profile with SYS_ADMIN but no privileges blocks it.
    confined = cri.container(pod, "confined", api_pb2.LinuxContainerSecurityContext(
        seccomp=localhost, capabilities=api_pb2.Capability(add_capabilities=["SYS_ADMIN"])))
    assert cri.sh(confined, "hostname AnotherName").exit_code != 0


@dataclass
class PropagationDirs:
    source: Path  # mounted on itself, rshared, and given to the container at the same path
    flag_dir: Path
    host_mount_point: Path


@pytest.fixture(params=[api_pb2.PROPAGATION_PRIVATE, api_pb2.PROPAGATION_BIDIRECTIONAL,
                        api_pb2.PROPAGATION_HOST_TO_CONTAINER])
def propagation(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def propagation_dirs(tmp_path: Path, propagation: int) -> Iterator[PropagationDirs]:
    """critest's createHostPathForMountPropagation: the source is rprivate for PRIVATE, else rshared."""
    source = tmp_path / "mnt"
    dirs = PropagationDirs(source, tmp_path / "propagationSrcDir", source / "propagationMnt")
    dirs.host_mount_point.mkdir(parents=True)
    dirs.flag_dir.mkdir()
    (dirs.flag_dir / "flagFile").touch()
    run(["mount", "--rbind", str(source), str(source)])
    shared = propagation != api_pb2.PROPAGATION_PRIVATE
    run(["mount", "--make-rshared" if shared else "--make-rprivate", str(source)])
    try:
        yield dirs
    finally:
        for target in (dirs.source / "containerMntPoint", dirs.host_mount_point, dirs.source):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def test_mount_propagation_in_a_privileged_container(cri: Cri, propagation_dirs: PropagationDirs,
                                                     propagation: int) -> None:
    dirs = propagation_dirs
    pod = cri.pod("propagation", privileged=True)
    mount = api_pb2.Mount(host_path=str(dirs.source), container_path=str(dirs.source),
                          propagation=propagation)
    cid = cri.container(pod, "prop", api_pb2.LinuxContainerSecurityContext(privileged=True),
                         mounts=[mount])
    status = cri.server.runtime().ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=cid, verbose=True)).status
    assert [(m.container_path, m.host_path, m.readonly, m.propagation) for m in status.mounts] == \
        [(str(dirs.source), str(dirs.source), False, propagation)]

    # Host to container, but for rprivate.
    run(["mount", "--rbind", str(dirs.flag_dir), str(dirs.host_mount_point)])
    listed = cri.sh(cid, f"ls -A {dirs.host_mount_point}").stdout
    assert listed == (b"" if propagation == api_pb2.PROPAGATION_PRIVATE else b"flagFile\n")

    # Container to host, for rshared only.
    inner = dirs.source / "containerMntPoint"
    assert cri.sh(cid, f"mkdir -p {inner} && mount --bind /etc {inner}").exit_code == 0
    seen_on_host = list(inner.iterdir())
    if propagation == api_pb2.PROPAGATION_BIDIRECTIONAL:
        assert seen_on_host, "the container's mount did not reach the host"
    else:
        assert seen_on_host == []
