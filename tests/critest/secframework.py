"""critest's framework (pkg/framework, pkg/validate helpers) over a real server, for the security specs;

The images stand in for critest's public ones, built here with umoci from busybox-static and imported
before the server starts: `busybox` (every applet as a hard link, like busybox:1.28, and a passwd with
`nobody`), `nginx` (a script named nginx that writes /var/run/nginx.pid; its PID 1 command line names
"master process", as nginx's master does) and `nonewprivs` (a setuid-root program printing its
effective uid, as gcr.io/.../nonewprivs does).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode, make_test_node, poll, run, walkable_server
from tests.image_fixtures import BUSYBOX, PATH_ENV, layout_image

# framework.DefaultUIDPrefix, DefaultNamespacePrefix, DefaultAttempt; validate's pauseCmd.
UID_PREFIX, NAMESPACE_PREFIX, ATTEMPT = "cri-test-uid", "cri-test-namespace", 2
PAUSE_CMD = ["sh", "-c", "top"]
EXEC_TIMEOUT = 30

PASSWD = ("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/home:/bin/false\n")
GROUP = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"

NGINX = """#!/bin/sh
# A stand-in for nginx's master process: its PID file, and a life until TERM.
echo $$ > /var/run/nginx.pid
trap 'kill $child; exit 0' TERM INT QUIT
sleep 2147483647 & child=$!
wait
"""

# x86-64: geteuid(); write(1, "Effective uid: <n>\\n"); exit(0) -- assembled from
#   mov eax,107; syscall; mov ecx,10; lea rsi,[rsp-1]; mov byte [rsi],10
#   1: xor edx,edx; div ecx; add dl,'0'; dec rsi; mov [rsi],dl; test eax,eax; jnz 1b
#   sub rsi,15; lea r8,[rip+prefix]; mov rax,[r8]; mov [rsi],rax; mov rax,[r8+7]; mov [rsi+7],rax
#   mov rdx,rsp; sub rdx,rsi; mov edi,1; mov eax,1; syscall; mov eax,60; xor edi,edi; syscall
#   prefix: .ascii "Effective uid: "
EUID_CODE = bytes.fromhex(
    "b86b0000000f05b90a000000488d7424ffc6060a31d2f7f180c23048ffce881685c075f04883ee0f4c8d05290000"
    "00498b00488906498b4007488946074889e24829f2bf01000000b8010000000f05b83c00000031ff0f054566666563"
    "74697665207569643a20")


def euid_program() -> bytes:
    """A static ELF of EUID_CODE: one read+execute segment at 0x400000, entry right after the headers."""
    base, headers = 0x400000, 64 + 56
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, base + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    size = headers + len(EUID_CODE)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + EUID_CODE


@dataclass
class CritestImages:
    layout: Path
    busybox: str  # image ids, as imported
    nginx: str
    nonewprivs: str


def _busybox_root(rootfs: Path) -> None:
    for name in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user", "var/run", "usr/sbin",
                 "usr/local/bin"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    applets = run([BUSYBOX, "--list"]).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).hardlink_to(rootfs / "bin/busybox")
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)


def _nginx_root(rootfs: Path) -> None:
    _busybox_root(rootfs)
    script = rootfs / "usr/sbin/nginx"
    script.write_text(NGINX)
    script.chmod(0o755)


def _nonewprivs_root(rootfs: Path) -> None:
    program = rootfs / "usr/local/bin/nnp"
    program.parent.mkdir(parents=True)
    program.write_bytes(euid_program())
    program.chmod(0o4755)


@pytest.fixture(scope="session")
def critest_images(tmp_path_factory: pytest.TempPathFactory) -> CritestImages:
    work = tmp_path_factory.mktemp("critest-images")
    layout = work / "layout"
    run(["umoci", "init", "--layout", str(layout)])
    variants: dict[str, tuple[Callable[[Path], None], list[str]]] = {
        "busybox": (_busybox_root, ["--config.cmd", "sh"]),
        "nginx": (_nginx_root, ["--config.entrypoint", "/usr/sbin/nginx",
                                "--config.cmd", "nginx: master process nginx -g daemon off;"]),
        "nonewprivs": (_nonewprivs_root, ["--config.entrypoint", "/usr/local/bin/nnp"]),
    }
    for tag, (populate, config) in variants.items():
        bundle = work / f"bundle-{tag}"
        run(["umoci", "new", "--image", f"{layout}:base-{tag}"])
        run(["umoci", "unpack", "--image", f"{layout}:base-{tag}", str(bundle)])
        populate(bundle / "rootfs")
        run(["umoci", "repack", "--image", f"{layout}:base-{tag}", str(bundle)])
        run(["umoci", "config", "--image", f"{layout}:base-{tag}", "--tag", tag, *config,
             "--config.env", PATH_ENV, "--os", "linux", "--architecture", "amd64"])
        run(["umoci", "rm", "--image", f"{layout}:base-{tag}"])
    run(["umoci", "gc", "--layout", str(layout)])
    ids = {tag: json.loads(layout_image(layout, tag)[0])["config"]["digest"] for tag in variants}
    return CritestImages(layout=layout, busybox=ids["busybox"], nginx=ids["nginx"],
                         nonewprivs=ids["nonewprivs"])


@pytest.fixture(scope="module")
def critest_node() -> Iterator[TestNode]:
    with make_test_node() as node:
        yield node


@pytest.fixture(scope="module")
def critest_server(critest_node: TestNode, critest_images: CritestImages) -> Iterator[CrishimServer]:
    """One server for a module's specs, as critest runs all of its specs against one runtime."""
    with walkable_server(critest_node, "crishim-critest-", critest_images.layout) as server:
        yield server


