"""critest's "AppArmor" (apparmor_linux.go) and "SELinux" (selinux_linux.go) specs.

critest skips both here: this kernel has neither LSM (no /sys/module/apparmor/parameters/enabled, no
selinuxfs). What crishim must do instead is answer as containerd does on such a node: an AppArmor
profile other than Unconfined is refused loudly ("apparmor is not supported"), SELinux options are
accepted and ignored. The AppArmor rules for a node that has it are checked against a stand-in
securityfs directory (the one thing this machine cannot produce).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container import apparmor
from crishim.container.model import AppArmorKind, ContainerSpec, SecurityContext
from crishim.container.ocispec import exec_process
from crishim.errors import FailedPrecondition, InvalidArgument
from tests.container.test_ocispec import build
from tests.critest.secframework import (
    PAUSE_CMD,
    Critest,
    critest,
    critest_images,
    critest_node,
    critest_server,
    new_uuid,
)

__all__ = ["critest", "critest_images", "critest_node", "critest_server"]  # the fixtures used below

PREFIX = "localhost/"
DENY_WRITE, AUDIT_WRITE = "cri-validate-apparmor-test-deny-write", "cri-validate-apparmor-test-audit-write"
Localhost = api_pb2.SecurityProfile.Localhost


def test_this_node_has_neither_lsm() -> None:
    """critest's skip conditions hold here, so its AppArmor and SELinux specs do not run."""
    assert not Path("/sys/module/apparmor/parameters/enabled").exists()
    assert not apparmor.host_enabled()
    # go-selinux's GetEnabled: a mounted selinuxfs.
    assert "selinuxfs" not in Path("/proc/self/mounts").read_text()


def apparmor_container(c: Critest,
                       security: api_pb2.LinuxContainerSecurityContext) -> api_pb2.ContainerConfig:
    """createContainerWithAppArmor's request: `touch /tmp/foo` under the profile."""
    return c.container_config("apparmor-test-" + new_uuid(), c.images.busybox, ["touch", "/tmp/foo"],
                              security)


# The three contexts' requests: the deprecated field, the structured one, and both (the structured wins).
def deprecated(name: str) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(apparmor_profile=PREFIX + name)


def structured(name: str) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(
        apparmor=api_pb2.SecurityProfile(profile_type=Localhost, localhost_ref=PREFIX + name))


def both(name: str) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(
        apparmor_profile=PREFIX + "non-existent-profile",
        apparmor=api_pb2.SecurityProfile(profile_type=Localhost, localhost_ref=PREFIX + name))


@pytest.mark.root
@pytest.mark.parametrize("request_of", [deprecated, structured, both],
                         ids=["deprecated apparmor_profile", "apparmor field", "prefer new field"])
@pytest.mark.parametrize("profile", ["non-existent-profile", DENY_WRITE, AUDIT_WRITE])
def test_apparmor_profiles_are_refused_without_apparmor(critest: Critest, request_of: object,
                                                        profile: str) -> None:
    """should fail with an unloaded apparmor_profile / should enforce a apparmor_profile blocking writes /
    should enforce a permissive deprecated profile / should work with apparmor profile

    Without AppArmor every one of them fails at CreateContainer, naming the field, as in containerd; the
    first spec expects exactly that on any node."""
    c = critest
    pod = c.pod_for_container()
    security = request_of(profile)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        c.create(pod, apparmor_container(c, security))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "security_context.apparmor: apparmor is not supported" in str(caught.value.details())
    assert not c.server.runtime().ListContainers(api_pb2.ListContainersRequest()).containers


@pytest.mark.root
def test_unconfined_or_no_apparmor_runs(critest: Critest) -> None:
    """What kubelet sends on a node without AppArmor (nothing) and Unconfined run as usual."""
    c = critest
    pod = c.pod_for_container()
    for security in (api_pb2.LinuxContainerSecurityContext(),
                     api_pb2.LinuxContainerSecurityContext(apparmor_profile="unconfined"),
                     api_pb2.LinuxContainerSecurityContext(apparmor=api_pb2.SecurityProfile(
                         profile_type=api_pb2.SecurityProfile.Unconfined))):
        cid = c.run(pod, apparmor_container(c, security), api_pb2.CONTAINER_EXITED)
        assert c.status(cid).exit_code == 0


@pytest.mark.root
@pytest.mark.parametrize(("security", "complaint"), [
    (api_pb2.LinuxContainerSecurityContext(apparmor_profile="my-profile"),
     "apparmor_profile: unknown profile 'my-profile'"),
    (api_pb2.LinuxContainerSecurityContext(apparmor=api_pb2.SecurityProfile(profile_type=Localhost)),
     "apparmor: profile type Localhost needs localhost_ref"),
    (api_pb2.LinuxContainerSecurityContext(apparmor=api_pb2.SecurityProfile(localhost_ref="x")),
     "apparmor.localhost_ref must only be set for profile type Localhost"),
    (api_pb2.LinuxContainerSecurityContext(seccomp=api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Unconfined, localhost_ref="/x.json")),
     "seccomp.localhost_ref must only be set for profile type Localhost"),
    (api_pb2.LinuxContainerSecurityContext(seccomp=api_pb2.SecurityProfile(profile_type=7)),
     "seccomp.profile_type 7 is not one of"),
])
def test_malformed_profiles_are_invalid(critest: Critest, security: api_pb2.LinuxContainerSecurityContext,
                                        complaint: str) -> None:
    """containerd's checks of the profile fields themselves, whatever the node supports."""
    c = critest
    pod = c.pod_for_container()
    with pytest.raises(grpc.RpcError) as caught:
        c.create(pod, apparmor_container(c, security))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in str(caught.value.details())


