"""Requests no kubelet would send, through one live `crishim serve` in a test node.

What cannot be carried to a plugin, a file or a process is refused with INVALID_ARGUMENT naming the
field; whatever crishim did create can always be stopped and removed with nothing left behind. The
explicit cases come first; a property-based test then throws generated requests at the same server.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, CrishimServer, TestNode, make_test_node, poll, remove_root, run
from tests.image_fixtures import TestImages
from tests.sandbox.podutil import info, node_leftovers, pod_config, run_pod, stop_and_remove

pytestmark = pytest.mark.root

IMAGE = "example.test/hostile:1"
# Anything else is a bug: INTERNAL and UNKNOWN above all.
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.UNAVAILABLE}


@dataclass
class Live:
    node: TestNode
    server: CrishimServer
    log_dir: Path

    def leftovers(self) -> dict[str, Any]:
        found = node_leftovers(self.node, self.server)
        containers = self.server.state_dir / "containers"
        found["containers"] = sorted(p.name for p in containers.iterdir()) if containers.exists() else []
        found["conmon"] = run(["pgrep", "-f", f"conmon .*{self.server.root}"], check=False).stdout.split()
        return found

    def settled(self) -> dict[str, Any]:
        """The leftovers once no removed container's files are still going (RemoveContainer answers
        before they are gone, as containerd's does before its snapshot GC; its record goes first)."""
        containers = self.server.state_dir / "containers"

        def cleaning() -> list[str]:
            return [p.name for p in containers.iterdir() if not (p / "container.json").exists()] \
                if containers.exists() else []

        poll(lambda: not cleaning(), timeout=30, what="removed containers' files to go")
        return self.leftovers()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, test_images: TestImages) -> Iterator[Live]:
    """One server for the whole module, with the busybox image imported under IMAGE."""
    root = tmp_path_factory.mktemp("hostile")
    with make_test_node() as node:
        server = CrishimServer(root=root / "crishim", node=node)
        server.root.mkdir(parents=True)
        server.conf_dir.mkdir()
        server.write_network()
        server.write_config()
        archive = root / "busybox.tar"
        run(["skopeo", "copy", "--quiet", f"oci:{test_images.layout}:1", f"oci-archive:{archive}:{IMAGE}"])
        run([sys.executable, "-m", "crishim", "--config", str(server.config_path), "images", "import",
             str(archive)], cwd=REPO)
        server.start()
        try:
            yield Live(node, server, root / "logs")
        finally:
            server.remove_all_pods()
            server.stop()
            remove_root(server.root)


@pytest.fixture
def clean(live: Live) -> Iterator[Live]:
    """Each test must leave the node as it found it."""
    before = live.leftovers()
    yield live
    assert live.leftovers() == before


