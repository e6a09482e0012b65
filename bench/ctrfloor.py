"""The container floor: crishim's own bundle work, conmon and runc for one container, minus the gRPC, the
records and the bookkeeping.

Per container the timed create is what `ContainerManager.create` does on disk and through the runtime:
the bundle directory, an overlay rootfs mounted by crishim's `Rootfs`, the user lookup and `build_spec`
from the same CRI `ContainerConfig` crishim gets (translated by crishim's `spec_from_config`),
config.json, then `conmon.create` (conmon runs `runc create`); start is the runtime handler's `start`.
Teardown is SIGKILL through the handler, the wait for conmon to exit (a pidfd, as crishim watches it),
then `delete`, unmount and the bundle's removal. Each container gets a pod of its own, set up untimed:
the record from the same PodSandboxConfig by crishim's `spec_from_request`, namespaces pinned by
`pin_namespaces`, the pod files by `write_pod_files`, a cgroup parent per pod.
Runs as its own process in the test node (`nsenter --net=NODE python -m bench.ctrfloor PARAMS`), like
crishim's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.containers import CONTAINER_CONCURRENCY, STOP_WAIT, container_config, pod_config
from bench.measure import drive
from crishim.api.runtime.v1 import api_pb2
from crishim.container import conmon
from crishim.container.conmon import Conmon
from crishim.container.oci import RuntimeHandler, hugetlb_available, make_runtimes
from crishim.container.ocispec import SpecInputs, build_spec
from crishim.container.users import read_user_files, resolve_user
from crishim.image.rootfs import Rootfs
from crishim.sandbox.files import release_pod_files, write_pod_files
from crishim.sandbox.model import Sandbox, SandboxState
from crishim.sandbox.namespaces import PodNamespaces, pin_namespaces, release_namespaces
from crishim.server.container_convert import spec_from_config
from crishim.server.sandbox_convert import spec_from_request
from crishim.store import write_json_atomic


@dataclass(frozen=True)
class CtrFloorParams:
    root: str  # bundles, pods, the runc root and conmon's sockets
    lower: str  # the image's layer, unpacked: the overlay's lower dir
    image_config: dict[str, Any]
    cgroup_top: str
    tag: str
    count: int
    warmup: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class FloorContainer:
    sandbox: Sandbox
    pinned: bool = False
    files: bool = False
    cid: str = ""
    rootfs: Rootfs | None = None
    conmon_pid: int = 0

    @property
    def namespaces(self) -> PodNamespaces:
        s = self.sandbox
        return PodNamespaces(net=s.netns_path, ipc=s.ipc_ns_path, uts=s.uts_ns_path)


@dataclass
class Floor:
    params: CtrFloorParams
    handler: RuntimeHandler
    monitor: Conmon
    hugetlb: bool
    samples: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def root(self) -> Path:
        return Path(self.params.root)

    @property
    def exit_dir(self) -> Path:
        return self.root / "exits"

    @classmethod
    def make(cls, params: CtrFloorParams) -> Floor:
        root = Path(params.root)
        handler = make_runtimes(root, "/usr/bin/runc", "/usr/bin/crun")["runc"]
        handler.install()
        monitor = Conmon("/usr/bin/conmon", str(root / "sock"))
        for d in (root / "containers", root / "pods", root / "exits", Path(monitor.socket_dir)):
            d.mkdir(parents=True, exist_ok=True)
        return cls(params, handler, monitor, hugetlb_available())

    def pod(self, tag: str, index: int) -> FloorContainer:
        """The pod record crishim would make from the same PodSandboxConfig."""
        pod_id = secrets.token_hex(32)
        pods = self.root / "pods"
        config = pod_config(tag, index, self.params.cgroup_top)
        spec, _ = spec_from_request(api_pb2.RunPodSandboxRequest(config=config))
        sandbox = Sandbox(id=pod_id, spec=spec, state=SandboxState.READY, created_at=time.time_ns(),
                          dir=str(pods / pod_id), hostname=spec.hostname,
                          netns_path=str(pods / f"{pod_id}.net"), ipc_ns_path=str(pods / f"{pod_id}.ipc"),
                          uts_ns_path=str(pods / f"{pod_id}.uts"))
        return FloorContainer(sandbox)

    async def pod_up(self, item: FloorContainer) -> None:
        await pin_namespaces(item.namespaces, item.sandbox.hostname)
        item.pinned = True
        await asyncio.to_thread(write_pod_files, item.sandbox)
        item.files = True

    async def create_start(self, item: FloorContainer) -> None:
        t0 = time.perf_counter()
        await self._create(item)
        t1 = time.perf_counter()
        await self.handler.start(item.cid)
        t2 = time.perf_counter()
        self._record(create=t1 - t0, start=t2 - t1, create_start=t2 - t0)

    async def _create(self, item: FloorContainer) -> None:
        sandbox = item.sandbox
        spec = spec_from_config(container_config(sandbox.spec.name))
        item.cid = cid = secrets.token_hex(32)
        cdir = self.root / "containers" / cid
        upper, work = cdir / "upper", cdir / "work"
        rootfs = Rootfs(lower_dirs=[Path(self.params.lower)], upper_dir=upper, work_dir=work,
                        merged=cdir / "rootfs")

        def bundle_dirs() -> None:
            cdir.mkdir(mode=0o700)
            for path in (upper, work, rootfs.merged):
                path.mkdir()

        await asyncio.to_thread(bundle_dirs)
        item.rootfs = rootfs
        await rootfs.mount()
        passwd, group = await asyncio.to_thread(read_user_files, rootfs.merged)
        sec = spec.security
        user = resolve_user(run_as_user=sec.run_as_user, run_as_username=sec.run_as_username,
                            run_as_group=sec.run_as_group, supplemental_groups=sec.supplemental_groups,
                            image_user=str(self.params.image_config.get("User") or ""),
                            passwd=passwd, group=group)
        inputs = SpecInputs(container_id=cid, rootfs=str(rootfs.merged), user=user,
                            image_config=self.params.image_config,
                            cgroups_path=f"{sandbox.spec.cgroup_parent}/{cid}",
                            oom_score_adj_floor=await asyncio.to_thread(_own_oom_score_adj),
                            hugetlb=self.hugetlb)
        oci = build_spec(spec, sandbox, inputs)
        await asyncio.to_thread(write_json_atomic, cdir / "config.json", oci)
        _, item.conmon_pid = await conmon.create(
            self.monitor, self.handler, container_id=cid, name=spec.name, bundle=str(cdir),
            log_path=f"{cdir}/console.log", exit_dir=str(self.exit_dir), stdin=False, tty=False)

    async def stop_remove(self, item: FloorContainer) -> None:
        t0 = time.perf_counter()
        await kill_and_wait(self.handler, item.cid, item.conmon_pid)
        t1 = time.perf_counter()
        await self._remove(item)
        t2 = time.perf_counter()
        self._record(stop=t1 - t0, remove=t2 - t1, stop_remove=t2 - t0)

    async def _remove(self, item: FloorContainer) -> None:
        await self.handler.delete(item.cid)
        if item.rootfs is not None:
            await item.rootfs.unmount()
            item.rootfs = None
        await asyncio.to_thread(_remove_tree, self.root / "containers" / item.cid,
                                self.exit_dir / item.cid, Path(self.monitor.socket_dir) / item.cid)
        item.cid = ""

    async def pod_down(self, item: FloorContainer) -> None:
        if item.cid:
            await self._remove(item)
        if item.files:
            await asyncio.to_thread(release_pod_files, item.sandbox)
            item.files = False
        if item.pinned:
            await release_namespaces(item.namespaces)
            item.pinned = False
        await asyncio.to_thread(shutil.rmtree, item.sandbox.dir, True)

    def _record(self, **durations: float) -> None:
        for step, seconds in durations.items():
            self.samples[step].append(seconds)


async def kill_and_wait(handler: RuntimeHandler, cid: str, conmon_pid: int) -> None:
    """SIGKILL the container and wait until its conmon exits (right after it wrote the exit file)."""
    try:
        fd = os.pidfd_open(conmon_pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, exited)
    try:
        await handler.kill(cid, "SIGKILL")
        await asyncio.wait_for(gone, STOP_WAIT)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _own_oom_score_adj() -> int:
    return int(Path("/proc/self/oom_score_adj").read_text())


def _remove_tree(tree: Path, *files: Path) -> None:
    shutil.rmtree(tree, ignore_errors=True)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def run_round(floor: Floor, count: int, tag: str) -> dict[str, Any]:
    """Pods up (untimed), every container created and started, then every one killed and deleted."""
    floor.samples.clear()
    batch = [floor.pod(tag, i) for i in range(count)]
    try:
        await drive(batch, CONTAINER_CONCURRENCY, floor.pod_up)
        create_wall = await drive(batch, CONTAINER_CONCURRENCY, floor.create_start)
        delete_wall = await drive(batch, CONTAINER_CONCURRENCY, floor.stop_remove)
    finally:
        for item in batch:
            await asyncio.shield(floor.pod_down(item))
    return {"samples": dict(floor.samples), "count": count, "create_wall_s": create_wall,
            "delete_wall_s": delete_wall}


async def measure(params: CtrFloorParams) -> dict[str, Any]:
    floor = await asyncio.to_thread(Floor.make, params)
    if params.warmup:
        await run_round(floor, params.warmup, f"{params.tag}-warmup")
    return await run_round(floor, params.count, params.tag)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.ctrfloor PARAMS_JSON (started by `python -m bench`)", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(measure(CtrFloorParams(**json.loads(argv[0]))))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
