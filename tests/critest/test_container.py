"""critest's container specs (cri-tools pkg/validate/container.go, container_linux.go,
multi_container_linux.go, cgroup_mount_mode_linux.go and the container half of idempotence.go) through a
real `crishim serve` in a test node.

Each test sends what the spec sends, with the framework's defaults: names made of a prefix and a UUID,
`cri-test-uid<UUID>` / `cri-test-namespace<UUID>`, attempt 2, no labels, an empty `linux` message with
the cgroup parent `common.GetCgroupParent` derives from RuntimeConfig. The image is the suite's local
busybox instead of `busybox:1.28`. One server serves the whole module; each test gets its own pod, which
the test's end stops and removes as the spec's AfterEach does (and expects both to succeed).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from tests.critest import framework
from tests.harness import CrishimServer, TestNode, make_test_node, poll, remove_root, run
from tests.image_fixtures import HTTP_GET, TestImages, registry_in_node

pytestmark = pytest.mark.root

DEFAULT_LOG = "hello World"
PAUSE_CMD = list(framework.PAUSE_COMMAND)
DEFAULT_CMD = list(framework.CONTAINER_COMMAND)
EXEC_TIMEOUT = 30  # defaultExecSyncTimeout
STOP_TIMEOUT = 60  # defaultStopContainerTimeout
PodRef = tuple[str, api_pb2.PodSandboxConfig]  # a pod's id and the config it was run with
# CRI log line as critest's parseCRILog reads it: an RFC 3339 timestamp Go parses, stream, tag, text.
CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d) "
                      r"(stdout|stderr) ([PF]) (.*)$")


@dataclass
class Critest:
    """critest's framework calls, spelled as the spec makes them."""

    server: CrishimServer
    image: str
    node: TestNode

    @property
    def rt(self) -> api_pb2_grpc.RuntimeServiceStub:
        return self.server.runtime()

    def pod_config(self, prefix: str = "create-PodSandbox-for-container-",
                   privileged: bool = False, **fields: object) -> api_pb2.PodSandboxConfig:
        config = framework.pod_config(self.server, prefix, **fields)
        if privileged:
            config.linux.security_context.privileged = True
        return config

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> str:
        return framework.run_pod(self.server, config)

    def container_config(self, prefix: str, command: list[str], **fields: object) -> api_pb2.ContainerConfig:
        return framework.container_config(prefix, self.image, tuple(command), **fields)

    def create(self, pod: PodRef, config: api_pb2.ContainerConfig) -> str:
        """framework.CreateContainer: ImageStatus first (it pulls only what is missing), then create."""
        image = self.server.images().ImageStatus(api_pb2.ImageStatusRequest(image=config.image)).image
        assert image.id, f"{config.image.image} should be present"
        return str(self.rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod[0], config=config, sandbox_config=pod[1])).container_id)

    def create_default(self, pod: PodRef, prefix: str,
                       labels: dict[str, str] | None = None) -> str:
        return self.create(pod, self.container_config(prefix, DEFAULT_CMD, labels=labels or {}))

    def create_pause(self, pod: PodRef, prefix: str) -> str:
        return self.create(pod, self.container_config(prefix, PAUSE_CMD))

    def start(self, cid: str) -> None:
        self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))

    def status(self, cid: str, verbose: bool = False) -> api_pb2.ContainerStatusResponse:
        response: api_pb2.ContainerStatusResponse = self.rt.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid, verbose=verbose))
        return response

    def wait_state(self, cid: str, state: int, timeout: float = 60) -> api_pb2.ContainerStatus:
        def reached() -> api_pb2.ContainerStatus | None:
            status = self.status(cid).status
            return status if status.state == state else None

        found: api_pb2.ContainerStatus = poll(
            reached, timeout=timeout, what=f"container {cid} in state {api_pb2.ContainerState.Name(state)}")
        return found

    def test_start(self, cid: str) -> None:
        """testStartContainer: start, then RUNNING within a minute."""
        self.start(cid)
        self.wait_state(cid, api_pb2.CONTAINER_RUNNING)

    def test_stop(self, cid: str) -> None:
        """testStopContainer: StopContainer(60) must return within 60 s, then EXITED."""
        self.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=STOP_TIMEOUT),
                              timeout=STOP_TIMEOUT)
        self.wait_state(cid, api_pb2.CONTAINER_EXITED)

    def remove(self, cid: str) -> None:
        self.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))

    def listed(self, cid: str) -> list[str]:
        """listContainerForID."""
        found = self.rt.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(id=cid))).containers
        return [c.id for c in found]

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = EXEC_TIMEOUT) -> api_pb2.ExecSyncResponse:
        response: api_pb2.ExecSyncResponse = self.rt.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=timeout + 120)
        return response

    def exec_ok(self, cid: str, cmd: list[str]) -> str:
        """execSyncContainer: no error, exit 0 (crictl turns another exit code into an error), stderr
        empty; the stdout."""
        result = self.exec_sync(cid, cmd)
        assert (result.exit_code, result.stderr) == (0, b""), result
        return result.stdout.decode()

    def stats(self, stats_filter: api_pb2.ContainerStatsFilter | None) -> list[str]:
        request = api_pb2.ListContainerStatsRequest()
        if stats_filter is not None:
            request.filter.CopyFrom(stats_filter)
        return [s.attributes.id for s in self.rt.ListContainerStats(request).stats]


