"""Orchestration: a test node, the floor, crishim at each concurrency, the scale run, the report.

Everything lives in one temp dir and one test node, both removed on the way out (also on Ctrl-C, SIGTERM or
an error), and the report says whether anything was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import containers, peer, pulls, report, rpc
from bench.ctrfloor import CtrFloorParams
from bench.floor import FloorParams
from bench.measure import combine
from bench.servers import BenchServer
from tests.harness import (
    BRIDGE_CONFLIST,
    REPO,
    TestNode,
    make_test_node,
    mounts_below,
    remove_root,
    unmount_tree,
)

DEFAULT_CONCURRENCY = (1, 8, 32)
WARMUP_PODS = 3
SCALE_CONCURRENCY = 32
SCALE_LISTS = 30
SCALE_STATUSES = 300
MAX_DEFAULT_CONTAINERS = 50
CONTAINER_WARMUP = 2
CONTAINER_TOOLS = ("conmon", "runc", "umoci", "skopeo")
CONTAINER_FLOOR_METHOD = (
    "crishim's own create path minus gRPC and records: bundle dir, overlay rootfs (crishim's Rootfs, lower "
    "dir = umoci's unpacked copy of the image's one layer), spec_from_config + build_spec, config.json, "
    "conmon.create (conmon runs runc create), then handler.start; teardown handler.kill SIGKILL, wait for "
    "conmon's exit, handler.delete, unmount, rm; one pinned pod (net/ipc/uts + pod files) per container, "
    "untimed")


def bench_network() -> dict[str, Any]:
    """The real chain (loopback + bridge + host-local + portmap), on its own bridge and subnet."""
    net: dict[str, Any] = copy.deepcopy(BRIDGE_CONFLIST)
    net["name"] = "bench"
    net["plugins"][1]["bridge"] = "cni-bench0"
    return net


def scale_network() -> dict[str, Any]:
    """Cheap but real: every pod still gets a veth and an address; no masquerade and no portmap, because
    their per-pod iptables rules would make 1,000 pods take many minutes to create, and neither is read
    by List, Status or recovery."""
    net: dict[str, Any] = copy.deepcopy(BRIDGE_CONFLIST)
    net["name"] = "bench-scale"
    bridge = net["plugins"][1]
    bridge.update(bridge="cni-scale0", ipMasq=False)
    bridge["ipam"]["ranges"] = [[{"subnet": "10.200.0.0/16"}]]
    net["plugins"] = net["plugins"][:2]
    return net


def describe(net: dict[str, Any]) -> str:
    plugins = " + ".join(p["type"] if "ipam" not in p else f"{p['type']}/{p['ipam']['type']}"
                         for p in net["plugins"])
    bridge = net["plugins"][1]
    return f"{plugins}, {bridge['ipam']['ranges'][0][0]['subnet']}, ipMasq={bridge['ipMasq']}"


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--pods", type=int, default=200, help="pods per concurrency level (default 200)")
    parser.add_argument("--scale", type=int, default=1000,
                        help="READY sandboxes for the scale section (default 1000; 0 skips it)")
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)),
                        help="comma-separated levels (default 1,8,32)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating floor/crishim rounds per level (default 4)")
    parser.add_argument("--containers", type=int, default=None,
                        help=f"containers for the container rows (default min(--pods, "
                             f"{MAX_DEFAULT_CONTAINERS}); 0 skips them)")
    parser.add_argument("--pulls", type=int, default=None,
                        help="pulls per image shape for the pull rows (default 3 for the large shapes, 20 "
                             "for busybox; 0 skips them)")
    parser.add_argument("--pull-shapes", default=",".join(s.key for s in pulls.SHAPES),
                        help="comma-separated image shapes for the pull rows (default all: "
                             f"{', '.join(s.key for s in pulls.SHAPES)})")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON results path")
    parser.add_argument("--peer", choices=["containerd"], default=None,
                        help="instead: crishim side by side with Debian's containerd (bench/peer.py); "
                             "--pods fresh pods each (default 200), --rounds, --memory-pods")
    parser.add_argument("--memory-pods", type=int, default=100,
                        help="with --peer: pods (one container each) for the memory figures (default 100)")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--concurrency: {args.concurrency!r} is not a comma-separated list of integers")
    args.shapes = tuple(x.strip() for x in args.pull_shapes.split(",") if x.strip())
    unknown = set(args.shapes) - {s.key for s in pulls.SHAPES}
    if unknown:
        parser.error(f"--pull-shapes: unknown shape(s) {', '.join(sorted(unknown))}")
    if args.containers is None:
        args.containers = min(args.pods, MAX_DEFAULT_CONTAINERS)
    if args.pods < 1 or args.scale < 0 or not args.levels or min(args.levels) < 1 or args.rounds < 1 \
            or args.containers < 0 or args.memory_pods < 0 or (args.pulls is not None and args.pulls < 0):
        parser.error("--pods, --rounds and every --concurrency level must be at least 1, --scale, "
                     "--containers, --memory-pods and --pulls at least 0")
    return args


def preflight(containers: int, peer_name: str | None = None) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (network namespaces, bind mounts)")
    tools = ("ip", "nsenter", "iptables", *(CONTAINER_TOOLS if containers or peer_name else ()),
             *(peer.PEER_TOOLS if peer_name else ()))
    problems += [f"{tool} is missing (run `make install`)" for tool in tools
                 if shutil.which(tool) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        problems.append("/usr/lib/cni has no CNI plugins (run `make install`)")
    if not (Path.cwd() / "tests" / "harness.py").exists() and Path.cwd() != REPO:
        problems.append(f"run from the repository root ({REPO})")
    if problems:
        raise SystemExit("bench: cannot run: " + "; ".join(problems))


def run_floor(node: TestNode, root: Path, conflist: Path, pods: int, level: int, warmup: int
              ) -> dict[str, Any]:
    """One floor round at one concurrency level, as its own process in the node; raw samples."""
    params = FloorParams(conflist=str(conflist), netns_dir=str(root / "floor-netns"),
                         cache_dir=str(root / "floor-cni-cache"), pods=pods, concurrency=[level],
                         warmup=warmup)
    result: dict[str, Any] = run_in_node(node, "bench.floor", params.to_json())[str(level)]
    return result


def run_in_node(node: TestNode, module: str, params: str) -> Any:
    """`python -m MODULE PARAMS` in the test node, as the server runs; its stdout, parsed."""
    done = subprocess.run([*node.prefix(), sys.executable, "-m", module, params],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def start_server(stack: contextlib.ExitStack, node: TestNode, root: Path, name: str,
                 network: dict[str, Any], image: Path | None = None) -> BenchServer:
    """The server, with `image` (an OCI archive) imported into its store first, if given."""
    server = BenchServer(root=root / name, node=node)
    stack.callback(server.stop)
    if image is not None:
        server.root.mkdir(parents=True)
        server.write_config()
        containers.import_image(server.config_path, image)
    server.start()
    server.use_network(network)
    return server


def split(total: int, rounds: int) -> list[int]:
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def run_container_floor(node: TestNode, root: Path, image: containers.BenchImage, cgroup_top: str,
                        count: int, tag: str, warmup: int) -> dict[str, Any]:
    """One container floor round, as its own process in the node; raw samples."""
    params = CtrFloorParams(root=str(root / "ctr-floor"), lower=str(image.lower),
                            image_config=image.config, cgroup_top=cgroup_top, tag=tag, count=count,
                            warmup=warmup)
    result: dict[str, Any] = run_in_node(node, "bench.ctrfloor", params.to_json())
    return result


def measure_containers(node: TestNode, root: Path, server: BenchServer, image: containers.BenchImage,
                       count: int, rounds: int, cgroup_top: str) -> dict[str, Any]:
    """Container create+start and stop+remove, floor and crishim in alternating rounds, concurrency 1."""
    progress(f"{count} containers, floor and crishim in {rounds} alternating rounds")
    socket = str(server.socket)
    floor_rounds, crishim_rounds = [], []
    for number, n in enumerate(split(count, rounds)):
        if n:
            warmup = CONTAINER_WARMUP if number == 0 else 0
            floor_rounds.append(run_container_floor(node, root, image, cgroup_top, n,
                                                    f"floor-ctr-r{number}", warmup))
            if warmup:
                asyncio.run(containers.crishim_round(socket, warmup, "ctr-warmup", cgroup_top))
            crishim_rounds.append(asyncio.run(containers.crishim_round(socket, n, f"ctr-r{number}",
                                                                       cgroup_top)))
    floor, ours = combine(floor_rounds), combine(crishim_rounds)
    return {"measured": True, "count": count, "concurrency": containers.CONTAINER_CONCURRENCY,
            "command": list(containers.COMMAND), "image": containers.IMAGE_REF,
            "floor_method": CONTAINER_FLOOR_METHOD, "floor": floor, "crishim": ours,
            "ratios": report.container_ratios(floor, ours)}


def measure_levels(node: TestNode, root: Path, conflist: Path, server: BenchServer, pods: int,
                   levels: list[int], rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Floor and crishim in alternating rounds per level, so drifting background load hits both alike."""
    asyncio.run(rpc.lifecycle(str(server.socket), WARMUP_PODS, 1, "warmup"))
    floor: dict[str, Any] = {}
    crishim: dict[str, Any] = {}
    per_round = split(pods, rounds)
    for level in levels:
        progress(f"{pods} pods at concurrency {level}, floor and crishim in {rounds} alternating rounds")
        floor_rounds, crishim_rounds = [], []
        for number, count in enumerate(per_round):
            if count:
                warmup = WARMUP_PODS if level == levels[0] and number == 0 else 0
                floor_rounds.append(run_floor(node, root, conflist, count, level, warmup))
                crishim_rounds.append(asyncio.run(rpc.lifecycle(str(server.socket), count, level,
                                                                f"c{level}-r{number}")))
        floor[str(level)] = combine(floor_rounds)
        crishim[str(level)] = combine(crishim_rounds)
    return floor, crishim


