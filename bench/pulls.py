"""Pull rows: PullImage of three image shapes from a local registry, against the floor of the same blobs.

Shapes (issue 17 item 7): one 408 MB layer (300 MB of random bytes and 20,000 small random files), ten
layers of 32 MB, and a 1 MB busybox image. They are pushed to a docker-registry on 127.0.0.1, and a
crishim server on the host's network (its image store on the bench's disk) pulls each through its socket
into an empty store. Wall time is the PullImage call's, CPU the server process's (all threads) over the
call, from /proc.

The floor is what fetching and unpacking the same blobs takes without verification or bookkeeping: a shell
that GETs the manifest and the config with curl, then runs `curl BLOB | gzip -d | tar -x` for every layer
at once, each into its own directory; its CPU is the shell's and its children's (wait4). Floor and crishim
alternate, so background load hits both alike, with an untimed sync(2) before each pull (crishim syncs the
layers it unpacks, and would otherwise flush the floor's files too). The big shapes take the median of a
few pulls, each by a fresh server (see `Shape.fresh_server`), busybox the p50 of 20 by one server,
RemoveImage (untimed) between them, as critest's benchmark does. What a shape's pulls wrote is removed
(untimed) before the next shape: on the development VM (DAMON and a virtio balloon hand free memory back to
the host), the kernel's copies into the page cache cost several times more CPU while gigabytes of an
earlier shape's files stay cached, and the 10-layer pull took twice as long after the big one as alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import statistics
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isal import igzip

from bench.servers import BenchServer
from crishim.api.runtime.v1 import api_pb2
from tests.harness import remove_root
from tests.image_fixtures import BUSYBOX, LayerBlob, Registry, free_port

MB = 1 << 20
BIG_RANDOM = 300 * MB
BIG_FILES = 20_000
SMALL_FILE_MAX = 10_800  # uniform from 1 byte: 5.4 KB on average, 108 MB for the 20,000
TEN_LAYERS = 10
TEN_LAYER_BYTES = 32 * MB
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "true", "env", "ps", "ip", "wget")
BUSYBOX_PULLS = 20
PULL_TIMEOUT = 600.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# containerd 1.6 on this machine (issue 17): PullImage wall and daemon CPU, seconds.
CONTAINERD = {"big": (3.93, 3.85), "ten": (1.96, 2.5), "busybox": (0.013, None)}
FLOOR_METHOD = ("bash: curl the manifest and the config, then `curl BLOB | gzip -d | tar -x` for every "
                "layer at once, each into its own directory (no digest checks); CPU of bash and its "
                "children (wait4)")


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    pulls: int
    layers: Callable[[random.Random], list[bytes]]  # the uncompressed tars
    # A server and store per pull instead of RemoveImage between pulls: creating files just after
    # tens of thousands were deleted makes ext4's inode allocator check each recently deleted inode
    # (`recently_deleted`, over half the CPU of a pull in `perf`), which would be measured instead.
    # The floor's trees are likewise kept until the shape ends.
    fresh_server: bool = True


def _tar(members: list[tuple[str, bytes | None]], symlinks: dict[str, str] | None = None) -> bytes:
    """A tar of files (bytes) and directories (None), root-owned, fixed times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755 if name.startswith("bin/") else 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1_700_000_000
            tar.addfile(info)
    return buf.getvalue()