@pytest.fixture(scope="module")
def critest(tmp_path_factory: pytest.TempPathFactory, test_images: TestImages,
            busybox_image: str) -> Iterator[Critest]:
    work = tmp_path_factory.mktemp("critest-container")
    with make_test_node() as node, registry_in_node(node, test_images.registry, work):
        server = CrishimServer(root=work / "crishim", node=node)
        server.root.mkdir()
        server.conf_dir.mkdir()
        server.write_network()
        try:
            server.start()
            server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)))
            yield Critest(server, busybox_image, node)
        finally:
            server.remove_all_pods()
            server.stop()
            remove_root(server.root)


def pod_fixture(critest: Critest, config: api_pb2.PodSandboxConfig) -> Iterator[PodRef]:
    """The spec's BeforeEach runs the pod; its AfterEach stops and removes it, both expected to work."""
    pod_id = critest.run_pod(config)
    yield pod_id, config
    critest.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    critest.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


@pytest.fixture
def pod(critest: Critest) -> Iterator[PodRef]:
    """framework.CreatePodSandboxForContainer."""
    yield from pod_fixture(critest, critest.pod_config())


@pytest.fixture
def privileged_pod(critest: Critest) -> Iterator[PodRef]:
    """createPrivilegedPodSandbox(rc, true)."""
    yield from pod_fixture(critest, critest.pod_config("create-Privileged-PodSandbox-for-container-",
                                                       privileged=True))


@pytest.fixture
def log_pod(critest: Critest, tmp_path: Path) -> Iterator[PodRef]:
    """createPodSandboxWithLogDirectory: a temp dir holding a directory named after the pod."""
    name_prefix = "PodSandbox-with-log-directory-"
    config = critest.pod_config(name_prefix)
    log_dir = tmp_path / "podLogTest" / config.metadata.name
    log_dir.mkdir(parents=True, mode=0o777)
    config.log_directory = str(log_dir)
    yield from pod_fixture(critest, config)


# --- Container: runtime should support basic operations on container ---------------------------------


def test_creating_container(critest: Critest, pod: PodRef) -> None:
    """runtime should support creating container [Conformance]"""
    cid = critest.create_default(pod, "container-for-create-")
    assert critest.listed(cid) == [cid]
    status = critest.status(cid).status
    assert status.state == api_pb2.CONTAINER_CREATED
    assert status.metadata.name.startswith("container-for-create-") and status.metadata.attempt == 2


def test_starting_container(critest: Critest, pod: PodRef) -> None:
    """runtime should support starting container [Conformance]"""
    cid = critest.create_default(pod, "container-for-start-test-")
    critest.test_start(cid)


