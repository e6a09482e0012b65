"""The server itself: config handling, the socket, UNIMPLEMENTED answers, shutdown."""

from __future__ import annotations

import json
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from crishim import __version__
from crishim.api.runtime.v1 import api_pb2
from crishim.config import ConfigError, load_config
from tests.harness import REPO, CrishimServer, run
from tests.sandbox.podutil import pod_config, run_pod, stop_and_remove


def crishim(*args: str) -> tuple[int, str, str]:
    result = run([sys.executable, "-m", "crishim", *args], check=False, cwd=REPO, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_version_and_help() -> None:
    code, out, _ = crishim("--version")
    assert code == 0 and out.strip() == f"crishim {__version__}"
    code, out, _ = crishim("--help")
    assert code == 0 and "serve" in out and "--cni-conf-dir" in out


@pytest.mark.parametrize(("content", "key"), [
    ('socket = 3', "socket"),
    ('[cni]\nbin_dirs = "/usr/lib/cni"', "cni.bin_dirs"),
    ('[cni]\nplugin_timeout = "soon"', "cni.plugin_timeout"),
    ('log_level = "chatty"', "log_level"),
    ('no_such_key = 1', "no_such_key"),
    ('[streaming]\nport = 70000', "streaming.port"),
    ('[images]\npull_progress_timeout = 0', "images.pull_progress_timeout"),
    ('[images]\npull_progress_timeout = "5m"', "images.pull_progress_timeout"),
    ('[streaming]\nidle_timeout = 0', "streaming.idle_timeout"),
    ('connection_idle_timeout = -1', "connection_idle_timeout"),
    ('socket = "relative.sock"', "socket"),
    ('state_dir = "/var/lib/"', "state_dir"),
    ('run_dir = "/run"', "run_dir"),
    ('state_dir = "/srv/crishim"\nrun_dir = "/srv/crishim/"', "run_dir"),
    ('this is not toml', "not valid TOML"),
])
def test_invalid_config_names_the_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(str(path))
    code, _, err = crishim("--config", str(path), "serve")
    assert code == 2 and key in err


def test_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('state_dir = "/var/lib/other"\n[cni]\nconf_dir = "/etc/other"\n')
    config = load_config(str(path), {"cni.conf_dir": "/flag/dir"})
    assert config.state_dir == "/var/lib/other" and config.cni.conf_dir == "/flag/dir"
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "missing.toml"))


@pytest.mark.root
def test_serves_basic_rpcs(server: CrishimServer) -> None:
    rt, images = server.runtime(), server.images()
    version = rt.Version(api_pb2.VersionRequest(version="0.1.0"))
    assert (version.runtime_name, version.runtime_version, version.runtime_api_version) == \
        ("crishim", __version__, "v1")
    assert rt.RuntimeConfig(api_pb2.RuntimeConfigRequest()).linux.cgroup_driver == api_pb2.CGROUPFS
    assert images.ImageFsInfo(api_pb2.ImageFsInfoRequest()).image_filesystems[0].timestamp > 0
    response = rt.Status(api_pb2.StatusRequest(verbose=True))
    assert {c.type: c.status for c in response.status.conditions} == \
        {"RuntimeReady": True, "NetworkReady": True}
    assert json.loads(response.info["config"])["socket"] == str(server.socket)
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o660


@pytest.mark.root
def test_unimplemented_rpc_names_itself(server: CrishimServer) -> None:
    channel = grpc.insecure_channel(f"unix:{server.socket}")
    call = channel.unary_unary("/runtime.v1.RuntimeService/CheckpointContainer",
                               request_serializer=api_pb2.CheckpointContainerRequest.SerializeToString,
                               response_deserializer=api_pb2.CheckpointContainerResponse.FromString)
    with pytest.raises(grpc.RpcError) as err:
        call(api_pb2.CheckpointContainerRequest(container_id="x"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer" in (err.value.details() or "")
    channel.close()


@pytest.mark.root
def test_sigterm_shuts_down_cleanly(server: CrishimServer) -> None:
    assert server.stop(signal.SIGTERM) == 0
    assert not server.socket.exists()


@pytest.mark.root
def test_shipped_default_network_works(server_factory: Callable[..., CrishimServer]) -> None:
    server = server_factory(network=False)
    shipped = json.loads((REPO / "crishim" / "data" / "10-crishim-bridge.conflist").read_text())
    server.use_network(shipped)
    sandbox_id = run_pod(server, pod_config("default-net", host_ports=[(80, 18088)]))
    ip = server.runtime().PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status.network.ip
    assert ip.startswith("10.88.")
    stop_and_remove(server, sandbox_id)
