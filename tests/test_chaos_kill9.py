"""Chaos: kubelet-like clients work through a real `crishim serve` while it is SIGKILLed at a random moment.

Each round: a few client threads run kubelet's sequences concurrently (RunPodSandbox, CreateContainer,
StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox; PullImage and
RemoveImage beside them), the server is killed with SIGKILL after a random delay and started again. Then:
every object whose creation answered before the kill is still listed, in the state its last answered call
left it; kubelet's cleanup of everything listed succeeds; and nothing is left on the node: namespaces,
veths, leases, iptables rules, mounts, records, files, conmon or container processes, cgroups.

The seed is printed on failure; `CRISHIM_CHAOS_SEED=N` replays its choices (the timing is the machine's).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from tests.harness import CrishimServer, TestNode, poll
from tests.image_fixtures import TestImages
from tests.sandbox.podutil import node_leftovers, pod_config

pytestmark = pytest.mark.root

ROUNDS = int(os.environ.get("CRISHIM_CHAOS_ROUNDS", "3"))
CLIENTS = int(os.environ.get("CRISHIM_CHAOS_CLIENTS", "3"))
CGROUP_V1 = Path("/sys/fs/cgroup")
CALL_TIMEOUT = 60.0


@dataclass
class Ledger:
    """What the clients were told, shared by the threads: ids whose creation answered, and which later
    calls were started (the kill may have cut them short) or answered."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pods: dict[str, api_pb2.PodSandboxConfig] = field(default_factory=dict)
    pods_stopping: set[str] = field(default_factory=set)
    pods_removing: set[str] = field(default_factory=set)
    pods_removed: set[str] = field(default_factory=set)
    containers: dict[str, str] = field(default_factory=dict)  # id -> pod id
    started: set[str] = field(default_factory=set)
    ctr_stopping: set[str] = field(default_factory=set)
    ctr_stopped: set[str] = field(default_factory=set)
    ctr_removing: set[str] = field(default_factory=set)
    ctr_removed: set[str] = field(default_factory=set)
    images_pulled: set[str] = field(default_factory=set)
    images_removing: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)

    def mark(self, into: str, item: str) -> None:
        with self.lock:
            getattr(self, into).add(item)


class Killed(Exception):
    """The server went away under a client: its sequence ends here."""


