"""User namespaces (NamespaceOption.userns_options) through a real server, as critest's "UserNamespaces"
specs check them (security_context_linux.go): a POD-mode pod's containers share one user namespace with
the pod's mapping, a NODE-mode pod keeps the host's, and what cannot be honoured is INVALID_ARGUMENT.
Beyond critest: the image's files are root's inside and writable by that root (idmapped layers), a host
file bound in stays the host root's, and nothing is left mounted after Stop/Remove.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.features import HandlerFeatures, features_from
from tests.harness import CrishimServer, TestNode, mounts_below, poll, walkable_server
from tests.image_fixtures import TestImages, layout_image
from tests.sandbox.podutil import pod_config, run_pod, stop_and_remove

pytestmark = pytest.mark.root

HOST_ID, SIZE = 100000, 65536
MAPPING = api_pb2.IDMapping(container_id=0, host_id=HOST_ID, length=SIZE)
OVERFLOW_UID = 65534


@pytest.fixture
def busybox_image(test_images: TestImages) -> str:
    """busybox:1 by id, imported into the store (the registry is out of the test node's reach)."""
    return str(json.loads(layout_image(test_images.layout, "1")[0])["config"]["digest"])


@pytest.fixture
def server(node: TestNode, test_images: TestImages) -> Iterator[CrishimServer]:
    with walkable_server(node, "crishim-userns-", test_images.layout) as s:
        yield s


def userns_options(mode: int = api_pb2.POD, uids: list[api_pb2.IDMapping] | None = None,
                   gids: list[api_pb2.IDMapping] | None = None) -> api_pb2.UserNamespace:
    return api_pb2.UserNamespace(mode=mode, uids=[MAPPING] if uids is None else uids,
                                 gids=[MAPPING] if gids is None else gids)


def userns_pod(name: str, options: api_pb2.UserNamespace, log_dir: Path | None = None,
               **fields: object) -> api_pb2.PodSandboxConfig:
    config = pod_config(name, log_directory=str(log_dir or ""), **fields)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
    return config


def create(server: CrishimServer, pod_id: str, pod: api_pb2.PodSandboxConfig, name: str, image: str,
           command: list[str], mounts: list[api_pb2.Mount] | None = None,
           options: api_pb2.NamespaceOption | None = None) -> str:
    """As critest's runUserNamespaceContainer: the container repeats the pod's namespace options."""
    namespace_options = pod.linux.security_context.namespace_options if options is None else options
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image),
        command=command, log_path=f"{name}.log", mounts=mounts or [],
        linux=api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
            namespace_options=namespace_options)))
    return str(server.runtime().CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)


def run_container(server: CrishimServer, pod_id: str, pod: api_pb2.PodSandboxConfig, name: str,
                  image: str, command: list[str], **kwargs: object) -> str:
    cid = create(server, pod_id, pod, name, image, command, **kwargs)  # type: ignore[arg-type]
    server.runtime().StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return cid


def sh(server: CrishimServer, cid: str, script: str) -> api_pb2.ExecSyncResponse:
    return server.runtime().ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script],
                                                             timeout=10))


def out(server: CrishimServer, cid: str, script: str) -> str:
    response = sh(server, cid, script)
    assert response.exit_code == 0, (script, response.stderr)
    return response.stdout.decode().strip()


def logged(log: Path) -> str:
    """The container's stdout once it exited and its log holds something."""
    def text() -> str:
        lines = log.read_text().splitlines() if log.exists() else []
        return "\n".join(line.split(" ", 3)[3] for line in lines)

    return str(poll(text, timeout=20, what=f"output in {log}"))


def wait_exited(server: CrishimServer, cid: str) -> None:
    """critest waits for CONTAINER_EXITED before it reads the log; so does StopPodSandbox here."""
    poll(lambda: server.runtime().ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid)).status.state == api_pb2.CONTAINER_EXITED, timeout=20, what="exit")


def pod_leftovers(server: CrishimServer) -> list[str]:
    return [m for m in mounts_below(server.root) if "/idmap/" in m or m.endswith("/user")
            or "/containers/" in m]