def test_stopping_container(critest: Critest, pod: PodRef) -> None:
    """runtime should support stopping container [Conformance]

    `top` as PID 1 must end on SIGTERM: critest fails a stop that takes the whole 60 s grace period."""
    cid = critest.create_default(pod, "container-for-stop-test-")
    critest.start(cid)
    critest.test_stop(cid)
    assert critest.status(cid).status.exit_code != 137, "top should have ended on SIGTERM, not SIGKILL"


def test_removing_created_container(critest: Critest, pod: PodRef) -> None:
    """runtime should support removing created container [Conformance]"""
    cid = critest.create_pause(pod, "container-for-remove-created-test-")
    critest.remove(cid)
    assert critest.listed(cid) == []


def test_removing_running_container(critest: Critest, pod: PodRef) -> None:
    """runtime should support removing running container [Conformance]"""
    cid = critest.create_pause(pod, "container-for-remove-running-test-")
    critest.start(cid)
    critest.remove(cid)
    assert critest.listed(cid) == []
    with pytest.raises(grpc.RpcError) as caught:
        critest.status(cid)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_removing_stopped_container(critest: Critest, pod: PodRef) -> None:
    """runtime should support removing stopped container [Conformance]"""
    cid = critest.create_pause(pod, "container-for-remove-stopped-test-")
    critest.start(cid)
    critest.test_stop(cid)
    critest.remove(cid)
    assert critest.listed(cid) == []


def test_preserving_container_attributes(critest: Critest, pod: PodRef) -> None:
    """runtime should support preserving container attributes [Conformance]

    A critest 1.36 spec whose source is not in the reference index; what it checks is taken from a
    runtime that failed it (pelagos issue 357, PR 370: ContainerStatus must report the attempt, 2, and
    the labels and annotations as created). Checked here after create and after start, in
    ContainerStatus and in ListContainers."""
    labels, annotations = {"foo": "bar", "io.kubernetes.container.name": "c"}, {"a": "b", "empty": ""}
    config = critest.container_config("container-for-attributes-test-", DEFAULT_CMD, labels=labels,
                                      annotations=annotations)
    cid = critest.create(pod, config)
    for step in ("created", "started"):
        status = critest.status(cid).status
        (listed,) = critest.rt.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(id=cid))).containers
        for seen in (status, listed):
            assert seen.id == cid, step
            assert seen.metadata == config.metadata, step
            assert dict(seen.labels) == labels and dict(seen.annotations) == annotations, step
            assert seen.image.image == critest.image and seen.image_ref, step
        assert listed.pod_sandbox_id == pod[0], step
        if step == "created":
            critest.test_start(cid)


def test_exec_sync(critest: Critest, pod: PodRef) -> None:
    """runtime should support execSync [Conformance]"""
    cid = critest.create_default(pod, "container-for-execSync-test-")
    critest.start(cid)
    assert critest.exec_ok(cid, ["echo", "-n", "hello"]) == "hello"


def test_exec_sync_with_timeout(critest: Critest, pod: PodRef) -> None:
    """runtime should support execSync with timeout [Conformance]

    The spec's check `pgrep sleep || true` needs pgrep, which Debian's busybox lacks: `ps` and grep
    ask the same thing."""
    cid = critest.create_default(pod, "container-for-execSync-timeout-test-")
    critest.start(cid)
    with pytest.raises(grpc.RpcError):
        critest.exec_sync(cid, ["sleep", "4321"], timeout=1)
    after = critest.exec_sync(cid, ["sh", "-c", "ps -o args | grep '^sleep' || true"])
    assert (after.exit_code, after.stderr, after.stdout.strip()) == (0, b"", b"")


def test_listing_container_stats(critest: Critest, pod: PodRef) -> None:
    """runtime should support listing container stats [Conformance]"""
    cid = critest.create_default(pod, "container-for-stats-")
    critest.start(cid)
    stats = critest.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert stats.attributes.id == cid
    assert stats.attributes.metadata.name.startswith("container-for-stats-")
    assert stats.cpu.timestamp != 0
    assert stats.memory.timestamp != 0