@pytest.fixture
def securityfs(tmp_path: Path) -> Path:
    """A stand-in for /sys/kernel/security/apparmor with critest's two profiles loaded."""
    fs = tmp_path / "apparmor"
    fs.mkdir()
    (fs / "profiles").write_text(f"{DENY_WRITE} (enforce)\n{AUDIT_WRITE} (enforce)\n"
                                 "/usr/bin/man (complain)\n")
    return fs


def test_host_enabled_reads_the_module_parameter(tmp_path: Path, securityfs: Path) -> None:
    parameter = tmp_path / "enabled"
    parameter.write_text("Y\n")
    assert apparmor.host_enabled(parameter, securityfs)
    parameter.write_text("N\n")
    assert not apparmor.host_enabled(parameter, securityfs)
    assert not apparmor.host_enabled(tmp_path / "missing", securityfs)
    parameter.write_text("Y\n")
    assert not apparmor.host_enabled(parameter, tmp_path / "no-securityfs")


def test_profiles_on_a_node_with_apparmor(securityfs: Path) -> None:
    """The rules critest's specs would exercise where AppArmor is enabled."""
    def profile(kind: AppArmorKind, ref: str = "", privileged: bool = False) -> str:
        return apparmor.process_profile(kind, ref, privileged, True, securityfs)

    assert apparmor.loaded_profiles(securityfs) == {DENY_WRITE, AUDIT_WRITE, "/usr/bin/man"}
    assert profile(AppArmorKind.LOCALHOST, DENY_WRITE) == DENY_WRITE
    assert profile(AppArmorKind.LOCALHOST, "/usr/bin/man") == "/usr/bin/man"
    with pytest.raises(FailedPrecondition, match="apparmor profile not found 'non-existent-profile'"):
        profile(AppArmorKind.LOCALHOST, "non-existent-profile")
    with pytest.raises(InvalidArgument):
        profile(AppArmorKind.LOCALHOST, "")
    assert profile(AppArmorKind.UNCONFINED) == profile(AppArmorKind.UNSET) == ""
    assert profile(AppArmorKind.RUNTIME_DEFAULT, privileged=True) == ""
    with pytest.raises(FailedPrecondition, match="no RuntimeDefault AppArmor profile"):
        profile(AppArmorKind.RUNTIME_DEFAULT)
    # Without AppArmor only "nothing" and Unconfined pass.
    for kind in (AppArmorKind.LOCALHOST, AppArmorKind.RUNTIME_DEFAULT):
        with pytest.raises(FailedPrecondition, match="apparmor is not supported"):
            apparmor.process_profile(kind, DENY_WRITE, False, False, securityfs)
    assert apparmor.process_profile(AppArmorKind.UNCONFINED, "", False, False, securityfs) == ""


def test_the_profile_reaches_the_process_and_its_execs() -> None:
    spec = ContainerSpec(name="a", command=["true"], security=SecurityContext(
        apparmor=AppArmorKind.LOCALHOST, apparmor_profile=DENY_WRITE))
    oci = build(spec, apparmor_profile=DENY_WRITE)
    assert oci["process"]["apparmorProfile"] == DENY_WRITE
    assert exec_process(oci["process"], ["touch", "/tmp/foo"])["apparmorProfile"] == DENY_WRITE
    assert "apparmorProfile" not in build(spec)["process"]


# -- SELinux ---------------------------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("privileged", [False, True], ids=["not privileged", "privileged"])
def test_selinux_options_are_ignored_without_selinux(critest: Critest, privileged: bool) -> None:
    """should work with just selinux level set / should work with selinux set / should error on create
    with wrong options (critest runs them only with SELinux on; without it containerd, whose labelling
    does nothing when SELinux is disabled, accepts every one, the malformed level too)"""
    c = critest
    pod = c.privileged_pod(privileged)
    for options in (api_pb2.SELinuxOption(level="s0"),
                    api_pb2.SELinuxOption(user="system_u", role="system_r", type="svirt_lxc_net_t",
                                          level="s0:c4,c5"),
                    api_pb2.SELinuxOption(user="system_u", role="system_r", type="svirt_lxc_net_t",
                                          level="s0,c4,c5"),
                    None):
        cid = c.run(pod, c.container_config("selinux-test-" + new_uuid(), c.images.busybox, PAUSE_CMD,
                                            api_pb2.LinuxContainerSecurityContext(
                                                selinux_options=options, privileged=privileged)))
        assert c.exec_ok(cid, ["touch", "foo"]) == ""
