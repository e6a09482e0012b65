"""NetworkReady follows the conf dir live: empty, invalid, and a valid file arriving in any way."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import BRIDGE_CONFLIST, CrishimServer, poll

pytestmark = pytest.mark.root


def network_condition(server: CrishimServer) -> api_pb2.RuntimeCondition:
    conditions = server.runtime().Status(api_pb2.StatusRequest()).status.conditions
    return next(c for c in conditions if c.type == "NetworkReady")


def test_empty_conf_dir_is_not_ready(server_factory: Callable[..., CrishimServer]) -> None:
    server = server_factory(network=False)
    condition = network_condition(server)
    assert not condition.status
    assert condition.reason == "NetworkPluginNotReady"
    assert str(server.conf_dir) in condition.message


def test_invalid_file_is_not_ready_and_named(server_factory: Callable[..., CrishimServer]) -> None:
    server = server_factory(network=False)
    (server.conf_dir / "10-bad.conflist").write_text('{"cniVersion": "1.0.0", "name": "x", "plugins": 1}')
    poll(lambda: "10-bad.conflist" in network_condition(server).message, what="the invalid file")
    assert not network_condition(server).status


def _write_in_place(src: str, dest: Path) -> None:
    dest.write_text(src)


def _write_by_rename(src: str, dest: Path) -> None:
    tmp = dest.parent.parent / "staged.conflist"
    tmp.write_text(src)
    tmp.rename(dest)


def _write_by_copy(src: str, dest: Path) -> None:
    staged = dest.parent.parent / "source.conflist"
    staged.write_text(src)
    shutil.copy(staged, dest)


@pytest.mark.parametrize("arrive", [_write_in_place, _write_by_rename, _write_by_copy],
                         ids=["in-place", "rename", "copy"])
def test_valid_file_makes_network_ready(server_factory: Callable[..., CrishimServer],
                                        arrive: Callable[[str, Path], None]) -> None:
    server = server_factory(network=False)
    assert not network_condition(server).status
    conflist = dict(BRIDGE_CONFLIST)
    arrive(json.dumps(conflist), server.conf_dir / "10-net.conflist")
    poll(lambda: network_condition(server).status, timeout=2.0, what="NetworkReady within 2 s")
    (server.conf_dir / "10-net.conflist").unlink()
    poll(lambda: not network_condition(server).status, timeout=2.0, what="NetworkReady to drop")


def test_missing_plugin_binary_is_not_ready(server_factory: Callable[..., CrishimServer]) -> None:
    server = server_factory(network=False)
    server.write_network({"cniVersion": "1.0.0", "name": "ghost", "plugins": [{"type": "no-such-plugin"}]})
    poll(lambda: "no-such-plugin" in network_condition(server).message, what="the missing plugin")
    assert not network_condition(server).status


def test_run_refused_while_not_ready(server_factory: Callable[..., CrishimServer]) -> None:
    import grpc

    from tests.sandbox.podutil import pod_config, run_pod
    server = server_factory(network=False)
    with pytest.raises(grpc.RpcError) as err:
        run_pod(server, pod_config("early"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in (err.value.details() or "")


TEMPLATE = """{"cniVersion": "1.0.0", "name": "templated", "plugins": [
  {"type": "bridge", "bridge": "cbrt", "isGateway": true,
   "ipam": {"type": "host-local", "ranges": {{.PodCIDRRanges}}, "routes": {{.Routes}}}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}"""


def test_update_runtime_config_renders_template(tmp_path: Path,
                                                server_factory: Callable[..., CrishimServer]) -> None:
    template = tmp_path / "template.conflist"
    template.write_text(TEMPLATE)
    server = server_factory(network=False, **{"cni.conf_template": str(template)})
    assert not network_condition(server).status
    server.runtime().UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(
            network_config=api_pb2.NetworkConfig(pod_cidr="10.77.0.0/24,fd00:77::/64"))))
    rendered = json.loads((server.conf_dir / "10-crishim-net.conflist").read_text())
    assert rendered["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.77.0.0/24"}],
                                                        [{"subnet": "fd00:77::/64"}]]
    assert rendered["plugins"][0]["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    poll(lambda: network_condition(server).status, what="the rendered network")


def test_recreated_conf_dir_is_watched_again(server_factory: Callable[..., CrishimServer]) -> None:
    server = server_factory()
    poll(lambda: network_condition(server).status, what="the initial network")
    shutil.rmtree(server.conf_dir)
    poll(lambda: not network_condition(server).status, what="NetworkReady to drop with the dir")
    server.conf_dir.mkdir()
    (server.conf_dir / "10-net.conflist").write_text(json.dumps(BRIDGE_CONFLIST))
    poll(lambda: network_condition(server).status, what="the network in the recreated dir")
    (server.conf_dir / "10-net.conflist").unlink()
    poll(lambda: not network_condition(server).status, timeout=2.0,
         what="inotify on the recreated dir to see the removal")
