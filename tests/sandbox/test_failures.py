"""Failure injection: a failing, hanging or crashing chain leaves nothing behind, or owes a teardown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CNI_BIN_DIR, CrishimServer, TestNode, poll
from tests.sandbox.fakeplugins import FakePlugin
from tests.sandbox.podutil import info, node_leftovers, pod_config, run_pod, status, stop_and_remove

pytestmark = pytest.mark.root


def chain_with_fake(name: str = "chain") -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": "cbrf", "isGateway": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.70.0.0/24"}]]}},
        {"type": "fake"},
    ]}


@pytest.fixture
def faulty(tmp_path: Path, server_factory: Callable[..., CrishimServer]
           ) -> tuple[CrishimServer, FakePlugin]:
    fake = FakePlugin(tmp_path / "fakebin")
    server = server_factory(network=False, **{"cni.bin_dirs": [str(fake.dir), CNI_BIN_DIR]})
    server.use_network(chain_with_fake())
    return server, fake


def test_add_failure_in_second_plugin_rolls_back(node: TestNode,
                                                  faulty: tuple[CrishimServer, FakePlugin]) -> None:
    server, fake = faulty
    before = node_leftovers(node, server)
    fake.flag("add-fails")
    with pytest.raises(grpc.RpcError) as err:
        run_pod(server, pod_config("doomed"))
    details = err.value.details() or ""
    assert 'plugin type="fake"' in details and "injected ADD failure" in details
    assert node_leftovers(node, server) == before
    assert [call.split()[0] for call in fake.calls()] == ["ADD", "DEL"]
    assert server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []


def test_del_failure_is_returned_then_retried(node: TestNode,
                                              faulty: tuple[CrishimServer, FakePlugin]) -> None:
    server, fake = faulty
    before = node_leftovers(node, server)
    sandbox_id = run_pod(server, pod_config("sticky"))
    fake.flag("del-fails")
    rt = server.runtime()
    with pytest.raises(grpc.RpcError) as err:
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert "injected DEL failure" in (err.value.details() or "")
    assert status(server, sandbox_id).status.state == api_pb2.SANDBOX_NOTREADY
    assert info(server, sandbox_id)["teardownPending"] is True
    with pytest.raises(grpc.RpcError):
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    fake.flag("del-fails", on=False)
    stop_and_remove(server, sandbox_id)
    assert node_leftovers(node, server) == before


def test_crash_mid_run_is_cleaned_up_by_restart(node: TestNode,
                                                 faulty: tuple[CrishimServer, FakePlugin]) -> None:
    server, fake = faulty
    before = node_leftovers(node, server)
    fake.flag("add-hangs")
    pending = server.runtime().RunPodSandbox.future(
        api_pb2.RunPodSandboxRequest(config=pod_config("interrupted")))
    # The shell creates the pid file before it writes the pid: wait for the content.
    poll(lambda: fake.pid_file.exists() and fake.pid_file.read_text().strip(),
         what="the hanging plugin to start")
    assert len(node_leftovers(node, server)["leases"]) == 1
    server.kill9()
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(fake.pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        pending.result()
    fake.flag("add-hangs", on=False)
    server.start()
    assert server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    poll(lambda: node_leftovers(node, server) == before, what="the interrupted pod to be cleaned up")


def test_cni_status_drives_network_ready(tmp_path: Path,
                                         server_factory: Callable[..., CrishimServer]) -> None:
    fake = FakePlugin(tmp_path / "fakebin")
    server = server_factory(network=False, **{"cni.bin_dirs": [str(fake.dir), CNI_BIN_DIR]})
    server.use_network({"cniVersion": "1.1.0", "name": "statusnet", "plugins": [{"type": "fake"}]})
    fake.flag("status-fails")
    ready, cni = server.network_status()
    assert not ready and "injected STATUS failure" in cni["error"]
    fake.flag("status-fails", on=False)
    assert server.network_status()[0]


def test_gc_on_start_releases_attachments_nobody_owns(node: TestNode, server: CrishimServer) -> None:
    """A crash between CNI ADD and the sandbox record leaves an attachment only GC can find."""
    import asyncio

    import cni
    from tests.harness import BRIDGE_CONFLIST, run

    before = node_leftovers(node, server)
    server.stop()
    netns = server.netns_dir / "stray"
    server.netns_dir.mkdir(exist_ok=True)
    netns.touch()
    run(["unshare", f"--net={netns}", "true"])
    conflist = json.loads((server.conf_dir / "10-test.conflist").read_text())
    assert conflist["name"] == BRIDGE_CONFLIST["name"]
    library = cni.CNIConfig([CNI_BIN_DIR], cache_dir=str(server.cache_dir), exec_prefix=node.prefix())
    net = cni.parse_network_config_list(json.dumps(conflist).encode())
    asyncio.run(library.add_network_list(net, cni.RuntimeConf("f" * 64, str(netns), "eth0")))
    assert len(node_leftovers(node, server)["leases"]) == 1
    server.start()

    def released() -> bool:
        left = node_leftovers(node, server)
        return left["leases"] == [] and left["cache"] == []

    poll(released, what="GC to release the stray lease and its cache entry")
    run(["umount", str(netns)])
    netns.unlink()
    assert node_leftovers(node, server) == before
