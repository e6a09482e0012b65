"""critest's "Security Context" specs (pkg/validate/security_context_linux.go), one test per spec with
the same requests (names, attempts, namespace options, commands) and the same checks.

Where a spec depends on its public image, the stand-ins of tests/critest/conftest.py are used; where
Debian's busybox differs from busybox:1.28 (it has no `ipcs`, its shell runs applets without exec),
the check reads the same fact another way, noted at the test.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.userns import idmap_unsupported
from tests.critest.secframework import (
    PAUSE_CMD,
    Critest,
    Pod,
    critest,
    critest_images,
    critest_node,
    critest_server,
    new_uuid,
)
from tests.harness import TestNode, run

__all__ = ["critest", "critest_images", "critest_node", "critest_server"]  # the fixtures used below

pytestmark = pytest.mark.root

SC = api_pb2.LinuxContainerSecurityContext


def namespace_pod(c: Critest, options: api_pb2.NamespaceOption, name: str, log_dir: str = "") -> Pod:
    """createNamespacePodSandbox: DNS config present but empty, the options in the security context."""
    config = c.pod_config("", log_directory=log_dir, name=name)
    config.dns_config.SetInParent()
    config.linux.security_context.namespace_options.CopyFrom(options)
    return c.run_pod(config), config


def namespace_container(c: Critest, pod: Pod, name: str, image: str, options: api_pb2.NamespaceOption,
                        command: list[str] | None, log_path: str = "") -> str:
    """createNamespaceContainer, started and RUNNING."""
    return c.run(pod, c.container_config(name, image, command, SC(namespace_options=options), log_path))


# -- NamespaceOption ---------------------------------------------------------------------------------

NAMESPACE_POD_NAME = "NamespaceOption-PodSandbox-" + new_uuid()


def test_host_pid(critest: Critest) -> None:
    """runtime should support HostPID"""
    c = critest
    options = api_pb2.NamespaceOption(pid=api_pb2.NODE, ipc=api_pb2.POD, network=api_pb2.POD)
    pod = namespace_pod(c, options, NAMESPACE_POD_NAME)
    nginx = namespace_container(c, pod, "nginx-container-hostpid-" + new_uuid(), c.images.nginx,
                                options, None)
    nginx_pid = c.exec_ok(nginx, ["sh", "-c", "while [ ! -f /var/run/nginx.pid ]; do sleep 1; done && "
                                              "cat /var/run/nginx.pid"]).strip()
    busybox = namespace_container(c, pod, "container-with-HostPID-test-" + new_uuid(), c.images.busybox,
                                  options, ["sh", "-c", "sleep 1000"])
    pids = c.exec_ok(busybox, ["pidof", "nginx", "||", "true"]).strip()
    assert pids and nginx_pid in pids.split(), (nginx_pid, pids)
    # The host's view: the pid it wrote is a host pid, and it is the stand-in's.
    assert Path(f"/proc/{nginx_pid}/comm").read_text().strip() == "nginx"


@pytest.fixture
def host_shm_segment() -> Iterator[str]:
    """`ipcmk -M 1048576` on the host, removed afterwards: its id."""
    segment = run(["ipcmk", "-M", "1048576"]).stdout.strip().removeprefix("Shared memory id: ")
    try:
        yield segment
    finally:
        subprocess.run(["ipcrm", "-m", segment], capture_output=True, check=False)


@pytest.mark.parametrize("mode", [api_pb2.NODE, api_pb2.POD], ids=["true", "false"])
def test_host_ipc(critest: Critest, host_shm_segment: str, mode: int) -> None:
    """runtime should support HostIpc is true / runtime should support HostIpc is false

    critest runs `ipcs -m`, which Debian's busybox lacks; /proc/sysvipc/shm is what ipcs reads."""
    c = critest
    options = api_pb2.NamespaceOption(pid=api_pb2.POD, ipc=mode, network=api_pb2.POD)
    pod = namespace_pod(c, options, NAMESPACE_POD_NAME)
    cid = namespace_container(c, pod, "namespace-container-" + new_uuid(), c.images.busybox, options,
                              PAUSE_CMD)
    listing = c.exec_ok(cid, ["cat", "/proc/sysvipc/shm"]).splitlines()
    shmids = [line.split()[1] for line in listing[1:]]
    assert (host_shm_segment in shmids) == (mode == api_pb2.NODE), shmids


