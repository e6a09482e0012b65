"""`make bench PEER=containerd`: crishim and Debian's containerd 1.6 driven by the same CRI client.

Runs as its own process inside a test node (`nsenter --net=NODE python -m bench.peer PARAMS`), so that
everything it starts shares the node's loopback: a docker-registry with the busybox image and a pause
image (catatonit -P), crishim and containerd, each with its own root, state, socket, CNI network and IPAM
dir under the bench's temp dir. Both pull the same images through a mirror (`bench.local` ->
the registry). Rounds alternate between the two, the order swapping each round, so background load hits
both alike. Per fresh pod, one at a time: RunPodSandbox, CreateContainer, StartContainer, the read calls,
StopContainer (timeout 0), RemoveContainer, StopPodSandbox, RemovePodSandbox. Then memory: PSS of each
daemon plus its monitors (conmons, shims) and infra processes (pause), with `--memory-pods` pods of one
container each, the containers' own `sleep`s excluded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.containers import COMMAND, IMAGE_REF, container_config, pod_config
from bench.measure import percentile, summarise
from bench.rpc import channel, runtime_stub
from bench.servers import BenchServer, answers
from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from tests.harness import BRIDGE_CONFLIST, CNI_BIN_DIR, poll, run
from tests.image_fixtures import Registry, build_busybox_layout, free_port, skopeo_push

MIRRORED_HOST = "bench.local"
PAUSE_REF = f"{MIRRORED_HOST}/pause:1"
CONTAINERD = "/usr/bin/containerd"
CATATONIT = "/usr/bin/catatonit"
PEER_TOOLS = ("containerd", "catatonit", "docker-registry")
READS = 5  # ContainerStatus, ImageStatus and ListImages calls per pod
WARMUP = 2
MEMORY_CONCURRENCY = 4
START_TIMEOUT = 60.0
OPS = ("RunPodSandbox", "CreateContainer", "StartContainer", "ContainerStatus", "ImageStatus", "ListImages",
       "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox", "Version")
CREATE_START = "CreateContainer+StartContainer"
POD_AND_CONTAINER = "pod + container, up and down"
# The targets: (row, limit on crishim p50 / containerd p50).
RATIO_TARGETS = ((CREATE_START, 1.0), ("RemoveContainer", 1.0), ("ContainerStatus", 1.0),
                 ("ImageStatus", 1.0), ("ListImages", 1.0), ("RunPodSandbox", 0.5))
MEMORY_TARGET = 1 / 3
RUNTIMES = ("crishim", "containerd")


@dataclass(frozen=True)
class PeerParams:
    root: str  # everything lives below: registry, images, both runtimes' roots
    cgroup_top: str
    pods: int  # measured fresh pods per runtime, over all rounds
    rounds: int
    memory_pods: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# ---- pure parts: configuration, process selection, summaries ---------------------------------------


def network(name: str, bridge: str, subnet: str, ipam_dir: str) -> dict[str, Any]:
    """The test chain (loopback + bridge/host-local + portmap) on a bridge and subnet of its own."""
    net: dict[str, Any] = json.loads(json.dumps(BRIDGE_CONFLIST))
    net["name"] = name
    plugin = net["plugins"][1]
    plugin["bridge"] = bridge
    plugin["ipam"]["ranges"] = [[{"subnet": subnet}]]
    plugin["ipam"]["dataDir"] = ipam_dir
    return net


def containerd_config(root: Path, registry: str) -> str:
    """containerd 1.6 as machine-notes.md records it: cgroupfs, restrict_oom_score_adj (root lacks
    CAP_SYS_RESOURCE), the test node's CNI dirs, a mirror for `bench.local`, and every path under `root`."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}/root"
state = "{root}/state"

[grpc]
  address = "{root}/containerd.sock"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[{cri}]
  sandbox_image = "{PAUSE_REF}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "/usr/bin/runc"
  Root = "{root}/runc"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{root}/net.d"
  max_conf_num = 1

[{cri}.registry.mirrors."{MIRRORED_HOST}"]
  endpoint = ["http://{registry}"]
"""


def crishim_registry_file(registry: str) -> str:
    return f'mirrors = ["http://{registry}"]\n'


ProcessTable = dict[int, tuple[int, bytes]]  # pid -> (parent pid, command line)


def runtime_processes(table: ProcessTable, daemon: int, marker: bytes, workload: bytes) -> list[int]:
    """The daemon, every process whose command line names the runtime's root (monitors: conmon,
    containerd-shim), and their descendants (pause / infra) except the containers' own workload."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    queue = deque([daemon, *(pid for pid, (_, cmd) in table.items() if marker in cmd)])
    while queue:
        pid = queue.popleft()
        if pid in found or pid not in table or table[pid][1] == workload:
            continue
        found.add(pid)
        queue.extend(children.get(pid, []))
    return sorted(found)


