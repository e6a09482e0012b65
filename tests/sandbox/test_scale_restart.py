"""Many pods at once, and a server killed with pods running."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode, mounts_below, run
from tests.sandbox.podutil import info, node_leftovers, pod_config, run_pod, status, stop_and_remove

pytestmark = pytest.mark.root

PODS = 50


def test_50_concurrent_pods(node: TestNode, server: CrishimServer) -> None:
    before = node_leftovers(node, server)
    rt = server.runtime()
    futures = [rt.RunPodSandbox.future(api_pb2.RunPodSandboxRequest(config=pod_config(f"pod-{i}")))
               for i in range(PODS)]
    ids = [f.result(timeout=120).pod_sandbox_id for f in futures]
    assert len(set(ids)) == PODS
    ips = {status(server, sandbox_id).status.network.ip for sandbox_id in ids}
    assert len(ips) == PODS and "" not in ips
    with ThreadPoolExecutor(PODS) as pool:
        list(pool.map(lambda sandbox_id: stop_and_remove(server, sandbox_id), ids))
    assert node_leftovers(node, server) == before


def test_restart_keeps_pods(node: TestNode, server: CrishimServer) -> None:
    before = node_leftovers(node, server)
    ids = [run_pod(server, pod_config(f"keep-{i}")) for i in range(5)]
    ips = {sandbox_id: status(server, sandbox_id).status.network.ip for sandbox_id in ids}
    netns = {sandbox_id: info(server, sandbox_id)["netnsPath"] for sandbox_id in ids}
    server.kill9()
    server.start()
    listed = server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert {item.id for item in listed} == set(ids)
    assert all(item.state == api_pb2.SANDBOX_READY for item in listed)
    for sandbox_id in ids:
        assert status(server, sandbox_id).status.network.ip == ips[sandbox_id]
        assert info(server, sandbox_id)["netnsPath"] == netns[sandbox_id]
    for sandbox_id in ids:
        stop_and_remove(server, sandbox_id)
    assert node_leftovers(node, server) == before


def test_orphaned_netns_swept_on_start(server: CrishimServer) -> None:
    orphan = server.netns_dir / "cni-00000000-0000-0000-0000-000000000000"
    server.stop()
    server.netns_dir.mkdir(exist_ok=True)
    orphan.touch()
    run(["unshare", f"--net={orphan}", "true"])
    assert "nsfs" in run(["stat", "-f", "-c", "%T", str(orphan)]).stdout
    server.start()
    assert not orphan.exists()


def fs_type(path: Path) -> str:
    return run(["stat", "-f", "-c", "%T", str(path)]).stdout.strip()


def test_pod_files_live_on_one_tmpfs_that_a_restart_reuses(server: CrishimServer) -> None:
    pod_root = server.root / "run" / "sandboxes"
    sandbox_id = run_pod(server, pod_config("files", hostname="files-host"))
    pod_dir = Path(info(server, sandbox_id)["sandboxDir"])
    assert pod_dir.parent == pod_root and fs_type(pod_dir) == "tmpfs"
    assert (pod_dir / "hostname").read_text() == "files-host\n"
    assert fs_type(server.state_dir) != "tmpfs"  # records stay on the disk
    server.kill9()
    server.start()
    assert mounts_below(server.root).count(str(pod_root)) == 1  # the same tmpfs, not a second one on top
    assert status(server, sandbox_id).status.state == api_pb2.SANDBOX_READY
    assert (pod_dir / "hostname").read_text() == "files-host\n"
    stop_and_remove(server, sandbox_id)
    assert not pod_dir.exists()


def test_files_of_unknown_pods_swept_on_start(server: CrishimServer) -> None:
    stray = server.root / "run" / "sandboxes" / ("f" * 64)
    server.stop()
    (stray / "shm").mkdir(parents=True)
    run(["mount", "-t", "tmpfs", "tmpfs", str(stray / "shm")])  # as a crash mid-Run leaves it
    server.start()
    assert not stray.exists()
    assert mounts_below(stray) == []
