"""``python -m cni`` (cnitool work-alike), run inside a test node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cnitest_node import Node

pytestmark = pytest.mark.root

REPO = str(Path(__file__).resolve().parents[2])


def cli(node: Node, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": REPO, **env}
    return subprocess.run(
        ["ip", "netns", "exec", node.name, sys.executable, "-m", "cni", *argv],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
    )


def test_cli_add_check_del(node: Node) -> None:
    confdir = node.tmp / "net.d"
    confdir.mkdir()
    (confdir / "10-clinet.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "clinet",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipam": {
                            "type": "host-local",
                            "subnet": "10.40.0.0/24",
                            "dataDir": str(node.tmp / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    env = {
        "NETCONFPATH": str(confdir),
        "CNI_PATH": "/usr/lib/cni",
        "CNI_CACHE_DIR": str(node.tmp / "cache"),
        "CNI_ARGS": "IgnoreUnknown=1",
    }
    pod = node.pod()
    add = cli(node, "add", "clinet", pod, **env)
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["ips"][0]["address"].startswith("10.40.0.")
    assert cli(node, "check", "clinet", pod, **env).returncode == 0
    version = cli(node, "version", "clinet", **env)
    assert "1.0.0" in json.loads(version.stdout)["bridge"]["supportedVersions"]
    assert cli(node, "status", "clinet", **env).returncode == 0
    assert cli(node, "del", "clinet", pod, **env).returncode == 0
    assert node.leases("clinet") == []

    unknown = cli(node, "add", "nope", pod, **env)
    assert unknown.returncode == 2 and f'no valid network "nope" found in {confdir}' in unknown.stderr
    broken = cli(node, "add", "clinet", pod, **{**env, "CNI_PATH": str(node.tmp)})
    assert broken.returncode == 1 and 'failed to find plugin "bridge"' in broken.stderr
    assert json.loads(broken.stdout)["code"] == 999
    usage = cli(node, "add", **env)
    assert usage.returncode == 2 and "usage: python -m cni" in usage.stderr