def process_table() -> ProcessTable:
    table: ProcessTable = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (proc / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            table[int(proc.name)] = (ppid, (proc / "cmdline").read_bytes())
    return table


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def memory(daemon: int, marker: Path) -> dict[str, Any]:
    """PSS in MiB of the daemon and of the rest (monitors + infra), and the process count."""
    pids = runtime_processes(process_table(), daemon, str(marker).encode() + b"/",
                             b"\0".join(c.encode() for c in COMMAND) + b"\0")
    rest = [pid for pid in pids if pid != daemon]
    daemon_kib, rest_kib = pss_kib(daemon), sum(pss_kib(pid) for pid in rest)
    return {"daemon_mib": round(daemon_kib / 1024, 1), "monitors_mib": round(rest_kib / 1024, 1),
            "total_mib": round((daemon_kib + rest_kib) / 1024, 1), "processes": len(pids)}


def compare(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Per operation: each runtime's summary and the ratio of the p50s (crishim / containerd)."""
    rows: dict[str, Any] = {}
    for op in (*OPS, CREATE_START, POD_AND_CONTAINER):
        ours, peer = summarise(samples["crishim"].get(op, [])), summarise(samples["containerd"].get(op, []))
        ratio = round(ours["p50"] / peer["p50"], 3) if ours.get("p50") and peer.get("p50") else None
        rows[op] = {"crishim": ours, "containerd": peer, "ratio_p50": ratio}
    return rows


def phase_summary(phases: Iterable[dict[str, float]]) -> dict[str, float]:
    """p50 per phase (ms) over crishim's logged per-call phase timings."""
    collected: dict[str, list[float]] = {}
    for one in phases:
        for name, ms in one.items():
            collected.setdefault(name, []).append(ms)
    return {name: round(percentile(values, 50), 2) for name, values in collected.items()}


def targets(rows: dict[str, Any], mem: dict[str, Any] | None) -> list[dict[str, Any]]:
    found = [{"name": f"{op} p50 crishim / containerd", "goal": f"<= {limit}",
              "measured": rows[op]["ratio_p50"],
              "verdict": "n/a" if rows[op]["ratio_p50"] is None
              else ("PASS" if rows[op]["ratio_p50"] <= limit else "MISS")}
             for op, limit in RATIO_TARGETS]
    if mem:
        ratio = round(mem["crishim"]["total_mib"] / mem["containerd"]["total_mib"], 3)
        found.append({"name": f"memory at {mem['pods']} pods, crishim / containerd (PSS)",
                      "goal": f"<= {MEMORY_TARGET:.3f}", "measured": ratio,
                      "verdict": "PASS" if ratio <= MEMORY_TARGET else "MISS"})
    return found


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [f"crishim vs containerd {results.get('containerd_version', '?')}: {cfg['pods']} fresh pods "
             f"each (pod + one `{' '.join(COMMAND)}` container, one at a time), {cfg['rounds']} alternating "
             f"rounds, the same CRI client and images",
             f"{'operation':<34}{'crishim p50':>12}{'p99':>9}{'containerd p50':>16}{'p99':>9}{'ratio':>8}"]
    for op, row in results["operations"].items():
        ours, peer = row["crishim"], row["containerd"]
        ratio = "-" if row["ratio_p50"] is None else f"{row['ratio_p50']:.2f}"
        lines.append(f"  {op:<32}{ours.get('p50', 0):>12.2f}{ours.get('p99', 0):>9.2f}"
                     f"{peer.get('p50', 0):>16.2f}{peer.get('p99', 0):>9.2f}{ratio:>8}")
    if results.get("errors"):
        lines.append(f"  RPC errors: {results['errors']}")
    phases = results.get("crishim_phases") or {}
    for call, summary in phases.items():
        parts = ", ".join(f"{name} {ms:.1f}" for name, ms in summary.items())
        lines.append(f"crishim {call} phases, p50 ms: {parts}")
    mem = results.get("memory")
    if mem:
        lines.append(f"memory at {mem['pods']} pods x 1 container (PSS MiB): daemon + monitors/infra = total")
        for name in RUNTIMES:
            m = mem[name]
            lines.append(f"  {name:<12}{m['daemon_mib']:>8} + {m['monitors_mib']:>7} = {m['total_mib']:>7}"
                         f"  ({m['processes']} processes)")
    lines.append("targets")
    for t in results["targets"]:
        lines.append(f"  {t['verdict']:<5} {t['name']:<52} {t['goal']:>9}  measured {t['measured']}")
    return "\n".join(lines)


# ---- the runtimes and the client ----------------------------------------------------------------------


@dataclass
class Containerd:
    root: Path
    registry: str
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    def start(self) -> None:
        (self.root / "net.d").mkdir(parents=True)
        net = network("bench-containerd", "cni-ctrd0", "10.211.0.0/16", str(self.root / "ipam"))
        (self.root / "net.d" / "10-bench.conflist").write_text(json.dumps(net))
        config = self.root / "config.toml"
        config.write_text(containerd_config(self.root, self.registry))
        log = open(self.root / "containerd.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([CONTAINERD, "--config", str(config)], stdout=log, stderr=log)
        log.close()
        poll(self._ready, timeout=START_TIMEOUT, what="containerd's CRI socket")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError((self.root / "containerd.log").read_text())
        return answers(self.socket)

    def version(self) -> str:
        return run([CONTAINERD, "--version"]).stdout.split()[2]

    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("containerd is not running")
        return self.proc.pid

    def images(self) -> api_pb2_grpc.ImageServiceStub:
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        return api_pb2_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Client:
    """One runtime through its socket; every call timed by operation name."""

    rt: Any
    images: Any
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    async def call(self, op: str, fn: Callable[[Any], Any], request: Any, record: bool = True) -> Any:
        t0 = time.perf_counter()
        response = await fn(request)
        if record:
            self.samples.setdefault(op, []).append(time.perf_counter() - t0)
        return response

    async def up(self, tag: str, index: int, cgroup_top: str, record: bool) -> tuple[str, str]:
        config = pod_config(tag, index, cgroup_top)
        t0 = time.perf_counter()
        pod = (await self.call("RunPodSandbox", self.rt.RunPodSandbox,
                               api_pb2.RunPodSandboxRequest(config=config), record)).pod_sandbox_id
        t1 = time.perf_counter()
        cid = (await self.call("CreateContainer", self.rt.CreateContainer, api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(config.metadata.name), sandbox_config=config),
            record)).container_id
        await self.call("StartContainer", self.rt.StartContainer,
                        api_pb2.StartContainerRequest(container_id=cid), record)
        if record:
            self.samples.setdefault(CREATE_START, []).append(time.perf_counter() - t1)
            self.samples.setdefault("_up", []).append(time.perf_counter() - t0)
        return pod, cid

    async def reads(self, cid: str) -> None:
        for _ in range(READS):
            await self.call("ContainerStatus", self.rt.ContainerStatus,
                            api_pb2.ContainerStatusRequest(container_id=cid))
            await self.call("ImageStatus", self.images.ImageStatus,
                            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=IMAGE_REF)))
            await self.call("ListImages", self.images.ListImages, api_pb2.ListImagesRequest())
            # The floor of any call: the server's gRPC stack and nothing else.
            await self.call("Version", self.rt.Version, api_pb2.VersionRequest())

    async def down(self, pod: str, cid: str, record: bool) -> None:
        t0 = time.perf_counter()
        await self.call("StopContainer", self.rt.StopContainer,
                        api_pb2.StopContainerRequest(container_id=cid, timeout=0), record)
        await self.call("RemoveContainer", self.rt.RemoveContainer,
                        api_pb2.RemoveContainerRequest(container_id=cid), record)
        await self.call("StopPodSandbox", self.rt.StopPodSandbox,
                        api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), record)
        await self.call("RemovePodSandbox", self.rt.RemovePodSandbox,
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), record)
        if record:
            up = self.samples["_up"].pop()
            self.samples.setdefault(POD_AND_CONTAINER, []).append(up + time.perf_counter() - t0)

    async def cycle(self, tag: str, index: int, cgroup_top: str, record: bool = True) -> None:
        pod, cid = await self.up(tag, index, cgroup_top, record)
        if record:
            await self.reads(cid)
        await self.down(pod, cid, record)


