"""`make bench` still works end to end (a handful of pods), and leaves nothing behind; no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench import main as bench_main
from bench import peer, pulls, report
from bench.servers import BenchServer
from tests.harness import REPO

pytestmark = pytest.mark.root

SECTIONS = ("config", "environment", "floor", "crishim", "ratios", "scale", "containers", "pulls",
            "targets", "cleanup")
LEVELS = ("1", "8", "32")


def test_bench_runs_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--pods", "5", "--scale", "20", "--pulls", "3",
                           "--pull-shapes", "busybox", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert all(section in results for section in SECTIONS)
    for level in LEVELS:
        assert results["floor"][level]["setup"]["n"] == 5
        crishim = results["crishim"][level]
        assert crishim["errors"] == 0, crishim["error_samples"]
        assert all(crishim[rpc]["n"] == 5 for rpc in ("run", "status", "stop", "remove"))
    assert results["scale"]["ready_after_recovery"] == 20
    containers = results["containers"]
    assert containers["measured"] and containers["crishim"]["errors"] == 0, containers["crishim"]
    assert all(containers[side][step]["n"] == 5 for side in ("floor", "crishim")
               for step in ("create", "start", "create_start", "stop_remove"))
    assert containers["ratios"]["create_start_vs_floor_p50"] is not None
    busybox = results["pulls"]["shapes"]["busybox"]
    assert list(results["pulls"]["shapes"]) == ["busybox"]
    assert busybox["pulls"] == 3 and busybox["layers"] == 1
    assert busybox["floor"]["wall_s"] > 0 and 0 < busybox["crishim"]["wall_s"] < 10
    assert busybox["ratios"]["wall_vs_floor"] > 0
    # containerd pulls beside crishim where installed (`make bench` installs it; `make test` does not)
    assert (busybox["containerd"] is not None) == Path(peer.CONTAINERD).exists()
    if busybox["containerd"] is not None:
        assert 0 < busybox["containerd"]["wall_s"] < 10 and busybox["ratios"]["wall_vs_containerd"] > 0
    assert {t["verdict"] for t in results["targets"]} <= {"PASS", "MISS"}
    assert "targets" in done.stdout
    assert results["cleanup"] == {"ok": True, "leftovers": []}
    env = results["environment"]
    assert not Path(f"/run/netns/{env['node']}").exists()
    assert not Path(env["root"]).exists()
    assert env["root"] not in Path("/proc/self/mountinfo").read_text()


# ---- `--peer containerd`: its pure parts (no containerd is installed for `make test`) ----------------


def test_peer_containerd_config_is_as_machine_notes_say(tmp_path: Path) -> None:
    config = tomllib.loads(peer.containerd_config(tmp_path, "127.0.0.1:5999"))
    assert (config["root"], config["state"]) == (f"{tmp_path}/root", f"{tmp_path}/state")
    assert config["grpc"]["address"] == f"{tmp_path}/containerd.sock"
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # root lacks CAP_SYS_RESOURCE here
    assert cri["netns_mounts_under_state_dir"] is True and cri["disable_tcp_service"] is True
    assert cri["sandbox_image"] == peer.PAUSE_REF
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False and runc["options"]["Root"] == f"{tmp_path}/runc"
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": f"{tmp_path}/net.d", "max_conf_num": 1}
    assert cri["registry"]["mirrors"][peer.MIRRORED_HOST] == {"endpoint": ["http://127.0.0.1:5999"]}
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"] == f"{tmp_path}/opt"
    crishim = tomllib.loads(peer.crishim_registry_file("127.0.0.1:5999"))
    assert crishim == {"mirrors": ["http://127.0.0.1:5999"]}


def test_peer_networks_do_not_share_leases() -> None:
    a = peer.network("a", "br-a", "10.1.0.0/16", "/x/a")
    b = peer.network("b", "br-b", "10.2.0.0/16", "/x/b")
    assert a["plugins"][1]["ipam"]["dataDir"] == "/x/a" and b["plugins"][1]["bridge"] == "br-b"
    assert a["plugins"][1]["ipam"]["ranges"] != b["plugins"][1]["ipam"]["ranges"]


def test_peer_memory_counts_daemon_monitors_and_pause_not_the_workload() -> None:
    workload = b"sleep\x003600\x00"
    table = {
        1: (0, b"init\x00"),
        100: (1, b"/usr/bin/containerd\x00--config\x00/b/containerd/config.toml\x00"),
        200: (1, b"containerd-shim-runc-v2\x00-address\x00/b/containerd/containerd.sock\x00"),
        201: (200, b"/catatonit\x00-P\x00"),  # the pod's pause
        202: (200, workload),  # the container's own process
        203: (202, b"sh\x00"),  # below the workload: not ours either
        300: (1, b"conmon\x00-b\x00/b/crishim/state/containers/x\x00"),  # the other runtime's
        400: (1, b"unrelated\x00"),
    }
    assert peer.runtime_processes(table, 100, b"/b/containerd/", workload) == [100, 200, 201]
    assert peer.runtime_processes(table, 999, b"/b/crishim/", workload) == [300]


def test_peer_compare_targets_and_render() -> None:
    ours = {op: [0.001, 0.002, 0.003] for op in (*peer.OPS, peer.CREATE_START, peer.POD_AND_CONTAINER)}
    theirs = {op: [0.002, 0.004, 0.006] for op in ours}
    theirs["RunPodSandbox"] = [0.003, 0.003, 0.003]
    rows = peer.compare({"crishim": ours, "containerd": theirs})
    assert rows["ListImages"]["ratio_p50"] == 0.5
    assert rows["RunPodSandbox"]["ratio_p50"] == 0.667
    memory = {"pods": 100, "crishim": {"daemon_mib": 50.0, "monitors_mib": 60.0, "total_mib": 110.0,
                                       "processes": 101},
              "containerd": {"daemon_mib": 100.0, "monitors_mib": 300.0, "total_mib": 400.0,
                             "processes": 201}}
    found = {t["name"].split(" p50")[0]: t for t in peer.targets(rows, memory)}
    assert found["RunPodSandbox"]["verdict"] == "MISS" and found[peer.CREATE_START]["verdict"] == "PASS"
    assert found["memory at 100 pods, crishim / containerd (PSS)"]["measured"] == 0.275
    phases = {"container created": peer.phase_summary([{"a": 1.0, "b": 4.0}, {"a": 3.0, "b": 2.0}])}
    assert phases["container created"] == {"a": 1.0, "b": 2.0}
    text = peer.render({"config": {"pods": 3, "rounds": 2}, "containerd_version": "1.6.20",
                        "operations": rows, "crishim_phases": phases, "memory": memory,
                        "targets": peer.targets(rows, memory)})
    assert "CreateContainer+StartContainer" in text and "MISS  RunPodSandbox" in text
    assert "crishim container created phases, p50 ms: a 1.0, b 2.0" in text


def test_pull_rows_compare_with_containerd_only_where_measured() -> None:
    shape = pulls.SHAPES[-1]
    pushed = pulls.Pushed(shape=shape, ref="bench.local/x:1", holder_ref="bench.local/y:1", manifest_url="m",
                          config_url="c", layer_urls=[], compressed_bytes=1 << 20,
                          blobs=frozenset())
    floor = [(0.02, 0.01), (0.03, 0.02), (0.04, 0.03)]
    both = pulls.summarise(shape, pushed, floor, {"crishim": [(0.01, 0.0), (0.012, 0.01), (0.5, 0.02)],
                                                  "containerd": [(0.02, 0.02), (0.024, 0.02), (0.03, 0.02)]})
    assert both["crishim"]["wall_s"] == 0.012 and both["crishim"]["cpu_s"] == 0.01  # median, mean
    assert both["ratios"]["wall_vs_containerd"] == 0.5 and both["ratios"]["cpu_vs_containerd"] == 0.5
    verdicts = {t.name: t.verdict for t in report.pull_targets({"shapes": {shape.key: both}})}
    assert verdicts == {f"pull s, {shape.label} (containerd)": "PASS",
                        f"pull CPU s, {shape.label} (containerd)": "PASS"}
    alone = pulls.summarise(shape, pushed, floor, {"crishim": [(0.05, 0.03)] * 3})
    assert alone["containerd"] is None and "wall_vs_containerd" not in alone["ratios"]
    assert report.pull_targets({"shapes": {shape.key: alone}}) == []
    row = pulls.render({"measured": True, "floor_method": "x", "shapes": {shape.key: alone}})[3]
    assert row.split()[-4:] == ["-", "-", "-", "-"]


def test_peer_mode_arguments() -> None:
    args = bench_main.parse_args(["--peer", "containerd", "--pods", "10", "--memory-pods", "0"])
    assert (args.peer, args.pods, args.memory_pods) == ("containerd", 10, 0)
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--peer", "dockerd"])


def test_bench_server_runs_at_info_as_a_node_does(tmp_path: Path) -> None:
    """Not the harness's debug, which logs two lines per RPC and would slow every read call."""
    server = BenchServer(root=tmp_path, node=None)
    server.write_config()
    assert 'log_level = "info"' in server.config_path.read_text().splitlines()
