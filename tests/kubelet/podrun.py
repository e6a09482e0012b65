"""Drive `crishim pod` as a user would: `run` as a subprocess in the test node, the other verbs as CLIs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet.node import cgroup_mounts, remove_pod_cgroup
from tests.harness import REPO, CrishimServer, TestNode, poll, run

UID_LABEL = "io.kubernetes.pod.uid"


@dataclass
class Runner:
    """One `crishim pod run` process; its stdout lines are collected with their arrival times."""

    proc: subprocess.Popen[str]
    name: str
    namespace: str = "default"
    lines: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def matching(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        found = []
        for at, line in list(self.lines):
            match = re.search(pattern, line)
            if match:
                found.append((at, match))
        return found

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            if self.proc.poll() is not None and not self.matching(pattern):
                raise AssertionError(f"runner exited with {self.proc.returncode}:\n{self.output()}")
            hits = self.matching(pattern)
            return hits[0][1] if hits else None

        try:
            return poll(seen, timeout=timeout, interval=0.05, what=f"runner line /{pattern}/")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- runner output:\n{self.output()}") from None

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)


@dataclass
class Kubelet:
    node: TestNode
    server: CrishimServer
    work: Path
    cgroup_root: str
    runners: list[Runner] = field(default_factory=list)

    @property
    def log_root(self) -> Path:
        return self.work / "pod-logs"

    @property
    def root_dir(self) -> Path:
        return self.work / "kubelet"

    @property
    def run_dir(self) -> Path:
        return self.work / "pod-run"

    def common(self) -> list[str]:
        return ["--endpoint", f"unix://{self.server.socket}", "--pod-run-dir", str(self.run_dir),
                "--log-root", str(self.log_root), "--root-dir", str(self.root_dir),
                "--cgroup-root", self.cgroup_root]

    def cli(self, *args: str) -> list[str]:
        return [*self.node.prefix(), sys.executable, "-m", "crishim", "--config",
                str(self.server.config_path), "pod", *args]

    def write(self, manifest: dict[str, Any]) -> Path:
        path = self.work / f"{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return path

    def run(self, manifest: dict[str, Any] | Path, *extra: str) -> Runner:
        path = manifest if isinstance(manifest, Path) else self.write(manifest)
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        proc = subprocess.Popen(self.cli("run", str(path), *self.common(), "--backoff-base", "1",
                                         "--resolv-conf", str(self.resolv_conf()), *extra),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        runner = Runner(proc=proc, name=name)
        self.runners.append(runner)
        return runner

    def resolv_conf(self) -> Path:
        path = self.work / "node-resolv.conf"
        if not path.exists():
            path.write_text("nameserver 10.1.2.3\nsearch node.test\noptions timeout:2\n")
        return path

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.cli(*args[:1], *args[1:], *self.common()), check=check, cwd=REPO, timeout=120)

    def status(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.command("status", name, "-o", "json").stdout))

    def logs(self, name: str, *args: str) -> str:
        return self.command("logs", name, *args).stdout

    def uid(self, runner: Runner) -> str:
        return runner.wait_for(r"uid (\S+):").group(1)

    def sandboxes(self, uid: str) -> list[api_pb2.PodSandbox]:
        return list(self.server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector={UID_LABEL: uid}))).items)

    def containers(self, uid: str) -> list[api_pb2.Container]:
        return list(self.server.runtime().ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(label_selector={UID_LABEL: uid}))).containers)

    def container_status(self, container_id: str) -> api_pb2.ContainerStatus:
        status: api_pb2.ContainerStatus = self.server.runtime().ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)).status
        return status

    def running(self, uid: str, name: str) -> api_pb2.Container | None:
        return next((c for c in self.containers(uid)
                     if c.metadata.name == name and c.state == api_pb2.CONTAINER_RUNNING), None)

    def exec(self, container_id: str, *cmd: str) -> api_pb2.ExecSyncResponse:
        response: api_pb2.ExecSyncResponse = self.server.runtime().ExecSync(api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=10))
        return response

    def pod_cgroups(self, uid: str) -> list[str]:
        return [str(p) for mount in cgroup_mounts()
                for p in Path(mount + self.cgroup_root).rglob(f"pod{uid}")]

    def leftovers(self, uid: str, namespace: str, name: str) -> dict[str, Any]:
        """Everything a deleted pod must not leave: CRI objects, netns pins, files, cgroups."""
        netns = [p.name for p in self.server.netns_dir.iterdir()] if self.server.netns_dir.exists() else []
        return {"sandboxes": self.sandboxes(uid), "containers": self.containers(uid), "netns": netns,
                "log dir": (self.log_root / f"{namespace}_{name}_{uid}").exists(),
                "pod dir": (self.root_dir / "pods" / uid).exists(), "cgroups": self.pod_cgroups(uid),
                "state file": (self.run_dir / f"{namespace}_{name}.json").exists()}

    def assert_gone(self, uid: str, name: str, namespace: str = "default") -> None:
        left = self.leftovers(uid, namespace, name)
        assert left == {"sandboxes": [], "containers": [], "netns": [], "log dir": False, "pod dir": False,
                        "cgroups": [], "state file": False}, left

    def close(self) -> None:
        """Teardown after a failed test: stop runners (they delete their pods), then the cgroup root."""
        for runner in self.runners:
            if runner.proc.poll() is None:
                runner.proc.send_signal(signal.SIGTERM)
                try:
                    runner.proc.wait(60)
                except subprocess.TimeoutExpired:
                    runner.proc.kill()
                    runner.proc.wait()
        remove_pod_cgroup(self.cgroup_root)