@contextlib.asynccontextmanager
async def client(socket: Path) -> AsyncIterator[Client]:
    async with channel(str(socket)) as ch:
        yield Client(runtime_stub(ch), api_pb2_grpc.ImageServiceStub(ch))  # type: ignore[no-untyped-call]


async def pull(socket: Path, refs: Iterable[str]) -> None:
    async with client(socket) as c:
        for ref in refs:
            await c.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))


async def measure_round(socket: Path, tag: str, count: int, cgroup_top: str, warmup: int
                        ) -> dict[str, list[float]]:
    async with client(socket) as c:
        for i in range(warmup):
            await c.cycle(f"{tag}-warm", i, cgroup_top, record=False)
        for i in range(count):
            await c.cycle(tag, i, cgroup_top)
    c.samples.pop("_up", None)
    return c.samples


async def fill(socket: Path, tag: str, count: int, cgroup_top: str) -> list[tuple[str, str]]:
    async with client(socket) as c:
        sem = asyncio.Semaphore(MEMORY_CONCURRENCY)

        async def one(i: int) -> tuple[str, str]:
            async with sem:
                return await c.up(tag, i, cgroup_top, record=False)

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def drain(socket: Path, items: list[tuple[str, str]]) -> None:
    async with client(socket) as c:
        sem = asyncio.Semaphore(MEMORY_CONCURRENCY)

        async def one(pod: str, cid: str) -> None:
            async with sem:
                await c.down(pod, cid, record=False)

        await asyncio.gather(*(one(pod, cid) for pod, cid in items))


