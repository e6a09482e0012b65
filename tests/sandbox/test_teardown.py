"""Teardown runs to the end whatever the client does or crishim suffers: nothing of a pod may stay behind.

bridge undoes its masquerade rule only from the pod's interface address, which it reads inside the
netns: a DEL killed after the interface went and before the rule did leaves the rule for good.
"""

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
from crishim.store.recordlog import encode, replay
from tests.harness import CNI_BIN_DIR, CrishimServer, TestNode, poll
from tests.sandbox.fakeplugins import FakePlugin
from tests.sandbox.podutil import info, node_leftovers, pod_config, run_pod, status, stop_and_remove

pytestmark = pytest.mark.root

MASQ_CHAIN = {"cniVersion": "1.0.0", "name": "masq", "plugins": [
    {"type": "bridge", "bridge": "cbrt", "isGateway": True, "ipMasq": True,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.71.0.0/24"}]]}},
    {"type": "fake"},
]}


def pod_rules_of(node: TestNode, server: CrishimServer) -> list[str]:
    return list(node_leftovers(node, server)["iptables"])


def test_client_deadline_does_not_interrupt_stop(node: TestNode, server: CrishimServer) -> None:
    """20 Stops whose client gives up after 5 to 120 ms, each followed by a normal Stop and Remove."""
    before = node_leftovers(node, server)
    rt = server.runtime()
    expired = 0
    for i in range(20):
        sandbox_id = run_pod(server, pod_config(f"impatient-{i}"))
        assert any("MASQUERADE" in rule for rule in pod_rules_of(node, server))
        try:
            rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                              timeout=0.005 + i * 0.115 / 19)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
            expired += 1
        stop_and_remove(server, sandbox_id)
        assert node_leftovers(node, server) == before, f"pod {i}"
    assert expired > 5  # the test did exercise abandoned Stops


@pytest.fixture
def masq(tmp_path: Path, server_factory: Callable[..., CrishimServer]) -> tuple[CrishimServer, FakePlugin]:
    fake = FakePlugin(tmp_path / "fakebin")
    server = server_factory(network=False, **{"cni.bin_dirs": [str(fake.dir), CNI_BIN_DIR]})
    server.use_network(MASQ_CHAIN)
    return server, fake


def test_concurrent_stops_share_one_teardown(node: TestNode,
                                             masq: tuple[CrishimServer, FakePlugin]) -> None:
    """One Stop gives up during a slow DEL, five more arrive: all of them wait for that one DEL."""
    server, fake = masq
    before = node_leftovers(node, server)
    sandbox_id = run_pod(server, pod_config("crowded"))
    fake.flag("del-slow")
    rt = server.runtime()
    request = api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
    impatient = rt.StopPodSandbox.future(request, timeout=0.2)
    poll(lambda: "DEL" in " ".join(fake.calls()), what="the DEL to start")
    patient = [rt.StopPodSandbox.future(request) for _ in range(5)]
    with pytest.raises(grpc.RpcError):
        impatient.result()
    for call in patient:
        call.result()
    dels = [(t["plugin"], t["error"]) for t in info(server, sandbox_id)["timeline"] if t["verb"] == "DEL"]
    assert dels == [("fake", ""), ("bridge", "")]
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert node_leftovers(node, server) == before


def test_kill9_during_del_is_finished_after_restart(node: TestNode,
                                                    masq: tuple[CrishimServer, FakePlugin]) -> None:
    """DEL runs backwards: the hanging fake holds it before bridge has undone anything."""
    server, fake = masq
    before = node_leftovers(node, server)
    sandbox_id = run_pod(server, pod_config("crashed-in-del"))
    assert any("MASQUERADE" in rule for rule in pod_rules_of(node, server))
    fake.flag("del-hangs")
    pending = server.runtime().StopPodSandbox.future(
        api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    poll(fake.pid_file.exists, what="the DEL to hang")
    server.kill9()
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(fake.pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        pending.result()
    fake.flag("del-hangs", on=False)
    server.start()
    # The record said the teardown was owed: the restarted server finishes it without being asked.
    assert status(server, sandbox_id).status.state == api_pb2.SANDBOX_NOTREADY
    poll(lambda: not pod_rules_of(node, server) and not node_leftovers(node, server)["leases"],
         what="the owed teardown to run")
    stop_and_remove(server, sandbox_id)
    assert node_leftovers(node, server) == before


def test_shutdown_waits_for_an_abandoned_teardown(node: TestNode,
                                                  masq: tuple[CrishimServer, FakePlugin]) -> None:
    """The client gave up, then crishim is asked to stop: the DEL it was running still ends."""
    server, fake = masq
    before = node_leftovers(node, server)
    sandbox_id = run_pod(server, pod_config("abandoned"))
    fake.flag("del-slow")
    with pytest.raises(grpc.RpcError) as err:
        server.runtime().StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                        timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.stop() == 0
    left = node_leftovers(node, server)
    assert left["iptables"] == [] and left["leases"] == [] and left["veths"] == []
    fake.flag("del-slow", on=False)
    server.start()
    stop_and_remove(server, sandbox_id)
    assert node_leftovers(node, server) == before


def _rewrite_record(server: CrishimServer, sandbox_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = server.state_dir / "sandboxes.log"
    record = json.loads(replay(path.read_bytes())[0][sandbox_id])["record"]
    change(record)
    with path.open("ab") as log:
        log.write(encode(sandbox_id, record))


def test_record_older_than_the_checks_can_still_be_removed(node: TestNode, server: CrishimServer) -> None:
    """A pod made before NUL was refused (its arguments reach no plugin, no cached ADD) is not immortal."""
    before = node_leftovers(node, server)
    sandbox_id = run_pod(server, pod_config("legacy"))
    server.kill9()

    def legacy(record: dict[str, Any]) -> None:
        record["spec"]["uid"] = "a\0b"
        record["state"] = "NOTREADY"

    _rewrite_record(server, sandbox_id, legacy)
    for cached in (server.cache_dir / "results").iterdir():
        cached.unlink()
    server.start()
    stop_and_remove(server, sandbox_id)
    assert node_leftovers(node, server) == before
    server.stop()
    server.start()
    assert server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