def big_layer(rnd: random.Random) -> list[bytes]:
    dirs = BIG_FILES // 100
    members: list[tuple[str, bytes | None]] = [("data", None), ("data/random.bin", os.urandom(BIG_RANDOM))]
    for d in range(dirs):
        members.append((f"files/d{d:03}", None))
        members += [(f"files/d{d:03}/f{i:03}", os.urandom(rnd.randint(1, SMALL_FILE_MAX)))
                    for i in range(BIG_FILES // dirs)]
    return [_tar(members)]


def ten_layers(rnd: random.Random) -> list[bytes]:
    return [_tar([(f"layer{n}", None), *((f"layer{n}/part{i}", os.urandom(TEN_LAYER_BYTES // 4))
                                         for i in range(4))]) for n in range(TEN_LAYERS)]


def busybox_layer(rnd: random.Random) -> list[bytes]:
    links = {f"bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS}
    return [_tar([("bin", None), ("bin/busybox", Path(BUSYBOX).read_bytes()), ("etc", None),
                  ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")], links)]


SHAPES = (
    Shape("big", "1 x 408 MB layer, 20,000 files", 3, big_layer),
    Shape("ten", "10 x 32 MB layers", 3, ten_layers),
    Shape("busybox", "busybox, 1 MB layer", BUSYBOX_PULLS, busybox_layer, fresh_server=False),
)


@dataclass(frozen=True)
class Pushed:
    shape: Shape
    ref: str
    manifest_url: str
    config_url: str
    layer_urls: list[str]
    compressed_bytes: int


def push(registry: Registry, shape: Shape) -> Pushed:
    layers = []
    for tar in shape.layers(random.Random(shape.key)):
        # ISA-L level 1: a few seconds for the big layer where zlib takes over ten; random data is stored.
        layers.append(LayerBlob(data=igzip.compress(tar, compresslevel=1, mtime=0),
                                diff_id=f"sha256:{hashlib.sha256(tar).hexdigest()}"))
    image = registry.push_image(f"pull-{shape.key}", ["1"], layers)
    manifest = json.loads(image.manifest)
    base = f"{registry.url}/v2/pull-{shape.key}"
    return Pushed(shape=shape, ref=image.ref, manifest_url=f"{base}/manifests/1",
                  config_url=f"{base}/blobs/{manifest['config']['digest']}",
                  layer_urls=[f"{base}/blobs/{layer.digest}" for layer in layers],
                  compressed_bytes=sum(len(layer.data) for layer in layers))


def floor_pull(image: Pushed, work: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the floor's fetch-and-unpack of `image`, into `work` (kept: see
    `Shape.fresh_server`)."""
    accept = "application/vnd.oci.image.manifest.v1+json"
    lines = ["set -e -o pipefail", f"curl -sf -H 'Accept: {accept}' -o /dev/null '{image.manifest_url}'",
             f"curl -sf -o /dev/null '{image.config_url}'"]
    for n, url in enumerate(image.layer_urls):
        lines.append(f"mkdir -p '{work}/{n}' && (curl -sf '{url}' | gzip -d | tar -x -C '{work}/{n}') &")
    lines += ["for job in $(jobs -p); do wait $job; done"]
    started = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", "\n".join(lines)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the pull floor for {image.ref} failed ({proc.returncode})")
    return wall, usage.ru_utime + usage.ru_stime


def _cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def crishim_pull(server: BenchServer, image: Pushed, remove: bool) -> tuple[float, float]:
    """Wall and server CPU seconds of one PullImage; with `remove`, the image is removed afterwards
    (untimed)."""
    stub = server.images()
    pid = server.pid()
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    stub.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image.ref)), timeout=PULL_TIMEOUT)
    wall = time.perf_counter() - started
    used = _cpu_seconds(pid) - cpu
    if remove:
        stub.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image.ref)),
                         timeout=PULL_TIMEOUT)
    return wall, used


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def measure(root: Path, pulls: int | None, progress: Callable[[str], None],
            only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every shape: floor and crishim pulls alternating; medians, ratios and the containerd figures."""
    registry = Registry(host=f"127.0.0.1:{free_port()}", root=root / "registry")
    (root / "registry").mkdir(parents=True)
    registry.start()
    warm = BenchServer(root=root / "crishim-pulls", node=None)
    try:
        warm.start()
        shapes: dict[str, Any] = {}
        for shape in (s for s in SHAPES if not only or s.key in only):
            progress(f"pulls: building and pushing {shape.label}")
            image = push(registry, shape)
            count = pulls or shape.pulls
            progress(f"pulls: {shape.label}, floor and crishim alternating, {count} each")
            floor: list[tuple[float, float]] = []
            ours: list[tuple[float, float]] = []
            for n in range(count):
                os.sync()  # untimed: neither side pays for flushing what the other left dirty
                floor.append(floor_pull(image, root / "pull-floor" / f"{shape.key}-{n}"))
                os.sync()
                if shape.fresh_server:
                    ours.append(fresh_pull(root / f"crishim-pull-{shape.key}-{n}", image))
                else:
                    ours.append(crishim_pull(warm, image, remove=True))
            shapes[shape.key] = summarise(shape, image, floor, ours)
            for n in range(count):
                remove_root(root / "pull-floor" / f"{shape.key}-{n}")
                remove_root(root / f"crishim-pull-{shape.key}-{n}")
        return {"measured": True, "floor_method": FLOOR_METHOD, "shapes": shapes}
    finally:
        warm.stop()
        registry.stop()


def fresh_pull(root: Path, image: Pushed) -> tuple[float, float]:
    """One pull by a server of its own (started and stopped untimed), whose store nothing was deleted
    from."""
    server = BenchServer(root=root, node=None)
    try:
        server.start()
        return crishim_pull(server, image, remove=False)
    finally:
        server.stop()


def summarise(shape: Shape, image: Pushed, floor: list[tuple[float, float]],
              ours: list[tuple[float, float]]) -> dict[str, Any]:
    wall, cpu = _median([w for w, _ in ours]), _median([c for _, c in ours])
    floor_wall, floor_cpu = _median([w for w, _ in floor]), _median([c for _, c in floor])
    ref_wall, ref_cpu = CONTAINERD[shape.key]
    return {"label": shape.label, "pulls": len(ours), "compressed_mb": round(image.compressed_bytes / MB, 1),
            "layers": len(image.layer_urls),
            "floor": {"wall_s": floor_wall, "cpu_s": floor_cpu},
            "crishim": {"wall_s": wall, "cpu_s": cpu, "walls": [round(w, 4) for w, _ in ours]},
            "ratios": {"wall_vs_floor": round(wall / floor_wall, 3),
                       "cpu_vs_floor": round(cpu / floor_cpu, 3)},
            "containerd": {"wall_s": ref_wall, "cpu_s": ref_cpu}}


def render(pulls: dict[str, Any]) -> list[str]:
    if not pulls.get("measured"):
        return [f"pulls: {pulls.get('note', 'not measured')}"]
    lines = ["pulls: PullImage from a local docker-registry, fresh store each time (median; busybox p50)",
             f"pull floor: {pulls['floor_method']}",
             f"  {'shape':<32}{'floor s':>9}{'cpu':>7}{'crishim s':>11}{'cpu':>7}{'ratio':>7}{'cpu':>6}"
             f"{'containerd s':>14}{'cpu':>6}"]
    for r in pulls["shapes"].values():
        ref_cpu = r["containerd"]["cpu_s"]
        lines.append(f"  {r['label']:<32}{r['floor']['wall_s']:>9.3f}{r['floor']['cpu_s']:>7.2f}"
                     f"{r['crishim']['wall_s']:>11.3f}{r['crishim']['cpu_s']:>7.2f}"
                     f"{r['ratios']['wall_vs_floor']:>7.2f}{r['ratios']['cpu_vs_floor']:>6.2f}"
                     f"{r['containerd']['wall_s']:>14.3f}{'-' if ref_cpu is None else f'{ref_cpu:.2f}':>6}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.pulls [PULLS [SHAPE...]]`: the pull rows alone (PULLS pulls per shape, else the
    defaults; the shapes named, else all)."""
    import sys
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    root = Path(tempfile.mkdtemp(prefix="crishim-bench-pulls-"))
    try:
        results = measure(root, int(args[0]) if args else None,
                          lambda m: print(f"[pulls {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr),
                          tuple(args[1:]))
    finally:
        remove_root(root)  # servers leave their run dir's tmpfs mounted
    print("\n".join(render(results)))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
