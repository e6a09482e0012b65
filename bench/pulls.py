"""Pull rows: PullImage of four image shapes from a local registry, by crishim and by containerd side by
side, against the floor of the same blobs.

Shapes (issue 17 item 7): one 408 MB layer (300 MB of random bytes and 20,000 small random files), ten
layers of 32 MB, a 1 MB busybox image, and the same busybox layer under a new config while another image
holds the layer (what a node pulls when a new tag shares its layers: the manifest and the config only).
They are pushed to a docker-registry on 127.0.0.1, and a crishim server and a containerd (when installed:
`make bench` installs it) on the host's network, each with its store on the bench's disk, pull them
through their sockets by a mirrored name (`bench.local`, the same registry). Wall time is the PullImage
call's, CPU the daemon process's (all threads; containerd unpacks in its own process) over the call,
from /proc.

The floor is what fetching and unpacking the same blobs takes without verification or bookkeeping: a shell
that GETs the manifest and the config with curl, then runs `curl BLOB | gzip -d | tar -x` for every layer
at once, each into its own directory; its CPU is the shell's and its children's (wait4). The floor,
crishim and containerd take turns (the two daemons swapping who goes first), so background load hits all
alike, each pull after an untimed `settle`. The large shapes take the median of a few pulls, each by a
fresh daemon (see `Shape.large`), busybox the p50 of 20 by one daemon, RemoveImage (untimed) between
them, as critest's benchmark does. What a shape's pulls wrote is removed (untimed) before the next shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import statistics
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from isal import igzip

from bench.peer import CONTAINERD, MIRRORED_HOST, Containerd, crishim_registry_file
from bench.servers import BenchServer
from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
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
RUNTIMES = ("crishim", "containerd")
FLOOR_METHOD = ("bash: curl the manifest and the config, then `curl BLOB | gzip -d | tar -x` for every "
                "layer not yet stored, all at once, each into its own directory (no digest checks); CPU of "
                "bash and its children (wait4)")


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    pulls: int
    layers: Callable[[random.Random], list[bytes]]  # the uncompressed tars
    # Hundreds of MB: a daemon and store per pull instead of RemoveImage between pulls, since creating
    # files just after tens of thousands were deleted makes ext4's inode allocator check each recently
    # deleted inode (`recently_deleted`, over half the CPU of a pull in `perf`), which would be measured
    # instead; the floor's trees are likewise kept until the shape ends. And the page cache is
    # dropped before each pull (`settle`).
    large: bool = True
    # Another image holding the same layers is pulled first (untimed) and kept: only the manifest and
    # the config are new.
    layers_stored: bool = False


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
    Shape("busybox", "busybox, 1 MB layer", BUSYBOX_PULLS, busybox_layer, large=False),
    Shape("busybox-stored", "busybox, layer already stored", BUSYBOX_PULLS, busybox_layer,
          large=False, layers_stored=True),
)


@dataclass(frozen=True)
class Pushed:
    shape: Shape
    ref: str  # by the mirrored name, as both daemons pull it
    holder_ref: str | None  # the image that keeps the layers stored (`Shape.layers_stored`)
    manifest_url: str
    config_url: str
    layer_urls: list[str]  # those the floor fetches: none when the layers are stored
    compressed_bytes: int
    blobs: frozenset[str]  # hex digests of the config and the layers


def push(registry: Registry, shape: Shape) -> Pushed:
    layers = []
    for tar in shape.layers(random.Random(shape.key)):
        # ISA-L level 1: a few seconds for the big layer where zlib takes over ten; random data is stored.
        layers.append(LayerBlob(data=igzip.compress(tar, compresslevel=1, mtime=0),
                                diff_id=f"sha256:{hashlib.sha256(tar).hexdigest()}"))
    repo = f"pull-{shape.key}"
    image = registry.push_image(repo, ["1"], layers)
    holder = None
    if shape.layers_stored:
        registry.push_image(f"{repo}-holder", ["1"], layers, config={"Cmd": ["true"]})
        holder = f"{MIRRORED_HOST}/{repo}-holder:1"
    manifest = json.loads(image.manifest)
    base = f"{registry.url}/v2/{repo}"
    return Pushed(shape=shape, ref=f"{MIRRORED_HOST}/{repo}:1", holder_ref=holder,
                  manifest_url=f"{base}/manifests/1",
                  config_url=f"{base}/blobs/{manifest['config']['digest']}",
                  layer_urls=[] if shape.layers_stored
                  else [f"{base}/blobs/{layer.digest}" for layer in layers],
                  compressed_bytes=sum(len(layer.data) for layer in layers),
                  blobs=frozenset(d.split(":", 1)[1] for d in (manifest["config"]["digest"],
                                                             *(layer.digest for layer in layers))))


def settle(registry: Registry, image: Pushed) -> None:
    """Untimed, before every pull: dirty pages flushed (crishim syncs what it unpacks, and would
    otherwise flush another side's files too); for a large shape, the page cache holding the registry's
    blobs and nothing else.

    On the development VM (DAMON and a virtio balloon hand free memory back to the host), writing new
    files while gigabytes of earlier ones stay cached cost every side several times the CPU: the third
    pull of a shape measured the cache the first two left (the 10-layer pull 1.4 s, then 2.8 s and
    3.0 s), not itself. So earlier pulls' files are dropped from the cache; the registry's small files
    and the image's blobs are read back in, as a registry serving a popular image has them cached, and
    the floor's programs are loaded once, as the running daemons' are. Busybox pulls write 2 MB each:
    they are not worth dropping the machine's cache for.
    """
    os.sync()
    if not image.shape.large:
        return
    with contextlib.suppress(OSError):  # not root, or no /proc/sys: flushed only
        Path("/proc/sys/vm/drop_caches").write_text("3")
    blobs = registry.root / "data/docker/registry/v2/blobs/sha256"
    assert blobs.is_dir(), f"no blobs at {blobs}: the registry's layout changed"
    for path in registry.root.rglob("*"):
        if path.is_file() and (path.stat().st_size < MB or path.parent.name in image.blobs):
            with path.open("rb") as f:
                while f.read(MB):
                    pass
    subprocess.run(["bash", "-c", "curl --version && gzip --version && tar --version"],
                   stdout=subprocess.DEVNULL, check=True)


def floor_pull(image: Pushed, work: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the floor's fetch-and-unpack of `image`, into `work` (kept: see
    `Shape.large`)."""
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


class Daemon(Protocol):
    """crishim's BenchServer or containerd: what a pull needs of either."""

    def start(self) -> object: ...
    def stop(self) -> object: ...
    def pid(self) -> int: ...
    def images(self) -> api_pb2_grpc.ImageServiceStub: ...


@dataclass(frozen=True)
class Daemons:
    """Makes each runtime's daemon, rooted where told, pulling from `registry` by the mirrored name."""

    registry: Registry
    registry_config_dir: Path
    containerd: bool  # installed, so measured

    def names(self, turn: int) -> tuple[str, ...]:
        """The runtimes measured, the first going first on even turns."""
        names = RUNTIMES if self.containerd else RUNTIMES[:1]
        return names if turn % 2 == 0 else names[::-1]

    def make(self, name: str, root: Path) -> Daemon:
        if name == "containerd":
            return Containerd(root=root, registry=self.registry.host)
        return BenchServer(root=root, node=None,
                           extra_config={"images.registry_config_dir": str(self.registry_config_dir)})

    @contextlib.contextmanager
    def running(self, name: str, root: Path) -> Iterator[Daemon]:
        daemon = self.make(name, root)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _image(ref: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=ref)


def timed_pull(daemon: Daemon, image: Pushed, remove: bool) -> tuple[float, float]:
    """Wall and daemon CPU seconds of one PullImage; with `remove`, the image is removed afterwards
    (untimed)."""
    stub = daemon.images()
    pid = daemon.pid()
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    stub.PullImage(api_pb2.PullImageRequest(image=_image(image.ref)), timeout=PULL_TIMEOUT)
    wall = time.perf_counter() - started
    used = _cpu_seconds(pid) - cpu
    if remove:
        stub.RemoveImage(api_pb2.RemoveImageRequest(image=_image(image.ref)), timeout=PULL_TIMEOUT)
    return wall, used


def hold_layers(daemon: Daemon, image: Pushed) -> None:
    """Untimed: the image that keeps `image`'s layers stored, pulled before its pulls."""
    if image.holder_ref is not None:
        daemon.images().PullImage(api_pb2.PullImageRequest(image=_image(image.holder_ref)),
                                  timeout=PULL_TIMEOUT)


def fresh_pull(daemons: Daemons, name: str, root: Path, image: Pushed) -> tuple[float, float]:
    """One pull by a daemon of its own (started and stopped untimed), whose store nothing was deleted
    from."""
    with daemons.running(name, root) as daemon:
        hold_layers(daemon, image)
        return timed_pull(daemon, image, remove=False)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _mean(values: list[float]) -> float:
    """For CPU: the kernel charges it by the 10 ms tick, so one busybox pull reads 0, 10 or 20 ms; the
    mean of many is right where a median would be a multiple of the tick."""
    return round(statistics.fmean(values), 4)


def measure(root: Path, pulls: int | None, progress: Callable[[str], None],
            only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every shape: floor, crishim and containerd pulls taking turns; medians, ratios."""
    registry = Registry(host=f"127.0.0.1:{free_port()}", root=root / "registry")
    (root / "registry").mkdir(parents=True)
    registry_config_dir = root / "crishim-registries"
    registry_config_dir.mkdir()
    (registry_config_dir / f"{MIRRORED_HOST}.toml").write_text(crishim_registry_file(registry.host))
    daemons = Daemons(registry=registry, registry_config_dir=registry_config_dir,
                      containerd=Path(CONTAINERD).exists())
    if not daemons.containerd:
        progress(f"pulls: no {CONTAINERD} (`make bench` installs it): crishim and the floor only")
    registry.start()
    try:
        with contextlib.ExitStack() as stack:
            warm = {name: stack.enter_context(daemons.running(name, root / f"{name}-warm"))
                    for name in daemons.names(0)}
            shapes: dict[str, Any] = {}
            for shape in (s for s in SHAPES if not only or s.key in only):
                progress(f"pulls: building and pushing {shape.label}")
                image = push(registry, shape)
                count = pulls or shape.pulls
                progress(f"pulls: {shape.label}, the floor and {' and '.join(warm)} taking turns, "
                         f"{count} each")
                if not shape.large:
                    for daemon in warm.values():
                        hold_layers(daemon, image)
                floor: list[tuple[float, float]] = []
                runs: dict[str, list[tuple[float, float]]] = {name: [] for name in warm}
                for n in range(count):
                    settle(registry, image)
                    floor.append(floor_pull(image, root / "pull-floor" / f"{shape.key}-{n}"))
                    for name in daemons.names(n):
                        settle(registry, image)
                        if shape.large:
                            runs[name].append(fresh_pull(daemons, name, root / f"{name}-{shape.key}-{n}",
                                                         image))
                        else:
                            runs[name].append(timed_pull(warm[name], image, remove=True))
                if image.holder_ref is not None:
                    for daemon in warm.values():
                        daemon.images().RemoveImage(
                            api_pb2.RemoveImageRequest(image=_image(image.holder_ref)), timeout=PULL_TIMEOUT)
                shapes[shape.key] = summarise(shape, image, floor, runs)
                for n in range(count):
                    remove_root(root / "pull-floor" / f"{shape.key}-{n}")
                    for name in warm:
                        remove_root(root / f"{name}-{shape.key}-{n}")
            return {"measured": True, "floor_method": FLOOR_METHOD, "shapes": shapes}
    finally:
        registry.stop()


def summarise(shape: Shape, image: Pushed, floor: list[tuple[float, float]],
              runs: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    floor_wall, floor_cpu = _median([w for w, _ in floor]), _mean([c for _, c in floor])
    result: dict[str, Any] = {
        "label": shape.label, "pulls": len(floor), "compressed_mb": round(image.compressed_bytes / MB, 1),
        "layers": len(image.layer_urls), "layers_stored": shape.layers_stored,
        "floor": {"wall_s": floor_wall, "cpu_s": floor_cpu}, "containerd": None}
    for name, samples in runs.items():
        result[name] = {"wall_s": _median([w for w, _ in samples]), "cpu_s": _mean([c for _, c in samples]),
                        "walls": [round(w, 4) for w, _ in samples]}
    ours, ref = result["crishim"], result["containerd"]
    result["ratios"] = {"wall_vs_floor": round(ours["wall_s"] / floor_wall, 3),
                        "cpu_vs_floor": round(ours["cpu_s"] / floor_cpu, 3)}
    if ref is not None:
        result["ratios"] |= {"wall_vs_containerd": round(ours["wall_s"] / ref["wall_s"], 3),
                             "cpu_vs_containerd": round(ours["cpu_s"] / ref["cpu_s"], 3)
                             if ref["cpu_s"] else None}
    return result


def render(pulls: dict[str, Any]) -> list[str]:
    if not pulls.get("measured"):
        return [f"pulls: {pulls.get('note', 'not measured')}"]
    lines = ["pulls: PullImage from a local docker-registry, side by side: wall seconds (median; busybox "
             "rows p50) and CPU seconds (mean)",
             f"pull floor: {pulls['floor_method']}",
             f"  {'shape':<32}{'floor s':>9}{'cpu':>7}{'crishim s':>11}{'cpu':>7}"
             f"{'containerd s':>14}{'cpu':>7}{'ratio':>7}{'cpu':>7}"]
    for r in pulls["shapes"].values():
        ref = r["containerd"] or {}
        ratios = r["ratios"]
        lines.append(f"  {r['label']:<32}{r['floor']['wall_s']:>9.3f}{r['floor']['cpu_s']:>7.3f}"
                     f"{r['crishim']['wall_s']:>11.3f}{r['crishim']['cpu_s']:>7.3f}"
                     f"{_cell(ref.get('wall_s'), 3):>14}{_cell(ref.get('cpu_s'), 3):>7}"
                     f"{_cell(ratios.get('wall_vs_containerd'), 2):>7}"
                     f"{_cell(ratios.get('cpu_vs_containerd'), 2):>7}")
    lines.append("  (ratio: crishim / containerd; '-': containerd not installed)")
    return lines


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