def crishim_phases(log: Path) -> dict[str, dict[str, float]]:
    """The per-call phase timings crishim logs (JSON lines with `phases_ms`), by log message."""
    found: dict[str, list[dict[str, float]]] = {}
    for line in log.read_text().splitlines():
        if '"phases_ms"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            found.setdefault(entry["msg"], []).append(entry["phases_ms"])
    return {msg: phase_summary(values) for msg, values in found.items()}


def build_pause_layout(work: Path) -> Path:
    """umoci: a one-layer image holding a static catatonit, entrypoint `catatonit -P` (pause mode)."""
    layout, bundle = work / "layout", work / "bundle"
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:base"])
    run(["umoci", "unpack", "--image", f"{layout}:base", str(bundle)])
    shutil.copy2(CATATONIT, bundle / "rootfs" / "catatonit")
    run(["umoci", "repack", "--image", f"{layout}:base", str(bundle)])
    run(["umoci", "config", "--image", f"{layout}:base", "--tag", "1", "--config.entrypoint=/catatonit",
         "--config.entrypoint=-P", "--os", "linux", "--architecture", "amd64"])
    return layout


def run_peer(params: PeerParams) -> dict[str, Any]:
    root = Path(params.root)
    results: dict[str, Any] = {"config": {"pods": params.pods, "rounds": params.rounds,
                                          "memory_pods": params.memory_pods, "reads_per_pod": READS}}
    with contextlib.ExitStack() as stack:
        registry = Registry(host=f"127.0.0.1:{free_port()}", root=root / "registry")
        registry.root.mkdir(parents=True)
        stack.callback(registry.stop)
        registry.start()
        skopeo_push(build_busybox_layout(root / "image"), "1", f"{registry.host}/busybox:1")
        skopeo_push(build_pause_layout(root / "pause"), "1", f"{registry.host}/pause:1")
        progress("images pushed; starting crishim and containerd")

        regdir = root / "crishim-registries"
        regdir.mkdir()
        (regdir / f"{MIRRORED_HOST}.toml").write_text(crishim_registry_file(registry.host))
        server = BenchServer(root=root / "crishim", node=None, extra_config={
            "log_format": "json", "images.registry_config_dir": str(regdir)})
        stack.callback(server.stop)
        stack.callback(server.remove_all_pods)
        server.start()
        server.use_network(network("bench-crishim", "cni-crishim0", "10.210.0.0/16",
                                   str(root / "crishim" / "ipam")))
        ctrd = Containerd(root=root / "containerd", registry=registry.host)
        stack.callback(ctrd.stop)
        ctrd.start()
        results["containerd_version"] = ctrd.version()
        sockets = {"crishim": server.socket, "containerd": ctrd.socket}
        for socket in sockets.values():
            asyncio.run(pull(socket, [IMAGE_REF, PAUSE_REF]))

        samples: dict[str, dict[str, list[float]]] = {name: {} for name in RUNTIMES}
        per_round = [params.pods // params.rounds + (r < params.pods % params.rounds)
                     for r in range(params.rounds)]
        for number, count in enumerate(per_round):
            order = RUNTIMES if number % 2 == 0 else RUNTIMES[::-1]
            for name in order:
                progress(f"round {number}: {count} pods through {name}")
                got = asyncio.run(measure_round(sockets[name], f"{name[:4]}-r{number}", count,
                                                params.cgroup_top, WARMUP if number < 2 else 0))
                for op, values in got.items():
                    samples[name].setdefault(op, []).extend(values)
        results["operations"] = compare(samples)
        results["crishim_phases"] = crishim_phases(server.log_path)

        if params.memory_pods:
            mem: dict[str, Any] = {"pods": params.memory_pods}
            daemons = {"crishim": server.pid(), "containerd": ctrd.proc.pid if ctrd.proc else 0}
            for name in RUNTIMES:
                progress(f"memory: {params.memory_pods} pods through {name}")
                items = asyncio.run(fill(sockets[name], f"{name[:4]}-mem", params.memory_pods,
                                         params.cgroup_top))
                mem[name] = memory(daemons[name], root / name)
                asyncio.run(drain(sockets[name], items))
            results["memory"] = mem
        results["targets"] = targets(results["operations"], results.get("memory"))
    return results


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    params = PeerParams(**json.loads(sys.argv[1]))
    os.chdir(Path(__file__).resolve().parent.parent)
    print(json.dumps(run_peer(params)))


if __name__ == "__main__":
    main()