def test_pod_pid(critest: Critest) -> None:
    """runtime should support PodPID"""
    c = critest
    options = api_pb2.NamespaceOption(pid=api_pb2.POD)
    pod = namespace_pod(c, options, NAMESPACE_POD_NAME)
    cid = namespace_container(c, pod, "nginx-container-process-namespace-" + new_uuid(), c.images.nginx,
                              options, None)
    c.exec_ok(cid, ["sh", "-c", "while [ ! -f /var/run/nginx.pid ]; do sleep 1; done"])
    assert "master process" not in c.exec_ok(cid, ["cat", "/proc/1/cmdline"])
    # PID 1 is the pod's, and the container's process is another one in the same namespace.
    assert c.exec_ok(cid, ["cat", "/var/run/nginx.pid"]).strip() != "1"


def test_container_pid(critest: Critest) -> None:
    """runtime should support ContainerPID"""
    c = critest
    options = api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
    pod = namespace_pod(c, options, NAMESPACE_POD_NAME)
    cid = namespace_container(c, pod, "nginx-container-pid-" + new_uuid(), c.images.nginx, options, None)
    c.exec_ok(cid, ["sh", "-c", 'while ! cat /proc/1/cmdline | grep "master process"; do sleep 1; done'])


@pytest.mark.parametrize("host_network", [True, False], ids=["true", "false"])
def test_host_network(critest: Critest, critest_node: TestNode, host_network: bool) -> None:
    """runtime should support HostNetwork is true / runtime should support HostNetwork is false

    createAndCheckHostNetwork: a TCP listener on the node (critest's host), and a container running
    `netstat -ln` in a pod with or without the node's network; the port is in its log or not."""
    c = critest
    listener = subprocess.Popen([*critest_node.prefix(), "python3", "-c", LISTEN_ANY_PORT],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        port = listener.stdout.readline().strip()
        options = api_pb2.NamespaceOption(pid=api_pb2.POD, ipc=api_pb2.POD,
                                          network=api_pb2.NODE if host_network else api_pb2.POD)
        pod = namespace_pod(c, options, NAMESPACE_POD_NAME, c.log_dir(NAMESPACE_POD_NAME))
        name = "container-with-HostNetwork-test-" + new_uuid()
        cid = c.create(pod, c.container_config(name, c.images.busybox, ["sh", "-c", "netstat -ln"],
                                               SC(namespace_options=options), name + ".log"))
        c.start(cid, api_pb2.CONTAINER_EXITED)
        listed = [m.log for m in c.log_messages(pod[1], name + ".log")]
    finally:
        listener.kill()
        listener.wait()
    assert listed and listed[0].startswith("Active Internet connections"), listed
    assert any(f":{port} " in line for line in listed) == host_network, (port, listed)


LISTEN_ANY_PORT = """
import socket, sys
s = socket.socket()
s.bind(("", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


# -- bucket --------------------------------------------------------------------------------------------

def test_supplemental_groups(critest: Critest) -> None:
    """runtime should support SupplementalGroups"""
    c = critest
    pod = c.pod_for_container()
    cid = c.run(pod, c.container_config("container-with-SupplementalGroups-test-" + new_uuid(),
                                        c.images.busybox, PAUSE_CMD, SC(supplemental_groups=[1234, 5678])))
    groups = c.exec_ok(cid, ["id", "-G"]).strip().split(" ")
    assert "1234" in groups and "5678" in groups, groups


def test_run_as_user(critest: Critest) -> None:
    """runtime should support RunAsUser"""
    c = critest
    pod = c.pod_for_container()
    cid = c.run(pod, c.container_config("container-with-RunAsUser-test-" + new_uuid(), c.images.busybox,
                                        PAUSE_CMD, SC(run_as_user=api_pb2.Int64Value(value=1001))))
    assert c.exec_ok(cid, ["id", "-u"]) == "1001\n"


def test_run_as_user_name(critest: Critest) -> None:
    """runtime should support RunAsUserName"""
    c = critest
    pod = c.pod_for_container()
    cid = c.run(pod, c.container_config("container-with-RunAsUserName-test-" + new_uuid(),
                                        c.images.busybox, PAUSE_CMD, SC(run_as_username="nobody")))
    assert c.exec_ok(cid, ["id", "-nu"]) == "nobody\n"


def test_run_as_group(critest: Critest) -> None:
    """runtime should support RunAsGroup"""
    c = critest
    pod = c.pod_with_log_directory()
    name = "container-with-RunAsGroup-test-" + new_uuid()
    c.run(pod, c.container_config(name, c.images.busybox, ["sh", "-c", "echo $(id -u):$(id -g)"],
                                  SC(run_as_user=api_pb2.Int64Value(value=1001),
                                     run_as_group=api_pb2.Int64Value(value=1002)), name + ".log"),
          api_pb2.CONTAINER_EXITED)
    c.verify_log_contents(pod[1], name + ".log", "1001:1002\n", "stdout")


def test_run_as_group_without_run_as_user_fails(critest: Critest) -> None:
    """runtime should return error if RunAsGroup is set without RunAsUser"""
    c = critest
    pod = c.pod_for_container()
    error = c.create_error(pod, c.container_config(
        "container-with-RunAsGroup-without-RunAsUser-test-" + new_uuid(), c.images.busybox,
        ["sh", "-c", "echo $(id -u):$(id -g)"], SC(run_as_group=api_pb2.Int64Value(value=1002))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_as_group" in str(error.details())


@pytest.mark.parametrize("readonly", [False, True], ids=["false", "true"])
def test_readonly_rootfs(critest: Critest, readonly: bool) -> None:
    """runtime should support that ReadOnlyRootfs is false / runtime should support that ReadOnlyRootfs
    is true"""
    c = critest
    pod = c.pod_with_log_directory()
    name = f"container-with-ReadOnlyRootfs-{str(readonly).lower()}-test-" + new_uuid()
    c.run(pod, c.container_config(name, c.images.busybox,
                                  ["sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"],
                                  SC(readonly_rootfs=readonly), name + ".log"),
          api_pb2.CONTAINER_EXITED)
    if readonly:
        c.verify_log_contents(pod[1], name + ".log", "touch: test.go: Read-only file system\n", "stderr")
    else:
        c.verify_log_contents(pod[1], name + ".log", "Found\n", "stdout")


def can_manage_network(c: Critest, cid: str) -> bool:
    """checkNetworkManagement."""
    return c.exec_sync(cid, ["brctl", "addbr", "foobar"]).exit_code == 0


@pytest.mark.parametrize("privileged", [True, False], ids=["true", "false"])
def test_privileged(critest: Critest, privileged: bool) -> None:
    """runtime should support Privileged is true / runtime should support Privileged is false"""
    c = critest
    pod = c.privileged_pod(privileged)
    prefix = "container-with-isPrivileged-test-" if privileged else "container-with-notPrivileged-test-"
    cid = c.run(pod, c.container_config(prefix + new_uuid(), c.images.busybox, PAUSE_CMD,
                                        SC(privileged=privileged)))
    assert can_manage_network(c, cid) == privileged


def capability_container(c: Critest, pod: Pod, prefix: str, add: list[str], drop: list[str]) -> str:
    """createCapabilityContainer, started."""
    return c.run(pod, c.container_config(prefix + new_uuid(), c.images.busybox, PAUSE_CMD, SC(
        capabilities=api_pb2.Capability(add_capabilities=add, drop_capabilities=drop))))


def test_adding_capability(critest: Critest) -> None:
    """runtime should support adding capability"""
    c = critest
    pod = c.pod_for_container()
    added = capability_container(c, pod, "container-with-added-capability-test-", ["NET_ADMIN"], [])
    assert can_manage_network(c, added)
    # framework.CreateDefaultContainer: command ["top"], an empty Linux config.
    default = c.run(pod, api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="container-with-notCapability-test-" + new_uuid(),
                                           attempt=2),
        image=api_pb2.ImageSpec(image=c.images.busybox), command=["top"],
        linux=api_pb2.LinuxContainerConfig()))
    assert not can_manage_network(c, default)


def test_dropping_capability(critest: Critest) -> None:
    """runtime should support dropping capability"""
    c = critest
    pod = c.pod_for_container()
    cid = capability_container(c, pod, "container-with-dropped-capability-test-", [], ["NET_RAW"])
    response = c.exec_sync(cid, ["ping", "127.0.0.1"])
    assert response.exit_code != 0
    assert response.stdout, response
    assert b"permission denied" in response.stderr, response


def cap_bnd(c: Critest, cid: str) -> str:
    response = c.exec_sync(cid, ["cat", "/proc/self/status"])
    assert response.exit_code == 0 and response.stderr == b"", response
    found = re.search(r"CapBnd:\s([0-9a-f]{16})", response.stdout.decode())
    assert found, response.stdout
    return found.group(1)


def test_adding_all_capabilities(critest: Critest) -> None:
    """runtime should support adding ALL capabilities"""
    c = critest
    pod = c.pod_for_container()
    cid = capability_container(c, pod, "container-with-added-all-capability-test-", ["ALL"], [])
    assert cap_bnd(c, cid) != "0000000000000000"


def test_dropping_all_capabilities(critest: Critest) -> None:
    """runtime should support dropping ALL capabilities"""
    c = critest
    pod = c.pod_for_container()
    cid = capability_container(c, pod, "container-with-dropped-all-capability-test-", [], ["ALL"])
    assert cap_bnd(c, cid) == "0000000000000000"


def test_masked_paths(critest: Critest) -> None:
    """runtime should support MaskedPaths

    critest runs `/bin/sh -c ls` and expects "/bin/sh: ls: Permission denied": busybox:1.28's shell
    execs /bin/ls. Debian's runs its applets in-process whatever /bin/ls is, so the shell is asked for
    the path itself: it must exec it, and the masked file refuses."""
    c = critest
    pod = c.pod_for_container()
    cid = c.run(pod, c.container_config("container-with-maskedpaths" + new_uuid(), c.images.busybox,
                                        PAUSE_CMD, SC(masked_paths=["/bin/ls"])))
    response = c.exec_sync(cid, ["/bin/sh", "-c", "/bin/ls"])
    assert response.exit_code != 0
    assert response.stderr == b"/bin/sh: /bin/ls: Permission denied\n"
    # The mask is /dev/null over the file; the rest of the image is untouched.
    assert c.exec_ok(cid, ["stat", "-c", "%F %t,%T", "/bin/ls"]) == "character special file 1,3\n"
    assert c.exec_ok(cid, ["/bin/cat", "/etc/hostname"])


def test_readonly_paths(critest: Critest) -> None:
    """runtime should support ReadonlyPaths"""
    c = critest
    pod = c.pod_for_container()
    cid = c.run(pod, c.container_config("container-with-readonlypaths" + new_uuid(), c.images.busybox,
                                        PAUSE_CMD, SC(readonly_paths=["/tmp"])))
    response = c.exec_sync(cid, ["touch", "/tmp/test"])
    assert response.exit_code != 0
    assert response.stderr == b"touch: /tmp/test: Read-only file system\n"


# -- SeccompProfilePath --------------------------------------------------------------------------------

BLOCK_HOSTNAME = {"defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}
BLOCK_CHMOD = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}
SECCOMP_STATUS = ["grep", "Seccomp:", "/proc/self/status"]


@pytest.fixture
def profiles(tmp_path: Path) -> dict[str, str]:
    """createSeccompProfileDir and createSeccompProfile: the two profiles' paths."""
    paths = {}
    for name, profile in (("block-host-name.json", BLOCK_HOSTNAME), ("block-chmod.json", BLOCK_CHMOD)):
        path = tmp_path / "seccomp-tests" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(profile, indent=5))
        paths[name] = str(path)
    return paths