def test_listing_stats_for_started_containers(critest: Critest,
                                              pod: PodRef) -> None:
    """runtime should support listing stats for started containers [Conformance]"""
    cid = critest.create_default(pod, "container-for-stats-")
    critest.start(cid)
    assert critest.stats(api_pb2.ContainerStatsFilter(id=cid)) == [cid]


def test_listing_stats_when_filter_is_nil(critest: Critest, pod: PodRef) -> None:
    """runtime should support listing stats for started containers when filter is nil [Conformance]"""
    cid = critest.create_default(pod, "container-for-stats-with-nil-filter-")
    critest.start(cid)
    assert cid in critest.stats(None)


def test_listing_stats_for_three_containers(critest: Critest,
                                            pod: PodRef) -> None:
    """runtime should support listing stats for three created containers when filter is nil. [Conformance]"""
    ids = [critest.create_default(pod, "container-for-stats-with-nil-filter-") for _ in range(3)]
    for cid in ids:
        critest.start(cid)
    listed = critest.stats(None)
    assert all(cid in listed for cid in ids), (ids, listed)


def test_listing_stats_filtered_by_labels(critest: Critest, pod: PodRef) -> None:
    """runtime should support listing stats for containers filtered by labels [Conformance]"""
    cid = critest.create_default(pod, "container-for-stats-with-labels-", labels={"foo": "bar"})
    critest.start(cid)
    assert cid in critest.stats(api_pb2.ContainerStatsFilter(label_selector={"foo": "bar"}))
    assert cid not in critest.stats(api_pb2.ContainerStatsFilter(label_selector={"foo": "baz"}))


# --- Idempotence (idempotence.go, its container specs) -----------------------------------------------


def test_stop_container_not_found(critest: Critest) -> None:
    """Idempotence StopContainer should not return an error if not found"""
    critest.rt.StopContainer(api_pb2.StopContainerRequest(container_id=framework.new_uuid(), timeout=0))


def test_stop_container_already_stopped(critest: Critest, pod: PodRef) -> None:
    """Idempotence StopContainer should not return an error if already stopped

    The spec stops once, then removes twice; stopping a stopped container again is asked too."""
    cid = critest.create_pause(pod, "idempotence-container-")
    critest.start(cid)
    critest.test_stop(cid)
    critest.test_stop(cid)
    critest.remove(cid)
    critest.remove(cid)
    assert critest.listed(cid) == []


def test_remove_container_not_found(critest: Critest) -> None:
    """Idempotence RemoveContainer should not return an error if not found"""
    critest.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=framework.new_uuid()))


def test_specs_in_parallel(critest: Critest) -> None:
    """critest --parallel=N runs specs side by side on one runtime: while some pods' containers are
    stopped and removed, another spec's ListContainerStats(nil) and ListContainers must still answer
    (a container going away mid-listing is left out, not an error)."""
    def one_spec(n: int) -> None:
        config = critest.pod_config()
        pod_id = critest.run_pod(config)
        ids = [critest.create_pause((pod_id, config), f"container-for-parallel-{n}-") for _ in range(2)]
        for cid in ids:
            critest.start(cid)
        assert all(cid in critest.stats(None) for cid in ids)
        assert critest.exec_ok(ids[0], ["echo", "-n", "hello"]) == "hello"
        for cid in ids:
            critest.remove(cid)
        critest.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        critest.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    stop = threading.Event()
    listing_errors: list[grpc.RpcError] = []

    def list_all() -> None:
        while not stop.is_set():
            try:
                critest.stats(None)
                critest.rt.ListContainers(api_pb2.ListContainersRequest())
            except grpc.RpcError as exc:
                listing_errors.append(exc)

    lister = threading.Thread(target=list_all)
    lister.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(one_spec, n) for n in range(4)]:
                future.result()
    finally:
        stop.set()
        lister.join()
    assert listing_errors == []


# --- Container: runtime should support adding volume and device --------------------------------------


def host_path_with_flag_file(pod_id: str, tmp_path: Path) -> Path:
    """createHostPath: a temp dir `test<podID>…` holding an empty testVolume.file."""
    host = tmp_path / f"test{pod_id}"
    host.mkdir()
    (host / "testVolume.file").touch()
    return host