def refused(call: Callable[[], Any], *words: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    for word in words:
        assert word in details, details
    return details


def run_request(config: api_pb2.PodSandboxConfig) -> api_pb2.RunPodSandboxRequest:
    return api_pb2.RunPodSandboxRequest(config=config)


# ---- pods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: setattr(c.metadata, "uid", "a\0b"), "config.metadata.uid"),
    (lambda c: setattr(c.metadata, "name", "n" * (1 << 20)), "config.metadata.name"),
    (lambda c: setattr(c.metadata, "namespace", "../../x"), "config.metadata.namespace"),
    (lambda c: c.labels.update({"app": "x\0"}), "config.labels['app']"),
    (lambda c: c.annotations.update({"k\0": "v"}), "config.annotations['k\\x00'] (key)"),
    (lambda c: setattr(c, "hostname", "h\0"), "config.hostname"),
    (lambda c: c.dns_config.servers.append("1.2.3.4\nnameserver 6.6.6.6"), "config.dns_config.servers[0]"),
    (lambda c: c.dns_config.searches.append("svc.local\nnameserver 6.6.6.6"),
     "config.dns_config.searches[0]"),
    (lambda c: c.dns_config.options.append("ndots:5 rotate"), "config.dns_config.options[0]"),
    (lambda c: c.port_mappings.add(container_port=80, host_port=8080, host_ip="nowhere"),
     "config.port_mappings[0].host_ip"),
    (lambda c: setattr(c, "log_directory", "relative/logs"), "config.log_directory"),
    (lambda c: setattr(c, "log_directory", "/var/log/pods/../../etc"), "config.log_directory"),
    (lambda c: setattr(c.linux, "cgroup_parent", "/kubepods/../../escape"), "config.linux.cgroup_parent"),
    (lambda c: c.linux.sysctls.update({"vm.swappiness": "0"}), "vm.swappiness"),
    (lambda c: c.linux.sysctls.update({"kernel.shmmni": "1\n2"}), "kernel.shmmni"),
    (lambda c: setattr(c.linux.security_context.namespace_options, "network", 7),
     "config.linux.security_context.namespace_options.network"),
    (lambda c: setattr(c.metadata, "name", "é" * 100_000), "config.metadata.name"),
])
def test_pod_request_is_refused_naming_the_field(clean: Live, change: Callable[[Any], None],
                                                field: str) -> None:
    config = pod_config("hostile")
    change(config)
    refused(lambda: clean.server.runtime().RunPodSandbox(run_request(config)), field)
    assert clean.server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []


def test_sysctl_the_kernel_refuses_is_an_invalid_argument(clean: Live) -> None:
    config = pod_config("bad-sysctl")
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "not-a-number"
    refused(lambda: clean.server.runtime().RunPodSandbox(run_request(config)),
            "config.linux.sysctls['net.ipv4.ip_unprivileged_port_start']")
    assert clean.server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []


def test_pod_cidr_must_be_a_cidr(live: Live) -> None:
    for bad in ("not/a/cidr", "10.0.0.1", "10.0.0.0/24,"):
        refused(lambda bad=bad: live.server.runtime().UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(
            runtime_config=api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr=bad)))),
            "runtime_config.network_config.pod_cidr")


def test_what_real_clients_send_still_runs(clean: Live) -> None:
    """Long names, unicode, a full DNS config, namespaced sysctls: accepted, and written as sent."""
    config = pod_config("p" * 63 + "-ünïcödé", namespace="kube-system-" + "n" * 50)
    config.dns_config.servers.extend(["10.96.0.10", "fd00::a"])
    config.dns_config.searches.extend(["default.svc.cluster.local", "svc.cluster.local."])
    config.dns_config.options.extend(["ndots:5", "edns0"])
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    config.linux.sysctls["net.ipv4.ping_group_range"] = "0 2147483647"
    config.log_directory = str(clean.log_dir / "pod")
    sandbox_id = run_pod(clean.server, config)
    resolv = (Path(info(clean.server, sandbox_id)["sandboxDir"]) / "resolv.conf").read_text()
    assert resolv == ("nameserver 10.96.0.10\nnameserver fd00::a\n"
                      "search default.svc.cluster.local svc.cluster.local.\noptions ndots:5 edns0\n")
    stop_and_remove(clean.server, sandbox_id)


# ---- containers ----------------------------------------------------------------------------------


@pytest.fixture
def pod(clean: Live) -> Iterator[tuple[str, api_pb2.PodSandboxConfig]]:
    config = pod_config("ctr-pod", log_directory=str(clean.log_dir / str(uuid.uuid4())))
    sandbox_id = run_pod(clean.server, config)
    try:
        yield sandbox_id, config
    finally:
        stop_and_remove(clean.server, sandbox_id)


def create(live: Live, pod: tuple[str, api_pb2.PodSandboxConfig], config: api_pb2.ContainerConfig) -> str:
    return str(live.server.runtime().CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod[0], config=config, sandbox_config=pod[1])).container_id)