def test_status_claims_user_namespaces_for_runc_only(server: CrishimServer) -> None:
    """The probe found idmapped mounts here; crun has no `features` command, so it claims nothing."""
    handlers = {h.name: h.features for h in
                server.runtime().Status(api_pb2.StatusRequest()).runtime_handlers}
    assert handlers["runc"].user_namespaces and handlers[""].user_namespaces
    assert not handlers["crun"].user_namespaces


def test_pod_mode_maps_the_pods_containers_into_one_user_namespace(
        server: CrishimServer, busybox_image: str, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pod = userns_pod("userns-pod-with-a-name-long-enough-for-kubelet-to-send-63-characters",
                     userns_options(), log_dir, hostname="userns-host")
    pod_id = run_pod(server, pod)

    # critest: the container prints its uid_map.
    uid_map = run_container(server, pod_id, pod, "uid-map", busybox_image, ["cat", "/proc/self/uid_map"])
    assert re.search(rf"\s+0\s+{HOST_ID}\s+{SIZE}$", logged(log_dir / "uid-map.log"))
    wait_exited(server, uid_map)

    first = run_container(server, pod_id, pod, "first", busybox_image, ["sleep", "600"])
    second = run_container(server, pod_id, pod, "second", busybox_image, ["sleep", "600"])
    assert out(server, first, "id -u; id -g").split() == ["0", "0"]
    assert out(server, first, "cat /proc/self/gid_map").split() == ["0", str(HOST_ID), str(SIZE)]
    # One user namespace for the pod, not the host's.
    user_ns = out(server, first, "readlink /proc/self/ns/user")
    assert user_ns == out(server, second, "readlink /proc/self/ns/user")
    assert user_ns != Path("/proc/self/ns/user").readlink().as_posix()
    # The image's files are root's inside, and its root may write them.
    assert out(server, first, "stat -c %u:%g /bin/busybox /etc/passwd /").split() == ["0:0"] * 3
    assert out(server, first, "echo added >> /etc/passwd && touch /new && stat -c %u:%g /new") == "0:0"
    assert "added" not in out(server, second, "cat /etc/passwd")
    # The pod's namespaces belong to its user namespace: its root binds a low port, sees its host name.
    assert out(server, first, "hostname") == "userns-host"
    assert sh(server, first, "httpd -p 80 -h /tmp").exit_code == 0
    assert out(server, first, "cat /proc/sys/kernel/overflowuid") == str(OVERFLOW_UID)
    # Its bundle (config.json: env, args) stays private: only the rootfs is on the mapped root's way.
    assert (server.state_dir / "containers" / first).stat().st_mode & 0o777 == 0o700

    stop_and_remove(server, pod_id)
    assert pod_leftovers(server) == []


def test_host_bind_mount_stays_the_host_roots(server: CrishimServer, busybox_image: str) -> None:
    """Not idmapped (no mount uidMappings asked): root-owned host files are nobody's inside, readable
    but not writable by the pod's root."""
    host = Path(tempfile.mkdtemp(prefix="userns-vol-", dir="/tmp"))
    try:
        host.chmod(0o755)
        (host / "secret").write_text("host root's\n")
        (host / "secret").chmod(0o644)
        pod = userns_pod("userns-bind", userns_options())
        pod_id = run_pod(server, pod)
        cid = run_container(server, pod_id, pod, "bind", busybox_image, ["sleep", "600"],
                            mounts=[api_pb2.Mount(container_path="/mnt", host_path=str(host))])
        assert out(server, cid, "stat -c %u:%g /mnt/secret") == f"{OVERFLOW_UID}:{OVERFLOW_UID}"
        assert out(server, cid, "cat /mnt/secret") == "host root's"
        denied = sh(server, cid, "echo pwned >> /mnt/secret")
        assert denied.exit_code != 0 and b"Permission denied" in denied.stderr
        assert sh(server, cid, "touch /mnt/new").exit_code != 0
        assert (host / "secret").read_text() == "host root's\n" and not (host / "new").exists()
        stop_and_remove(server, pod_id)
    finally:
        for child in host.iterdir():
            child.unlink()
        host.rmdir()


def test_node_mode_keeps_the_host_user_namespace(server: CrishimServer, busybox_image: str,
                                                 tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pod = userns_pod("userns-node", api_pb2.UserNamespace(mode=api_pb2.NODE), log_dir)
    pod_id = run_pod(server, pod)
    cid = run_container(server, pod_id, pod, "uid-map", busybox_image, ["cat", "/proc/self/uid_map"])
    assert logged(log_dir / "uid-map.log").split() == Path("/proc/self/uid_map").read_text().split()
    wait_exited(server, cid)
    stop_and_remove(server, pod_id)


@pytest.mark.parametrize(("options", "fields", "complaint"), [
    # critest's four:
    (userns_options(uids=[MAPPING, api_pb2.IDMapping(container_id=0, host_id=2000, length=SIZE)],
                    gids=[MAPPING, api_pb2.IDMapping(container_id=0, host_id=2000, length=SIZE)]),
     {}, "exactly one mapping, got 2"),
    (userns_options(uids=[api_pb2.IDMapping(container_id=1, host_id=1000, length=100000)],
                    gids=[api_pb2.IDMapping(container_id=1, host_id=1000, length=100000)]),
     {}, "must start at container id 0"),
    (api_pb2.UserNamespace(mode=api_pb2.CONTAINER), {}, "mode CONTAINER is not supported"),
    (api_pb2.UserNamespace(mode=api_pb2.TARGET), {}, "mode TARGET is not supported"),
    # containerd's parseUsernsIDs:
    (userns_options(uids=[], gids=[]), {}, "exactly one mapping, got 0"),
    (userns_options(gids=[]), {}, "userns_options.gids: mode POD needs exactly one mapping"),
    (userns_options(mode=api_pb2.NODE), {}, "mode NODE takes no uids or gids"),
    (userns_options(uids=[api_pb2.IDMapping(host_id=HOST_ID, length=0)]), {}, "at least 1"),
    (userns_options(uids=[api_pb2.IDMapping(host_id=2**32 - 10, length=SIZE)]), {}, "exceed"),
    (userns_options(), {"host_network": True}, "host's network namespace"),
])
def test_what_cannot_be_honoured_is_invalid(server: CrishimServer, options: api_pb2.UserNamespace,
                                            fields: dict[str, object], complaint: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        run_pod(server, userns_pod("userns-bad", options, **fields))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(caught.value.details())
    assert "userns_options" in details and complaint in details, details
    assert list(server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items) == []


def test_host_pid_or_ipc_with_pod_mode_is_invalid(server: CrishimServer) -> None:
    for attr in ("pid", "ipc"):
        pod = userns_pod(f"userns-host-{attr}", userns_options())
        setattr(pod.linux.security_context.namespace_options, attr, api_pb2.NODE)
        with pytest.raises(grpc.RpcError) as caught:
            run_pod(server, pod)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"host's {attr} namespace" in str(caught.value.details())


def test_a_container_cannot_leave_its_pods_user_namespace(server: CrishimServer,
                                                          busybox_image: str) -> None:
    pod = userns_pod("userns-mismatch", userns_options())
    pod_id = run_pod(server, pod)
    other = api_pb2.IDMapping(container_id=0, host_id=200000, length=SIZE)
    for options in (api_pb2.NamespaceOption(userns_options=api_pb2.UserNamespace(mode=api_pb2.NODE)),
                    api_pb2.NamespaceOption(userns_options=userns_options(uids=[other], gids=[other]))):
        with pytest.raises(grpc.RpcError) as caught:
            create(server, pod_id, pod, "mismatch", busybox_image, ["true"], options=options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "userns_options differs from the pod's" in str(caught.value.details())
    # Without userns_options it follows the pod.
    cid = run_container(server, pod_id, pod, "follows", busybox_image, ["sleep", "600"],
                        options=api_pb2.NamespaceOption())
    assert out(server, cid, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(SIZE)]
    stop_and_remove(server, pod_id)
    assert pod_leftovers(server) == []


def test_mount_with_mappings_is_idmapped(server: CrishimServer, busybox_image: str) -> None:
    """CRI Mount uidMappings/gidMappings: the host dir's root-owned files are root's inside and its
    root writes them as host root; the status echoes the request."""
    host = Path(tempfile.mkdtemp(prefix="userns-idmap-", dir="/tmp"))
    try:
        (host / "data").write_text("shared\n")
        (host / "data").chmod(0o644)
        pod = userns_pod("userns-idmapped-volume", userns_options())
        pod_id = run_pod(server, pod)
        volume = api_pb2.Mount(container_path="/data", host_path=str(host), uidMappings=[MAPPING],
                               gidMappings=[MAPPING])
        cid = run_container(server, pod_id, pod, "idmapped", busybox_image, ["sleep", "600"],
                            mounts=[volume])
        assert out(server, cid, "stat -c %u:%g /data /data/data").split() == ["0:0", "0:0"]
        assert out(server, cid, "echo more >> /data/data && touch /data/new && echo ok") == "ok"
        assert (host / "data").read_text() == "shared\nmore\n"
        assert ((host / "new").stat().st_uid, (host / "new").stat().st_gid) == (0, 0)
        (reported,) = server.runtime().ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid)).status.mounts
        assert reported.host_path == str(host) and list(reported.uidMappings) == [MAPPING]
        assert list(reported.gidMappings) == [MAPPING]
        stop_and_remove(server, pod_id)
        assert pod_leftovers(server) == []
    finally:
        for child in host.iterdir():
            child.unlink()
        host.rmdir()


@pytest.mark.parametrize(("pod_options", "mount_fields", "complaint"), [
    (None, {"uidMappings": [MAPPING], "gidMappings": [MAPPING]}, "need a pod with its own user namespace"),
    (api_pb2.UserNamespace(mode=api_pb2.NODE), {"uidMappings": [MAPPING], "gidMappings": [MAPPING]},
     "need a pod with its own user namespace"),
    (userns_options(), {"uidMappings": [MAPPING]}, "gidMappings: no mapping given"),
    (userns_options(), {"uidMappings": [MAPPING],
                        "gidMappings": [api_pb2.IDMapping(host_id=HOST_ID, length=0)]}, "at least 1"),
])
def test_mount_mappings_that_cannot_be_honoured(server: CrishimServer, busybox_image: str,
                                                pod_options: api_pb2.UserNamespace | None,
                                                mount_fields: dict[str, object], complaint: str) -> None:
    pod = pod_config("mount-mappings") if pod_options is None else userns_pod("mount-mappings",
                                                                              pod_options)
    pod_id = run_pod(server, pod)
    volume = api_pb2.Mount(container_path="/data", host_path="/tmp", **mount_fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as caught:
        create(server, pod_id, pod, "bad-mount", busybox_image, ["true"], mounts=[volume])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(caught.value.details())
    assert "mount '/data'" in details and complaint in details, details
    stop_and_remove(server, pod_id)


def test_pod_pid_namespace_and_sysctls_under_the_pods_user_namespace(
        server: CrishimServer, busybox_image: str) -> None:
    """The infra process (PID 1 of a pod-wide PID namespace) joins the pod's user namespace too, and
    the pod's namespaced sysctls are set in namespaces its user namespace owns."""
    pod = userns_pod("userns-shared-pid", userns_options(),
                     linux=api_pb2.LinuxPodSandboxConfig(sysctls={
                         "net.ipv4.ping_group_range": "0 0", "kernel.shm_rmid_forced": "1"}))
    pod.linux.security_context.namespace_options.pid = api_pb2.POD
    pod.linux.security_context.namespace_options.userns_options.CopyFrom(userns_options())
    pod_id = run_pod(server, pod)
    first = run_container(server, pod_id, pod, "first", busybox_image, ["sleep", "600"])
    second = run_container(server, pod_id, pod, "second", busybox_image, ["sleep", "601"])
    assert "sleep 601" in out(server, first, "ps -o args")
    assert out(server, first, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("/catatonit -P")
    assert out(server, second, "cat /proc/1/uid_map").split() == ["0", str(HOST_ID), str(SIZE)]
    assert out(server, first, "cat /proc/sys/net/ipv4/ping_group_range").split() == ["0", "0"]
    assert out(server, first, "cat /proc/sys/kernel/shm_rmid_forced") == "1"
    stop_and_remove(server, pod_id)
    assert pod_leftovers(server) == []


def test_a_restarted_server_keeps_and_then_releases_a_userns_pod(server: CrishimServer,
                                                                 busybox_image: str) -> None:
    """After kill -9 the pod's pinned user namespace and its containers' idmapped layers are still
    there, the container still runs in them, and Stop/Remove release them."""
    pod = userns_pod("userns-restart", userns_options())
    pod_id = run_pod(server, pod)
    cid = run_container(server, pod_id, pod, "survivor", busybox_image, ["sleep", "600"],
                        options=api_pb2.NamespaceOption())
    user_ns = out(server, cid, "readlink /proc/self/ns/user")
    other = run_container(server, pod_id, pod, "other", busybox_image, ["sleep", "600"])
    server.kill9()
    server.start()
    assert out(server, cid, "readlink /proc/self/ns/user") == user_ns
    assert out(server, cid, "touch /after-restart && stat -c %u /after-restart") == "0"
    assert out(server, other, "id -u") == "0"
    created = run_container(server, pod_id, pod, "after-restart", busybox_image, ["sleep", "600"])
    assert out(server, created, "readlink /proc/self/ns/user") == user_ns
    stop_and_remove(server, pod_id)
    assert pod_leftovers(server) == []


def test_a_non_root_user_is_mapped_too(server: CrishimServer, busybox_image: str) -> None:
    """User 1000 of the image is host 101000: it owns the image's /home/user inside and may write it."""
    pod = userns_pod("userns-non-root", userns_options())
    pod_id = run_pod(server, pod)
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="user"), image=api_pb2.ImageSpec(image=busybox_image),
        command=["sleep", "600"], linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                run_as_user=api_pb2.Int64Value(value=1000),
                namespace_options=pod.linux.security_context.namespace_options)))
    rt = server.runtime()
    cid = rt.CreateContainer(api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                                            sandbox_config=pod)).container_id
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    assert out(server, cid, "id -u") == "1000"
    assert out(server, cid, "stat -c %u /home/user && touch /home/user/mine && stat -c %u "
                            "/home/user/mine").split() == ["1000", "1000"]
    denied = sh(server, cid, "touch /etc/not-mine")
    assert denied.exit_code != 0 and b"Permission denied" in denied.stderr
    stop_and_remove(server, pod_id)