def measure_scale(stack: contextlib.ExitStack, node: TestNode, root: Path, count: int) -> dict[str, Any]:
    """RSS, List and Status at 0, count/10 and count READY sandboxes, then a kill -9 and restart."""
    net = scale_network()
    server = start_server(stack, node, root, "scale", net)
    socket = str(server.socket)
    ids: list[str] = []
    levels: dict[str, Any] = {}
    for target in sorted({0, count // 10, count}):
        progress(f"scale: growing to {target} sandboxes")
        ids += asyncio.run(rpc.populate(socket, target - len(ids), SCALE_CONCURRENCY, f"scale{target}"))
        reads = asyncio.run(rpc.read_paths(socket, ids, SCALE_LISTS, SCALE_STATUSES))
        levels[str(target)] = {"rss_mb": server.rss_mb(), **reads}
    progress(f"scale: kill -9 and restart with {count} records")
    recovery = server.restart_after_kill9()
    return {"network": describe(net), "sandboxes": count, "levels": levels,
            "recovery_s": round(recovery, 3), "rss_after_recovery_mb": server.rss_mb(),
            "ready_after_recovery": asyncio.run(rpc.count_ready(socket))}


def leftovers(node: TestNode, root: Path, pids: list[int], cgroup_top: str) -> list[str]:
    found = []
    if Path(node.path).exists():
        found.append(f"test node {node.path}")
    if root.exists():
        found.append(f"temp dir {root}")
    found += [f"mount {target}" for target in mounts_below(root)]
    found += [f"process {pid}" for pid in pids if Path(f"/proc/{pid}").exists()]
    found += [f"process {pid} (started with a path under {root})"
              for pid in containers.processes_below(root)]
    found += [f"cgroup {path}" for path in containers.cgroups_left(cgroup_top)]
    return found


def kill_below(root: Path) -> None:
    """Blocking, best effort, for the way out: what still runs with a path under `root` (a daemon or
    monitor the bench's own shutdown did not end)."""
    for pid in containers.processes_below(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_peer(args: argparse.Namespace) -> dict[str, Any]:
    """bench.peer in a test node of its own, then the same leftover checks as the main run."""
    root = Path(tempfile.mkdtemp(prefix="crishim-bench-"))
    cgroup_top = f"/{root.name}"
    results: dict[str, Any] = {}
    node: TestNode | None = None
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(remove_root, root)
            node = stack.enter_context(make_test_node())
            stack.callback(unmount_tree, root)
            stack.callback(containers.sweep, [root / "crishim" / "run" / "containers" / "runc",
                                              root / "containerd" / "runc" / "k8s.io"], root, cgroup_top)
            # Runs first: daemons and monitors a failed bench.peer left, so the sweep need not wait.
            stack.callback(kill_below, root)
            params = peer.PeerParams(root=str(root), cgroup_top=cgroup_top, pods=args.pods,
                                     rounds=args.rounds, memory_pods=args.memory_pods)
            done = subprocess.run([*node.prefix(), sys.executable, "-m", "bench.peer", params.to_json()],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"bench.peer failed ({done.returncode}); its log is above")
            results = json.loads(done.stdout)
            results["environment"] = {"node": node.name, "root": str(root)}
            progress("cleaning up")
    finally:
        if node is not None:
            left = leftovers(node, root, [], cgroup_top)
            results["cleanup"] = {"ok": not left, "leftovers": left}
            progress(f"cleanup: {left or 'ok'}")  # also when bench.peer failed
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    net = bench_network()
    results: dict[str, Any] = {"config": {
        "pods": args.pods, "concurrency": args.levels, "rounds": args.rounds, "scale": args.scale,
        "cpus": os.cpu_count(),
        "kernel": platform.release(), "network": describe(net), "containers": args.containers,
        "floor_method": "crishim's pin_namespaces (thread + unshare + bind mount) then the cni library's "
                        "ADD, in one asyncio process in the test node; teardown DEL then release",
    }}
    root = Path(tempfile.mkdtemp(prefix="crishim-bench-"))
    cgroup_top = f"/{root.name}"
    pids: list[int] = []
    node: TestNode | None = None
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(remove_root, root)
            node = stack.enter_context(make_test_node())
            stack.callback(unmount_tree, root)
            results["environment"] = {"node": node.name, "root": str(root)}
            conflist = root / "floor.conflist"
            floor_net = copy.deepcopy(net)
            floor_net["plugins"][1]["ipam"]["dataDir"] = str(root / "floor-ipam")
            conflist.write_text(json.dumps(floor_net))
            image = None
            if args.containers:
                progress("building the busybox image for the container rows")
                image = containers.build_image(root / "image")
            # Registered before the server, so it runs after the server stopped: crishim's runc root
            # (run_dir/containers/runc) and the container floor's.
            stack.callback(containers.sweep, [root / "crishim" / "run" / "containers" / "runc",
                                              root / "ctr-floor" / "runc"], root, cgroup_top)
            server = start_server(stack, node, root, "crishim", net,
                                  image.archive if image is not None else None)
            pids.append(server.pid())
            results["floor"], results["crishim"] = measure_levels(
                node, root, conflist, server, args.pods, args.levels, args.rounds)
            results["ratios"] = report.ratios(results["floor"], results["crishim"])
            results["containers"] = {"measured": False, "note": "skipped (--containers 0)"}
            if image is not None:
                results["containers"] = measure_containers(node, root, server, image, args.containers,
                                                           args.rounds, cgroup_top)
            server.stop()
            results["pulls"] = {"measured": False, "note": "skipped (--pulls 0)"}
            if args.pulls != 0 and args.shapes:
                results["pulls"] = pulls.measure(root / "pulls", args.pulls, progress, args.shapes)
            if args.scale:
                results["scale"] = measure_scale(stack, node, root, args.scale)
            progress("cleaning up")
    finally:
        if node is not None:
            left = leftovers(node, root, pids, cgroup_top)
            results["cleanup"] = {"ok": not left, "leftovers": left}
    results["targets"] = [t.to_json() for t in report.targets(results)]
    return results


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args.containers, args.peer)
    signal.signal(signal.SIGTERM, _terminate)
    if args.peer:
        results = run_peer(args)
        cleanup = results["cleanup"]
        print(peer.render(results) + f"\ncleanup: {'ok' if cleanup['ok'] else cleanup['leftovers']}")
    else:
        results = run(args)
        print(report.render(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    progress(f"results written to {args.out}")
    return 0 if results["cleanup"]["ok"] else 1