def container_config(**fields: Any) -> api_pb2.ContainerConfig:
    fields.setdefault("log_path", "ctr/0.log")
    return api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="ctr"),
                                   image=api_pb2.ImageSpec(image=IMAGE), command=["sh", "-c", "true"],
                                   **fields)


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: c.command.append("a\0b"), "config.command[3]"),
    (lambda c: c.args.append("\0"), "config.args[0]"),
    (lambda c: c.envs.add(key="K", value="v\0"), "config.envs[0].value"),
    (lambda c: setattr(c, "working_dir", "/tmp\0"), "config.working_dir"),
    (lambda c: c.mounts.add(container_path="/m", host_path="/tmp/\0x"), "config.mounts[0].host_path"),
    (lambda c: setattr(c, "log_path", "x\0.log"), "config.log_path"),
    (lambda c: setattr(c, "log_path", "ROOT/escape.log"), "config.log_path"),
    (lambda c: setattr(c, "log_path", "../escape.log"), "config.log_path"),
    (lambda c: setattr(c, "log_path", "a/../../escape.log"), "config.log_path"),
    (lambda c: setattr(c.metadata, "name", "c" * (1 << 20)), "config.metadata.name"),
    (lambda c: setattr(c, "working_dir", "relative"), "config.working_dir"),
    (lambda c: c.envs.add(key="BIG", value="v" * (200 << 10)), "config.envs[0]"),
    (lambda c: setattr(c.linux.security_context.namespace_options, "pid", -1),
     "config.linux.security_context.namespace_options.pid"),
    (lambda c: setattr(c, "stop_signal", 999), "config.stop_signal"),
    (lambda c: setattr(c.linux.resources, "memory_limit_in_bytes", 1),
     "config.linux.resources.memory_limit_in_bytes"),
    (lambda c: setattr(c.linux.resources, "cpuset_cpus", "0-99"), "config.linux.resources.cpuset_cpus"),
    (lambda c: setattr(c.linux.resources, "cpu_shares", 1), "config.linux.resources.cpu_shares"),
    (lambda c: setattr(c.linux.resources, "oom_score_adj", 5000), "config.linux.resources.oom_score_adj"),
    (lambda c: c.command.__setitem__(slice(None), [""]), "the command to run is an empty string"),
    (lambda c: c.mounts.add(container_path="//.", host_path="/tmp"), "config.mounts[0].container_path"),
    (lambda c: c.mounts.add(container_path="/m/../..", host_path="/tmp"), "config.mounts[0].container_path"),
])
def test_container_request_is_refused_naming_the_field(
        live: Live, pod: tuple[str, api_pb2.PodSandboxConfig], change: Callable[[Any], None],
        field: str) -> None:
    config = container_config()
    change(config)
    root = live.log_dir.parent
    config.log_path = config.log_path.replace("ROOT", str(root))
    refused(lambda: create(live, pod, config), field)
    assert live.server.runtime().ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert not any(root.rglob("escape.log"))


@pytest.mark.parametrize(("change", "words"), [
    (lambda c, _: c.command.__setitem__(slice(None), ["/no/such/binary"]), "/no/such/binary"),
    (lambda c, _: c.command.__setitem__(slice(None), ["no-such-command"]), "no-such-command"),
    (lambda c, volume: c.mounts.add(container_path="/bin/sh", host_path=volume), "/bin/sh"),
    (lambda c, volume: c.mounts.add(container_path="/proc", host_path=volume), "/proc"),
])
def test_request_that_does_not_fit_the_image_is_a_failed_precondition(
        live: Live, pod: tuple[str, api_pb2.PodSandboxConfig], tmp_path: Path,
        change: Callable[[Any, str], None], words: str) -> None:
    """Only the runtime can tell (it looks inside the container, after the mounts); not crishim's fault."""
    config = container_config()
    change(config, str(tmp_path))
    with pytest.raises(grpc.RpcError) as err:
        create(live, pod, config)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert words in (err.value.details() or "")
    assert live.server.runtime().ListContainers(api_pb2.ListContainersRequest()).containers == []