def seccomp_test_container(c: Critest, profile: api_pb2.SecurityProfile | None) -> str:
    """seccompTestContainer: the profile on the pod and on its container, running."""
    config = c.pod_config("seccomp-sandbox-")
    if profile is not None:
        config.linux.security_context.seccomp.CopyFrom(profile)
    pod = (c.run_pod(config), config)
    return c.run(pod, c.container_config("seccomp-container-" + new_uuid() + new_uuid(), c.images.busybox,
                                         PAUSE_CMD, SC(seccomp=profile)))


def verify_seccomp(c: Critest, cid: str, command: list[str], expect_error: bool, output: str) -> None:
    response = c.exec_sync(cid, command)
    if expect_error:
        assert response.exit_code != 0, response
        assert output in response.stderr.decode(), response
    else:
        assert response.exit_code == 0, response
        assert output in response.stdout.decode(), response


def seccomp_field(c: Critest, cid: str) -> str:
    """The Seccomp: mode of an exec'd process (critest checks it holds "0" or "2")."""
    return c.exec_ok(cid, SECCOMP_STATUS).split()[1]


def test_seccomp_unconfined(critest: Critest) -> None:
    """should support seccomp unconfined on the container"""
    cid = seccomp_test_container(critest, api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Unconfined))
    verify_seccomp(critest, cid, SECCOMP_STATUS, False, "0")
    assert seccomp_field(critest, cid) == "0"