class Client:
    """One kubelet pod worker: its own channel, so the kill reaches it as a kubelet sees it."""

    def __init__(self, server: CrishimServer, ledger: Ledger, rng: random.Random, images: TestImages,
                 cgroup_root: str, host_ports: Iterator[int], log_dir: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix:{server.socket}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)
        self.ledger, self.rng, self.images = ledger, rng, images
        self.cgroup_root, self.host_ports, self.log_dir = cgroup_root, host_ports, log_dir

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise Killed from err
            with self.ledger.lock:
                self.ledger.unexpected.append(f"{type(request).__name__}: {err.code()} {err.details()}")
            raise Killed from err

    def pod(self) -> None:
        uid = str(uuid.uuid4())
        name = f"chaos-{uid[:8]}-" + "p" * 48  # 63 characters, as long as kubelet sends
        ports = [(80, next(self.host_ports))] if self.rng.random() < 0.4 else None
        config = pod_config(name[:63], namespace="kube-system-chaos-" + "n" * 30, host_ports=ports,
                            log_directory=str(self.log_dir / f"kube-system_{name[:63]}_{uid}"))
        config.metadata.uid = uid
        config.linux.cgroup_parent = f"{self.cgroup_root}/pod{uid}"
        pod_id = self.call(self.rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
        with self.ledger.lock:
            self.ledger.pods[pod_id] = config
        containers = [self.container(pod_id, config, i) for i in range(self.rng.randint(0, 2))]
        for cid in containers:
            if self.rng.random() < 0.5:
                reply = self.call(self.rt.ExecSync, api_pb2.ExecSyncRequest(
                    container_id=cid, cmd=["sh", "-c", "echo out; sleep 0.2"], timeout=10))
                if reply.stdout != b"out\n" or reply.exit_code != 0:
                    with self.ledger.lock:
                        self.ledger.unexpected.append(f"ExecSync in {cid}: {reply}")
        for cid in containers:
            if self.rng.random() < 0.7:  # otherwise StopPodSandbox stops it
                self.ledger.mark("ctr_stopping", cid)
                self.call(self.rt.StopContainer, api_pb2.StopContainerRequest(
                    container_id=cid, timeout=self.rng.choice([0, 1, 2])))
                self.ledger.mark("ctr_stopped", cid)
                self.ledger.mark("ctr_removing", cid)
                self.call(self.rt.RemoveContainer, api_pb2.RemoveContainerRequest(container_id=cid))
                self.ledger.mark("ctr_removed", cid)
        self.ledger.mark("pods_stopping", pod_id)
        self.call(self.rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.ledger.mark("pods_removing", pod_id)
        self.call(self.rt.RemovePodSandbox, api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        self.ledger.mark("pods_removed", pod_id)

    def container(self, pod_id: str, pod: api_pb2.PodSandboxConfig, attempt: int) -> str:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=f"ctr-{attempt}-" + "c" * 50, attempt=0),
            image=api_pb2.ImageSpec(image=self.images.busybox.ref), command=["sleep", "3600"],
            log_path=f"ctr-{attempt}/0.log", labels={"io.kubernetes.pod.uid": pod.metadata.uid})
        cid = str(self.call(self.rt.CreateContainer, api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
        with self.ledger.lock:
            self.ledger.containers[cid] = pod_id
        self.call(self.rt.StartContainer, api_pb2.StartContainerRequest(container_id=cid))
        self.ledger.mark("started", cid)
        return cid

    def image(self) -> None:
        # Two distinct images (the tagged ones are one: removing a tag removes the image, as containerd does).
        ref = self.rng.choice([self.images.with_user.ref, self.images.tagged[0]])
        self.call(self.img.PullImage, api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
        self.ledger.mark("images_pulled", ref)
        if self.rng.random() < 0.6:
            self.ledger.mark("images_removing", ref)
            self.call(self.img.RemoveImage, api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)))

    def work(self, images_too: bool) -> None:
        try:
            while True:
                if images_too and self.rng.random() < 0.3:
                    self.image()
                else:
                    self.pod()
        except Killed:
            pass
        finally:
            self.channel.close()


def cgroup_leftovers(cgroup_root: str) -> list[str]:
    """Every cgroup below the pods' parents in any hierarchy (kubelet's own pod cgroups are the test's to
    remove; a container's or an exec's below them is crishim's)."""
    found = []
    for hierarchy in CGROUP_V1.iterdir():
        top = hierarchy / cgroup_root.strip("/")
        if top.is_dir():
            found += [str(p) for p in top.glob("pod*/*") if p.is_dir()]
    return sorted(found)


def remove_cgroups(cgroup_root: str) -> None:
    for hierarchy in CGROUP_V1.iterdir():
        top = hierarchy / cgroup_root.strip("/")
        if top.is_dir():
            for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def processes_of(server: CrishimServer, cgroup_root: str) -> list[str]:
    """conmon processes of this server, and processes in its pods' cgroups (infra, containers, execs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (proc / "cgroup").read_text()
            if f":{cgroup_root}/" in cgroups or ("conmon" in cmdline and str(server.root) in cmdline):
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def leftovers(node: TestNode, server: CrishimServer) -> dict[str, Any]:
    """node_leftovers, and every file under crishim's state and run dirs (what the pulled images and the
    server's own files take is there before the chaos too)."""
    found = node_leftovers(node, server)
    for top in (server.state_dir, server.root / "run"):
        found[top.name] = sorted(str(p.relative_to(top)) for p in top.rglob("*")
                                 if "rootfs" not in p.relative_to(top).parts)
    return found


def check_after_restart(server: CrishimServer, ledger: Ledger) -> None:
    """(a) every answered creation is still there, in the state its last answered call left it."""
    rt = server.runtime()
    pods = {p.id: p for p in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items}
    containers = {c.id: c for c in rt.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers}
    for pod_id, config in ledger.pods.items():
        if pod_id in ledger.pods_removed:
            assert pod_id not in pods, f"removed pod {pod_id} is listed again"
            continue
        if pod_id in ledger.pods_removing:
            continue
        assert pod_id in pods, f"pod {pod_id} ({config.metadata.name}) was lost"
        listed = pods[pod_id]
        assert listed.metadata.uid == config.metadata.uid and listed.metadata.name == config.metadata.name
        if pod_id not in ledger.pods_stopping:
            assert listed.state == api_pb2.SANDBOX_READY, f"pod {pod_id} is {listed.state} after the restart"
    for cid, pod_id in ledger.containers.items():
        gone = cid in ledger.ctr_removed or pod_id in ledger.pods_removed
        if gone:
            assert cid not in containers, f"removed container {cid} is listed again"
            continue
        if cid in ledger.ctr_removing or pod_id in ledger.pods_removing:
            continue
        assert cid in containers, f"container {cid} of pod {pod_id} was lost"
        state = containers[cid].state
        if cid in ledger.ctr_stopped:
            assert state == api_pb2.CONTAINER_EXITED, f"stopped container {cid} is {state}"
        elif cid in ledger.started and cid not in ledger.ctr_stopping and pod_id not in ledger.pods_stopping:
            assert state == api_pb2.CONTAINER_RUNNING, f"running container {cid} is {state}"
    for container in containers.values():
        assert container.pod_sandbox_id in pods, f"container {container.id} listed without its pod"
        status = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container.id), timeout=30)
        assert status.status.state == container.state
        if container.state == api_pb2.CONTAINER_RUNNING:  # kubelet's probes go on
            probe = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=container.id, cmd=["echo", "alive"],
                                                        timeout=10), timeout=30)
            assert (probe.exit_code, probe.stdout) == (0, b"alive\n"), f"exec in {container.id}: {probe}"
    for pod in pods.values():
        status = rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=30)
        assert status.status.state == pod.state
        if pod.state == api_pb2.SANDBOX_READY:
            assert status.status.network.ip, f"ready pod {pod.id} without an IP"
    images = {tag for image in server.images().ListImages(api_pb2.ListImagesRequest(), timeout=30).images
              for tag in image.repo_tags}
    for ref in ledger.images_pulled - ledger.images_removing:
        assert ref in images, f"pulled image {ref} was lost"