def test_unicode_names_and_paths_reach_conmon(live: Live, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    config = container_config(log_path="ünï/0.log")
    config.metadata.name = "ctr-ünïcödé-日本"
    container_id = create(live, pod, config)
    status = live.server.runtime().ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id))
    assert status.status.metadata.name == "ctr-ünïcödé-日本"
    live.server.runtime().RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))


def test_log_path_stays_in_the_log_directory(live: Live, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    container_id = create(live, pod, container_config(log_path="ctr/0.log"))
    status = live.server.runtime().ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id))
    assert status.status.log_path == f"{pod[1].log_directory}/ctr/0.log"
    live.server.runtime().RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))


# ---- generated requests ------------------------------------------------------------------------
#
# Every example ends with whatever it created stopped and removed, and the node as it was: a request
# that makes crishim answer INTERNAL or UNKNOWN, stop serving, or keep something is a bug.

SPECIAL = ["", ".", "..", "../../x", "/", "/tmp", "a\0b", "\0", "x\ny", " ", "\t", "a;b", "k=v", "ünïcödé",
           "日本語", "\u2028", "-", "default", "1.2.3.4", "::1", "10.0.0.0/24", "a/../../b", "%s%n",
           "{{.PodCIDR}}", "net.ipv4.ip_forward", "ndots:5"]
EXAMPLES = settings(max_examples=50, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def texts() -> st.SearchStrategy[str]:
    """Odd strings: NUL, line breaks, '..', unicode, and some very long ones."""
    return st.one_of(
        st.sampled_from(SPECIAL),
        st.text(max_size=12),
        st.text(alphabet="a/.\n ;=-:_", max_size=16),
        st.builds(lambda c, n: c * n, st.sampled_from("ax/.é"), st.sampled_from([64, 254, 4097, 200_000])),
    )


def names() -> st.SearchStrategy[str]:
    """Half plausible (so that pods and containers do get made), half odd."""
    return st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,70}", fullmatch=True), texts())


def small_lists(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(elements, max_size=3)


def maps() -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.one_of(names(), st.sampled_from([
        "kubernetes.io/ingress-bandwidth", "kubernetes.io/egress-bandwidth"])), texts(), max_size=3)


int32 = st.integers(-2**31, 2**31 - 1)
int64 = st.integers(-2**63, 2**63 - 1)
enums = st.integers(-1, 6)


@st.composite
def pod_configs(draw: st.DrawFn, log_root: Path) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig()
    if draw(st.integers(0, 9)):
        config.metadata.CopyFrom(api_pb2.PodSandboxMetadata(
            name=draw(names()), namespace=draw(names()), uid=draw(st.one_of(st.uuids().map(str), texts())),
            attempt=draw(st.integers(0, 2**32 - 1))))
    config.hostname = draw(st.one_of(st.just(""), names()))
    config.log_directory = draw(st.one_of(st.just(""), st.just(str(log_root / "pods")), texts()))
    if draw(st.booleans()):
        config.dns_config.CopyFrom(api_pb2.DNSConfig(
            servers=draw(small_lists(st.one_of(st.ip_addresses().map(str), texts()))),
            searches=draw(small_lists(names())), options=draw(small_lists(texts()))))
    for _ in range(draw(st.integers(0, 2))):
        config.port_mappings.add(protocol=draw(enums), container_port=draw(int32), host_port=draw(int32),
                                 host_ip=draw(st.one_of(st.just(""), st.ip_addresses().map(str), texts())))
    config.labels.update(draw(maps()))
    config.annotations.update(draw(maps()))
    if draw(st.booleans()):
        linux = config.linux
        linux.cgroup_parent = draw(st.one_of(st.just(""), st.just("/crishim-fuzz"), texts()))
        linux.sysctls.update(draw(st.dictionaries(st.one_of(st.sampled_from([
            "net.ipv4.ip_unprivileged_port_start", "kernel.shm_rmid_forced", "kernel.hostname",
            "fs.mqueue.msg_max", "vm.swappiness", "net.core.somaxconn"]), texts()),
            st.one_of(st.sampled_from(["0", "1", "1024"]), texts()), max_size=2)))
        options = linux.security_context.namespace_options
        options.network, options.pid, options.ipc = draw(enums), draw(enums), draw(enums)
    return config