def new_uuid() -> str:
    return str(uuid.uuid4())


Pod = tuple[str, api_pb2.PodSandboxConfig]  # as critest's helpers return them: id and config


@dataclass
class LogMessage:
    stream: str
    log: str  # with the newline critest's parseCRILog adds


@dataclass
class Critest:
    """critest's framework helpers, one call per RPC as critest makes them; AfterEach's pod clean-up
    (StopPodSandbox then RemovePodSandbox, both expected to succeed) runs at teardown."""

    server: CrishimServer
    images: CritestImages
    work: Path
    pods: list[str] = field(default_factory=list)

    # -- pods --------------------------------------------------------------------------------------
    def pod_config(self, name_prefix: str, log_directory: str = "",
                   name: str = "") -> api_pb2.PodSandboxConfig:
        """framework.BuildPodSandboxMetadata's fields with UUID suffixes, attempt 2, an empty Linux config."""
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name or name_prefix + new_uuid(),
                                                uid=UID_PREFIX + new_uuid(),
                                                namespace=NAMESPACE_PREFIX + new_uuid(), attempt=ATTEMPT),
            log_directory=log_directory, linux=api_pb2.LinuxPodSandboxConfig())

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> str:
        pod_id = str(self.server.runtime().RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id)
        self.pods.append(pod_id)
        return pod_id

    def pod_for_container(self) -> Pod:
        """framework.CreatePodSandboxForContainer."""
        config = self.pod_config("create-PodSandbox-for-container-")
        return self.run_pod(config), config

    def privileged_pod(self, privileged: bool) -> Pod:
        """createPrivilegedPodSandbox."""
        config = self.pod_config("create-Privileged-PodSandbox-for-container-")
        config.linux.security_context.privileged = privileged
        return self.run_pod(config), config

    def log_dir(self, pod_name: str) -> str:
        """createLogTempDir: a fresh temp dir holding a directory named after the pod."""
        path = Path(tempfile.mkdtemp(prefix="podLogTest", dir=self.work)) / pod_name
        path.mkdir(mode=0o777)
        return str(path)

    def pod_with_log_directory(self) -> Pod:
        """createPodSandboxWithLogDirectory."""
        name = "PodSandbox-with-log-directory-" + new_uuid()
        config = self.pod_config("", log_directory=self.log_dir(name), name=name)
        return self.run_pod(config), config

    def stop_and_remove(self, pod_id: str) -> None:
        rt = self.server.runtime()
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        self.pods.remove(pod_id)

    # -- containers --------------------------------------------------------------------------------
    def container_config(self, name: str, image: str, command: list[str] | None = None,
                         security: api_pb2.LinuxContainerSecurityContext | None = None,
                         log_path: str = "") -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=ATTEMPT),
            image=api_pb2.ImageSpec(image=image), command=command or [], log_path=log_path,
            linux=api_pb2.LinuxContainerConfig(security_context=security))

    def create(self, pod: Pod, config: api_pb2.ContainerConfig) -> str:
        return str(self.server.runtime().CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod[0], config=config, sandbox_config=pod[1])).container_id)

    def create_error(self, pod: Pod,
                     config: api_pb2.ContainerConfig) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.create(pod, config)
        return caught.value

    def start(self, container_id: str, state: int = api_pb2.CONTAINER_RUNNING) -> None:
        """startContainer, then critest's Eventually on the state."""
        rt = self.server.runtime()
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
        self.wait_state(container_id, state)

    def wait_state(self, container_id: str, state: int) -> None:
        poll(lambda: self.status(container_id).state == state, timeout=60,
             what=f"container state {api_pb2.ContainerState.Name(state)}")

    def run(self, pod: Pod, config: api_pb2.ContainerConfig,
            state: int = api_pb2.CONTAINER_RUNNING) -> str:
        cid = self.create(pod, config)
        self.start(cid, state)
        return cid

    def status(self, container_id: str) -> api_pb2.ContainerStatus:
        return self.server.runtime().ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)).status

    def exec_sync(self, container_id: str, cmd: list[str]) -> api_pb2.ExecSyncResponse:
        return self.server.runtime().ExecSync(api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=cmd, timeout=EXEC_TIMEOUT))

    def exec_ok(self, container_id: str, cmd: list[str]) -> str:
        """execSyncContainer: the client's ExecSync fails on a non-zero exit code."""
        response = self.exec_sync(container_id, cmd)
        assert response.exit_code == 0, (cmd, response.stdout, response.stderr)
        return response.stdout.decode()

    # -- logs --------------------------------------------------------------------------------------
    def log_messages(self, pod: api_pb2.PodSandboxConfig, log_path: str) -> list[LogMessage]:
        """parseLogLine: `time stream tag text` per line."""
        path = Path(pod.log_directory) / log_path
        lines = path.read_text().splitlines() if path.exists() else []
        messages = []
        for line in lines:
            parts = line.split(" ", 3)
            messages.append(LogMessage(parts[1], (parts[3] if len(parts) > 3 else "") + "\n"))
        return messages

    def verify_log_contents(self, pod: api_pb2.PodSandboxConfig, log_path: str, log: str,
                            stream: str) -> None:
        messages = self.log_messages(pod, log_path)
        assert LogMessage(stream, log) in messages, messages


@pytest.fixture
def critest(critest_server: CrishimServer, critest_images: CritestImages,
            tmp_path: Path) -> Iterator[Critest]:
    c = Critest(critest_server, critest_images, tmp_path)
    yield c
    for pod_id in list(c.pods):
        c.stop_and_remove(pod_id)