def test_seccomp_localhost(critest: Critest, profiles: dict[str, str]) -> None:
    """should support seccomp localhost profile on the container"""
    cid = seccomp_test_container(critest, api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=profiles["block-chmod.json"]))
    verify_seccomp(critest, cid, ["chmod", "400", "/"], True, "Operation not permitted")
    assert seccomp_field(critest, cid) == "2"


def test_seccomp_default(critest: Critest) -> None:
    """should support seccomp default on the container"""
    cid = seccomp_test_container(critest, api_pb2.SecurityProfile())
    verify_seccomp(critest, cid, SECCOMP_STATUS, False, "2")
    assert seccomp_field(critest, cid) == "2"


def test_seccomp_nil_is_unconfined(critest: Critest) -> None:
    """should support nil profile, which is unconfined"""
    cid = seccomp_test_container(critest, None)
    verify_seccomp(critest, cid, SECCOMP_STATUS, False, "0")
    assert seccomp_field(critest, cid) == "0"


def seccomp_container(c: Critest, pod: Pod, profile: api_pb2.SecurityProfile, caps: list[str],
                      privileged: bool) -> str:
    """createSeccompContainer (with UserSpecifiedImage, `sleep 60`), started and RUNNING."""
    config = c.container_config("container-with-block-hostname-seccomp-profile-test-" + new_uuid(),
                                c.images.busybox, ["sleep", "60"], SC(
                                    privileged=privileged, seccomp=profile,
                                    capabilities=api_pb2.Capability(add_capabilities=caps)))
    config.image.user_specified_image = c.images.busybox
    return c.run(pod, config)