@st.composite
def container_configs(draw: st.DrawFn, volume: Path) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig()
    if draw(st.integers(0, 9)):
        config.metadata.CopyFrom(api_pb2.ContainerMetadata(name=draw(names()),
                                                           attempt=draw(st.integers(0, 2**32 - 1))))
    config.image.image = draw(st.one_of(st.just(IMAGE), st.just(IMAGE), texts()))
    config.command.extend(draw(st.one_of(st.just(["sh", "-c", "sleep 60"]), small_lists(texts()))))
    config.args.extend(draw(small_lists(texts())))
    config.working_dir = draw(st.one_of(st.just(""), st.just("/tmp"), texts()))
    for _ in range(draw(st.integers(0, 2))):
        config.envs.add(key=draw(st.one_of(st.just("K"), texts())), value=draw(texts()))
    for _ in range(draw(st.integers(0, 2))):
        # Host paths stay inside the test's directory: crishim makes missing ones (as containerd does).
        file_names = st.text(alphabet=st.characters(exclude_characters="/", codec="utf-8"), max_size=8)
        host = draw(st.one_of(st.just(str(volume)), file_names.map(lambda name: f"{volume}/{name}"),
                              st.sampled_from(["", "relative", "a\0b"])))
        config.mounts.add(container_path=draw(st.one_of(st.sampled_from(["/mnt", "/", "/proc", "/bin/sh"]),
                                                        texts())), host_path=host,
                          readonly=draw(st.booleans()), propagation=draw(enums))
    config.labels.update(draw(maps()))
    config.annotations.update(draw(maps()))
    config.log_path = draw(st.one_of(st.just("c/0.log"), texts()))
    config.stdin, config.tty = draw(st.booleans()), draw(st.booleans())
    if draw(st.booleans()):
        res = config.linux.resources
        res.cpu_period, res.cpu_quota = draw(st.one_of(int64, st.integers(0, 2_000_000))), draw(int64)
        res.cpu_shares = draw(st.one_of(int64, st.integers(0, 300_000)))
        res.memory_limit_in_bytes = draw(st.one_of(int64, st.integers(0, 64 << 20)))
        res.memory_swap_limit_in_bytes = draw(st.one_of(st.just(0), int64, st.integers(0, 128 << 20)))
        res.oom_score_adj = draw(st.one_of(int64, st.integers(-1000, 1000)))
        res.cpuset_cpus = draw(st.one_of(st.sampled_from(["", "0", "0-1", "1,0", "5", "1-0"]), texts()))
        res.cpuset_mems = draw(st.one_of(st.just(""), st.just("0"), texts()))
    if draw(st.booleans()):
        sc = config.linux.security_context
        sc.privileged = draw(st.booleans())
        sc.readonly_rootfs = draw(st.booleans())
        sc.capabilities.add_capabilities.extend(draw(small_lists(
            st.one_of(st.sampled_from(["NET_ADMIN", "ALL", "SYS_RESOURCE"]), texts()))))
        if draw(st.booleans()):
            sc.run_as_user.value = draw(st.integers(0, 2**63 - 1))
        sc.run_as_username = draw(st.one_of(st.just(""), texts()))
        sc.namespace_options.pid = draw(enums)
        sc.seccomp.profile_type = draw(enums)
        sc.seccomp.localhost_ref = draw(st.one_of(st.just(""), texts()))
    return config