def clean_up_like_kubelet(server: CrishimServer) -> None:
    """(b) kubelet's cleanup of everything listed, one worker per pod at once as kubelet's pod workers
    (and a second StopPodSandbox racing the first, as its housekeeping sends): every call succeeds."""
    rt = server.runtime()
    containers = rt.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers

    def pod_worker(pod_id: str) -> None:
        for container in containers:
            if container.pod_sandbox_id == pod_id:
                rt.StopContainer(api_pb2.StopContainerRequest(container_id=container.id, timeout=1),
                                 timeout=60)
                rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container.id), timeout=60)
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def housekeeping(pod_id: str) -> None:
        try:
            rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        except grpc.RpcError as err:  # the worker removed it first: kubelet takes that as done
            assert err.code() == grpc.StatusCode.NOT_FOUND, f"StopPodSandbox {pod_id}: {err}"

    pods = [p.id for p in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items]
    with ThreadPoolExecutor(max_workers=8) as pool:
        workers = [pool.submit(pod_worker, pod_id) for pod_id in pods]
        extra = [pool.submit(housekeeping, pod_id) for pod_id in pods]
        for future in workers:
            future.result()
        for future in extra:
            future.result()
    assert rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items == []
    assert rt.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers == []
    images = server.images()
    for image in images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images:
        if not any(tag.rsplit("/", 1)[-1].startswith("busybox:") for tag in image.repo_tags):
            images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image.id)),
                               timeout=60)


def chaos_round(node: TestNode, server: CrishimServer, images: TestImages, seed: int, cgroup_root: str,
                log_dir: Path) -> None:
    rng = random.Random(seed)
    ledger = Ledger()
    # One host port per pod (itertools.count's next() is atomic under the GIL).
    host_ports = itertools.count(20000 + (seed % 100) * 100)
    clients = [Client(server, ledger, random.Random(rng.getrandbits(64)), images, cgroup_root,
                      host_ports, log_dir) for _ in range(CLIENTS)]
    threads = [threading.Thread(target=c.work, args=(i == 0,), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0.3, 5.0))  # the kill point is the point of the test, not synchronisation
    server.kill9()
    for thread in threads:
        thread.join(CALL_TIMEOUT + 10)
        assert not thread.is_alive(), "a client call outlived the server"
    print(f"round seed {seed}: {len(ledger.pods)} pods ({len(ledger.pods_removed)} removed), "
          f"{len(ledger.containers)} containers, {len(ledger.images_pulled)} images pulled")
    assert not ledger.unexpected, ledger.unexpected
    if rng.random() < 0.4:  # killed again while the restart recovers what the first kill cut short
        server.start(wait=False)
        time.sleep(rng.uniform(0.05, 1.5))
        server.kill9()
    server.start()
    check_after_restart(server, ledger)
    clean_up_like_kubelet(server)


@pytest.fixture
def chaos_seed() -> int:
    return int(os.environ.get("CRISHIM_CHAOS_SEED") or random.SystemRandom().getrandbits(32))


def test_kill9_under_kubelet_load_loses_and_leaks_nothing(
        node: TestNode, server_factory: Callable[..., CrishimServer], node_registry: str,
        test_images: TestImages, tmp_path: Path, chaos_seed: int) -> None:
    server = server_factory()
    server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=test_images.busybox.ref)))
    cgroup_root = f"/crishim-chaos-{secrets.token_hex(4)}"
    before = leftovers(node, server)
    rng = random.Random(chaos_seed)
    try:
        for round_no in range(ROUNDS):
            round_seed = rng.getrandbits(32)
            try:
                chaos_round(node, server, test_images, round_seed, cgroup_root, tmp_path / "logs")

                def settled() -> bool:
                    return leftovers(node, server) == before and not cgroup_leftovers(cgroup_root) \
                        and not processes_of(server, cgroup_root)

                with contextlib.suppress(AssertionError):
                    poll(settled, timeout=30, interval=0.2, what="the node to be clean")
                after = leftovers(node, server)
                assert after == before, {key: {"new": sorted(set(after[key]) - set(before[key])),
                                               "gone": sorted(set(before[key]) - set(after[key]))}
                                         for key in after if after[key] != before[key]}
                assert cgroup_leftovers(cgroup_root) == []
                assert processes_of(server, cgroup_root) == []
            except BaseException as err:
                print("crishim log (tail):\n" + "\n".join(server.log().splitlines()[-300:]))
                raise AssertionError(f"chaos seed {chaos_seed} (round {round_no}, round seed {round_seed}; "
                                     f"replay with CRISHIM_CHAOS_SEED={chaos_seed}): {err}") from err
    finally:
        server.remove_all_pods()
        remove_cgroups(cgroup_root)