def volume_container(critest: Critest, pod: PodRef, prefix: str,
                     host: str) -> str:
    """createVolumeContainer: the host path at the same path inside, with selinux_relabel set (a host
    without SELinux ignores it)."""
    return critest.create(pod, critest.container_config(prefix, PAUSE_CMD, mounts=[
        api_pb2.Mount(host_path=host, container_path=host, selinux_relabel=True)]))


def test_starting_container_with_volume(critest: Critest, pod: PodRef,
                                        tmp_path: Path) -> None:
    """runtime should support starting container with volume [Conformance]"""
    host = str(host_path_with_flag_file(pod[0], tmp_path))
    cid = volume_container(critest, pod, "container-with-volume-test-", host)
    critest.test_start(cid)
    assert critest.exec_ok(cid, ["ls", "-A", host]) == "testVolume.file\n"


def test_starting_container_with_symlink_volume(critest: Critest, pod: PodRef,
                                                tmp_path: Path) -> None:
    """runtime should support starting container with volume when host path is a symlink [Conformance]"""
    host = host_path_with_flag_file(pod[0], tmp_path)
    link = Path(f"{host}-symlink")
    link.symlink_to(host)
    cid = volume_container(critest, pod, "container-with-symlink-host-path-test-", str(link))
    critest.test_start(cid)
    assert critest.exec_ok(cid, ["ls", "-A", str(link)]) == "testVolume.file\n"


# --- Container: runtime should support log -----------------------------------------------------------


def parse_log(path: Path) -> list[tuple[str, str]]:
    """critest's parseLogLine: (stream, text + newline) per record; every line must parse, with an
    RFC 3339 timestamp."""
    records = []
    for line in path.read_text().splitlines():
        match = CRI_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        records.append((match[1], match[3] + "\n"))
    return records


def test_starting_container_with_log(critest: Critest, log_pod: PodRef) -> None:
    """runtime should support starting container with log [Conformance]"""
    prefix = "container-with-log-test-"
    config = critest.container_config(prefix, ["echo", DEFAULT_LOG])
    config.log_path = config.metadata.name + ".log"
    config.ClearField("linux")  # createLogContainer sends no linux part
    cid = critest.create(log_pod, config)
    critest.start(cid)
    critest.wait_state(cid, api_pb2.CONTAINER_EXITED)
    log = Path(log_pod[1].log_directory) / config.log_path
    assert ("stdout", DEFAULT_LOG + "\n") in parse_log(log)


def test_reopening_container_log(critest: Critest, log_pod: PodRef) -> None:
    """runtime should support reopening container log [Conformance]

    The spec watches the old file stay unchanged for 5 s; here it must stay unchanged while the new file
    takes two more lines (the loop writes one a second)."""
    config = critest.container_config("container-reopen-log-test-", [
        "sh", "-c", f"while true; do echo {DEFAULT_LOG}; sleep 1; done"])
    config.log_path = config.metadata.name + ".log"
    config.ClearField("linux")
    cid = critest.create(log_pod, config)
    critest.start(cid)
    log = Path(log_pod[1].log_directory) / config.log_path
    # The spec's Eventually parses the file at once and fails (not retries) if it cannot open it.
    assert log.exists(), "the container log should exist when StartContainer returns"
    poll(lambda: parse_log(log), timeout=60, what="the container log")

    old = log.with_name(log.name + ".new")
    log.rename(old)
    critest.rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert log.exists(), "the new container log should exist when ReopenContainerLog returns"
    poll(lambda: parse_log(log), timeout=60, what="a line in the new log")
    old_records = parse_log(old)
    start = len(parse_log(log))
    poll(lambda: len(parse_log(log)) >= start + 2, timeout=10, what="two more lines in the new log")
    assert parse_log(old) == old_records, "the old log should not change"


# --- Container Mount Propagation (container_linux.go) ------------------------------------------------