def expect_client_error(call: Callable[[], Any]) -> Any:
    """The answer, or None for an error that blames the request; anything else fails the example."""
    try:
        answer = call()
    except grpc.RpcError as err:
        assert err.code() in CLIENT_CODES, f"{err.code()}: {err.details()}"
        event(f"{err.code().name}: {(err.details() or '')[:40]}")
        return None
    event("OK")
    return answer


def still_serving(live: Live, baseline: dict[str, Any]) -> None:
    live.server.runtime().Version(api_pb2.VersionRequest(), timeout=10)
    assert live.settled() == baseline


def tear_down_pod(live: Live, sandbox_id: str) -> None:
    rt = live.server.runtime()
    rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def test_generated_run_pod_sandbox(live: Live) -> None:
    baseline = live.settled()
    handlers = st.sampled_from(["", "runc", "crun", "nope", "a\0"])

    @EXAMPLES
    @given(config=pod_configs(live.log_dir), handler=handlers)
    def example(config: api_pb2.PodSandboxConfig, handler: str) -> None:
        response = expect_client_error(lambda: live.server.runtime().RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=60))
        if response is not None:
            tear_down_pod(live, response.pod_sandbox_id)
        assert live.server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
        still_serving(live, baseline)

    example()


def test_generated_create_container(live: Live) -> None:
    volume = live.log_dir.parent / "volumes"
    volume.mkdir(exist_ok=True)
    pod = pod_config("fuzz-target", log_directory=str(live.log_dir / "fuzz-target"))
    sandbox_id = run_pod(live.server, pod)
    rt = live.server.runtime()
    # The pod's infra process (PID 1 of its PID namespace) comes with its first container and stays.
    first = create(live, (sandbox_id, pod), container_config())
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=first))
    baseline = live.settled()

    @EXAMPLES
    @given(config=container_configs(volume))
    def example(config: api_pb2.ContainerConfig) -> None:
        response = expect_client_error(lambda: rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=pod), timeout=60))
        if response is not None:
            container_id = response.container_id
            rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True))
            rt.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=0))
            rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
        assert rt.ListContainers(api_pb2.ListContainersRequest()).containers == []
        still_serving(live, baseline)

    try:
        example()
    finally:
        stop_and_remove(live.server, sandbox_id)


def test_generated_pull_status_stop_remove(live: Live) -> None:
    """Image, status, runtime config and teardown RPCs with odd references and ids, while no pod
    exists."""
    baseline = live.settled()
    rt, images = live.server.runtime(), live.server.images()
    ids = st.one_of(texts(), st.just("f" * 64))

    @settings(EXAMPLES, max_examples=40)
    @given(ref=st.one_of(texts(), st.just("127.0.0.1:1/nothing:1"), st.just(IMAGE), st.just("10.0.0.0/8")),
           some_id=ids,
           timeout=int64, user=texts(), verbose=st.booleans())
    def example(ref: str, some_id: str, timeout: int, user: str, verbose: bool) -> None:
        if ref != IMAGE:  # the imported image stays for the container tests
            expect_client_error(lambda: images.PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=ref), auth=api_pb2.AuthConfig(username=user, password=user)),
                timeout=30))
        expect_client_error(lambda: images.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=ref), verbose=verbose)))
        rt.Status(api_pb2.StatusRequest(verbose=verbose))
        expect_client_error(lambda: rt.UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(
            runtime_config=api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr=ref)))))
        expect_client_error(lambda: rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=some_id, verbose=verbose)))
        expect_client_error(lambda: rt.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=some_id, verbose=verbose)))
        rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(
            id=some_id, label_selector={user: ref})))
        rt.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
            id=some_id, pod_sandbox_id=some_id, label_selector={user: ref})))
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=some_id))
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=some_id))
        expect_client_error(lambda: rt.StopContainer(api_pb2.StopContainerRequest(
            container_id=some_id, timeout=timeout)))
        expect_client_error(lambda: rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=some_id)))
        still_serving(live, baseline)

    example()