def can_set_hostname(c: Critest, cid: str) -> bool:
    """checkSetHostname."""
    return c.exec_sync(cid, ["hostname", "ANewHostName"]).exit_code == 0


def test_seccomp_unconfined_with_sys_admin_sets_hostname(critest: Critest) -> None:
    """runtime should not block setting host name with unconfined seccomp and SYS_ADMIN"""
    c = critest
    cid = seccomp_container(c, c.pod_for_container(), api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Unconfined), ["SYS_ADMIN"], False)
    assert can_set_hostname(c, cid)


def test_seccomp_profile_blocks_hostname_with_sys_admin(critest: Critest, profiles: dict[str, str]) -> None:
    """runtime should support an seccomp profile that blocks setting hostname with SYS_ADMIN"""
    c = critest
    cid = seccomp_container(c, c.pod_for_container(), api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=profiles["block-host-name.json"]),
        ["SYS_ADMIN"], False)
    assert not can_set_hostname(c, cid)


def test_seccomp_ignored_when_privileged(critest: Critest, profiles: dict[str, str]) -> None:
    """runtime should ignore a seccomp profile that blocks setting hostname when privileged"""
    c = critest
    cid = seccomp_container(c, c.privileged_pod(True), api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=profiles["block-host-name.json"]),
        [], True)
    assert can_set_hostname(c, cid)


# -- NoNewPrivs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("no_new_privs", "euid"), [(True, 1000), (False, 0)], ids=["true", "false"])
def test_no_new_privs(critest: Critest, no_new_privs: bool, euid: int) -> None:
    """should not allow privilege escalation when true / should allow privilege escalation when false"""
    c = critest
    pod = c.pod_with_log_directory()
    name = f"alpine-nnp-{str(no_new_privs).lower()}-" + new_uuid()
    c.run(pod, c.container_config(name, c.images.nonewprivs, None, SC(
        no_new_privs=no_new_privs, run_as_user=api_pb2.Int64Value(value=1000)), name + ".log"),
        api_pb2.CONTAINER_EXITED)
    c.verify_log_contents(pod[1], name + ".log", f"Effective uid: {euid}\n", "stdout")


# -- UserNamespaces ------------------------------------------------------------------------------------
# The NODE-mode spec and the four refusals are tests/container/test_userns.py's
# test_node_mode_keeps_the_host_user_namespace and test_what_cannot_be_honoured_is_invalid.