@pytest.fixture
def propagation_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """createHostPathForMountPropagation's files: `mnt` (bound on itself, made shared or private by the
    test), `mnt/propagationMnt` and `propagationSrcDir/flagFile`; every mount undone afterwards."""
    host = tmp_path / "propagation"
    source, mount_point, src_dir = host / "mnt", host / "mnt" / "propagationMnt", host / "propagationSrcDir"
    mount_point.mkdir(parents=True, mode=0o700)
    src_dir.mkdir(mode=0o700)
    (src_dir / "flagFile").touch()
    try:
        yield source, mount_point, src_dir
    finally:
        for target in (source / "containerMntPoint", mount_point, source):
            run(["umount", "-l", str(target)], check=False)


@pytest.mark.parametrize(("propagation", "host_mode", "into_container", "out_of_container"), [
    (api_pb2.PROPAGATION_PRIVATE, "--make-rprivate", False, False),
    (api_pb2.PROPAGATION_BIDIRECTIONAL, "--make-rshared", True, True),
    (api_pb2.PROPAGATION_HOST_TO_CONTAINER, "--make-rshared", True, False),
], ids=["rprivate", "rshared", "rslave"])
def test_mount_propagation(critest: Critest, privileged_pod: PodRef,
                           propagation_dirs: tuple[Path, Path, Path], propagation: int, host_mode: str,
                           into_container: bool, out_of_container: bool) -> None:
    """mount with 'rprivate' should not support propagation
    mount with 'rshared' should support propagation from host to container and vice versa
    mount with 'rslave' should support propagation from host to container"""
    source, mount_point, src_dir = propagation_dirs
    run(["mount", "--rbind", str(source), str(source)])
    run(["mount", host_mode, str(source)])

    config = critest.container_config("mount-propagation-test-", PAUSE_CMD, mounts=[
        api_pb2.Mount(host_path=str(source), container_path=str(source), propagation=propagation)])  # type: ignore[arg-type]
    config.linux.security_context.privileged = True
    cid = critest.create(privileged_pod, config)
    (mount,) = critest.status(cid, verbose=True).status.mounts
    assert (mount.container_path, mount.host_path, mount.readonly, mount.selinux_relabel) == (
        str(source), str(source), False, False)
    assert mount.propagation == propagation
    critest.test_start(cid)

    run(["mount", "--rbind", str(src_dir), str(mount_point)])
    seen = critest.exec_ok(cid, ["ls", "-A", str(mount_point)])
    assert (seen == "flagFile\n") if into_container else (seen == ""), seen

    container_mount_point = source / "containerMntPoint"
    critest.exec_ok(cid, ["sh", "-c", f"mkdir -p {container_mount_point}"])
    critest.exec_ok(cid, ["sh", "-c", f"mount --bind /etc {container_mount_point}"])
    on_host = os.listdir(container_mount_point)
    assert bool(on_host) == out_of_container, on_host


# --- Container Mount Readonly (container_linux.go) --------------------------------------------------


def runtime_supports_rro(critest: Critest) -> bool:
    """runtimeSupportsRRO: the features of the handler named TestContext.RuntimeHandler ("" by default)."""
    handlers = critest.rt.Status(api_pb2.StatusRequest()).runtime_handlers
    return any(h.name == "" and h.features.recursive_read_only_mounts for h in handlers)


@pytest.fixture
def rro_host_path(tmp_path: Path) -> Iterator[Path]:
    """createHostPathForRROMount: `test<podID>…/tmpfs` with a tmpfs mounted on it."""
    host = tmp_path / "rro"
    (host / "tmpfs").mkdir(parents=True, mode=0o700)
    run(["mount", "-t", "tmpfs", "none", str(host / "tmpfs")])
    try:
        yield host
    finally:
        run(["umount", "-l", str(host / "tmpfs")], check=False)


def mount_container_config(critest: Critest, mount: api_pb2.Mount) -> api_pb2.ContainerConfig:
    """createMountContainer's request: no linux part."""
    config = critest.container_config("test-mount-", PAUSE_CMD, mounts=[mount])
    config.ClearField("linux")
    return config


