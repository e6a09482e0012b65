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

from bench import report, rpc
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
CONTAINERS_NOT_WIRED = "not measured (container support not wired yet)"
CONTAINERS_NOT_BENCHED = ("not measured (CreateContainer is wired, but this benchmark has no container "
                          "rows yet)")


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
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON results path")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--concurrency: {args.concurrency!r} is not a comma-separated list of integers")
    if args.pods < 1 or args.scale < 0 or not args.levels or min(args.levels) < 1 or args.rounds < 1:
        parser.error("--pods, --rounds and every --concurrency level must be at least 1, --scale at least 0")
    return args


def preflight() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (network namespaces, bind mounts)")
    problems += [f"{tool} is missing (run `make install`)" for tool in ("ip", "nsenter", "iptables")
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
    done = subprocess.run([*node.prefix(), sys.executable, "-m", "bench.floor", params.to_json()],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the floor run failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)[str(level)]
    return result


def start_server(stack: contextlib.ExitStack, node: TestNode, root: Path, name: str,
                 network: dict[str, Any]) -> BenchServer:
    server = BenchServer(root=root / name, node=node)
    stack.callback(server.stop)
    server.start()
    server.use_network(network)
    return server


def measure_levels(node: TestNode, root: Path, conflist: Path, server: BenchServer, pods: int,
                   levels: list[int], rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Floor and crishim in alternating rounds per level, so drifting background load hits both alike."""
    asyncio.run(rpc.lifecycle(str(server.socket), WARMUP_PODS, 1, "warmup"))
    floor: dict[str, Any] = {}
    crishim: dict[str, Any] = {}
    per_round = [pods // rounds + (1 if r < pods % rounds else 0) for r in range(rounds)]
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


def leftovers(node: TestNode, root: Path, pids: list[int]) -> list[str]:
    found = []
    if Path(node.path).exists():
        found.append(f"test node {node.path}")
    if root.exists():
        found.append(f"temp dir {root}")
    found += [f"mount {target}" for target in mounts_below(root)]
    found += [f"process {pid}" for pid in pids if Path(f"/proc/{pid}").exists()]
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    net = bench_network()
    results: dict[str, Any] = {"config": {
        "pods": args.pods, "concurrency": args.levels, "rounds": args.rounds, "scale": args.scale,
        "cpus": os.cpu_count(),
        "kernel": platform.release(), "network": describe(net),
        "floor_method": "crishim's pin_namespaces (thread + unshare + bind mount) then the cni library's "
                        "ADD, in one asyncio process in the test node; teardown DEL then release",
    }}
    root = Path(tempfile.mkdtemp(prefix="crishim-bench-"))
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
            server = start_server(stack, node, root, "crishim", net)
            pids.append(server.pid())
            wired = asyncio.run(rpc.containers_wired(str(server.socket)))
            results["containers"] = {"measured": False,
                                     "note": CONTAINERS_NOT_BENCHED if wired else CONTAINERS_NOT_WIRED}
            results["floor"], results["crishim"] = measure_levels(
                node, root, conflist, server, args.pods, args.levels, args.rounds)
            results["ratios"] = report.ratios(results["floor"], results["crishim"])
            server.stop()
            if args.scale:
                results["scale"] = measure_scale(stack, node, root, args.scale)
            progress("cleaning up")
    finally:
        if node is not None:
            left = leftovers(node, root, pids)
            results["cleanup"] = {"ok": not left, "leftovers": left}
    results["targets"] = [t.to_json() for t in report.targets(results)]
    return results


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight()
    signal.signal(signal.SIGTERM, _terminate)
    results = run(args)
    print(report.render(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    progress(f"results written to {args.out}")
    return 0 if results["cleanup"]["ok"] else 1
