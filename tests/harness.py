"""Test infrastructure shared by every suite: test nodes (network namespaces) and crishim servers.

A test node is a network namespace that stands for a Kubernetes node: crishim and its CNI plugins run in it
(`nsenter --net`, mounts stay shared so the tests see the pinned pod namespaces), so bridges, veths and
iptables rules never touch the machine's own network and vanish with the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.sandbox.namespaces import unmount

REPO = Path(__file__).resolve().parents[1]
CNI_BIN_DIR = "/usr/lib/cni"


def in_ci() -> bool:
    return bool(os.environ.get("CRISHIM_CI") or os.environ.get("CI"))


def shared_dir() -> Path | None:
    """The read-only `shared/` folder beside the clone (as laid out for sessions and CI)."""
    candidates = [os.environ.get("CRISHIM_SHARED", ""), str(REPO.parent / "shared")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def poll(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
         what: str = "condition") -> Any:
    """Call `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run(cmd: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kwargs)


@dataclass
class TestNode:
    """A network namespace standing in for a node."""

    __test__ = False

    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.path}"]

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.prefix(), *cmd], check=check)

    def iptables_save(self) -> str:
        """Rules with counters and comments stripped, for before/after comparison."""
        out = self.sh("iptables-save").stdout
        return "\n".join(line for line in out.splitlines()
                         if line and not line.startswith("#") and not line.startswith(":"))

    def links(self) -> list[str]:
        data = json.loads(self.sh("ip", "-j", "link", "show").stdout)
        return [link["ifname"] for link in data]


@contextlib.contextmanager
def make_test_node() -> Iterator[TestNode]:
    node = TestNode(f"crishim-node-{secrets.token_hex(4)}")
    run(["ip", "netns", "add", node.name])
    try:
        node.sh("ip", "link", "set", "lo", "up")
        yield node
    finally:
        pids = run(["ip", "netns", "pids", node.name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", node.name], check=False)


BRIDGE_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "testnet",
    "plugins": [
        {"type": "loopback"},
        {
            "type": "bridge",
            "bridge": "cni-test0",
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


@dataclass
class CrishimServer:
    """A `crishim serve` process inside a test node, with all its state under one temp dir."""

    root: Path
    node: TestNode | None
    extra_config: dict[str, Any] = field(default_factory=dict)
    log_level: str = "debug"
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None

    @property
    def socket(self) -> Path:
        return self.root / "run" / "crishim.sock"

    @property
    def conf_dir(self) -> Path:
        return self.root / "net.d"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cni-cache"

    @property
    def netns_dir(self) -> Path:
        return self.root / "netns"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "crishim.log"

    def write_config(self) -> None:
        lines = [
            f'socket = "{self.socket}"',
            f'state_dir = "{self.state_dir}"',
            f'run_dir = "{self.root / "run"}"',
            f'netns_dir = "{self.netns_dir}"',
            f'log_level = "{self.log_level}"',
            "shutdown_grace = 5.0",
        ]
        cni = {"conf_dir": str(self.conf_dir), "bin_dirs": [CNI_BIN_DIR],
               "cache_dir": str(self.cache_dir), "rescan_interval": 1.0}
        sections: dict[str, dict[str, Any]] = {"cni": cni}
        for key, value in self.extra_config.items():
            section, _, name = key.rpartition(".")
            if section:
                sections.setdefault(section, {})[name] = value
            else:
                lines.append(f"{name} = {json.dumps(value)}")
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        prefix = self.node.prefix() if self.node else []
        return [*prefix, sys.executable, "-m", "crishim", "--config", str(self.config_path), "serve"]

    def start(self, wait: bool = True) -> CrishimServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(exist_ok=True)
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=REPO)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"crishim exited with {self.proc.returncode}:\n{self.log()}")
            if not self.socket.exists():
                return False
            try:
                self.runtime().Version(api_pb2.VersionRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return True

        poll(ready, timeout=timeout, what=f"crishim socket {self.socket}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _channel(self) -> grpc.Channel:
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self.channel

    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self._channel())

    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self._channel())

    def remove_all_pods(self) -> None:
        """Best effort, for teardown after a failed test: what a test left running must not outlive it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            rt = self.runtime()
            for pod in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items:
                rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        except grpc.RpcError:
            pass

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.close_channel()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    def write_network(self, conflist: dict[str, Any] | None = None,
                      filename: str = "10-test.conflist") -> Path:
        """Write a network config; host-local leases go under this server's root, not /var/lib/cni."""
        data = json.loads(json.dumps(conflist or BRIDGE_CONFLIST))
        for plugin in data.get("plugins", [data]):
            ipam = plugin.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type") == "host-local":
                ipam.setdefault("dataDir", str(self.ipam_dir))
        path = self.conf_dir / filename
        tmp = path.with_name(f".{filename}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.rename(path)
        return path

    def network_status(self) -> tuple[bool, dict[str, Any]]:
        response = self.runtime().Status(api_pb2.StatusRequest(verbose=True))
        ready = {c.type: c.status for c in response.status.conditions}["NetworkReady"]
        return ready, json.loads(response.info["cni"])

    def use_network(self, conflist: dict[str, Any], filename: str = "10-test.conflist",
                    timeout: float = 10.0) -> Path:
        """Write a network config and wait until the running server has loaded it."""
        path = self.write_network(conflist, filename)

        def loaded() -> bool:
            ready, cni = self.network_status()
            return ready and cni.get("network") == conflist["name"]

        poll(loaded, timeout=timeout, what=f"network {conflist['name']} to be loaded")
        return path

    def leases(self) -> list[str]:
        """host-local lease files (IP addresses) currently held."""
        found = []
        if self.ipam_dir.exists():
            for net in self.ipam_dir.iterdir():
                found += [p.name for p in net.iterdir() if p.name[0].isdigit() and "_" not in p.name
                          and not p.name.startswith("last_reserved_ip")]
        return found


@contextlib.contextmanager
def walkable_server(node: TestNode | None, prefix: str, layout: Path) -> Iterator[CrishimServer]:
    """A running server rooted in a /tmp dir every user can walk through (a user-namespaced pod's root
    is an unprivileged host uid that must reach its rootfs; pytest's tmp dirs are 0700), its store
    holding the images of the OCI `layout`, imported before it started."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o711)
    server = CrishimServer(root=root, node=node)
    server.conf_dir.mkdir(parents=True, exist_ok=True)
    server.write_network()
    try:
        server.write_config()
        run([sys.executable, "-m", "crishim", "--config", str(server.config_path), "images", "import",
             str(layout)], cwd=REPO)
        server.start()
        yield server
    finally:
        server.remove_all_pods()
        server.stop()
        remove_root(root)


def mounts_below(root: Path) -> list[str]:
    prefix = f"{root}/"
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [target for target in targets if target.startswith(prefix)]


def unmount_tree(root: Path) -> None:
    """Detach every mount below `root` (pinned namespaces a crashed server left), deepest first."""
    for target in sorted(mounts_below(root), reverse=True):
        unmount(target)


def remove_root(root: Path) -> None:
    unmount_tree(root)
    shutil.rmtree(root, ignore_errors=True)