@pytest.mark.parametrize("rro", [False, True], ids=["non-recursive", "recursive"])
def test_readonly_mounts(critest: Critest, privileged_pod: PodRef, rro_host_path: Path, rro: bool) -> None:
    """should support non-recursive readonly mounts
    should support recursive readonly mounts"""
    assert runtime_supports_rro(critest), "critest would skip the recursive specs"
    cid = critest.create(privileged_pod, mount_container_config(critest, api_pb2.Mount(
        host_path=str(rro_host_path), container_path="/mnt", readonly=True, recursive_read_only=rro,
        selinux_relabel=True)))
    assert len(critest.status(cid, verbose=True).status.mounts) == 1
    critest.test_start(cid)
    if rro:
        critest.exec_ok(cid, ["sh", "-c", 'touch /mnt/tmpfs/foo 2>&1 | grep -q "Read-only file system"'])
        assert not (rro_host_path / "tmpfs" / "foo").exists()
    else:
        critest.exec_ok(cid, ["touch", "/mnt/tmpfs/file"])
        assert (rro_host_path / "tmpfs" / "file").exists()


@pytest.mark.parametrize("fields", [
    {"propagation": api_pb2.PROPAGATION_HOST_TO_CONTAINER},
    {"propagation": api_pb2.PROPAGATION_BIDIRECTIONAL},
    {"readonly": False},
], ids=["PROPAGATION_HOST_TO_CONTAINER", "PROPAGATION_BIDIRECTIONAL", "ReadOnly false"])
def test_rro_rejected(critest: Critest, privileged_pod: PodRef, rro_host_path: Path,
                      fields: dict[str, object]) -> None:
    """should reject a recursive readonly mount with PROPAGATION_HOST_TO_CONTAINER
    should reject a recursive readonly mount with PROPAGATION_BIDIRECTIONAL
    should reject a recursive readonly mount with ReadOnly: false"""
    values: dict[str, object] = {"readonly": True, "recursive_read_only": True, "selinux_relabel": True}
    values.update(fields)
    mount = api_pb2.Mount(host_path=str(rro_host_path), container_path="/mnt", **values)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as caught:
        critest.create(privileged_pod, mount_container_config(critest, mount))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/mnt" in str(caught.value.details())
    assert critest.rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=privileged_pod[0]))).containers == []


# --- Container OOM (container_linux.go) --------------------------------------------------------------


def test_oom_killed(critest: Critest, privileged_pod: PodRef) -> None:
    """should terminate with exitCode 137 and reason OOMKilled"""
    limit = 15 * 1024 * 1024
    config = critest.container_config("OOM-test-", ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"])
    config.linux.resources.memory_limit_in_bytes = limit
    config.linux.resources.memory_swap_limit_in_bytes = limit
    cid = critest.create(privileged_pod, config)
    critest.status(cid, verbose=True)
    critest.start(cid)
    critest.wait_state(cid, api_pb2.CONTAINER_EXITED)
    status = poll(lambda: (s := critest.status(cid).status).reason == "OOMKilled" and s, timeout=60,
                  what="reason OOMKilled")
    assert status.exit_code == 137


# --- Multiple Containers [Conformance] (multi_container_linux.go) ------------------------------------

HTTPD_PORT = 80


@pytest.fixture
def multi_pod(critest: Critest, tmp_path: Path) -> Iterator[tuple[str, api_pb2.PodSandboxConfig, str, str]]:
    """createMultiContainerTestPodSandbox plus the httpd and busybox containers its BeforeEach starts.
    The spec's httpd image logs "httpd -D FOREGROUND"; busybox's httpd, run by a shell that echoes
    the same words first, stands in for it."""
    config = critest.pod_config("PodSandbox-for-multi-container-test-",
                                port_mappings=[api_pb2.PortMapping(container_port=HTTPD_PORT)])
    log_dir = tmp_path / "podLogTest" / config.metadata.name
    log_dir.mkdir(parents=True, mode=0o777)
    config.log_directory = str(log_dir)
    for pod_id, _ in pod_fixture(critest, config):
        httpd = critest.container_config("httpd", [
            "sh", "-c", "mkdir -p /www && echo it works > /www/index.html && echo httpd -D FOREGROUND"
            f" && exec httpd -f -p {HTTPD_PORT} -h /www"])
        httpd.log_path = httpd.metadata.name + ".log"
        httpd_id = critest.create((pod_id, config), httpd)
        critest.test_start(httpd_id)
        busybox = critest.container_config("busybox", ["sh", "-c", f"echo {DEFAULT_LOG}; sleep 1000"])
        busybox.log_path = busybox.metadata.name + ".log"
        busybox.ClearField("linux")
        busybox_id = critest.create((pod_id, config), busybox)
        critest.test_start(busybox_id)
        yield pod_id, config, httpd_id, busybox_id


def test_multi_container_network(critest: Critest,
                                 multi_pod: tuple[str, api_pb2.PodSandboxConfig, str, str]) -> None:
    """Multiple Containers [Conformance] when running multiple containers in a pod should support network"""
    status = critest.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=multi_pod[0])).status
    assert status.network.ip
    url = f"http://{status.network.ip}:{HTTPD_PORT}/"

    def fetch() -> str:
        got = critest.node.sh(sys.executable, "-c", HTTP_GET, url, check=False)
        return got.stdout if got.returncode == 0 else ""

    assert poll(fetch, timeout=60, what=url).strip() == "it works"