def test_user_namespace_pod_mode(critest: Critest) -> None:
    """runtime should support NamespaceMode_POD (critest's defaultMapping: 0 -> 1000, 100000 ids)"""
    c = critest
    status = c.server.runtime().Status(api_pb2.StatusRequest(verbose=True))
    # The BeforeEach: the default handler ("") claims user namespaces, and the "Host idmap mount support
    # is needed" check passes: rootfsPath reads info["config"]'s stateDir (crishim has none: /var/lib).
    assert any(h.name == "" and h.features.user_namespaces for h in status.runtime_handlers)
    state_dir = json.loads(status.info["config"]).get("stateDir")
    assert state_dir is None and idmap_unsupported("/var/lib") == ""
    mapping = [api_pb2.IDMapping(container_id=0, host_id=1000, length=100000)]
    options = api_pb2.NamespaceOption(userns_options=api_pb2.UserNamespace(
        mode=api_pb2.POD, uids=mapping, gids=mapping))
    pod_name = "user-namespaces-pod-" + new_uuid()
    pod = namespace_pod(c, options, pod_name, c.log_dir(pod_name))
    name = "user-namespaces-container-" + new_uuid()
    config = c.container_config(name, c.images.busybox, ["cat", "/proc/self/uid_map"],
                                SC(namespace_options=options), name + ".log")
    config.image.user_specified_image = c.images.busybox
    c.run(pod, config, api_pb2.CONTAINER_EXITED)
    logged = [m.log for m in c.log_messages(pod[1], name + ".log")]
    assert any(re.search(r"\s+0\s+1000\s+100000\n", line) for line in logged), logged


# Older critest releases send the deprecated seccomp_profile_path string instead (security_context.go).

def legacy_seccomp_container(c: Critest, path: str) -> str:
    """The old seccompTestContainer: the path on the pod's and the container's security context."""
    config = c.pod_config("seccomp-sandbox-")
    config.linux.security_context.seccomp_profile_path = path
    pod = (c.run_pod(config), config)
    return c.run(pod, c.container_config("seccomp-container-" + new_uuid(), c.images.busybox, PAUSE_CMD,
                                         SC(seccomp_profile_path=path)))


@pytest.mark.parametrize(("path", "mode"), [("unconfined", "0"), ("", "0"), ("docker/default", "2"),
                                            ("runtime/default", "2")],
                         ids=["unconfined", "default which is unconfined", "docker/default",
                              "runtime/default"])
def test_legacy_seccomp_profile_path(critest: Critest, path: str, mode: str) -> None:
    """should support seccomp unconfined on the container / should support seccomp default which is
    unconfined on the container / should support seccomp docker/default on the container (old releases)"""
    cid = legacy_seccomp_container(critest, path)
    verify_seccomp(critest, cid, ["grep", "ecc", "/proc/self/status"], False, mode)
    assert seccomp_field(critest, cid) == mode


def test_legacy_seccomp_localhost(critest: Critest, profiles: dict[str, str]) -> None:
    """should support seccomp localhost/profile on the container (old releases)"""
    cid = legacy_seccomp_container(critest, "localhost/" + profiles["block-chmod.json"])
    verify_seccomp(critest, cid, ["chmod", "400", "/"], True, "Operation not permitted")


def test_legacy_seccomp_path_without_localhost_prefix_fails(critest: Critest,
                                                            profiles: dict[str, str]) -> None:
    """runtime should not support a custom seccomp profile without using localhost/ as a prefix"""
    c = critest
    error = c.create_error(c.pod_for_container(), c.container_config(
        "container-with-block-hostname-seccomp-profile-test-" + new_uuid(), c.images.busybox,
        ["sleep", "60"], SC(seccomp_profile_path=profiles["block-host-name.json"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seccomp_profile_path" in str(error.details())


@pytest.mark.parametrize(("caps", "settable"), [(["SYS_ADMIN"], True), ([], False)],
                         ids=["with SYS_ADMIN", "no extra caps"])
@pytest.mark.parametrize("legacy", [True, False], ids=["docker/default", "RuntimeDefault"])
def test_default_seccomp_and_sethostname(critest: Critest, caps: list[str], settable: bool,
                                         legacy: bool) -> None:
    """runtime should support setting hostname with docker/default seccomp profile and SYS_ADMIN /
    runtime should block sethostname with docker/default seccomp profile and no extra caps"""
    c = critest
    security = SC(capabilities=api_pb2.Capability(add_capabilities=caps))
    if legacy:
        security.seccomp_profile_path = "docker/default"
    else:
        security.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    cid = c.run(c.pod_for_container(), c.container_config(
        "container-with-dockerdefault-seccomp-profile-test-" + new_uuid(), c.images.busybox, ["sleep", "60"],
        security))
    assert seccomp_field(c, cid) == "2"
    assert can_set_hostname(c, cid) == settable