def test_no_claim_where_the_mapped_root_cannot_reach_container_files(
        server_factory: Callable[..., CrishimServer]) -> None:
    """Under pytest's 0700 tmp dir the probe finds the blocker: nothing claimed, POD mode refused."""
    unreachable = server_factory()
    handlers = unreachable.runtime().Status(api_pb2.StatusRequest()).runtime_handlers
    assert not any(h.features.user_namespaces for h in handlers)
    with pytest.raises(grpc.RpcError) as caught:
        run_pod(unreachable, userns_pod("userns-unsupported", userns_options()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "userns_options: mode POD is not supported by runtime handler 'default'" in str(
        caught.value.details())
    assert "is not searchable by other users" in unreachable.log_path.read_text()
    # NODE mode needs nothing of the node.
    stop_and_remove(unreachable, run_pod(unreachable, userns_pod(
        "userns-node-anywhere", api_pb2.UserNamespace(mode=api_pb2.NODE))))


def test_runc_features_claim_user_namespaces_only_with_the_kernel() -> None:
    runc_like = json.dumps({"mountOptions": ["rro"], "linux": {"namespaces": ["mount", "user"]}})
    assert features_from(runc_like, kernel_rro=True, kernel_userns=True).user_namespaces
    assert not features_from(runc_like, kernel_rro=True, kernel_userns=False).user_namespaces
    without_user = json.dumps({"linux": {"namespaces": ["mount", "network"]}})
    assert not features_from(without_user, kernel_rro=True, kernel_userns=True).user_namespaces
    for malformed in ('{"linux": []}', '{"linux": {"namespaces": "user"}}', "[]", "not json"):
        assert features_from(malformed, kernel_rro=True, kernel_userns=True) == HandlerFeatures()


def test_image_volume_shows_the_images_owners(server: CrishimServer, busybox_image: str) -> None:
    """An image volume is assembled over idmapped layers too: root's files are root's inside."""
    pod = userns_pod("userns-image-volume", userns_options())
    pod_id = run_pod(server, pod)
    volume = api_pb2.Mount(container_path="/image", readonly=True,
                           image=api_pb2.ImageSpec(image=busybox_image))
    cid = run_container(server, pod_id, pod, "image-volume", busybox_image, ["sleep", "600"],
                        mounts=[volume])
    assert out(server, cid, "stat -c %u:%g /image/bin/busybox /image/home/user").split() == \
        ["0:0", "1000:1000"]
    stop_and_remove(server, pod_id)
    assert pod_leftovers(server) == []