def test_multi_container_log(critest: Critest,
                             multi_pod: tuple[str, api_pb2.PodSandboxConfig, str, str]) -> None:
    """Multiple Containers [Conformance] when running multiple containers in a pod should support
    container log

    The spec reads the file named by ContainerStatus.log_path as it is: it must be the full path."""
    for cid, expected in ((multi_pod[2], "httpd -D FOREGROUND"), (multi_pod[3], DEFAULT_LOG)):
        path = Path(critest.status(cid).status.log_path)
        assert path.is_absolute(), path
        poll(lambda: path.exists() and expected in path.read_text(), timeout=60,  # noqa: B023
             what=f"{expected!r} in {path}")


def test_multi_container_exec(critest: Critest,
                              multi_pod: tuple[str, api_pb2.PodSandboxConfig, str, str]) -> None:
    """Multiple Containers [Conformance] when running multiple containers in a pod should support
    container exec"""
    assert critest.exec_ok(multi_pod[2], ["echo", "httpd"]) == "httpd\n"
    assert critest.exec_ok(multi_pod[3], ["echo", "busybox"]) == "busybox\n"


# --- CgroupMountMode (cgroup_mount_mode_linux.go) ----------------------------------------------------


def cgroup2_at_sys_fs_cgroup() -> bool:
    """The spec's BeforeEach: a cgroup2 mount at /sys/fs/cgroup, or every spec is skipped."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/sys/fs/cgroup" and fields[2] == "cgroup2":
            return True
    return False


@pytest.mark.parametrize("security", [None, api_pb2.LinuxContainerSecurityContext()],
                         ids=["without a security context", "with CGROUP_MOUNT_MODE_UNSPECIFIED"])
def test_default_cgroup_mount_mode(critest: Critest, pod: PodRef,
                                   security: api_pb2.LinuxContainerSecurityContext | None) -> None:
    """runtime should start a container with its default cgroup mount mode [Conformance]

    critest skips the whole CgroupMountMode group on this hybrid-cgroup host (no cgroup2 at
    /sys/fs/cgroup); the two entries are run anyway, as they ask only for a plain start.
    CGROUP_MOUNT_MODE_UNSPECIFIED is 0, which proto3 does not send: the message is an empty security
    context."""
    assert not cgroup2_at_sys_fs_cgroup(), "this host now runs critest's CgroupMountMode specs: cover them"
    config = critest.container_config("cgroup-mount-mode-", DEFAULT_CMD)
    if security is not None:
        config.linux.security_context.CopyFrom(security)
        config.linux.security_context.SetInParent()
    cid = critest.create(pod, config)
    critest.test_start(cid)
